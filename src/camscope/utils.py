"""Small helpers shared by every layer."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from glob import escape as glob_escape
from pathlib import Path

# mkstemp creates files readable by the owner only; finished artifacts get the usual mode
_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, renamed into place when complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a write killed by SIGKILL cannot clean up after itself: its orphan goes with the next write
    for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_rows_csv(path: str | Path, rows: list[dict], fields: list[str] | None = None) -> None:
    """Rows of dicts as CSV, atomically; the columns are ``fields`` or every key in order of appearance."""
    if fields is None:
        fields = []
        for row in rows:
            fields += [k for k in row if k not in fields]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def safe_filename(name: str, keep: str = "-_", limit: int = 60) -> str:
    """``name`` with every character but letters, digits and ``keep`` replaced by '_'."""
    return "".join(ch if ch.isalnum() or ch in keep else "_" for ch in name)[:limit]
