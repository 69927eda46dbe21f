"""Prepared datasets: every image decoded once into a uint8 tensor file.

The file is safetensors (no pickle, memory-mapped on load): ``images`` (N x C x H x W uint8),
``labels`` (N int64), optionally ``masks`` (N x 1 x H x W uint8 evidence regions, synthetic
coins). Its header holds the metadata as JSON: class names, ids, the source keys and file hashes
of each item, given splits, the preprocessing, and the items left out with their reason.

Preparing streams: each decoded chunk goes to a spool file on disk, so memory does not grow with
the dataset. Loading maps the images, so a prepared set larger than RAM can be opened, and
``data.rows.select_rows`` takes a large selection of it into a mapped scratch file.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from camscope import __version__
from camscope.data.imageio import ImageProblem, decode, fit
from camscope.data.parallel import parallel_map, worker_source
from camscope.data.rows import select_rows
from camscope.data.sources import Source
from camscope.data.tensorfile import Part, Spool, read_header, read_tensor, write_tensorfile
from camscope.errors import CamscopeError

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
    path: Path | None = None  # the file the images are memory-mapped from; None when in memory

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

    def rows(self, index: list[int] | torch.Tensor, channels: int | None = None) -> torch.Tensor:
        """Images ``index`` in ``channels``: a large selection of a mapped file stays on disk, mapped."""
        return select_rows(self.images, index, channels, None if self.path is None else self.path.parent)

    def subset(self, index: list[int] | torch.Tensor) -> PreparedDataset:
        idx = torch.as_tensor(index, dtype=torch.long)
        pick = idx.tolist()
        info = dict(self.info)
        for key in ("side_keys", "file_hashes", "given_splits", "meta"):
            if info.get(key) is not None:
                info[key] = [info[key][i] for i in pick]
        # a subset is taken into memory: it is for the small sets tests and figures make
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


def item_shape(config: PrepareConfig, sides: int) -> tuple[int, int, int]:
    """C x H x W of one prepared item: sides side by side, or stacked as channels."""
    if sides > 1 and config.combine == "channels":
        return (config.channels * sides, config.size, config.size)
    return (config.channels, config.size, config.size * sides)


@dataclass
class _Rows:
    """What decoding leaves: the kept items' rows in spools on disk, in item order."""

    images: Spool
    masks: Spool
    kept: list[int] = field(default_factory=list)  # positions in source.items
    digests: list[list[str]] = field(default_factory=list)
    has_masks: bool = True
    # dataset_hash's first part, fed as the rows arrive
    pixels: hashlib.blake2b = field(default_factory=lambda: hashlib.blake2b(digest_size=16))

    def add(self, index: int, arr: np.ndarray, digests: list[str], mask: np.ndarray | None) -> None:
        arr = np.ascontiguousarray(arr)
        self.images.append(arr)
        self.pixels.update(arr.data)
        if mask is None:
            self.has_masks = False
        elif self.has_masks:
            self.masks.append(mask.astype(np.uint8))
        self.kept.append(index)
        self.digests.append(digests)

    def close(self) -> None:
        self.images.close()
        self.masks.close()


def _decode(source: Source, jobs: list, config: PrepareConfig, rows: _Rows, excluded: list[dict]) -> None:
    global _CONFIG
    shape = item_shape(config, len(source.side_names))
    _CONFIG = config
    try:
        for batch in parallel_map(
            source, _prepare_chunk, jobs, config.workers, config.chunk, "preparing images"
        ):
            # parallel_map keeps job order, so the spool's rows are in item order
            for index, arr, reason, digests, mask in batch:
                if arr is None:
                    excluded.append({"id": source.items[index].id, "reason": reason})
                elif arr.shape != shape:
                    raise AssertionError(f"item {source.items[index].id}: {arr.shape}, expected {shape}")
                else:
                    rows.add(index, arr, digests, mask)
    finally:
        _CONFIG = None


def prepare(
    source: Source,
    config: PrepareConfig | None = None,
    exclude: dict[str, str] | None = None,
    out: str | Path | None = None,
) -> PreparedDataset:
    """Decode ``source`` into a PreparedDataset. ``exclude`` maps item ids to a reason to leave them out.

    With ``out`` the dataset is written there and returned memory-mapped from it; memory stays
    bounded whatever the dataset's size (decoded rows wait on disk, in a spool beside ``out``).
    Without it, the dataset comes back in memory.
    """
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
    folder = Path(out).resolve().parent if out is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    rows = _Rows(Spool(folder), Spool(folder))
    try:
        _decode(source, jobs, config, rows, excluded)
        if not rows.kept:
            raise CamscopeError(
                "no item could be prepared", "run `camscope audit` to see what is wrong with the data"
            )
        items = [source.items[i] for i in rows.kept]
        classes = sorted({it.label for it in items if it.label is not None})
        cidx = {c: k for k, c in enumerate(classes)}
        labels = np.array([cidx.get(it.label, -1) for it in items], dtype=np.int64)
        ids = [it.id for it in items]
        rows.pixels.update(labels.tobytes())
        rows.pixels.update(json.dumps([classes, ids]).encode())
        info = _info(source, config, items, rows.digests, excluded)
        info["timing_s"] = round(time.perf_counter() - t0, 2)
        info["dataset_hash"] = rows.pixels.hexdigest()
        n, shape = len(items), item_shape(config, len(source.side_names))
        parts = [Part("labels", "I64", (n,), labels), Part("images", "U8", (n, *shape), rows.images)]
        if rows.has_masks and rows.masks.nbytes:
            parts.append(Part("masks", "U8", (n, 1, *shape[1:]), rows.masks))
        if out is not None:
            return load_prepared(_write(out, parts, classes, ids, info))
        with tempfile.TemporaryDirectory(prefix="camscope-prepare-") as tmp:
            path = _write(Path(tmp) / "prepared.safetensors", parts, classes, ids, info)
            return load_prepared(path, mmap=False)
    finally:
        rows.close()


def _info(source: Source, config: PrepareConfig, items: list, digests: list, excluded: list) -> dict:
    given = [it.split for it in items]
    metas = [it.meta for it in items]
    return {
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
        "file_hashes": digests,
        "given_splits": given if any(g is not None for g in given) else None,
        "meta": metas if any(metas) else None,
        "excluded": excluded,
    }


def _write(path: str | Path, parts: list[Part], classes: list[str], ids: list[str], info: dict) -> Path:
    header = {"classes": classes, "ids": ids, **info}
    return write_tensorfile(path, parts, {"camscope": json.dumps(header, ensure_ascii=False)})


def dataset_hash(ds: PreparedDataset) -> str:
    h = images_digest(ds.images)
    h.update(ds.labels.numpy().tobytes())
    h.update(json.dumps([ds.classes, ds.ids]).encode())
    return h.hexdigest()


def images_digest(images: torch.Tensor, block: int = 64 * 2**20) -> hashlib.blake2b:
    """blake2b (16 bytes) over the images' bytes, fed in blocks: a mapped file is never copied whole."""
    h = hashlib.blake2b(digest_size=16)
    images = images.contiguous()
    step = max(1, block // max(1, images[:1].numel()))
    for i in range(0, len(images), step):
        h.update(images[i : i + step].numpy().data)
    return h


def save_prepared(ds: PreparedDataset, path: str | Path) -> Path:
    n = len(ds.ids)
    parts = [
        Part("labels", "I64", (n,), ds.labels.numpy()),
        Part("images", "U8", tuple(ds.images.shape), ds.images.contiguous().numpy()),
    ]
    if ds.masks is not None:
        parts.append(Part("masks", "U8", tuple(ds.masks.shape), ds.masks.contiguous().numpy()))
    return _write(path, parts, ds.classes, ds.ids, ds.info)


def load_prepared(path: str | Path, mmap: bool = True) -> PreparedDataset:
    """A prepared dataset; with ``mmap`` (the default) its images and masks are mapped from the
    file, read only when touched, so a file larger than RAM opens in an instant."""
    path = Path(path)
    if path.is_dir():
        path = path / "prepared.safetensors"
    if not path.is_file():
        raise CamscopeError(
            f"no prepared dataset at {path}", "run `camscope prepare SOURCE --out FILE` first"
        )
    try:
        header, start = read_header(path)
        meta = header.get("__metadata__") or {}
        # labels are small and indexed everywhere: always in memory
        arrays = {
            k: read_tensor(path, header, start, k, mmap and k != "labels")
            for k in ("images", "labels", "masks")
        }
    except (OSError, ValueError, KeyError) as e:
        raise CamscopeError(
            f"{path} is not a readable prepared dataset ({e})",
            "it may be truncated; run `camscope prepare` again",
        ) from None
    try:
        info = json.loads(meta["camscope"])
        classes, ids = info.pop("classes"), info.pop("ids")
        images, labels = torch.from_numpy(arrays["images"]), torch.from_numpy(arrays["labels"])
    except (KeyError, TypeError, json.JSONDecodeError) as e:
        raise CamscopeError(
            f"{path} lacks camscope metadata ({e})",
            "it was not written by `camscope prepare`; prepare it again",
        ) from None
    if info.get("schema") != SCHEMA:
        raise CamscopeError(
            f"{path} has schema {info.get('schema')!r}, expected {SCHEMA}",
            "prepare it again with this version of camscope",
        )
    if images.dtype != torch.uint8 or images.ndim != 4 or len(images) != len(ids) or len(labels) != len(ids):
        raise CamscopeError(
            f"{path} is inconsistent: {tuple(images.shape)} images for {len(ids)} ids",
            "prepare it again",
        )
    masks = None if arrays["masks"] is None else torch.from_numpy(arrays["masks"])
    return PreparedDataset(images, labels, classes, ids, info, masks, path.resolve() if mmap else None)
