"""Training engine: models, augmentation, schedules, checkpoints, resume, NaN stop, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from camscope.data.channels import to_channels
from camscope.errors import CamscopeError
from camscope.models import build_model, registered
from camscope.models.checkpoint import load_checkpoint, save_checkpoint
from camscope.train import augment
from camscope.train.config import make_config
from camscope.train.data import TrainData, select_data
from camscope.train.schedules import lr_multiplier
from camscope.train.trainer import NonFiniteLoss, train
from tests.helpers import synthetic_prepared

REPO = Path(__file__).resolve().parents[1]


def toy_data(n: int = 96, size: int = 16, channels: int = 3, k: int = 3, seed: int = 0) -> TrainData:
    """Images whose class sets the brightness of one quadrant: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = torch.randint(0, 120, (n, channels, size, size), generator=g, dtype=torch.uint8)
    half = size // 2
    for c in range(k):
        r, q = divmod(c, 2)
        x[y == c, :, r * half : (r + 1) * half, q * half : (q + 1) * half] += 120
    nv = n // 4
    return TrainData(
        x[nv:],
        y[nv:],
        x[:nv],
        y[:nv],
        [f"c{i}" for i in range(k)],
        [f"t{i}" for i in range(n - nv)],
        [f"v{i}" for i in range(nv)],
        "hash0",
    )


# --- models -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gray_cnn", "deep_cnn", "resnet18", "fastnet"])
@pytest.mark.parametrize("channels", [1, 3])
def test_registered_models_forward_backward(name, channels):
    model = build_model(name, num_classes=4, in_channels=channels, image_size=(32, 32))
    x = torch.randn(2, channels, 32, 32)
    out = model(x)
    assert out.shape == (2, 4)
    out.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert model.camscope_cam_layer in dict(model.named_modules())
    assert model.camscope_head in dict(model.named_modules())


def test_resnet18_stem_follows_input_size():
    small = build_model("resnet18", 5, 3, (32, 32))
    large = build_model("resnet18", 5, 1, (160, 160))
    assert small.conv1.kernel_size == (3, 3) and not hasattr(small, "maxpool")
    assert large.conv1.kernel_size == (7, 7) and large.conv1.in_channels == 1
    assert large(torch.randn(1, 1, 160, 160)).shape == (1, 5)


def test_fastnet_whitening_decorrelates_patches():
    model = build_model("fastnet", 10, 3, (32, 32))
    x = torch.randn(64, 3, 16, 16) * torch.tensor([1.0, 3.0, 0.2])[None, :, None, None]
    x[:, 1] += 0.8 * x[:, 0]  # correlated channels
    model.init_from_data(x, eps=0)
    out = model.whiten(x)[:, :12] - model.whiten.bias[:12, None, None]
    flat = out.permute(1, 0, 2, 3).reshape(12, -1)
    cov = torch.cov(flat)
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert bool(model.whitened)


def test_torchvision_model_with_local_weights(tmp_path):
    import torchvision
    from safetensors.torch import save_file

    ref = torchvision.models.mobilenet_v3_small(weights=None)
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save(ref.state_dict(), tmp_path / "w.pth")
    for f in ("w.safetensors", "w.pth"):
        m = build_model("mobilenet_v3_small", 3, 1, (64, 64), weights=str(tmp_path / f))
        first = m.features[0][0]
        assert first.in_channels == 1
        assert torch.allclose(first.weight[:, 0], ref.features[0][0].weight.sum(1))
        assert torch.equal(m.features[3].block[0][0].weight, ref.features[3].block[0][0].weight)
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3)
        assert m.camscope_cam_layer == "features"
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(CamscopeError, match="does not fit"):
        build_model("mobilenet_v3_small", 3, 3, weights=str(tmp_path / "bad.pth"))
    with pytest.raises(CamscopeError, match="unknown model"):
        build_model("resnet_nonexistent", 3)


def test_head_only_finetuning_leaves_the_body_unchanged(tmp_path):
    data = toy_data(size=32)
    model = build_model("resnet18_tv", 3, 3, (32, 32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = make_config(
        "resnet18_tv", epochs=2, batch_size=24, lr=0.01, finetune="head", translate=0, flip="none"
    )
    res = train(cfg, data, tmp_path / "run", model=model)
    after = res.model.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    for k in ("conv1.weight", "layer4.1.conv2.weight", "bn1.running_mean", "layer2.0.bn1.running_var"):
        assert torch.equal(after[k], before[k]), k


# --- augmentation -----------------------------------------------------------------------------


def test_translate_identity_and_reflection():
    x = torch.arange(2 * 1 * 5 * 6, dtype=torch.float32).reshape(2, 1, 5, 6)
    pad = 2
    same = augment.translate(x, pad, torch.tensor([pad, pad]), torch.tensor([pad, pad]))
    assert torch.equal(same, x)
    moved = augment.translate(x, pad, torch.tensor([pad, 0]), torch.tensor([pad + 1, pad]))
    assert torch.equal(moved[0, 0, :, :-1], x[0, 0, :, 1:])  # shifted left by one
    assert torch.equal(moved[0, 0, :, -1], x[0, 0, :, -2])  # reflected border
    assert torch.equal(moved[1, 0, 2:], x[1, 0, :3])  # shifted down by two
    assert torch.equal(moved[1, 0, 0], x[1, 0, 2]) and torch.equal(moved[1, 0, 1], x[1, 0, 1])


def test_flip_cutout_and_alternation():
    x = torch.rand(4, 3, 8, 8)
    mask = torch.tensor([True, False, True, False])
    assert torch.equal(augment.flip(augment.flip(x, mask), mask), x)
    assert torch.equal(augment.flip(x, mask)[0], x[0].flip(-1))
    idx = torch.arange(1000)
    a0, a1 = augment.alternating_flip_mask(idx, 0, 0), augment.alternating_flip_mask(idx, 1, 0)
    assert torch.equal(a0, ~a1) and 0.4 < a0.float().mean() < 0.6
    ones = torch.ones(2, 1, 10, 10)
    cut = augment.cutout(ones, 4, torch.tensor([5, 0]), torch.tensor([5, 0]))
    assert cut[0].sum() == 100 - 16 and cut[1].sum() == 100 - 4  # clipped at the corner


def test_draw_is_reproducible_and_sliceable():
    aug = augment.Augment(translate=2, flip="random", cutout=3, mask_prob=0.5)

    def d():
        g = torch.Generator().manual_seed(3)
        return aug.draw(torch.arange(10), (8, 8), 0, g, 0)

    a, b = d(), d()
    assert all(torch.equal(u, v) for u, v in zip(vars(a).values(), vars(b).values(), strict=True))
    assert torch.equal(a.take(slice(0, 3)).mask_size, a.mask_size[:3])
    part = a.take(slice(1, None, 2))
    assert torch.equal(part.dx, a.dx[1::2])
    x = torch.rand(10, 3, 8, 8)
    full = aug.apply(x, a)
    assert torch.equal(aug.apply(x[1::2], part), full[1::2])


# --- schedules --------------------------------------------------------------------------------


def test_schedule_shapes():
    tri = [lr_multiplier("triangle", s, 100, start=0.2, peak=0.25, end=0.1) for s in range(101)]
    assert tri[0] == pytest.approx(0.2) and tri[25] == pytest.approx(1.0) and tri[100] == pytest.approx(0.1)
    assert all(a <= b for a, b in zip(tri[:25], tri[1:26], strict=True))
    assert all(a >= b for a, b in zip(tri[25:-1], tri[26:], strict=True))
    one = [lr_multiplier("onecycle", s, 200) for s in range(201)]
    assert max(one) == pytest.approx(1.0) and one.index(max(one)) == 50 and one[-1] < 1e-3
    cos = [lr_multiplier("cosine", s, 100, warmup=10) for s in range(101)]
    assert cos[0] == pytest.approx(0.1) and cos[10] == pytest.approx(1.0) and cos[100] == pytest.approx(0.0)
    assert cos[55] == pytest.approx(0.5, abs=1e-9)
    assert lr_multiplier("constant", 50, 100, warmup=10) == 1.0
    with pytest.raises(ValueError):
        lr_multiplier("zigzag", 1, 10)


# --- the loop ---------------------------------------------------------------------------------


def test_training_learns_and_writes_its_run_folder(tmp_path):
    cfg = make_config("gray_cnn", epochs=8, batch_size=24, lr=3e-3, translate=1, flip="none", seed=1)
    res = train(cfg, toy_data(channels=1), tmp_path / "run")
    assert res.history[-1]["val_acc"] >= 0.9
    run = tmp_path / "run"
    for f in (
        "best.safetensors",
        "best.json",
        "last.safetensors",
        "last.json",
        "metrics.jsonl",
        "metrics.csv",
        "learning_curve.png",
    ):
        assert (run / f).is_file(), f
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 8 and json.loads(lines[-1])["epoch"] == 8
    meta = json.loads((run / "best.json").read_text())
    assert meta["classes"] == ["c0", "c1", "c2"] and meta["model"]["name"] == "gray_cnn"
    assert meta["dataset_hash"] == "hash0" and len(meta["preprocess"]["mean"]) == 1
    ck = load_checkpoint(run)
    m = build_model("gray_cnn", 3, 1)
    m.load_state_dict(ck.model)


def test_same_seed_same_weights(tmp_path):
    cfg = make_config(
        "deep_cnn",
        epochs=2,
        batch_size=16,
        translate=2,
        flip="random",
        cutout=4,
        model_args={"widths": [8, 8, 16, 16]},
    )
    a = train(cfg, toy_data(), tmp_path / "a").model.state_dict()
    b = train(cfg, toy_data(), tmp_path / "b").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_restores_the_best_weights(tmp_path):
    # a learning rate this small changes nothing measurable: no epoch improves on the first
    cfg = make_config("gray_cnn", epochs=20, batch_size=24, lr=1e-12, patience=2, schedule="constant")
    res = train(cfg, toy_data(channels=1), tmp_path / "run")
    assert res.stopped_early and len(res.history) == 3 and res.best["epoch"] == 1
    best = load_checkpoint(tmp_path / "run" / "best.safetensors")
    assert all(torch.equal(res.model.state_dict()[k], v) for k, v in best.model.items())


class _Explodes(nn.Module):
    """A tiny model whose output turns to NaN from the ``at``-th forward pass in training on."""

    def __init__(self, at: int):
        super().__init__()
        self.lin = nn.Linear(3 * 16 * 16, 3)
        self.calls, self.at = 0, at
        self.camscope_head = "lin"

    def forward(self, x):
        if self.training:
            self.calls += 1
        out = self.lin(x.flatten(1))
        return out * float("nan") if self.training and self.calls >= self.at else out


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    data = toy_data()
    cfg = make_config("gray_cnn", epochs=5, batch_size=24, lr=1e-2, checkpoint_every_s=1e9)
    with pytest.raises(NonFiniteLoss, match="epoch 2, step 2"):
        train(cfg, data, tmp_path / "run", model=_Explodes(at=5))  # 3 steps per epoch
    ck = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert ck.meta["position"] == {**ck.meta["position"], "epoch": 1, "step_in_epoch": 0}
    assert all(torch.isfinite(v).all() for v in ck.model.values())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    m = nn.Linear(2, 2)
    save_checkpoint(tmp_path, "last", m, {"n": 1})
    good = (tmp_path / "last.safetensors").read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with torch.no_grad():
        m.weight.add_(1)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, "last", m, {"n": 2})
    assert (tmp_path / "last.safetensors").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.json", "last.safetensors"]
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.safetensors").meta["n"] == 1


def test_channels_conversion_and_selection():
    rgb = torch.tensor([[[[255]], [[0]], [[0]]]], dtype=torch.uint8)
    assert to_channels(rgb, 1).item() == round(0.299 * 255)
    assert to_channels(to_channels(rgb, 1), 3).shape == (1, 3, 1, 1)
    from camscope.data.prepare import PreparedDataset

    ds = PreparedDataset(
        torch.zeros(6, 3, 4, 4, dtype=torch.uint8),
        torch.tensor([0, 1, 2, 0, 1, 2]),
        ["a", "b", "c"],
        [f"i{k}" for k in range(6)],
        {"dataset_hash": "h"},
    )
    split = {"i0": "train", "i1": "train", "i3": "val", "i4": "test", "i2": "unseen", "i5": "unseen"}
    d = select_data(ds, split)
    assert d.classes == ["a", "b"] and d.train_y.tolist() == [0, 1] and d.val_y.tolist() == [0]
    with pytest.raises(CamscopeError, match="none of the split"):
        select_data(ds, {"zzz": "train"})


def test_registry_lists_the_four_models():
    assert {"gray_cnn", "deep_cnn", "resnet18", "fastnet"} <= set(registered())
    with pytest.raises(CamscopeError, match="bad training options"):
        make_config("fastnet", lr=-1)


# --- resume after SIGKILL and distributed training (subprocesses, like real use) ----------------


def _prepared_dataset(tmp_path: Path) -> tuple[Path, Path]:
    from camscope.data.splits import SplitConfig, make_split, write_split

    ds, path = synthetic_prepared(tmp_path / "coins.safetensors", n=120)
    csv, _ = write_split(make_split(ds, SplitConfig(seed=0)), tmp_path / "splitdir")
    return path, csv


def _cli(*args: str, env_extra: dict | None = None, launcher: list[str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "CAMSCOPE_PROGRESS": "0", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [*(launcher or [sys.executable, "-m"]), "camscope.cli", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(run: Path, tag: str = "last") -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(run / f"{tag}.safetensors")).items() if k.startswith("model.")}


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
    prepared, split = _prepared_dataset(tmp_path)
    common = [
        "--split",
        str(split),
        "--model",
        "deep_cnn",
        "--model-arg",
        "widths=[8,16,16,32]",
        "--epochs",
        "4",
        "--batch-size",
        "8",
        "--checkpoint-every-steps",
        "1",
        "--seed",
        "3",
    ]
    ref = _cli(str(prepared), "--out", str(tmp_path / "ref"), *common)
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out
    run = tmp_path / "killed"
    proc = _cli(str(prepared), "--out", str(run), *common)
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        meta = run / "last.json"
        if meta.is_file():
            try:
                pos = json.loads(meta.read_text())["position"]
            except (json.JSONDecodeError, KeyError):
                pos = None
            if pos and pos["epoch"] >= 1 and pos["step_in_epoch"] > 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = pos
                break
        time.sleep(0.005)
    proc.wait()
    assert killed_at is not None, "the run ended before it could be killed mid-epoch"
    assert proc.returncode == -signal.SIGKILL
    resumed = _cli(str(prepared), "--out", str(run), *common, "--resume")
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out
    a, b = _weights(tmp_path / "ref"), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ref_rows = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    new_rows = (run / "metrics.jsonl").read_text().splitlines()
    assert len(ref_rows) == len(new_rows) == 4
    drop = ("epoch_s", "images_per_s", "elapsed_s")
    assert [{k: v for k, v in json.loads(r).items() if k not in drop} for r in ref_rows] == [
        {k: v for k, v in json.loads(r).items() if k not in drop} for r in new_rows
    ]


def test_torchrun_two_processes_agree_with_one(tmp_path):
    prepared, split = _prepared_dataset(tmp_path)
    common = [
        "--split",
        str(split),
        "--model",
        "gray_cnn",
        "--model-arg",
        "dropout=0",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "0.01",
        "--flip",
        "random",
        "--translate",
        "2",
        "--seed",
        "5",
    ]
    one = _cli(str(prepared), "--out", str(tmp_path / "one"), *common)
    out1, _ = one.communicate(timeout=300)
    assert one.returncode == 0, out1
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(29500 + os.getpid() % 1000),
        "-m",
    ]
    two = _cli(str(prepared), "--out", str(tmp_path / "two"), *common, launcher=launcher)
    out2, _ = two.communicate(timeout=300)
    assert two.returncode == 0, out2
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    meta = json.loads((tmp_path / "two" / "last.json").read_text())
    assert meta["world_size"] == 2
    h1 = [json.loads(r) for r in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    h2 = [json.loads(r) for r in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_acc"] for r in h1] == [r["val_acc"] for r in h2]
    assert all(
        math.isclose(r1["train_loss"], r2["train_loss"], rel_tol=1e-4) for r1, r2 in zip(h1, h2, strict=True)
    )


def test_time_budget_stops_training(tmp_path):
    cfg = make_config("gray_cnn", epochs=500, batch_size=8, max_train_s=0.5, checkpoint_every_s=1e9)
    t = time.perf_counter()
    res = train(cfg, toy_data(channels=1), tmp_path / "run")
    assert time.perf_counter() - t < 30
    assert len(res.history) < 500 and res.history[-1]["epoch"] == len(res.history)
    assert (tmp_path / "run" / "best.safetensors").is_file()


def test_tensorboard_and_mlflow_logging(tmp_path, monkeypatch):
    import mlflow  # a test dependency (mlflow-skinny): a real file store in a temp folder, no server

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    cfg = make_config("gray_cnn", epochs=2, batch_size=24, tensorboard=True, mlflow_uri=uri)
    train(cfg, toy_data(channels=1), tmp_path / "run")
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1 and runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    assert runs[0].data.params["model"] == "gray_cnn" and runs[0].data.params["epochs"] == "2.0"
    history = client.get_metric_history(runs[0].info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    saved = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m.value for m in history] == pytest.approx([r["val_acc"] for r in saved])
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    # a store MLflow refuses is one clear error, not a traceback
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "false")
    bad = make_config("gray_cnn", epochs=1, batch_size=24, mlflow_uri=(tmp_path / "other").as_uri())
    with pytest.raises(CamscopeError, match="MLflow cannot log to"):
        train(bad, toy_data(channels=1), tmp_path / "run2")


def test_missing_logging_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import fails
    cfg = make_config("gray_cnn", epochs=1, batch_size=24, mlflow_uri="http://localhost:5000")
    with pytest.raises(CamscopeError, match="pip install mlflow"):
        train(cfg, toy_data(channels=1), tmp_path / "run")


def test_progressive_resizing_trains_small_then_full(tmp_path, monkeypatch):
    from camscope.train import trainer as tr

    seen = []
    model = build_model("gray_cnn", 3, 1, (16, 16))
    original = model.forward
    monkeypatch.setattr(
        model, "forward", lambda x: (seen.append((model.training, tuple(x.shape[-2:]))), original(x))[1]
    )
    cfg = make_config("gray_cnn", epochs=4, batch_size=24, resize_schedule=[[0.5, 8]], translate=0)
    tr.train(cfg, toy_data(channels=1), tmp_path / "run", model=model)
    train_shapes = [shape for training, shape in seen if training]  # 3 steps per epoch, 12 in all
    assert train_shapes == [(8, 8)] * 6 + [(16, 16)] * 6
    assert all(shape == (16, 16) for training, shape in seen if not training)  # validation at full size
    assert tr._train_side(cfg, 5, 12) == 8 and tr._train_side(cfg, 6, 12) is None
