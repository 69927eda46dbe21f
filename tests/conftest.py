"""Fixtures shared by the test modules; helpers are in tests/helpers.py."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("CAMSCOPE_PROGRESS", "0")

from camscope.cli import app  # noqa: E402 - the environment first
from tests.helpers import (  # noqa: E402
    cli_train,
    copy_run,
    jpeg_bytes,
    random_image,
    runner,
    synthetic_prepared,
)


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """root/<class>/*.jpg with three classes of distinct random images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for c, n in (("ant", 12), ("bee", 10), ("cat", 8)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i:03d}.jpg").write_bytes(jpeg_bytes(random_image(rng)))
    return root


@pytest.fixture(scope="session")
def messy(tmp_path_factory):
    from camscope.data.messy import write_messy_coins

    out = tmp_path_factory.mktemp("messy")
    manifest, planted = write_messy_coins(out, n=200, seed=0)
    return manifest, planted


@dataclass
class TrainedRun:
    run: Path
    prepared: Path
    dataset: object  # the PreparedDataset
    unseen: str  # the class left out of training

    def copy(self, dst: Path) -> Path:
        """A copy of the run folder for a test that writes into it or breaks it."""
        return copy_run(self.run, dst)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> TrainedRun:
    """One tiny run for every test that needs a trained model but not a particular one: gray_cnn,
    2 epochs on 80 two-sided synthetic coins of 16 px, rim_ticks left out as the unseen class.
    Tests that write into a run use ``trained_run.copy(tmp_path / "run")``."""
    tmp = tmp_path_factory.mktemp("trained")
    ds, prepared = synthetic_prepared(tmp / "p.safetensors", n=80, seed=1)
    run = tmp / "run"
    classes = "centre_cross,centre_ring,rim_dots"
    r = runner.invoke(app, ["split", str(prepared), "--out", str(run), "--classes", classes])
    assert r.exit_code == 0, r.output
    cli_train(prepared, run, "gray_cnn", 2)
    return TrainedRun(run, prepared, ds, "rim_ticks")
