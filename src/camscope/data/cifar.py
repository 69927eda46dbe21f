"""The official CIFAR-10 python archive: download, verification and a safe reader.

The archive stores its batches as Python pickles. We never run ``pickle.load`` on them: a
restricted unpickler admits only the handful of builtins and numpy constructors the official
files use, so a tampered archive cannot execute code.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from camscope.data.sources import ArraySource, Item, Side
from camscope.errors import CamscopeError
from camscope.progress import make_progress

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FILENAME = "cifar-10-python.tar.gz"
BATCH_DIR = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("CAMSCOPE_CACHE", Path.home() / ".cache" / "camscope"))


def md5_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, dest: Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary file renamed only when complete and verified."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with make_progress() as progress:
                task = progress.add_task(f"downloading {dest.name}", total=total)
                while block := resp.read(1 << 20):
                    out.write(block)
                    progress.advance(task, len(block))
        if md5 is not None:
            got = md5_file(tmp)
            if got != md5:
                raise CamscopeError(
                    f"checksum mismatch for {url}: got md5 {got}, expected {md5}",
                    "the download is corrupt or was altered; try again",
                )
        os.replace(tmp, dest)
    except OSError as e:
        raise CamscopeError(
            f"could not download {url}: {e}",
            f"download it by hand and pass the file, or place it at {dest}",
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


class _SafeUnpickler(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("__builtin__", "dict"),
        ("__builtin__", "list"),
        ("copy_reg", "_reconstructor"),
        ("copyreg", "_reconstructor"),
        ("__builtin__", "object"),
        ("builtins", "object"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 spell bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def safe_load_batch(data: bytes) -> dict:
    try:
        obj = _SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CamscopeError(
            f"a CIFAR batch could not be read safely: {e}",
            "the archive is damaged or not the official format",
        ) from None
    if not isinstance(obj, dict):
        raise CamscopeError("a CIFAR batch is not a dictionary", "the archive is not the official format")
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_members(path: Path) -> dict[str, bytes]:
    """Batch files by base name, from a .tar.gz archive or an extracted folder."""
    names = [*TRAIN_BATCHES, *TEST_BATCHES, "batches.meta"]
    out: dict[str, bytes] = {}
    if path.is_dir():
        base = path / BATCH_DIR if (path / BATCH_DIR).is_dir() else path
        for n in names:
            if (base / n).is_file():
                out[n] = (base / n).read_bytes()
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar.getmembers():
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base in names:
                        f = tar.extractfile(m)
                        if f is not None:
                            out[base] = f.read()
        except (tarfile.TarError, OSError, EOFError) as e:
            raise CamscopeError(
                f"{path} is not a readable CIFAR-10 archive: {e}",
                "pass the official cifar-10-python.tar.gz or its extracted folder",
            ) from None
    missing = [n for n in names if n not in out]
    if missing:
        raise CamscopeError(
            f"{path} lacks CIFAR-10 files: {', '.join(missing)}",
            "pass the official cifar-10-python.tar.gz or its extracted folder",
        )
    return out


class Cifar10Source(ArraySource):
    """CIFAR-10 with its official train/test split; ids are ``train/00000`` ... ``test/09999``."""

    kind = "cifar10"

    def __init__(
        self,
        path: str | Path | None = None,
        download_if_missing: bool = False,
        cache_dir: str | Path | None = None,
        verify: bool = True,
    ):
        if path is None:
            path = Path(cache_dir or default_cache_dir()) / CIFAR10_FILENAME
            if not path.exists():
                if not download_if_missing:
                    raise CamscopeError(
                        f"CIFAR-10 is not at {path}",
                        "pass --download, or give the path of cifar-10-python.tar.gz",
                    )
                download(CIFAR10_URL, path, CIFAR10_MD5)
        path = Path(path)
        if not path.exists():
            raise CamscopeError(
                f"{path} does not exist", "give the path of cifar-10-python.tar.gz or its folder"
            )
        if verify and path.is_file() and path.name == CIFAR10_FILENAME and md5_file(path) != CIFAR10_MD5:
            raise CamscopeError(
                f"{path} does not match the official CIFAR-10 checksum",
                "delete it and download again, or pass verify=False for a custom archive",
            )
        members = _read_members(path)
        meta = safe_load_batch(members["batches.meta"])
        classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta["label_names"]]
        images: dict[str, np.ndarray] = {}
        items: list[Item] = []
        for split, batches in (("train", TRAIN_BATCHES), ("test", TEST_BATCHES)):
            index = 0
            for b in batches:
                d = safe_load_batch(members[b])
                data = np.asarray(d["data"], dtype=np.uint8)
                labels = list(d["labels"])
                if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
                    raise CamscopeError(f"CIFAR batch {b} has shape {data.shape}, expected (N, 3072)")
                hwc = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
                for img, lab in zip(hwc, labels, strict=True):
                    key = f"{split}/{index:05d}"
                    images[key] = np.ascontiguousarray(img)
                    items.append(Item(key, classes[int(lab)], (Side("image", key),), split))
                    index += 1
        super().__init__(images, f"CIFAR-10 from {path}")
        self.items = items
