"""Small helpers shared by every layer."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
import re
import socket
import tempfile
from collections.abc import Callable
from glob import escape as glob_escape
from pathlib import Path

# mkstemp creates files readable by the owner only; finished artifacts get the usual mode
_UMASK = os.umask(0)
os.umask(_UMASK)


# A temporary file says who wrote it: ".<name>.camscope-<host>-<pid>-<random>.tmp". Only such
# files, whose process on this host is gone, are ever swept; a user's own ".draft.tmp" never is.
_HOST = hashlib.blake2b(socket.gethostname().encode(), digest_size=3).hexdigest()
_TEMP = re.compile(r"^\..+\.camscope-(?P<host>[0-9a-f]{6})-(?P<pid>\d+)-[a-z0-9_]+\.tmp$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's process, or a platform that cannot tell: leave its file alone
    return True


def is_orphan_temp(path: Path) -> bool:
    """A temporary file camscope wrote on this host, whose writing process no longer runs."""
    m = _TEMP.match(path.name)
    return bool(m) and m["host"] == _HOST and not _alive(int(m["pid"]))


def sweep_orphan_temps(folder: str | Path, pattern: str = ".*.camscope-*.tmp") -> int:
    """Remove the orphaned camscope temp files under ``folder`` (recursively); how many."""
    n = 0
    for p in Path(folder).rglob(pattern):
        if p.is_file() and is_orphan_temp(p):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


@contextlib.contextmanager
def atomic_writer(path: str | Path):
    """A binary file to write ``path`` through: a temporary file in the same folder, renamed into
    place only when the block completes (on an error it is removed and ``path`` is untouched)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a write killed by SIGKILL cannot clean up after itself: its orphan goes with the next write
    for stale in path.parent.glob(f".{glob_escape(path.name)}.camscope-*.tmp"):
        if is_orphan_temp(stale):
            with contextlib.suppress(OSError):
                stale.unlink()
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.camscope-{_HOST}-{os.getpid()}-", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write through a temporary file in the same folder, renamed into place when complete."""
    with atomic_writer(path) as f:
        f.write(data)


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


def unique_stems(
    names: list[str], keep: str = "-_", limit: int = 60, stem_of: Callable[[str], str] | None = None
) -> dict[str, str]:
    """A file-name stem for each distinct name, distinct even on a case-insensitive file system.

    A name keeps its ``safe_filename`` form unless that form collides with another's ('a/b', 'a_b'
    and 'a b' all read 'a_b'); colliding names get a short hash of the full name appended.
    ``stem_of`` picks the part of a name to keep (a file path's stem, say).
    """
    distinct = list(dict.fromkeys(names))
    base = {n: safe_filename(stem_of(n) if stem_of else n, keep, limit) or "_" for n in distinct}

    def hashed(n: str, size: int = 3) -> str:
        digest = hashlib.blake2b(n.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()
        return f"{base[n]}-{digest}"

    count: dict[str, int] = {}
    for b in base.values():
        count[b.casefold()] = count.get(b.casefold(), 0) + 1
    out = {n: hashed(n) if count[base[n].casefold()] > 1 else base[n] for n in distinct}
    taken: set[str] = set()
    for n in distinct:  # a hash that happens to equal a plain name: lengthen it
        size = 3
        while out[n].casefold() in taken:
            size += 1
            out[n] = hashed(n, size)
        taken.add(out[n].casefold())
    return out
