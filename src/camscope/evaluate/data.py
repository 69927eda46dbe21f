"""The tensors of one split of a run's prepared dataset, in the run's classes and channels."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from camscope.data.prepare import dataset_hash, load_prepared
from camscope.data.splits import load_split
from camscope.errors import CamscopeError
from camscope.train.checkpoint import checkpoint_file, read_meta
from camscope.train.trainer import to_channels


def prepared_for_run(run: str | Path, data: str | Path | None) -> Path:
    """The prepared dataset for a run: ``data`` when given, else the file its checkpoint records.

    The recorded absolute path is tried first, then the path from the run folder (a project moved
    as a whole). Either way the dataset hash is checked when the tensors are read.
    """
    if data is not None:
        return Path(data)
    ck = checkpoint_file(run)
    recorded = read_meta(ck).get("dataset_file") or {}
    candidates = [Path(recorded["path"])] if recorded.get("path") else []
    if recorded.get("from_run"):
        candidates.append(ck.parent / recorded["from_run"])
    for c in candidates:
        if c.is_file():
            return c
    if not candidates:
        raise CamscopeError(
            f"{ck} does not record its prepared dataset (trained before camscope recorded it)",
            "pass --data PREPARED, the file the run was trained on",
        )
    raise CamscopeError(
        f"the run was trained on {candidates[0]}, which is no longer there",
        "pass --data PREPARED (the same dataset; its hash is checked)",
    )


def split_tensors(meta: dict, prepared, run_dir: Path, split: str):
    """(uint8 images, model-class labels, ids) of ``split`` in the run's classes and channels."""
    ds = load_prepared(prepared)
    if meta.get("dataset_hash") and dataset_hash(ds) != meta["dataset_hash"]:
        raise CamscopeError(
            f"{prepared} is not the prepared dataset the run was trained on",
            "pass the prepared file used for training (its hash is in the checkpoint's JSON)",
        )
    assignment = load_split(run_dir)
    classes = meta["classes"]
    idx_of = {c: k for k, c in enumerate(classes)}
    pos = {i: k for k, i in enumerate(ds.ids)}
    rows = [
        (pos[i], idx_of[ds.classes[int(ds.labels[pos[i]])]])
        for i, s in assignment.items()
        if s == split
        and i in pos
        and int(ds.labels[pos[i]]) >= 0
        and ds.classes[int(ds.labels[pos[i]])] in idx_of
    ]
    if not rows:
        raise CamscopeError(
            f"the split has no {split!r} items of the model's classes", "pick another --split"
        )
    index = torch.tensor([r[0] for r in rows])
    images = to_channels(ds.images[index], meta["preprocess"]["channels"])
    return images, torch.tensor([r[1] for r in rows]), [ds.ids[int(i)] for i in index]


def leak_flags(run_dir: Path, ids: list[str]) -> torch.Tensor:
    """(N,) bool: the split marks the item as having a (near-)duplicate in training."""
    path = Path(run_dir) / "split.csv"
    flags: dict[str, bool] = {}
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                flags[row["id"]] = row.get("dup_in_train") in ("1", "True", "true")
    return torch.tensor([flags.get(i, False) for i in ids])
