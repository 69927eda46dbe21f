"""Where image files live: a folder or a zip archive, addressed by POSIX paths relative to a root.

Both stores refuse paths that escape their root, so a manifest cannot point outside the data:
a symlink leading out of the folder, a link loop or an archive member with an absolute or ``..``
name is left out of the listing (``skipped`` says why) and refused when asked for. A file or
member larger than ``MAX_FILE_BYTES``, or a member that inflates more than ``MAX_RATIO`` times, is
refused before it is read, so a zip bomb costs nothing.
"""

from __future__ import annotations

import errno
import os
import posixpath
import zipfile
from pathlib import Path

from camscope.data.imageio import ImageProblem
from camscope.errors import CamscopeError

# No image camscope reads comes near these: 64 MP of 16-bit RGBA uncompressed is 512 MB.
MAX_FILE_BYTES = 512 * 2**20
# Photographs barely compress in a zip; a member inflating 200x past 16 MB is a bomb.
MAX_RATIO, RATIO_FLOOR = 200, 16 * 2**20


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


def _too_large(rel: str, size: int) -> ImageProblem:
    return ImageProblem(
        "too_large",
        f"{rel} is {size / 2**20:.0f} MB, above the {MAX_FILE_BYTES / 2**20:.0f} MB limit; "
        "refused before reading",
    )


class Store:
    """Read-only access to files below a root."""

    description: str
    # (path, finding kind, why) for entries left out of list_files()
    skipped: list[tuple[str, str, str]]

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
        self.skipped = []

    def _full(self, rel: str) -> Path:
        clean = normalise_relpath(rel)
        full = (self.root / clean).resolve()
        # a symlink can still point outside the root
        if full != self.root and self.root not in full.parents:
            raise PathOutsideRoot(f"path {rel!r} resolves outside the data root")
        return full

    def list_files(self) -> list[str]:
        out, self.skipped = [], []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            base = Path(dirpath).relative_to(self.root).as_posix()
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                rel = name if base == "." else f"{base}/{name}"
                if os.path.islink(os.path.join(dirpath, name)) and not self._link_ok(rel):
                    continue
                out.append(rel)
        return out

    def _link_ok(self, rel: str) -> bool:
        """A symlink is listed only when it ends at a file inside the root."""
        try:
            target = self._full(rel)
        except PathOutsideRoot:
            self.skipped.append((rel, "path_outside_root", "a symlink to a file outside the data folder"))
            return False
        except (OSError, RuntimeError):  # RuntimeError: a link loop on Python < 3.13
            self.skipped.append((rel, "unreadable", "a symlink loop"))
            return False
        if not target.is_file():
            self.skipped.append((rel, "missing_file", "a symlink to nothing (a broken link)"))
            return False
        return True

    def read_bytes(self, rel: str) -> bytes:
        try:
            path = self._full(rel)
            size = path.stat().st_size
        except PathOutsideRoot as e:
            raise ImageProblem("path_outside_root", str(e)) from None
        except (OSError, RuntimeError) as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                raise
            raise ImageProblem("unreadable", f"{rel} cannot be opened: {e}") from None
        if size > MAX_FILE_BYTES:
            raise _too_large(rel, size)
        return path.read_bytes()

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
        try:
            self.prefix = normalise_relpath(prefix) + "/" if prefix.strip("/") else ""
        except PathOutsideRoot as e:
            raise CamscopeError(
                f"the folder {prefix!r} inside {self.archive.name} is not valid: {e}",
                "inside an archive, --data-root names a folder of the archive (e.g. images), never ../",
            ) from None
        self.description = f"{self.archive}!/{self.prefix}"
        self.skipped = []
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
        out, self.skipped = [], []
        for name in sorted(self._names_set()):
            try:
                normalise_relpath(name)
            except PathOutsideRoot as e:  # "/etc/x.jpg", "../x.jpg": never extracted, never listed
                self.skipped.append((name, "path_outside_root", f"archive member {e}"))
                continue
            if name.startswith(self.prefix):
                rel = name[n:]
                if not any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/")):
                    out.append(rel)
        return out

    def read_bytes(self, rel: str) -> bytes:
        try:
            name = self.prefix + normalise_relpath(rel)
        except PathOutsideRoot as e:
            raise ImageProblem("path_outside_root", str(e)) from None
        info = self.zf.getinfo(name)  # KeyError: a missing file
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(1, info.compress_size):
            raise ImageProblem(
                "too_large",
                f"{rel} inflates from {info.compress_size} bytes to {info.file_size / 2**20:.0f} MB "
                f"(more than {MAX_RATIO}x): a zip bomb; refused before reading",
            )
        if info.file_size > MAX_FILE_BYTES:
            raise _too_large(rel, info.file_size)
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, NotImplementedError, EOFError) as e:  # bad CRC, unknown method
            raise ImageProblem("unreadable", f"{rel} cannot be extracted: {e}") from None

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
