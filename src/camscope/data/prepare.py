"""Prepared datasets: every image decoded once into a uint8 tensor file.

The file is safetensors (no pickle, memory-mapped on load): ``images`` (N x C x H x W uint8),
``labels`` (N int64), optionally ``masks`` (N x 1 x H x W uint8 evidence regions, synthetic
coins). Its header holds the metadata as JSON: class names, ids, the source keys and file hashes
of each item, given splits, the preprocessing, and the items left out with their reason.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from camscope import __version__
from camscope.data.imageio import ImageProblem, decode, fit
from camscope.data.parallel import parallel_map, worker_source
from camscope.data.sources import Source
from camscope.errors import CamscopeError
from camscope.utils import atomic_write_bytes

SCHEMA = "camscope.prepared/1"


@dataclass
class PrepareConfig:
    size: int = 64  # side of each (square) side image, in pixels
    policy: str = "pad"  # pad | crop | stretch
    channels: int = 3  # 3 (RGB) or 1 (grayscale)
    combine: str = "side_by_side"  # two-sided objects: side_by_side | channels
    keep_unlabelled: bool = False
    workers: int = 0
    chunk: int = 128

    def validate(self) -> None:
        if self.size < 8 or self.size > 4096:
            raise CamscopeError(f"size {self.size} is out of range", "use a size between 8 and 4096 pixels")
        if self.policy not in ("pad", "crop", "stretch"):
            raise CamscopeError(f"unknown resize policy {self.policy!r}", "use pad, crop or stretch")
        if self.channels not in (1, 3):
            raise CamscopeError(f"channels must be 1 or 3, not {self.channels}")
        if self.combine not in ("side_by_side", "channels"):
            raise CamscopeError(f"unknown combine mode {self.combine!r}", "use side_by_side or channels")


@dataclass
class PreparedDataset:
    images: torch.Tensor  # uint8 N x C x H x W
    labels: torch.Tensor  # int64 N
    classes: list[str]
    ids: list[str]
    info: dict = field(default_factory=dict)
    masks: torch.Tensor | None = None  # uint8 N x 1 x H x W

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def given_splits(self) -> list[str | None]:
        return self.info.get("given_splits") or [None] * len(self)

    @property
    def side_keys(self) -> list[list[str | None]]:
        return self.info["side_keys"]

    def class_counts(self) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(self.classes)).tolist()
        return dict(zip(self.classes, counts, strict=True))

    def subset(self, index: list[int] | torch.Tensor) -> PreparedDataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        info = dict(self.info)
        for key in ("side_keys", "file_hashes", "given_splits", "meta"):
            if info.get(key) is not None:
                info[key] = [info[key][i] for i in pick]
        return PreparedDataset(
            self.images[idx],
            self.labels[idx],
            self.classes,
            [self.ids[i] for i in pick],
            info,
            None if self.masks is None else self.masks[idx],
        )


def _to_array(img: Image.Image, channels: int) -> np.ndarray:
    img = img.convert("L" if channels == 1 else "RGB")
    arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _combine(parts: list[np.ndarray], mode: str) -> np.ndarray:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts, axis=2 if mode == "side_by_side" else 0)


def prepare_encoded(blobs: list[bytes], spec: dict, max_pixels: int | None = None) -> np.ndarray:
    """Encoded image bytes (one per side) -> a uint8 C x H x W array prepared as ``spec`` says
    (size, policy, channels, combine: a run's record of how its dataset was prepared)."""
    parts = []
    for data in blobs:
        kw = {} if max_pixels is None else {"max_pixels": max_pixels}
        img = decode(data, draft=(spec["size"] * 2, spec["size"] * 2), **kw)
        parts.append(_to_array(fit(img, spec["size"], spec["policy"]), spec["channels"]))
    return _combine(parts, spec.get("combine", "side_by_side"))


_CONFIG: PrepareConfig | None = None


def _prepare_chunk(jobs: list) -> list:
    """jobs: (index, [side keys]) -> (index, array | None, reason | None, [digests], mask | None)."""
    source, cfg = worker_source(), _CONFIG
    assert cfg is not None
    out = []
    for index, keys in jobs:
        parts, digests, masks, reason = [], [], [], None
        for key in keys:
            if key is None:
                reason = "missing_side: a side has no file"
                break
            try:
                raw = source.fetch(key)
                digests.append(
                    hashlib.blake2b(
                        raw if isinstance(raw, bytes) else raw.tobytes(), digest_size=16
                    ).hexdigest()
                )
                img = source.load(key, draft=(cfg.size * 2, cfg.size * 2))
            except ImageProblem as e:
                reason = f"{e.kind}: {e.detail}"
                break
            except (OSError, KeyError) as e:
                reason = f"missing_file: {e}"
                break
            parts.append(_to_array(fit(img, cfg.size, cfg.policy), cfg.channels))
            src_masks = getattr(source, "masks", None)
            if src_masks is not None and key in src_masks:
                m = Image.fromarray(src_masks[key].astype(np.uint8) * 255)
                masks.append((np.asarray(fit(m, cfg.size, cfg.policy).convert("L")) > 127)[None])
        if reason is not None:
            out.append((index, None, reason, digests, None))
            continue
        mask = (
            _combine(masks, "side_by_side")[:1]
            if masks and cfg.combine == "side_by_side"
            else (np.any(np.stack(masks), axis=0) if masks else None)
        )
        out.append((index, _combine(parts, cfg.combine), None, digests, mask))
    return out


def prepare(
    source: Source, config: PrepareConfig | None = None, exclude: dict[str, str] | None = None
) -> PreparedDataset:
    """Decode ``source`` into a PreparedDataset. ``exclude`` maps item ids to a reason to leave them out."""
    global _CONFIG
    config = config or PrepareConfig()
    config.validate()
    t0 = time.perf_counter()
    exclude = dict(exclude or {})
    excluded: list[dict] = []
    jobs = []
    for i, item in enumerate(source.items):
        if item.id in exclude:
            excluded.append({"id": item.id, "reason": exclude[item.id]})
        elif item.label is None and not config.keep_unlabelled:
            excluded.append({"id": item.id, "reason": "missing_label: no label"})
        else:
            jobs.append((i, [s.key for s in item.sides]))
    results: dict[int, tuple] = {}
    _CONFIG = config
    try:
        for batch in parallel_map(
            source, _prepare_chunk, jobs, config.workers, config.chunk, "preparing images"
        ):
            for index, arr, reason, digests, mask in batch:
                results[index] = (arr, reason, digests, mask)
    finally:
        _CONFIG = None
    kept = [i for i, _ in jobs if results[i][0] is not None]
    for i, _ in jobs:
        if results[i][0] is None:
            excluded.append({"id": source.items[i].id, "reason": results[i][1]})
    if not kept:
        raise CamscopeError(
            "no item could be prepared", "run `camscope audit` to see what is wrong with the data"
        )
    classes = sorted({source.items[i].label for i in kept if source.items[i].label is not None})
    cidx = {c: k for k, c in enumerate(classes)}
    images = torch.from_numpy(np.stack([results[i][0] for i in kept]))
    labels = torch.tensor([cidx.get(source.items[i].label, -1) for i in kept], dtype=torch.long)
    masks = None
    if all(results[i][3] is not None for i in kept):
        masks = torch.from_numpy(np.stack([results[i][3] for i in kept]).astype(np.uint8))
    items = [source.items[i] for i in kept]
    given = [it.split for it in items]
    metas = [it.meta for it in items]
    info = {
        "schema": SCHEMA,
        "camscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": {
            "kind": source.kind,
            "description": source.description,
            "side_names": list(source.side_names),
            "items_digest": source.items_digest(),
        },
        "preprocessing": {
            **asdict(config),
            "sides": len(source.side_names),
            "layout": "NCHW uint8",
            "exif_transposed": True,
            "transparency": "composited on white",
        },
        "side_keys": [[s.display if s.key else None for s in it.sides] for it in items],
        "file_hashes": [results[i][2] for i in kept],
        "given_splits": given if any(g is not None for g in given) else None,
        "meta": metas if any(metas) else None,
        "excluded": excluded,
        "timing_s": round(time.perf_counter() - t0, 2),
    }
    ds = PreparedDataset(images, labels, classes, [it.id for it in items], info, masks)
    ds.info["dataset_hash"] = dataset_hash(ds)
    return ds


def dataset_hash(ds: PreparedDataset) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(ds.images.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    h.update(json.dumps([ds.classes, ds.ids]).encode())
    return h.hexdigest()


def save_prepared(ds: PreparedDataset, path: str | Path) -> Path:
    path = Path(path)
    tensors = {"images": ds.images.contiguous(), "labels": ds.labels.contiguous()}
    if ds.masks is not None:
        tensors["masks"] = ds.masks.contiguous()
    header = {"classes": ds.classes, "ids": ds.ids, **ds.info}
    data = save(tensors, metadata={"camscope": json.dumps(header, ensure_ascii=False)})
    atomic_write_bytes(path, data)
    return path


def load_prepared(path: str | Path) -> PreparedDataset:
    path = Path(path)
    if path.is_dir():
        path = path / "prepared.safetensors"
    if not path.is_file():
        raise CamscopeError(
            f"no prepared dataset at {path}", "run `camscope prepare SOURCE --out FILE` first"
        )
    try:
        tensors = load_file(path)
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CamscopeError(
            f"{path} is not a readable prepared dataset ({e})",
            "it may be truncated; run `camscope prepare` again",
        ) from None
    try:
        header = json.loads(meta["camscope"])
        classes, ids = header.pop("classes"), header.pop("ids")
        images, labels = tensors["images"], tensors["labels"]
    except (KeyError, json.JSONDecodeError) as e:
        raise CamscopeError(
            f"{path} lacks camscope metadata ({e})",
            "it was not written by `camscope prepare`; prepare it again",
        ) from None
    if header.get("schema") != SCHEMA:
        raise CamscopeError(
            f"{path} has schema {header.get('schema')!r}, expected {SCHEMA}",
            "prepare it again with this version of camscope",
        )
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(ids) or len(labels) != len(ids):
        raise CamscopeError(
            f"{path} is inconsistent: {tuple(images.shape)} images for {len(ids)} ids",
            "prepare it again",
        )
    return PreparedDataset(images, labels, classes, ids, header, tensors.get("masks"))
