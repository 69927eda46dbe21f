"""Run folders: which ones camscope owns, and which process is writing one.

A folder becomes a run folder when camscope claims it: it must be new, empty, or a run folder of
the same kind already (a marker file says so; folders written before the marker existed are
recognised by their own files). A folder holding anything else is refused, so pointing ``--out``
at the wrong place can never cost a user a file.

While a run writes, it holds an advisory lock on ``RUN/.camscope.lock`` (``flock``: the kernel
releases it when the process dies, even by SIGKILL). A second run on the same folder is refused
with the holder's process id instead of interleaving its writes with the first's.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from camscope import __version__
from camscope.errors import CamscopeError
from camscope.utils import atomic_write_text

MARKER = ".camscope-run.json"
LOCK = ".camscope.lock"
KINDS = ("study", "train", "labels")

# files that identify a run folder written before the marker existed
_LEGACY = {"study": ("stages.json",), "train": ("last.json", "best.json", "split.json"), "labels": ()}

_held: dict[Path, int] = {}  # folders this process holds, and how deeply (holding is re-entrant)


class FolderBusy(CamscopeError):
    pass


def run_kind(folder: str | Path) -> str | None:
    """'study', 'train' or 'labels' for a camscope run folder, None for anything else."""
    p = Path(folder)
    marker = p / MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if kind in KINDS else None
    for kind, names in _LEGACY.items():
        if any(_camscope_json(p / n) for n in names):
            return kind
    return None


def _camscope_json(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        return False


def claim(folder: str | Path, kind: str) -> Path:
    """Make ``folder`` a ``kind`` run folder, or refuse when it holds files camscope did not write."""
    p = Path(folder)
    _check(p, kind)
    if not (p / MARKER).is_file():
        p.mkdir(parents=True, exist_ok=True)
        _write_marker(p, kind)
    return p


def _check(p: Path, kind: str) -> None:
    assert kind in KINDS
    if p.exists() and not p.is_dir():
        raise CamscopeError(f"{p} is a file, not a folder", "give --out a new or empty folder")
    if p.is_dir():
        have = run_kind(p)
        if have == kind:
            return
        if have is not None:
            raise CamscopeError(
                f"{p} is a camscope {have} folder, not a {kind} folder",
                "give --out a new or empty folder",
            )
        others = sorted(e.name for e in p.iterdir() if e.name != LOCK)
        if others:
            shown = ", ".join(repr(n) for n in others[:3]) + (
                f" and {len(others) - 3} more" if len(others) > 3 else ""
            )
            raise CamscopeError(
                f"{p} is not empty and is not a camscope run folder (it holds {shown})",
                "give --out a new or empty folder; camscope never writes into a folder it did not make",
            )


def _write_marker(p: Path, kind: str) -> None:
    atomic_write_text(
        p / MARKER, json.dumps({"kind": kind, "camscope_version": __version__, "created": time.time()})
    )


def record(folder: str | Path, key: str, value) -> None:
    """Note ``key`` in a run folder's marker (the report it wrote and that file's hash, say)."""
    p = Path(folder)
    kind = run_kind(p)
    if kind is None:
        raise CamscopeError(f"{p} is not a camscope run folder", "give a study or training run folder")
    info = _marker(p) or {"kind": kind, "camscope_version": __version__, "created": time.time()}
    atomic_write_text(p / MARKER, json.dumps({**info, key: value}))


def recorded(folder: str | Path, key: str):
    """What ``record`` noted under ``key`` (None when nothing was, or the folder is no run folder)."""
    return (_marker(Path(folder)) or {}).get(key) if run_kind(folder) else None


def _marker(p: Path) -> dict | None:
    try:
        info = json.loads((p / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def owned(folder: str | Path) -> bool:
    """The folder is a camscope run folder (so camscope may replace it)."""
    return run_kind(folder) is not None


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"process {info['pid']} on {info['host']}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}: {info['command']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (it is just starting)"


@contextlib.contextmanager
def run_folder(folder: str | Path, kind: str) -> Iterator[Path]:
    """Claim ``folder`` as a ``kind`` run folder and hold its lock while the block runs.

    The folder is checked before the lock file is made, so a refused folder is left untouched.
    """
    p = Path(folder)
    _check(p, kind)
    with hold(p):
        yield claim(p, kind)


@contextlib.contextmanager
def hold(folder: str | Path) -> Iterator[Path]:
    """Hold the run folder's lock for the duration; raise FolderBusy if another process holds it."""
    p = Path(folder).resolve()
    if p in _held:  # the same process, one level down (a study training a candidate, say)
        _held[p] += 1
        try:
            yield p
        finally:
            _held[p] -= 1
        return
    p.mkdir(parents=True, exist_ok=True)
    lock = p / LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise FolderBusy(
                f"{p} is being written by {_holder(lock)}",
                "wait for that run to finish (or stop it), or give another --out",
            )
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(sys.argv)[:300],
        }
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        _held[p] = 1
        try:
            yield p
        finally:
            del _held[p]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _try_lock(fd: int) -> bool:
    try:
        import fcntl
    except ImportError:  # Windows: lock one byte far past the holder's note
        import msvcrt

        os.lseek(fd, 1 << 20, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
