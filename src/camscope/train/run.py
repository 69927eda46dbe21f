"""Training from files: a prepared dataset and a split in, a run folder out."""

from __future__ import annotations

import contextlib
from pathlib import Path

from camscope.data.prepare import load_prepared
from camscope.data.splits import SplitConfig, load_split, make_split, write_split
from camscope.folders import run_folder
from camscope.train.config import TrainConfig
from camscope.train.data import select_data
from camscope.train.distributed import is_main_process
from camscope.train.trainer import TrainResult, train
from camscope.utils import atomic_write_bytes


def train_from_files(
    prepared: str | Path,
    run_dir: str | Path,
    cfg: TrainConfig,
    split_path: str | Path | None = None,
    resume: bool = False,
    notes: list[str] | None = None,
) -> TrainResult:
    """Train on ``prepared`` with the split at ``split_path`` (default: ``run_dir/split.csv``,
    made with default fractions when it does not exist; ``notes`` collects what was assumed)."""
    run = Path(run_dir)
    ds = load_prepared(prepared)
    with run_folder(run, "train") if is_main_process() else contextlib.nullcontext():
        return _train_from(ds, prepared, run, cfg, split_path, resume, notes)


def _train_from(ds, prepared, run: Path, cfg, split_path, resume, notes) -> TrainResult:
    split = None
    if split_path is None and not (run / "split.csv").is_file():
        result = make_split(ds, SplitConfig(seed=cfg.seed))
        split = {r["id"]: r["split"] for r in result.rows}  # the same on every process
        if is_main_process():
            write_split(result, run)
        if notes is not None:
            notes.append(
                f"no split given: made one with default fractions 0.7/0.15/0.15 and seed {cfg.seed} in "
                f"{run / 'split.csv'} (without an audit, near-duplicates were not kept together)"
            )
    elif split_path is not None and is_main_process():
        _keep_split(Path(split_path), run)
    data = select_data(ds, split or load_split(split_path or run), cfg.channels)
    data.dataset_path = str(prepared)  # made absolute in the checkpoint
    return train(cfg, data, run, resume=resume)


def _keep_split(path: Path, run: Path) -> None:
    """A copy of the split in the run folder: evaluate, explain and the probes read it there."""
    src = path / "split.csv" if path.is_dir() else path
    dst = run / "split.csv"
    if not src.is_file() or (dst.is_file() and dst.resolve() == src.resolve()):
        return
    atomic_write_bytes(dst, src.read_bytes())
    summary = src.with_suffix(".json")
    if summary.is_file():
        atomic_write_bytes(run / "split.json", summary.read_bytes())
