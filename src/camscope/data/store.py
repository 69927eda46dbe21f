"""Where image files live: a folder or a zip archive, addressed by POSIX paths relative to a root.

Both stores refuse paths that escape their root, so a manifest cannot point outside the data.
"""

from __future__ import annotations

import os
import posixpath
import zipfile
from pathlib import Path

from camscope.errors import CamscopeError


class PathOutsideRoot(ValueError):
    """A relative path that resolves outside the store's root."""


def normalise_relpath(rel: str) -> str:
    """Return a clean POSIX relative path, or raise PathOutsideRoot if it leaves the root."""
    rel = rel.replace("\\", "/").strip()
    if not rel:
        raise PathOutsideRoot("empty path")
    if "\x00" in rel:
        raise PathOutsideRoot(f"path {rel!r} contains a NUL byte")
    if rel.startswith("/") or (len(rel) > 1 and rel[1] == ":"):
        raise PathOutsideRoot(f"absolute path {rel!r}")
    clean = posixpath.normpath(rel)
    if clean == ".." or clean.startswith("../") or clean == ".":
        raise PathOutsideRoot(f"path {rel!r} leaves the data root")
    return clean


class Store:
    """Read-only access to files below a root."""

    description: str

    def list_files(self) -> list[str]:
        raise NotImplementedError

    def read_bytes(self, rel: str) -> bytes:
        raise NotImplementedError

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def local_path(self, rel: str) -> Path | None:
        """A filesystem path for ``rel`` when the store is a folder, else None."""
        return None


class DirStore(Store):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise CamscopeError(f"data root {self.root} is not a folder", "check the path")
        self.description = str(self.root)

    def _full(self, rel: str) -> Path:
        clean = normalise_relpath(rel)
        full = (self.root / clean).resolve()
        # a symlink can still point outside the root
        if full != self.root and self.root not in full.parents:
            raise PathOutsideRoot(f"path {rel!r} resolves outside the data root")
        return full

    def list_files(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                out.append(name if base == "." else f"{base}/{name}")
        return out

    def read_bytes(self, rel: str) -> bytes:
        return self._full(rel).read_bytes()

    def exists(self, rel: str) -> bool:
        try:
            return self._full(rel).is_file()
        except (PathOutsideRoot, OSError, ValueError):  # e.g. a name too long for the file system
            return False

    def local_path(self, rel: str) -> Path | None:
        return self._full(rel)


class ZipStore(Store):
    """A zip archive as a store; ``prefix`` selects a folder inside it.

    The ZipFile handle is opened lazily per process so the store can cross a fork.
    """

    def __init__(self, archive: str | os.PathLike, prefix: str = ""):
        self.archive = Path(archive).resolve()
        if not zipfile.is_zipfile(self.archive):
            raise CamscopeError(
                f"{self.archive} is not a readable zip archive",
                "check the file or unpack it and pass the folder",
            )
        self.prefix = normalise_relpath(prefix) + "/" if prefix.strip("/") else ""
        self.description = f"{self.archive}!/{self.prefix}"
        self._zf: zipfile.ZipFile | None = None
        self._pid: int | None = None
        self._names: set[str] | None = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_zf"] = None
        state["_pid"] = None
        return state

    @property
    def zf(self) -> zipfile.ZipFile:
        if self._zf is None or self._pid != os.getpid():
            self._zf = zipfile.ZipFile(self.archive)
            self._pid = os.getpid()
        return self._zf

    def _names_set(self) -> set[str]:
        if self._names is None:
            self._names = {n for n in self.zf.namelist() if not n.endswith("/")}
        return self._names

    def list_files(self) -> list[str]:
        n = len(self.prefix)
        out = []
        for name in sorted(self._names_set()):
            if name.startswith(self.prefix):
                rel = name[n:]
                if not any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/")):
                    out.append(rel)
        return out

    def read_bytes(self, rel: str) -> bytes:
        return self.zf.read(self.prefix + normalise_relpath(rel))

    def exists(self, rel: str) -> bool:
        try:
            return self.prefix + normalise_relpath(rel) in self._names_set()
        except PathOutsideRoot:
            return False


def open_store(path: str | os.PathLike, prefix: str = "") -> Store:
    p = Path(path)
    if not p.exists():
        raise CamscopeError(f"{p} does not exist", "check the path to the data")
    if p.is_dir():
        return DirStore(p / prefix if prefix else p)
    if zipfile.is_zipfile(p):
        return ZipStore(p, prefix)
    raise CamscopeError(
        f"{p} is neither a folder nor a zip archive",
        "pass a folder of images, a zip of one, or a CSV manifest",
    )
