"""What a run trains on: the train and validation tensors of a prepared dataset and a split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from camscope.data.prepare import PreparedDataset, dataset_hash
from camscope.data.splits import split_digest
from camscope.errors import CamscopeError


@dataclass
class TrainData:
    """The tensors a run trains on: images already converted to the run's channels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[str]
    train_ids: list[str]
    val_ids: list[str]
    dataset_hash: str
    prepare_info: dict = field(default_factory=dict)
    # where the prepared file lies, so later commands can find it without --data
    dataset_path: str | None = None
    split_digest: str | None = None  # the split trained on: later commands refuse another one


def select_data(ds: PreparedDataset, split: dict[str, str], channels: int | None = None) -> TrainData:
    """Train and validation tensors from a prepared dataset and a split (id -> split name).

    The model's classes are those present in the training split, in the dataset's order; other
    classes (e.g. held out as 'unseen') never reach the model.
    """
    pos = {i: k for k, i in enumerate(ds.ids)}
    unknown = [i for i in split if i not in pos]
    if len(unknown) == len(split):
        raise CamscopeError(
            "none of the split's ids are in the prepared dataset",
            "make the split from this prepared file: camscope split PREPARED --out RUN",
        )
    tr = [pos[i] for i, s in split.items() if s == "train" and i in pos]
    va = [pos[i] for i, s in split.items() if s == "val" and i in pos]
    if not tr:
        raise CamscopeError("the split has no training items", "check the split fractions")
    labels = ds.labels
    present = sorted(set(labels[tr].tolist()) - {-1})
    if len(present) < 2:
        raise CamscopeError(
            f"the training split holds {len(present)} class(es)", "a classifier needs at least two classes"
        )
    remap = torch.full((len(ds.classes) + 1,), -1, dtype=torch.long)
    remap[torch.tensor(present)] = torch.arange(len(present))
    tr = [i for i in tr if labels[i] >= 0]
    va = [i for i in va if labels[i] >= 0 and remap[labels[i]] >= 0]
    tr_t, va_t = torch.tensor(tr, dtype=torch.long), torch.tensor(va, dtype=torch.long)
    return TrainData(
        ds.rows(tr_t, channels),
        remap[labels[tr_t]],
        ds.rows(va_t, channels) if va else ds.images[:0],
        remap[labels[va_t]],
        [ds.classes[c] for c in present],
        [ds.ids[i] for i in tr],
        [ds.ids[i] for i in va],
        dataset_hash(ds),
        {k: v for k, v in ds.info.items() if k in ("preprocessing", "source", "schema")},
        split_digest=split_digest(split),
    )


def dataset_file(path: str | None, run_dir: str | Path) -> dict | None:
    """The prepared file's absolute path, and its path from the run folder (found again after
    both are moved together)."""
    if path is None:
        return None
    p = Path(path).resolve()
    try:
        rel = os.path.relpath(p, Path(run_dir).resolve())
    except ValueError:  # another drive on Windows
        rel = None
    return {"path": str(p), "from_run": rel}
