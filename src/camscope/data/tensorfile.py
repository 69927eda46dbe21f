"""The prepared file's layout: safetensors, written as a stream and read memory-mapped.

safetensors is an 8-byte header length, a JSON header (each tensor's dtype, shape and byte range,
plus string metadata), then the raw bytes. The safetensors library reads what is written here,
and this module reads what it writes. camscope writes and reads the layout itself so that a
dataset larger than RAM is never held whole: rows are spooled to disk as they are decoded and
copied into place at the end, and reading maps the images instead of loading them.
"""

from __future__ import annotations

import json
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from camscope.utils import atomic_writer

DTYPES = {"U8": np.dtype(np.uint8), "I64": np.dtype("<i8")}
# safetensors' own reader stops at 100 MB of header; ids, hashes and side keys of a few million
# items need more, and this reader allows them.
MAX_HEADER_BYTES = 2**31
COPY_BLOCK = 4 * 2**20


class Spool:
    """Arrays appended to an unlinked temporary file: it is gone with the process, even after a kill."""

    def __init__(self, folder: str | Path | None = None):
        # closed by close(); a context manager cannot span the calls that fill it
        self.file: BinaryIO = tempfile.TemporaryFile(dir=folder, prefix=".camscope-spool-")  # noqa: SIM115
        self.nbytes = 0

    def append(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr)
        self.file.write(arr.data)
        self.nbytes += arr.nbytes

    def close(self) -> None:
        self.file.close()


@dataclass
class Part:
    """One tensor to write: ``data`` is an array, or a Spool holding exactly its bytes."""

    name: str
    dtype: str  # a key of DTYPES
    shape: tuple[int, ...]
    data: np.ndarray | Spool

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * DTYPES[self.dtype].itemsize


def write_tensorfile(path: str | Path, parts: list[Part], metadata: dict[str, str]) -> Path:
    """Write ``parts`` as one safetensors file, atomically, copying spools in blocks."""
    path = Path(path)
    header: dict = {"__metadata__": metadata}
    offset = 0
    for p in parts:
        have = p.data.nbytes if isinstance(p.data, Spool) else np.asarray(p.data).nbytes
        if have != p.nbytes:
            raise ValueError(f"{p.name}: {have} bytes for shape {p.shape} of {p.dtype}")
        header[p.name] = {
            "dtype": p.dtype,
            "shape": list(p.shape),
            "data_offsets": [offset, offset + p.nbytes],
        }
        offset += p.nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)  # tensors start 8-byte aligned, as safetensors pads them
    with atomic_writer(path) as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for p in parts:
            if isinstance(p.data, Spool):
                p.data.file.flush()
                _copy(p.data.file, f)
            else:
                f.write(np.ascontiguousarray(p.data, dtype=DTYPES[p.dtype]).data)
    return path


def _copy(src: BinaryIO, dst: BinaryIO) -> None:
    """src from its start into dst through one reused buffer (copyfileobj allocates a block a read)."""
    src.seek(0)
    buf = memoryview(bytearray(COPY_BLOCK))
    while n := src.readinto(buf):
        dst.write(buf[:n])


def read_header(path: str | Path) -> tuple[dict, int]:
    """(the JSON header, where the tensors' bytes start); ValueError when the file is not safetensors."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES or 8 + n > size:
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"the header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    start = 8 + n
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            b, e = entry["data_offsets"]
            want = int(np.prod(entry["shape"], dtype=np.int64)) * DTYPES[entry["dtype"]].itemsize
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"tensor {name!r} has a malformed entry ({err!r})") from None
        if e - b != want or b < 0 or start + e > size:
            raise ValueError(f"tensor {name!r} does not fit the file (truncated?)")
    return header, start


def read_tensor(path: str | Path, header: dict, start: int, name: str, mmap: bool) -> np.ndarray | None:
    """Tensor ``name`` of the file: memory-mapped copy-on-write (writes stay in this process, the
    file is never changed), or read into memory. None when the file has no such tensor."""
    entry = header.get(name)
    if entry is None:
        return None
    dtype, shape = DTYPES[entry["dtype"]], tuple(entry["shape"])
    b, e = entry["data_offsets"]
    if mmap and e > b:
        return np.memmap(path, dtype=dtype, mode="c", offset=start + b, shape=shape)
    arr = np.empty(shape, dtype=dtype)
    with open(path, "rb") as f:
        f.seek(start + b)
        if f.readinto(memoryview(arr).cast("B")) != e - b:
            raise ValueError(f"tensor {name!r} is truncated")
    return arr
