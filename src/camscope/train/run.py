"""Training from files: a prepared dataset and a split in, a run folder out."""

from __future__ import annotations

from pathlib import Path

from camscope.data.prepare import load_prepared
from camscope.data.splits import SplitConfig, load_split, make_split, write_split
from camscope.train.config import TrainConfig
from camscope.train.trainer import TrainResult, select_data, train


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
    if split_path is None and not (run / "split.csv").is_file():
        result = make_split(ds, SplitConfig(seed=cfg.seed))
        write_split(result, run)
        if notes is not None:
            notes.append(
                f"no split given: made one with default fractions 0.7/0.15/0.15 and seed {cfg.seed} in "
                f"{run / 'split.csv'} (without an audit, near-duplicates were not kept together)"
            )
    split = load_split(split_path or run)
    data = select_data(ds, split, cfg.channels)
    data.dataset_path = str(prepared)  # made absolute in the checkpoint
    return train(cfg, data, run, resume=resume)
