"""Shared steps of the CLI tests: a small prepared synthetic-coins dataset and a quick training run."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from camscope.cli import app

runner = CliRunner()

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
