"""Metrics against hand-computed cases, and the evaluate command end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from camscope.cli import app
from camscope.evaluate.metrics import (
    bootstrap_ci,
    classification_metrics,
    expected_calibration_error,
    top_k_accuracy,
)
from tests.helpers import cli_train, runner, synthetic_prepared


def _logits_for(pred: list[int], k: int = 3, conf: float = 4.0) -> torch.Tensor:
    lg = torch.zeros(len(pred), k)
    lg[torch.arange(len(pred)), torch.tensor(pred)] = conf
    return lg


def test_metrics_by_hand():
    # true 0 0 0 1 1 2 ; predicted 0 0 1 1 2 2
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    m = classification_metrics(_logits_for([0, 0, 1, 1, 2, 2]), y, ["a", "b", "c"], bootstrap=0)
    assert m["accuracy"] == pytest.approx(4 / 6)
    per = {r["class"]: r for r in m["per_class"]}
    assert per["a"]["precision"] == 1.0 and per["a"]["recall"] == pytest.approx(2 / 3)
    assert per["b"]["precision"] == pytest.approx(1 / 2) and per["b"]["recall"] == pytest.approx(1 / 2)
    assert per["c"]["precision"] == pytest.approx(1 / 2) and per["c"]["recall"] == 1.0
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert m["macro"]["f1"] == pytest.approx(np.mean(f1))
    assert m["weighted"]["f1"] == pytest.approx(np.average(f1, weights=[3, 2, 1]))
    assert m["confusion"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert m["confusion_normalised"][0] == pytest.approx([2 / 3, 1 / 3, 0])
    assert {"true": "a", "predicted": "b", "count": 1} in m["most_confused"]


def test_top_k_and_calibration_by_hand():
    logits = np.array([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]])
    labels = np.array([1, 0])
    assert top_k_accuracy(logits, labels, 1) == 0.0
    assert top_k_accuracy(logits, labels, 2) == 0.5
    assert top_k_accuracy(logits, labels, 3) == 1.0
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    ece, table = expected_calibration_error(probs, np.array([0, 1, 0, 0]), bins=10)
    # bin (0.8, 0.9]: acc 0.5 at conf 0.9; bin (0.5, 0.6]: acc 1.0 at conf 0.6
    assert ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert sum(b["count"] for b in table) == 4


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_n():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 2000)
    pred = np.where(rng.random(2000) < 0.8, y, (y + 1) % 3)
    ci = bootstrap_ci(pred, y, 3, resamples=500)
    acc = (pred == y).mean()
    assert ci["accuracy"][0] < acc < ci["accuracy"][1]
    small = bootstrap_ci(pred[:200], y[:200], 3, resamples=500)
    assert (small["accuracy"][1] - small["accuracy"][0]) > (ci["accuracy"][1] - ci["accuracy"][0])
    assert bootstrap_ci(pred, y, 3, resamples=100, seed=1) == bootstrap_ci(pred, y, 3, resamples=100, seed=1)


def test_evaluate_command_end_to_end(trained_run, tmp_path):
    run, prepared = trained_run.copy(tmp_path / "run"), trained_run.prepared
    r = runner.invoke(app, ["evaluate", str(run), "--data", str(prepared), "--bootstrap", "200"])
    assert r.exit_code == 0, r.output
    assert "leak-free" in r.output and "per class" in r.output
    ev = run / "eval"
    for f in (
        "metrics.json",
        "per_class.csv",
        "confusion.csv",
        "confusion_normalised.csv",
        "confusion.png",
        "reliability.png",
        "predictions.csv",
        "classification_report.txt",
    ):
        assert (ev / f).is_file(), f
    metrics = json.loads((ev / "metrics.json").read_text())
    n_test = sum(1 for line in (run / "split.csv").read_text().splitlines()[1:] if ",test," in line)
    assert metrics["all"]["n"] == n_test
    assert (
        metrics["all"]["ci"]["accuracy"][0]
        <= metrics["all"]["accuracy"]
        <= metrics["all"]["ci"]["accuracy"][1]
    )


def test_predict_command_on_new_files(tmp_path):
    from PIL import Image

    ds, prepared = synthetic_prepared(tmp_path / "p.safetensors", seed=3, combine="channels")
    run = tmp_path / "run"
    cli_train(prepared, run)
    folder = tmp_path / "new"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(ds.images[i, :3].permute(1, 2, 0).numpy()).resize((40, 30)).save(folder / f"h{i}.png")
        Image.fromarray(ds.images[i, 3:].permute(1, 2, 0).numpy()).save(folder / f"t{i}.jpg")
    (folder / "broken_h.png").write_bytes(b"not an image")
    (folder / "pairs.csv").write_text(
        "heads,tails\n" + "".join(f"h{i}.png,t{i}.jpg\n" for i in range(3)) + "broken_h.png,t0.jpg\n"
    )
    out = tmp_path / "pred.csv"
    r = runner.invoke(
        app,
        [
            "predict",
            str(run),
            str(folder / "pairs.csv"),
            "--image-col",
            "heads",
            "--image-col",
            "tails",
            "--out",
            str(out),
            "--top-k",
            "2",
            "--cam",
            "gradcam",
        ],
    )
    assert r.exit_code == 0, r.output
    lines = out.read_text().splitlines()
    assert lines[0] == "path,label_1,confidence_1,label_2,confidence_2,cam_file" and len(lines) == 4
    assert "skipped broken_h.png" in r.output and len(list((tmp_path / "cams").glob("*.png"))) == 3
    r = runner.invoke(app, ["predict", str(run), str(folder / "h0.png"), "--out", str(out)])
    assert r.exit_code == 2 and "2-sided" in r.output


def test_one_macro_f1_everywhere_and_its_interval_holds_it():
    from sklearn.metrics import f1_score

    import camscope.train.probe
    import camscope.train.trainer
    from camscope.evaluate.metrics import classification_metrics
    from camscope.scores import macro_f1

    assert camscope.train.trainer.macro_f1 is macro_f1 is camscope.train.probe.macro_f1
    rng = np.random.default_rng(0)
    for k in (2, 3, 5):
        y, p = rng.integers(0, k - 1, 40), rng.integers(0, k, 40)  # class k-1 never in y
        want = f1_score(y, p, labels=list(range(k)), average="macro", zero_division=0)
        assert macro_f1(p, y, k) == pytest.approx(want, abs=1e-12)
        rows = macro_f1(np.stack([p, y]), np.stack([y, y]), k)
        assert rows.shape == (2,) and rows[0] == pytest.approx(want)
    # the reproduction: a class absent from a small test set, predicted once by mistake;
    # the point estimate was 0.633 and its interval [0.881, 1.0]
    y = np.array([0] * 10 + [1] * 10)
    p = y.copy()
    p[3] = 2
    logits = torch.nn.functional.one_hot(torch.tensor(p), 3).float() * 4
    m = classification_metrics(logits, torch.tensor(y), ["a", "b", "c"], bootstrap=1000)
    lo, hi = m["ci"]["macro_f1"]
    assert lo <= m["macro"]["f1"] <= hi and m["macro"]["f1"] == pytest.approx((18 / 19 + 1 + 0) / 3)
