"""Unseen-class probe: scores and AUROC against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from camscope.cli import app
from camscope.models.inference import logits_and_features
from camscope.probes.unseen import auroc_and_fpr95, fit_reference, label_consistency, scores
from tests.helpers import runner


def test_auroc_and_fpr_by_hand():
    auroc, fpr = auroc_and_fpr95(np.array([0.9, 0.8, 0.7]), np.array([0.75, 0.1]))
    assert auroc == pytest.approx(5 / 6)  # 5 of the 6 (in, out) pairs are ordered right
    assert fpr == pytest.approx(0.5)  # threshold 0.71 (5th percentile of in) lets 0.75 through


def test_scores_by_hand():
    train = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [12.0, 0.0], [1.0, 1.0], [11.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    ref = fit_reference(train, labels, 2, shrink=0.0)
    assert torch.allclose(ref.means, torch.tensor([[1.0, 1 / 3], [11.0, -1 / 3]], dtype=torch.float64))
    centred = train.double() - ref.means[labels]
    cov = centred.T @ centred / 5
    feats = torch.tensor([[1.0, 0.0], [6.0, 5.0]])
    logits = torch.tensor([[2.0, 0.0], [0.5, 0.4]])
    s = scores(logits, feats, ref, knn_k=1)
    inv = torch.linalg.inv(cov)
    d = feats.double()[0] - ref.means[0]
    assert s["mahalanobis"][0].item() == pytest.approx(-(d @ inv @ d).item(), rel=1e-5)
    assert s["mahalanobis"][0] > s["mahalanobis"][1]
    assert s["energy"][0].item() == pytest.approx(math.log(math.exp(2) + 1))
    assert s["max_softmax"][0].item() == pytest.approx(math.exp(2) / (math.exp(2) + 1))
    # nearest normalised training feature of (1, 0) is a training point on the x axis: distance 0
    assert s["knn"][0].item() == pytest.approx(0.0, abs=1e-6)


def test_features_hook_and_consistency():
    from camscope.models import build_model
    from camscope.models.inference import Preprocess

    model = build_model("gray_cnn", 3, 1, (16, 16))
    images = torch.randint(0, 255, (10, 1, 16, 16), dtype=torch.uint8)
    prep = Preprocess([0.5], [0.25])
    logits, feats = logits_and_features(model, images, prep, "head", batch=4)
    assert logits.shape == (10, 3) and feats.shape == (10, 128)
    assert not model.head._forward_hooks
    assert torch.allclose(model.head(feats), logits, atol=1e-5)
    c = label_consistency(model, images, prep)
    assert 0 <= c["keeps_label_under_flip"] <= 1 and 0 <= c["keeps_label_under_2px_shifts"] <= 1
    flat = torch.full((4, 1, 16, 16), 100, dtype=torch.uint8)  # a constant image: every view is the same
    assert label_consistency(model, flat, prep) == {
        "keeps_label_under_flip": 1.0,
        "keeps_label_under_2px_shifts": 1.0,
    }


def test_unseen_command_end_to_end(trained_run, tmp_path):
    import json

    ds, prepared = trained_run.dataset, trained_run.prepared
    run = trained_run.copy(tmp_path / "run")
    r = runner.invoke(app, ["unseen", str(run), "--data", str(prepared), "--classes", "rim_ticks"])
    assert r.exit_code == 0, r.output
    res = json.loads((run / "probes" / "unseen" / "unseen.json").read_text())
    n_ticks = sum(1 for c in ds.labels.tolist() if ds.classes[c] == "rim_ticks")
    assert res["n_unseen"] == n_ticks and sum(res["label_distribution"].values()) == n_ticks
    assert set(res["separation"]) == {"max_softmax", "max_logit", "energy", "mahalanobis", "knn"}
    for f in ("unseen_predictions.csv", "confidence_hist.png", "roc.png", "gradcam_unseen.png"):
        assert (run / "probes" / "unseen" / f).is_file(), f
    r = runner.invoke(app, ["unseen", str(run), "--data", str(prepared), "--classes", "centre_cross"])
    assert r.exit_code == 2 and "seen in training" in r.output


def test_features_command_and_probes(trained_run, tmp_path):
    import json

    from camscope.probes.features import probe_accuracy

    # the probes on features that separate two classes perfectly, and not at all
    rng = np.random.default_rng(0)
    labels = ["a"] * 20 + ["b"] * 20
    splits = (["train"] * 15 + ["test"] * 5) * 2
    good = np.r_[rng.normal(0, 1, (20, 4)), rng.normal(8, 1, (20, 4))]
    assert probe_accuracy(good, labels, splits, {"a", "b"})["linear_probe_accuracy"] == 1.0
    same = rng.normal(0, 1, (40, 4))
    assert probe_accuracy(same, labels, splits, {"a", "b"})["knn5_accuracy"] < 0.9

    ds, prepared = trained_run.dataset, trained_run.prepared
    run = trained_run.copy(tmp_path / "run")
    r = runner.invoke(app, ["features", str(run), "--data", str(prepared), "--projection", "pca,tsne"])
    assert r.exit_code == 0, r.output
    out = run / "probes" / "features"
    feats = np.load(out / "features.npy")
    assert feats.shape == (len(ds), 128)
    res = json.loads((out / "features.json").read_text())
    assert res["projections"] == ["pca", "tsne"] and "linear_probe_accuracy" in res["probes"]
    rows = (out / "features.csv").read_text().splitlines()
    assert len(rows) == len(ds) + 1 and any(r.endswith(",0") for r in rows[1:])  # the unseen class is kept
    assert (out / "projections.png").is_file()
