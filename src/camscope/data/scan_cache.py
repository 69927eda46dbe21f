"""The audit's scan results on disk as they come, so a killed audit resumes instead of reading
every image again (a large folder's scan is most of an audit's time).

Thumbnails go into fixed-size row files (``ThumbFile``: row i is the listing's i-th image), and
the rest of each record (sizes, digests, scores as columns) into parts of a few thousand, each
written atomically after its thumbnails are flushed; a part is either whole or absent. The cache is
tied to one source and one version of the scan (a fingerprint file); anything else in the
folder is discarded. The audit removes it once audit.json is written. It assumes the files do
not change between the kill and the resume (a file edited in between keeps its old scan).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from camscope import __version__
from camscope.utils import atomic_write_bytes, atomic_write_text

FINGERPRINT = "fingerprint.json"
THUMB_FILES = ("thumbs-32.u8", "fine-64.u8")


class ThumbFile:
    """(N, side, side) uint8 thumbnails in a file, row i for image i, written and read by row.

    The file is mapped only for the duration of one read or write: pages of a mapping stay in
    the process's resident memory while it lives, so a long-lived map of a million thumbnails
    would count 1-4 GB against the audit. Unwritten rows read as zeros (a sparse file: rows
    never written, such as the 64-px rows of small images, take no disk space).
    """

    def __init__(self, path: str | Path, n: int, side: int):
        self.path, self.shape = Path(path), (n, side, side)
        size = n * side * side
        if not self.path.is_file() or self.path.stat().st_size != size:
            with open(self.path, "wb") as f:
                f.truncate(size)

    def __len__(self) -> int:
        return self.shape[0]

    def _map(self, mode: str) -> np.memmap | np.ndarray:
        if self.shape[0] == 0:
            return np.zeros(self.shape, np.uint8)
        return np.memmap(self.path, np.uint8, mode, shape=self.shape)

    def __getitem__(self, idx) -> np.ndarray:
        m = self._map("r")
        try:
            return np.array(m[idx])
        finally:
            del m

    def write(self, rows, values: np.ndarray) -> None:
        m = self._map("r+")
        try:
            m[rows] = values
            if isinstance(m, np.memmap):
                m.flush()
        finally:
            del m


class ScanCache:
    def __init__(self, folder: str | Path, fingerprint: dict, flush_every: int = 4096, flush_s: float = 5.0):
        self.folder = Path(folder)
        self.flush_every, self.flush_s = flush_every, flush_s
        self._last = time.monotonic()
        self._pending: list = []
        self._parts = 0
        want = json.dumps({"camscope": __version__, **fingerprint}, sort_keys=True)
        have = self.folder / FINGERPRINT
        if self.folder.is_dir() and (not have.is_file() or have.read_text(encoding="utf-8") != want):
            self.clear()  # another source or another scan: nothing in it can be reused
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(have, want)

    @staticmethod
    def fingerprint(source, keys: list[str], extra: dict) -> dict:
        h = hashlib.blake2b(digest_size=16)
        for k in keys:
            h.update(k.encode("utf-8", "surrogateescape") + b"\n")
        return {"kind": source.kind, "description": source.description, "keys": h.hexdigest(), **extra}

    def load(self, record_type, quality_type) -> list:
        """Every record saved so far (parts that cannot be read are dropped and rescanned)."""
        out = []
        for part in sorted(self.folder.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    out += _unpack({k: z[k] for k in z.files}, record_type, quality_type)
            except (OSError, ValueError, KeyError):
                part.unlink(missing_ok=True)
                continue
            self._parts = max(self._parts, int(part.stem.split("-")[1]) + 1)
        return out

    def add(self, records: list) -> None:
        self._pending += records
        if len(self._pending) >= self.flush_every or time.monotonic() - self._last >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        buf = io.BytesIO()
        np.savez(buf, **_pack(self._pending))
        atomic_write_bytes(self.folder / f"part-{self._parts:06d}.npz", buf.getvalue())
        self._parts += 1
        self._pending = []
        self._last = time.monotonic()

    def clear(self) -> None:
        """Remove what the cache wrote (its parts and fingerprint, nothing else), then the folder
        if that leaves it empty."""
        clear_scan_cache(self.folder)


def clear_scan_cache(folder: str | Path) -> None:
    p = Path(folder)
    if not p.is_dir():
        return
    for f in [
        *p.glob("part-*.npz"),
        *p.glob("part-*.npz.tmp*"),
        p / FINGERPRINT,
        *(p / t for t in THUMB_FILES),
    ]:
        f.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        p.rmdir()


def _pack(records: list) -> dict[str, np.ndarray]:
    n = len(records)
    qnames = None
    quality = None
    for i, r in enumerate(records):
        if r.quality is not None:
            if qnames is None:
                qnames = [f.name for f in fields(r.quality)]
                quality = np.full((n, len(qnames)), np.nan)
            quality[i] = [getattr(r.quality, q) for q in qnames]
    return {
        "key": np.array([r.key for r in records], dtype=str),
        "nbytes": np.array([r.nbytes for r in records], np.int64),
        "digest": np.array([r.digest or "" for r in records], dtype=str),
        "size": np.array([(r.width, r.height) for r in records], np.int64).reshape(n, 2),
        "gray": np.array([r.gray for r in records], bool),
        "problem": np.array([r.problem or ("", "") for r in records], dtype=str).reshape(n, 2),
        "has_thumb": np.array([r.has_thumb for r in records], bool),
        "has_quality": np.array([r.quality is not None for r in records], bool),
        "quality_names": np.array(qnames or [], dtype=str),
        "quality": quality if quality is not None else np.zeros((n, 0)),
    }


def _unpack(z: dict[str, np.ndarray], record_type, quality_type) -> list:
    qnames = z["quality_names"].tolist()
    out = []
    for i, key in enumerate(z["key"].tolist()):
        kind, detail = z["problem"][i].tolist()
        q = None
        if z["has_quality"][i]:
            q = quality_type(**{name: float(v) for name, v in zip(qnames, z["quality"][i], strict=True)})
        out.append(
            record_type(
                key=key,
                nbytes=int(z["nbytes"][i]),
                digest=str(z["digest"][i]) or None,
                width=int(z["size"][i, 0]),
                height=int(z["size"][i, 1]),
                gray=bool(z["gray"][i]),
                problem=(kind, detail) if kind else None,
                has_thumb=bool(z["has_thumb"][i]),
                quality=q,
            )
        )
    return out
