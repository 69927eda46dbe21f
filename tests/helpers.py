"""The one helpers module of the tests: generated images, a small prepared synthetic-coins
dataset, quick CLI training, studies and commands in a subprocess. Fixtures live in conftest.py."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from camscope.cli import app

runner = CliRunner()
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# the CLI in a subprocess (crash, lock and concurrency tests)
CLI = [sys.executable, "-m", "camscope.cli"]
ENV = {**os.environ, "CAMSCOPE_PROGRESS": "0", "OMP_NUM_THREADS": "1"}

# how the CLI reads the synthetic coins written by camscope.data.messy
COIN_OPTS = [
    "--pattern",
    "images/heads{row:05d}.jpg",
    "--pattern",
    "images/tails{row:05d}.jpg",
    "--label-from",
    "Obverse",
    "--label-regex",
    r"Coin of (\w+)",
]

# a small study: synthetic coins, two candidates, every analysis (seconds, not minutes)
TINY = {
    "name": "tiny",
    "seed": 0,
    "source": {"kind": "synthetic", "n": 160, "size": 32},
    "prepare": {"size": 24},
    "experiments": [
        {
            "name": "top3",
            "classes": {"top_k": 3},
            "train": {"model": "gray_cnn", "epochs": 2, "batch_size": 32, "lr": 0.003, "flip": "none"},
            "search": {"method": "grid", "params": {"lr": [0.0003, 0.003]}},
            "analyses": ["evaluate", "explain", "faithfulness", "mask", "unseen", "features"],
            "explain": {"methods": ["gradcam"], "per_class": 2, "faithfulness_images": 16},
            "mask": {"sizes": [0.3, 0.6], "cam_images": 8},
            "features": {"projections": ["pca"]},
            "bootstrap": 50,
        }
    ],
}


def jpeg_bytes(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def icon_bytes(frames: list[bytes]) -> bytes:
    """An ICO file holding these images (PNG or BMP-in-ICO bytes), each listed as 0x0 (=256)."""
    head = b"\x00\x00\x01\x00" + len(frames).to_bytes(2, "little")
    offset, entries, body = 6 + 16 * len(frames), b"", b""
    for f in frames:
        entries += bytes([0, 0, 0, 0]) + (1).to_bytes(2, "little") + (32).to_bytes(2, "little")
        entries += len(f).to_bytes(4, "little") + (offset + len(body)).to_bytes(4, "little")
        body += f
    return head + entries + body


def random_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A smooth random colour image with structure (not white noise)."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


def requires_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/data on development machines)")
    return path


def synthetic_prepared(path: Path, n: int = 60, seed: int = 0, **prepare_options):
    """(PreparedDataset, its file) of ``n`` 16-px two-sided synthetic coins."""
    from camscope.data.prepare import PrepareConfig, prepare, save_prepared
    from camscope.data.synthetic import CoinSpec, SyntheticSource

    ds = prepare(
        SyntheticSource(CoinSpec(n=n, size=16, seed=seed)), PrepareConfig(size=16, **prepare_options)
    )
    return ds, save_prepared(ds, path)


def cli_train(prepared: Path, run: Path, model: str = "gray_cnn", epochs: int = 1, *extra: str):
    """`camscope train` with small settings; fails the test when it does not exit 0."""
    args = [
        "train",
        str(prepared),
        "--out",
        str(run),
        "--model",
        model,
        "--epochs",
        str(epochs),
        "--batch-size",
        "16",
        "--flip",
        "none",
        *extra,
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    return r


def copy_run(src: Path, dst: Path) -> Path:
    """A private copy of a run folder (it still records the same prepared dataset)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".camscope.lock"))
    return dst


def write_study(folder: Path, raw: dict, name: str = "study.yaml") -> Path:
    p = folder / name
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def run_cli(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def dead_pid() -> int:
    """The id of a process that has ended."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
