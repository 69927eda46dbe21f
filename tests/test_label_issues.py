"""Label issues: confident learning against cleanlab on fixed probabilities, planted flips on
synthetic coins recovered far above chance, duplicate groups kept in one fold, resume, refusals."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from camscope.cli import app
from camscope.data.prepare import PrepareConfig, dataset_hash, prepare, save_prepared
from camscope.data.synthetic import CoinSpec, SyntheticSource
from camscope.labels import screen as screen_mod
from camscope.labels.confident import find_issues, quality, suggested
from camscope.labels.screen import ScreenConfig, fold_of, screen
from tests.helpers import runner


def _probs(rng, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    logits = rng.normal(size=(n, k)) * rng.uniform(0.5, 4)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    y = p.argmax(1)
    flip = rng.random(n) < 0.1
    y[flip] = rng.integers(0, k, flip.sum())
    return y, p


@pytest.mark.parametrize("case", range(12))
def test_confident_learning_equals_cleanlab(case):
    rng = np.random.default_rng(case)
    y, p = _probs(rng, 400, int(rng.integers(2, 9)))
    if case == 3:
        y[y == 0] = 1  # a class no item carries
    if case == 4:
        p = np.round(p, 2)  # ties
        p /= p.sum(1, keepdims=True)
    ours = find_issues(y, p)
    ref = find_label_issues(y, p, filter_by="confident_learning")
    assert ours.sum() > 0 and np.array_equal(ours, ref)
    for method in ("normalized_margin", "self_confidence"):
        want = get_label_quality_scores(y, p, method=method, adjust_pred_probs=False)
        np.testing.assert_allclose(quality(y, p, method), want, atol=1e-12)
    sug = suggested(y, p)
    assert (sug != y).all()


def test_duplicate_groups_stay_in_one_fold():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 40)
    groups = [list(rng.choice(120, size=4, replace=False)) for _ in range(8)]
    groups = [g for i, g in enumerate(groups) if not set(g) & {x for h in groups[:i] for x in h}]
    assert len(groups) >= 2
    folds = fold_of(labels, [list(map(int, g)) for g in groups], 5, seed=1)
    for g in groups:
        assert len(set(folds[g])) == 1
    sizes = np.bincount(folds, minlength=5)
    assert len(sizes) == 5 and sizes.min() >= 20  # five folds of about 24 items each
    with pytest.raises(Exception, match="fewer than the 5 folds"):
        fold_of(np.array([0] * 10 + [1] * 3), [], 5, 0)


def _flip_and_save(ds, rng, n: int, path: Path) -> tuple[Path, set[str]]:
    """Flip ``n`` random labels to another class; the saved file and the flipped ids."""
    flip = rng.choice(len(ds), size=n, replace=False)
    labels = ds.labels.clone()
    for i in flip:
        labels[i] = (labels[i] + int(rng.integers(1, len(ds.classes)))) % len(ds.classes)
    ds.labels = labels
    ds.info["dataset_hash"] = dataset_hash(ds)
    return save_prepared(ds, path), {ds.ids[i] for i in flip}


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """300 two-sided synthetic coins of 48 px with 5% of the labels flipped to another class."""
    tmp = tmp_path_factory.mktemp("noisy")
    ds = prepare(SyntheticSource(CoinSpec(n=300, size=48, seed=0)), PrepareConfig(size=48))
    return _flip_and_save(ds, np.random.default_rng(0), 15, tmp / "noisy.safetensors")


def test_planted_flips_are_found_far_above_chance(noisy, tmp_path):
    path, planted = noisy
    out = tmp_path / "issues"
    res = runner.invoke(app, ["label-issues", str(path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "label_issues.json").read_text())
    rows = list(csv.DictReader((out / "label_issues.csv").open(encoding="utf-8")))
    assert len(rows) == summary["n_items"] == 300
    flagged = set(summary["flagged_ids"])
    hit = len(flagged & planted)
    precision, recall = hit / max(1, len(flagged)), hit / len(planted)
    top = {r["id"] for r in rows[: len(planted)]}
    top_precision = len(top & planted) / len(planted)
    said = (
        f"flagged {len(flagged)}, precision {precision:.2f}, recall {recall:.2f}, top-15 {top_precision:.2f}"
    )
    print("\n" + said)
    # a random ranking finds 5% of them in its top 15 and flags at the base rate
    assert recall >= 0.6 and precision >= 0.4 and top_precision >= 0.5
    for r in rows:
        if r["id"] in planted and r["flagged"] == "1":
            assert r["suggested"] != r["given"]
    probs = list(csv.DictReader((out / "probabilities.csv").open(encoding="utf-8")))
    assert len(probs) == 300 and abs(sum(float(v) for k, v in probs[0].items() if k != "id") - 1) < 1e-4
    from PIL import Image

    with Image.open(out / "suspects_cams.png") as sheet:  # 12 suspects: image, given CAM, suggested CAM
        assert sheet.width > 2 * sheet.height / 12


@pytest.mark.parametrize("k", [2, 4])
def test_the_folded_head_gives_the_heads_probabilities(k):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from camscope.labels.cams import folded_head

    rng = np.random.default_rng(k)
    x = rng.normal(size=(200, 6)) * rng.uniform(0.5, 5, 6) + rng.normal(size=6) * 3
    y = (x[:, 0] + x[:, 1] > np.median(x[:, 0] + x[:, 1])).astype(int) + (
        2 * (x[:, 2] > np.median(x[:, 2])) if k == 4 else 0
    )
    scaler = StandardScaler().fit(x)
    head = LogisticRegression(C=0.5, max_iter=2000).fit(scaler.transform(x), y)
    weight, bias = folded_head(head, scaler, k)
    logits = x @ weight.T + bias
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert np.allclose(p, head.predict_proba(scaler.transform(x)), atol=1e-6)


def test_a_killed_screen_resumes_from_its_saved_folds(noisy, tmp_path, monkeypatch):
    path, _ = noisy
    out = tmp_path / "issues"
    cfg = ScreenConfig(folds=3)
    first = screen(path, out, cfg)
    table = (out / "label_issues.csv").read_text()
    saved = sorted((out / "folds").glob("fold*.npz"))
    assert len(saved) == 3 and (out / "features.npz").is_file()
    saved[1].unlink()  # as if killed during the second fold
    calls = []
    real = screen_mod.fold_fit
    monkeypatch.setattr(screen_mod, "fold_fit", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(screen_mod, "extract", lambda run: pytest.fail("features were recomputed"))
    again = screen(path, out, cfg)
    assert len(calls) == 1
    assert again["flagged_ids"] == first["flagged_ids"]
    assert (out / "label_issues.csv").read_text() == table


def test_refusals(noisy, tmp_path):
    path, _ = noisy
    res = runner.invoke(app, ["label-issues", str(path), "--out", str(tmp_path / "o"), "--folds", "1"])
    assert res.exit_code == 2 and "--folds must be at least 2" in res.output
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    res = runner.invoke(app, ["label-issues", str(path), "--out", str(tmp_path / "mine")])
    assert res.exit_code == 2 and "not a camscope run folder" in res.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_evaluate_scores_with_and_without_the_flagged(trained_run, noisy, tmp_path):
    issues = tmp_path / "issues"
    res = runner.invoke(
        app, ["label-issues", str(trained_run.prepared), "--out", str(issues), "--folds", "3"]
    )
    assert res.exit_code == 0, res.output
    flagged = set(json.loads((issues / "label_issues.json").read_text())["flagged_ids"])
    res = runner.invoke(
        app, ["evaluate", str(trained_run.run), "--label-issues", str(issues), "--out", str(tmp_path / "ev")]
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    test_ids = [r["id"] for r in csv.DictReader((tmp_path / "ev" / "predictions.csv").open())]
    n_flagged_test = len(flagged & set(test_ids))
    without = metrics["without_label_issues"]
    assert 0 < n_flagged_test < len(test_ids)  # 16-px coins: ImageNet features doubt many labels
    assert without["n_excluded_flagged"] == n_flagged_test
    assert without.get("n", 0) == metrics["all"]["n"] - n_flagged_test
    assert "no label issues" in res.output or n_flagged_test == len(test_ids)
    # a screen of another dataset is refused
    other = tmp_path / "other"
    assert (
        runner.invoke(app, ["label-issues", str(noisy[0]), "--out", str(other), "--folds", "3"]).exit_code
        == 0
    )
    res = runner.invoke(
        app, ["evaluate", str(trained_run.run), "--label-issues", str(other), "--out", str(tmp_path / "e2")]
    )
    assert res.exit_code == 2 and "another prepared dataset" in res.output


def test_classes_smaller_than_the_folds_are_not_screened(noisy, tmp_path, monkeypatch):
    path, _ = noisy
    rng = np.random.default_rng(0)

    def fake_extract(run):  # features that separate the classes, and one class of three items
        ds = run.dataset()
        names = [ds.classes[int(i)] for i in ds.labels]
        names[:3] = ["rare"] * 3
        centre = {c: rng.normal(size=8) * 4 for c in set(names)}
        feats = np.stack([centre[n] + rng.normal(size=8) for n in names])
        return {"features": feats, "ids": ds.ids, "labels": names, "splits": [""] * len(names)}

    monkeypatch.setattr(screen_mod, "extract", fake_extract)
    monkeypatch.setattr(screen_mod, "duplicate_groups", lambda ds, audit: [])
    monkeypatch.setattr(screen_mod, "suspect_cams", lambda *a: None)  # fake features: no model to explain
    res = screen(path, tmp_path / "o", ScreenConfig(folds=5))
    assert res["not_screened"] == {"rare": 3} and res["n_items"] == 297
    assert res["out_of_fold_accuracy"] > 0.95


def test_study_stage_report_and_evaluation(tmp_path):
    import copy

    from camscope.study.config import Study
    from tests.helpers import TINY, write_study

    raw = copy.deepcopy(TINY)
    raw["label_issues"] = {"folds": 3}
    exp = raw["experiments"][0]
    exp.pop("search")
    exp["analyses"] = ["evaluate"]
    out = tmp_path / "run"
    res = Study.from_yaml(write_study(tmp_path, raw)).run(out)
    assert "label_issues" in res["ran"] and (out / "label_issues" / "suspects.png").is_file()
    ev = Path(json.loads((out / "top3" / "selection.json").read_text())["run_dir"]) / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    without = metrics["without_label_issues"]
    flagged = set(json.loads((out / "label_issues" / "label_issues.json").read_text())["flagged_ids"])
    test_ids = {r["id"] for r in csv.DictReader((ev / "predictions.csv").open())}
    assert 0 < len(flagged & test_ids) < len(test_ids)  # both columns score something
    assert without["n_excluded_flagged"] == len(flagged & test_ids)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "Probable label issues" in html and 'alt="most suspect labels"' in html
    again = Study.from_yaml(write_study(tmp_path, raw)).run(out)
    assert "label_issues" in again["skipped"] and "evaluate:top3" in again["skipped"]
    with pytest.raises(Exception, match="folds"):
        Study.from_yaml(write_study(tmp_path, {**raw, "label_issues": {"folds": 1}}))

    # clean.drop_label_issues: the 10 most suspect leave train and val; the test set stays the same
    def split_rows():
        return {r["id"]: r for r in csv.DictReader((out / "top3" / "split.csv").open())}

    before = split_rows()
    ranked = [r["id"] for r in csv.DictReader((out / "label_issues" / "label_issues.csv").open())][:10]
    dropping = {**raw, "clean": {**raw.get("clean", {}), "drop_label_issues": {"top_k": 10}}}
    res = Study.from_yaml(write_study(tmp_path, dropping)).run(out)
    assert "split:top3" in res["ran"] and "label_issues" in res["skipped"]
    after = split_rows()
    gone = {i for i, r in after.items() if r["split"] == "dropped" and "probable label issue" in r["note"]}
    assert gone == {i for i in ranked if before[i]["split"] in ("train", "val")} and gone
    assert {i for i, r in after.items() if r["split"] == "test"} == {
        i for i, r in before.items() if r["split"] == "test"
    }
    with pytest.raises(Exception, match="exactly one of top_k"):
        Study.from_dict({**dropping, "clean": {"drop_label_issues": {"top_k": 3, "threshold": 0.2}}})
    with pytest.raises(Exception, match="needs a label_issues section"):
        Study.from_dict({**{k: v for k, v in dropping.items() if k != "label_issues"}})


# fastnet's recipe is for 50,000 images in batches of 512; on 160 items it needs small batches
TRAINED = ["--model", "fastnet", "--folds", "3", "--epochs", "6"]
TRAINED += ["--set", "batch_size=32", "--set", "lr=0.05"]


@pytest.fixture(scope="module")
def noisy_small(tmp_path_factory):
    """240 items of 16 px whose class is their colour (plus noise), 5% of the labels flipped: a
    model trained from scratch on 160 of them learns the classes in seconds, so what is left to
    test is the fold mechanics and the ranking (synthetic coins need more data than a fold has)."""
    import torch

    tmp = tmp_path_factory.mktemp("noisy_small")
    ds = prepare(SyntheticSource(CoinSpec(n=240, size=16, seed=1)), PrepareConfig(size=16))
    rng = np.random.default_rng(1)
    colours = torch.tensor([[200, 40, 40], [40, 200, 40], [40, 40, 200], [200, 200, 40]])
    noise = torch.from_numpy(rng.normal(0, 30, ds.images.shape)).round().to(torch.int64)
    base = colours[ds.labels % len(colours)][:, :, None, None]
    ds.images = (base + noise).clamp(0, 255).to(torch.uint8)
    return _flip_and_save(ds, rng, 12, tmp / "noisy.safetensors")


def _trained_screen(path: Path, out: Path, *extra: str):
    return runner.invoke(app, ["label-issues", str(path), "--out", str(out), *TRAINED, *extra])


def test_folds_trained_per_fold_find_the_flips_and_never_see_their_items(noisy_small, tmp_path):
    from camscope.models.checkpoint import read_meta

    path, planted = noisy_small
    out = tmp_path / "trained"
    res = _trained_screen(path, out)
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "label_issues.json").read_text())
    assert summary["backbone"] == "fastnet trained per fold (6 epochs)"
    rows = list(csv.DictReader((out / "label_issues.csv").open(encoding="utf-8")))
    top = {r["id"] for r in rows[: len(planted)]}
    flagged = set(summary["flagged_ids"])
    recall = len(flagged & planted) / len(planted)
    print(
        f"\ntrained folds: oof acc {summary['out_of_fold_accuracy']:.3f}, recall {recall:.2f}, "
        f"flagged {len(flagged)}, "
        f"top-12 precision {len(top & planted) / 12:.2f}"
    )
    # chance: 5% of a random top-12, a flagged set at the base rate
    assert len(top & planted) >= 9 and recall >= 0.75 and len(flagged) <= 3 * len(planted)
    fold_of_id = {r["id"]: int(r["fold"]) for r in rows}
    for f in range(3):
        (run,) = (out / "folds").glob(f"fold{f}-*")
        meta = read_meta(run / "best.safetensors")
        # each fold's model trained on exactly the items of the other folds, with no validation
        assert meta["n_train"] == sum(1 for v in fold_of_id.values() if v != f) and meta["n_val"] == 0
        assert meta["config"]["seed"] == f and meta["config"]["epochs"] == 6
    from PIL import Image

    with Image.open(out / "suspects_cams.png") as sheet:
        assert sheet.width > 2 * sheet.height / 12


@pytest.mark.slow
def test_a_screen_killed_inside_a_trained_fold_resumes_to_the_same_ranking(noisy_small, tmp_path):
    import signal
    import subprocess
    import time

    from tests.helpers import CLI, ENV

    path, _ = noisy_small
    out = tmp_path / "killed"
    args = ["label-issues", str(path), *TRAINED, "--set", "checkpoint_every_steps=1"]
    # every run in a subprocess with the same environment (one thread): float sums then agree
    ref = tmp_path / "ref"
    assert subprocess.run([*CLI, *args, "--out", str(ref)], env=ENV, capture_output=True).returncode == 0
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    p = subprocess.Popen([*CLI, *args, "--out", str(out)], env=ENV, **quiet)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "folds").glob("fold1-*/last.safetensors")):  # inside the second fold
            assert p.poll() is None and time.monotonic() < deadline, "the screen ended before fold 2"
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    (first,) = (out / "folds").glob("fold0-*/best.safetensors")
    assert not list((out / "folds").glob("fold1-*/best.safetensors")), "killed after the fold finished"
    finished = first.stat().st_mtime_ns
    done = subprocess.run([*CLI, *args, "--out", str(out)], env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert first.stat().st_mtime_ns == finished  # the finished fold was not trained again
    # the fold resumed mid-epoch replays what an uninterrupted one does, number for number
    assert (out / "label_issues.csv").read_text() == (ref / "label_issues.csv").read_text()


def test_training_options_without_a_trained_model_are_refused(noisy, tmp_path):
    path, _ = noisy
    res = runner.invoke(app, ["label-issues", str(path), "--out", str(tmp_path / "o"), "--epochs", "3"])
    assert res.exit_code == 2 and "add --model fastnet" in res.output
    res = _trained_screen(path, tmp_path / "o2", "--set", "lr=-1")
    assert res.exit_code == 2 and "lr" in res.output
    res = _trained_screen(path, tmp_path / "o3", "--set", "seed=4")
    assert res.exit_code == 2 and "set by the screen itself" in res.output
