"""Sources: where items come from, all behind one interface.

A source lists ``Item``s cheaply (no decoding) and fetches the bytes or pixels of each side on
demand. Problems found while listing (a missing file, a path that leaves the data root, a label
that does not parse) are collected in ``source.problems`` rather than raised, so one bad row
never stops a run.

Iterating a source yields ``Sample(id, image, label, meta)`` where ``image`` is one decoded PIL
image, or a tuple of them for two-sided objects (None for a side that is missing).
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from camscope.data.imageio import DEFAULT_MAX_PIXELS, ImageProblem, decode, is_image_name
from camscope.data.store import PathOutsideRoot, Store, normalise_relpath, open_store
from camscope.errors import CamscopeError

SPLIT_DIR_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
EMPTY_LABELS = {"", "nan", "none", "null", "na", "n/a"}


def safe_text(s: str) -> str:
    """Make a file name that was not valid UTF-8 printable and JSON-safe (\\xNN escapes)."""
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class Side:
    name: str
    key: str | None  # path relative to the source root, or a virtual key; None when absent

    @property
    def display(self) -> str:
        return safe_text(self.key) if self.key is not None else f"<no {self.name}>"


@dataclass
class Item:
    id: str
    label: str | None
    sides: tuple[Side, ...]
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Problem:
    kind: str
    paths: list[str]
    detail: str
    item_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "paths": self.paths,
            "detail": self.detail,
            "item_ids": self.item_ids,
        }


@dataclass
class Sample:
    id: str
    image: Image.Image | tuple[Image.Image | None, ...] | None
    label: str | None
    meta: dict[str, Any]


class Source:
    """Base class. Subclasses fill ``items`` and ``problems`` and implement ``fetch``."""

    kind: str = "source"
    description: str = ""
    side_names: tuple[str, ...] = ("image",)
    in_memory: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.problems: list[Problem] = []

    @property
    def two_sided(self) -> bool:
        return len(self.side_names) > 1

    def fetch(self, key: str) -> bytes | np.ndarray:
        raise NotImplementedError

    def load(self, key: str, draft: tuple[int, int] | None = None) -> Image.Image:
        """Decode one side; raises ImageProblem for a bad file."""
        raw = self.fetch(key)
        if isinstance(raw, np.ndarray):
            return Image.fromarray(raw)
        return decode(raw, self.max_pixels, draft)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Sample]:
        for item in self.items:
            images = []
            for side in item.sides:
                try:
                    images.append(self.load(side.key) if side.key is not None else None)
                except (ImageProblem, OSError):
                    images.append(None)
            image = images[0] if len(images) == 1 else tuple(images)
            yield Sample(item.id, image, item.label, item.meta)

    def class_names(self) -> list[str]:
        return sorted({it.label for it in self.items if it.label is not None})

    def items_digest(self) -> str:
        """A fingerprint of the items listed: an audit and a prepared dataset of one source share it."""
        h = hashlib.blake2b(digest_size=12)
        for it in self.items:
            h.update(it.id.encode("utf-8", "surrogateescape") + b"\n")
        return h.hexdigest()


# --------------------------------------------------------------------------- folder tree


class FolderSource(Source):
    """``root/<class>/*.jpg``, or ``root/{train,val,test}/<class>/*.jpg`` whose splits are kept."""

    kind = "folder"

    def __init__(self, path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS, prefix: str = ""):
        super().__init__()
        self.store: Store = open_store(path, prefix)
        self.description = self.store.description
        self.max_pixels = max_pixels
        files = self._unwrap(path, prefix)
        for rel, kind, why in self.store.skipped:
            self.problems.append(Problem(kind, [safe_text(rel)], f"{why}; left out"))
        tops = {f.split("/", 1)[0] for f in files if "/" in f}
        has_splits = bool(tops) and tops <= set(SPLIT_DIR_NAMES)
        class_dirs: dict[str, int] = {}
        for rel in files:
            self._add_file(rel, 2 if has_splits else 1, has_splits, class_dirs)
        for label, n in sorted(class_dirs.items()):
            if n == 0:
                detail = f"class folder {safe_text(label)!r} holds no images"
                self.problems.append(Problem("empty_class", [safe_text(label)], detail))
        if has_splits:
            self.description += " (split folders: " + ", ".join(sorted(tops)) + ")"

    def _unwrap(self, path, prefix: str) -> list[str]:
        """The files; archives often wrap everything in one folder (data.zip -> data/...): look inside it."""
        files = self.store.list_files()
        if not files:
            raise CamscopeError(
                f"no files found under {self.description}",
                "point at a folder with one sub-folder per class",
            )
        while files and all("/" in f for f in files):
            first = {f.split("/", 1)[0] for f in files}
            if len(first) != 1 or next(iter(first)) in SPLIT_DIR_NAMES:
                break
            if not all(f.count("/") >= 2 for f in files):
                break
            wrapper = next(iter(first))
            self.store = open_store(path, f"{prefix}/{wrapper}".strip("/"))
            self.description = self.store.description
            files = self.store.list_files()
        return files

    def _add_file(self, rel: str, depth: int, has_splits: bool, class_dirs: dict[str, int]) -> None:
        """One file of the tree: an item of its folder's class, or a finding."""
        parts = rel.split("/")
        if len(parts) <= depth:
            self.problems.append(
                Problem("stray_file", [safe_text(rel)], "file outside any class folder; ignored")
            )
            return
        split = SPLIT_DIR_NAMES[parts[0]] if has_splits else None
        label = parts[depth - 1]
        class_dirs.setdefault(label, 0)
        if not is_image_name(rel):
            detail = "file name has no image extension; ignored"
            self.problems.append(Problem("not_an_image_file", [safe_text(rel)], detail))
            return
        class_dirs[label] += 1
        item_id = safe_text(rel.rsplit(".", 1)[0])
        if item_id != rel.rsplit(".", 1)[0]:
            detail = "file name is not valid UTF-8; kept under an escaped id"
            self.problems.append(Problem("non_utf8_name", [safe_text(rel)], detail, [item_id]))
        self.items.append(Item(item_id, safe_text(label), (Side("image", rel),), split))

    def fetch(self, key: str) -> bytes:
        return self.store.read_bytes(key)


# --------------------------------------------------------------------------- CSV manifest


def _close(name: str, options: list[str]) -> str:
    near = difflib.get_close_matches(name, options, n=1)
    return f"; did you mean {near[0]!r}?" if near else ""


def read_csv_text(raw: bytes, where: str) -> tuple[str, str | None]:
    """A CSV's text (UTF-8, else Windows-1252, which decodes any byte) and a warning for the latter."""
    try:
        return raw.decode("utf-8-sig"), None
    except UnicodeDecodeError:
        return raw.decode("cp1252", errors="replace"), f"{where} is not valid UTF-8; read as Windows-1252"


def _sniff_delimiter(text: str) -> str:
    sample = text[:65536]
    try:
        return csv.Sniffer().sniff(sample, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _side_names(image_cols: list[str], patterns: list[str], names: list[str] | None) -> tuple[str, ...]:
    if bool(image_cols) == bool(patterns):
        raise CamscopeError(
            "a CSV source needs image path columns or file-name patterns, not both",
            "pass --image-col COL (once per side) or --pattern 'heads{row:05d}.jpg'",
        )
    n_sides = len(image_cols) or len(patterns)
    if n_sides > 2:
        raise CamscopeError(f"{n_sides} sides given; camscope handles one or two sides per object")
    if names is None:
        names = ["image"] if n_sides == 1 else ["obverse", "reverse"]
    if len(names) != n_sides:
        raise CamscopeError(f"{len(names)} side names for {n_sides} sides", "give one name per side")
    return tuple(names)


def _label_rule(label_col: str | None, label_from: str | None, label_regex: str | None) -> re.Pattern | None:
    if label_col and label_regex:
        raise CamscopeError("give either a label column or a label rule, not both")
    if label_regex and not label_from:
        raise CamscopeError("a label rule needs the column it applies to", "pass --label-from COLUMN")
    if not label_regex:
        return None
    try:
        rule = re.compile(label_regex)
    except re.error as e:
        raise CamscopeError(f"label rule {label_regex!r} is not a valid regular expression: {e}") from None
    if rule.groups != 1 and "label" not in rule.groupindex:
        raise CamscopeError(
            f"label rule {label_regex!r} has {rule.groups} capture groups",
            "use exactly one group, or name the label group (?P<label>...)",
        )
    return rule


def _check_patterns(patterns: list[str]) -> None:
    """Only the documented fields, plainly: ``{id.__class__}`` or ``{row[0]}`` would reach into
    Python objects, so attribute and index access, conversions and nested fields are refused."""
    hint = "use {row} (1-based data row, e.g. {row:05d}) or {id}"
    for p in patterns:
        try:
            fields = list(string.Formatter().parse(p))
        except ValueError as e:
            raise CamscopeError(f"file-name pattern {p!r} is not valid: {e}", hint) from None
        for _, name, spec, conversion in fields:
            if name is None:
                continue
            if name not in ("row", "id") or conversion or "{" in (spec or ""):
                raise CamscopeError(
                    f"file-name pattern {p!r} uses {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}, which is not one of its fields",
                    hint,
                )
        try:
            p.format(row=1, id="x")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise CamscopeError(f"file-name pattern {p!r} is not valid: {e}", hint) from None


class CsvSource(Source):
    """Rows of a CSV manifest.

    Images come from path columns (``image_cols``, relative to ``data_root``) or from file-name
    patterns keyed by the 1-based data-row number (``patterns``, e.g. ``images/heads{row:05d}.jpg``).
    Labels come from ``label_col`` or from ``label_regex`` (one capture group) applied to
    ``label_from``.
    """

    kind = "csv"

    def __init__(
        self,
        csv_path: str | Path,
        *,
        data_root: str | Path | None = None,
        image_cols: list[str] | None = None,
        patterns: list[str] | None = None,
        side_names: list[str] | None = None,
        label_col: str | None = None,
        label_from: str | None = None,
        label_regex: str | None = None,
        id_col: str | None = None,
        delimiter: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ):
        super().__init__()
        self.max_pixels = max_pixels
        self.image_cols = list(image_cols or [])
        self.patterns = list(patterns or [])
        self.label_col, self.label_from, self.id_col = label_col, label_from, id_col
        self.side_names = _side_names(self.image_cols, self.patterns, side_names)
        self.rule = _label_rule(label_col, label_from, label_regex)
        _check_patterns(self.patterns)
        raw, where = self._open(str(csv_path), data_root)
        self.description = f"{where} (images under {self.store.description})"
        reader = self._reader(raw, where, delimiter)
        self._exists: dict[str, bool] = {}
        seen_ids: dict[str, int] = {}
        for row_no, row in enumerate(reader, start=1):
            if None in row:  # more fields than header names
                row.pop(None)
            row = {k: (v if v is not None else "") for k, v in row.items()}
            item_id = self._row_id(row, row_no, seen_ids)
            if item_id is None:
                continue
            sides = tuple(self._side(row, row_no, item_id, s) for s in range(len(self.side_names)))
            label = self._label(row, row_no, item_id, sides)
            meta = {k: v for k, v in row.items() if k}
            meta["row"] = row_no
            self.items.append(Item(item_id, label, sides, None, meta))
        del self._exists  # workers get a copy of the source: keep it small
        if not self.items:
            raise CamscopeError(f"{where} has a header but no data rows")
        if label_col is None and self.rule is None:
            self.problems.append(
                Problem("missing_label", [], "no label column or rule given: items are unlabelled")
            )

    def _open(self, csv_path: str, data_root) -> tuple[bytes, str]:
        """The CSV's bytes (a file, or a member of a zip archive: "archive.zip!/member.csv") and
        where it came from; sets the store its image paths are read from."""
        if "!/" in csv_path:
            archive, member = csv_path.split("!/", 1)
            root_store = open_store(archive)
            raw = root_store.read_bytes(member) if root_store.exists(member) else None
            if raw is None:
                raise CamscopeError(f"{member} not found in {archive}", "list the archive with `unzip -l`")
            member_dir = member.rsplit("/", 1)[0] if "/" in member else ""
            self.store = open_store(archive, member_dir if data_root is None else str(data_root))
            return raw, f"{archive}!/{member}"
        path = Path(csv_path)
        if not path.is_file():
            raise CamscopeError(f"CSV manifest {path} not found", "check the path")
        self.store = open_store(data_root if data_root is not None else path.parent)
        return path.read_bytes(), str(path)

    def _reader(self, raw: bytes, where: str, delimiter: str | None) -> csv.DictReader:
        """A reader over the rows, after checking that the columns asked for exist."""
        text, enc_warning = read_csv_text(raw, where)
        if enc_warning:
            self.problems.append(Problem("csv_encoding", [where], enc_warning))
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter or _sniff_delimiter(text))
        columns = list(reader.fieldnames or [])
        if not columns:
            raise CamscopeError(
                f"{where} is empty or has no header row", "the first line must name the columns"
            )
        for c in [*self.image_cols, self.label_col, self.label_from, self.id_col]:
            if c and c not in columns:
                hint = f"available columns: {', '.join(repr(x) for x in columns)}{_close(c, columns)}"
                if len(columns) == 1 and any(d in columns[0] for d in ";\t|,"):
                    hint += "; the header looks like one column: pass --delimiter"
                raise CamscopeError(f"column {c!r} is not in {where}", hint)
        return reader

    def _row_id(self, row: dict, row_no: int, seen: dict[str, int]) -> str | None:
        """The row's item id (None: a duplicate id, the row is skipped)."""
        item_id = (row.get(self.id_col) or "").strip() if self.id_col else f"row{row_no:05d}"
        if not item_id:
            item_id = f"row{row_no:05d}"
            detail = f"row {row_no} has an empty id; using {item_id}"
            self.problems.append(Problem("missing_id", [], detail, [item_id]))
        if item_id in seen:
            detail = f"id {item_id!r} in row {row_no} already used in row {seen[item_id]}; row skipped"
            self.problems.append(Problem("duplicate_id", [], detail, [item_id]))
            return None
        seen[item_id] = row_no
        return item_id

    def _side(self, row: dict, row_no: int, item_id: str, s: int) -> Side:
        """Side ``s`` of the row's object: its file, or no file (with the finding) when it has none."""
        name = self.side_names[s]
        if self.image_cols:
            rel = (row.get(self.image_cols[s]) or "").strip()
        else:
            rel = self.patterns[s].format(row=row_no, id=item_id)
        if not rel or rel.lower() in EMPTY_LABELS:
            self.problems.append(
                Problem("missing_file", [], f"row {row_no}: no {name} path given", [item_id])
            )
            return Side(name, None)
        try:
            clean = normalise_relpath(rel)
        except PathOutsideRoot as e:
            detail = f"row {row_no}: {e}; refused"
            self.problems.append(Problem("path_outside_root", [safe_text(rel)], detail, [item_id]))
            return Side(name, None)
        if clean not in self._exists:
            self._exists[clean] = self.store.exists(clean)
        if not self._exists[clean]:
            detail = f"row {row_no}: {name} file does not exist"
            self.problems.append(Problem("missing_file", [safe_text(clean)], detail, [item_id]))
            return Side(name, None)
        return Side(name, clean)

    def _label(self, row: dict, row_no: int, item_id: str, sides: tuple[Side, ...]) -> str | None:
        """The row's label from its column or its rule; None (with the finding) when there is none."""
        paths = [s.display for s in sides if s.key]
        if self.label_col:
            label = (row.get(self.label_col) or "").strip()
            if label.lower() not in EMPTY_LABELS:
                return label
            detail = f"row {row_no}: label column {self.label_col!r} is empty"
            self.problems.append(Problem("missing_label", paths, detail, [item_id]))
            return None
        if self.rule is None:
            return None
        text_val = (row.get(self.label_from) or "").strip()
        if not text_val:
            self.problems.append(
                Problem("missing_label", paths, f"row {row_no}: {self.label_from!r} is empty", [item_id])
            )
            return None
        m = self.rule.search(text_val)
        found = m and (m.group("label") if "label" in self.rule.groupindex else m.group(1))
        if not found:
            detail = f"row {row_no}: rule does not match {text_val[:80]!r}"
            self.problems.append(Problem("unparsed_label", paths, detail, [item_id]))
            return None
        return found.strip()

    def fetch(self, key: str) -> bytes:
        return self.store.read_bytes(key)


# --------------------------------------------------------------------------- arrays in memory


class ArraySource(Source):
    """Items whose pixels are already in memory (CIFAR archives, synthetic coins)."""

    in_memory = True

    def __init__(self, images: dict[str, np.ndarray], description: str):
        super().__init__()
        self._images = images
        self.description = description

    def fetch(self, key: str) -> np.ndarray:
        return self._images[key]
