"""The data audit: what is wrong with a source before anything is trained on it.

One pass decodes every image (in parallel, JPEGs at reduced scale) to record its hash, size,
colour, quality scores (exposure, sharpness; data/quality.py) and a 32x32 thumbnail; the
thumbnails then feed the near-duplicate search. Every finding
is a ``Problem(kind, paths, detail, item_ids)``; nothing is fixed here, only reported.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camscope import __version__
from camscope.data.imageio import ImageProblem, decode, open_header
from camscope.data.neardup import THUMB, NearDupParams, connected_groups, find_near_duplicates, merge_groups
from camscope.data.parallel import parallel_map, worker_source
from camscope.data.quality import QUALITY_KINDS, QualityParams, QualityScores, judge, measure
from camscope.data.scan_cache import THUMB_FILES, ScanCache, ThumbFile, clear_scan_cache
from camscope.data.sources import Problem, Source
from camscope.utils import atomic_write_text

PROBLEM_KINDS = {
    "zero_byte": "empty file",
    "not_an_image": "file is not an image (content sniffed)",
    "truncated": "image data ends early",
    "unreadable": "image cannot be decoded",
    "too_large": "header claims more pixels than allowed",
    "missing_file": "a listed file does not exist",
    "missing_side": "a two-sided item lacks one side",
    "path_outside_root": "path points outside the data folder",
    "missing_label": "label missing or empty",
    "unparsed_label": "the label rule does not match the text",
    "duplicate_id": "the same id twice",
    "missing_id": "id empty",
    "exact_duplicate": "byte-identical files",
    "shared_file": "several items name the same image file",
    "near_duplicate": "the same picture re-encoded, resized, slightly shifted (or, asked for, mirrored)",
    "conflicting_labels": "duplicates that carry different labels",
    "same_image_both_sides": "both sides are the same picture",
    "odd_size": "far from the median size",
    "odd_aspect": "far from the median aspect ratio (e.g. composites)",
    "grayscale_in_color": "grayscale image in a colour dataset",
    **QUALITY_KINDS,
    "class_imbalance": "largest class far bigger than the smallest",
    "small_class": "class with very few items",
    "single_class": "only one class",
    "empty_class": "class folder without images",
    "stray_file": "file outside any class folder",
    "not_an_image_file": "non-image file in the tree",
    "non_utf8_name": "file name is not UTF-8",
    "csv_encoding": "CSV is not UTF-8",
}


# findings whose items cannot be prepared: left out by `prepare --audit` and by studies' default cleaning
BAD_FILE_KINDS = (
    "zero_byte",
    "not_an_image",
    "truncated",
    "unreadable",
    "too_large",
    "missing_file",
    "missing_side",
    "path_outside_root",
)


def excluded_items(report: dict, kinds) -> dict[str, str]:
    """Item id -> why it is left out, for the items of the audit's findings of ``kinds``."""
    out: dict[str, str] = {}
    for p in report["problems"]:
        if p["kind"] in kinds:
            for i in p["item_ids"]:
                out.setdefault(i, f"{p['kind']} (audit): {p['detail']}")
    return out


SCAN_CACHE = ".scan-cache"  # beside audit.json while an audit runs
SCAN_VERSION = 2  # bump when _scan_one's output changes: a cached scan of another version is redone


@dataclass
class AuditConfig:
    near_duplicates: bool = True
    neardup: NearDupParams = field(default_factory=NearDupParams)
    workers: int = 0  # 0: one per core
    imbalance_ratio: float = 3.0  # largest / smallest class above this is reported
    min_class_size: int = 5
    size_factor: float = 4.0  # an image with area this far from the median is odd
    aspect_factor: float = 1.5  # an aspect ratio this far from the median is odd
    quality: QualityParams = field(default_factory=QualityParams)
    chunk: int = 256
    # scan results are saved here as they come, so a killed audit resumes from them; the caller
    # removes the folder once the audit is written (ScanCache.clear)
    cache_dir: Path | None = None
    cache_every: int = 4096  # images per saved part (or 5 s of scanning, whichever comes first)


@dataclass(slots=True)  # a million of them: no per-instance dict
class ImageRecord:
    key: str
    nbytes: int
    digest: str | None
    width: int = 0
    height: int = 0
    gray: bool = False
    problem: tuple[str, str] | None = None
    has_thumb: bool = False  # its thumbnails are in the audit's thumbnail files
    quality: QualityScores | None = None
    # on the way from a worker only; the audit moves them into its thumbnail files
    thumb: np.ndarray | None = None
    fine: np.ndarray | None = None  # 64x64 grayscale (images of 64 px or more), for the fine check

    @property
    def has_fine(self) -> bool:
        """Only an image of 64 px or more has detail a 64-px thumbnail can show; for a smaller one
        it would be an upsampled copy of the 32-px thumbnail."""
        return self.has_thumb and min(self.width, self.height) >= 2 * THUMB


def _percentile_99(x: np.ndarray) -> float:
    """np.percentile(x, 99) (linear interpolation) from two order statistics: a tenth of its cost."""
    v = x.ravel()
    pos = 0.99 * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    part = np.partition(v, [lo, hi])
    a, b, t = float(part[lo]), float(part[hi]), pos - lo
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t  # numpy's rounding


def _scan_one(source: Source, key: str) -> ImageRecord:
    try:
        raw = source.fetch(key)
    except ImageProblem as e:  # a bomb, a link out of the folder: refused before reading
        return ImageRecord(key, 0, None, problem=(e.kind, e.detail))
    except (OSError, KeyError) as e:
        return ImageRecord(key, 0, None, problem=("missing_file", f"cannot be read: {e}"))
    if isinstance(raw, np.ndarray):
        digest = hashlib.blake2b(raw.tobytes() + str(raw.shape).encode(), digest_size=16).hexdigest()
        img = Image.fromarray(raw)
        nbytes = raw.nbytes
        w, h = img.size
    else:
        digest = hashlib.blake2b(raw, digest_size=16).hexdigest()
        nbytes = len(raw)
        try:
            hdr = open_header(raw, source.max_pixels)
            w, h = hdr.size
            try:
                if hdr.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF says the image is on its side
                    w, h = h, w
            except Exception:  # noqa: BLE001 - a broken EXIF block is not our concern here
                pass
            img = decode(raw, source.max_pixels, (4 * THUMB, 4 * THUMB), header=hdr)  # read and parsed once
        except ImageProblem as e:
            return ImageRecord(key, nbytes, digest, problem=(e.kind, e.detail))
    rgb = img.convert("RGB")
    small = rgb.resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(small, dtype=np.int16)
    gray = img.mode == "L" or _percentile_99(arr.max(2) - arr.min(2)) <= 6
    thumb = np.asarray(small.convert("L"))
    rec = ImageRecord(key, nbytes, digest, w, h, gray, None, True, measure(rgb), thumb)
    if rec.has_fine:
        rec.fine = np.asarray(
            rgb.convert("L").resize((2 * THUMB, 2 * THUMB), Image.BILINEAR, reducing_gap=2.0)
        )
    return rec


def _scan_chunk(keys: list[str]) -> list[ImageRecord]:
    source = worker_source()
    return [_scan_one(source, k) for k in keys]


def _groups_of(values: dict[str, str]) -> list[list[str]]:
    by: dict[str, list[str]] = defaultdict(list)
    for k, v in values.items():
        by[v].append(k)
    return sorted((sorted(g) for g in by.values() if len(g) > 1), key=lambda g: g[0])


def audit(source: Source, config: AuditConfig | None = None) -> dict:
    """Audit ``source`` and return the report (the content of audit.json)."""
    a = _Audit(source, config or AuditConfig())
    with contextlib.ExitStack() as stack:
        if a.config.cache_dir is None:  # the thumbnails still go to disk, not to memory
            a.work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="camscope-audit-")))
        else:
            a.work = Path(a.config.cache_dir)
        return _report(a, source)


def _report(a: _Audit, source: Source) -> dict:
    a.scan()
    a.file_findings()
    exact, near, nd_info = a.duplicates()
    a.duplicate_findings(exact, near)
    quality = a.quality_findings()
    size_stats = a.image_findings()
    class_counts = a.class_findings()
    # item-level duplicate groups: what a leak-free split must keep together
    item_groups = merge_groups([*([a.item_id(k) for k in g] for g in [*exact, *near]), *a.shared_files()])
    counts = Counter(p.kind for p in a.problems)
    return {
        "schema": "camscope.audit/1",
        "camscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": {
            "kind": source.kind,
            "description": source.description,
            "side_names": list(source.side_names),
            "items_digest": source.items_digest(),
        },
        "n_items": len(source.items),
        "n_images": len(a.side_of),
        "n_readable": len(a.good),
        "class_counts": dict(sorted(class_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "unlabelled": sum(1 for it in source.items if it.label is None),
        "problem_counts": dict(sorted(counts.items())),
        "problems": [p.to_json() for p in a.problems],
        "exact_duplicate_groups": [[a.disp(k) for k in g] for g in exact],
        "near_duplicate_groups": [[a.disp(k) for k in g] for g in near],
        "duplicate_item_groups": item_groups,
        "images": size_stats,
        "image_quality": quality,
        "near_duplicate_search": nd_info,
        "resumed_images": a.resumed,
        "timing_s": {
            "scan": round(a.t_scan, 2),
            "near_duplicates": round(a.t_near, 2),
            "total": round(time.perf_counter() - a.t0, 2),
        },
    }


class _Audit:
    """One audit's working state: each step adds its findings to ``problems``, in report order."""

    def __init__(self, source: Source, config: AuditConfig):
        self.source, self.config = source, config
        self.t0 = time.perf_counter()
        self.t_scan = self.t_near = 0.0
        self.problems: list[Problem] = list(source.problems)
        self.side_of: dict[str, tuple[int, int]] = {}  # image key -> its first (item, side)
        self.items_of: dict[str, list[int]] = {}  # image key -> every item naming it
        for i, item in enumerate(source.items):
            for s, side in enumerate(item.sides):
                if side.key is not None:
                    self.side_of.setdefault(side.key, (i, s))
                    if i not in self.items_of.setdefault(side.key, []):
                        self.items_of[side.key].append(i)
        self.records: dict[str, ImageRecord] = {}
        self.work: Path | None = None  # where the thumbnail files are (the scan cache, or a temporary folder)
        self.row: dict[str, int] = {}  # image key -> its row in the thumbnail files
        self.resumed = 0  # images whose scan came from the cache of a killed audit
        self.good: list[ImageRecord] = []
        self.blank: set[str] = set()  # keys of one-colour pictures: no grayscale finding for them

    def disp(self, key: str) -> str:
        i, s = self.side_of[key]
        return self.source.items[i].sides[s].display

    def item_id(self, key: str) -> str:
        return self.source.items[self.side_of[key][0]].id

    def _add(self, kind: str, keys: list[str], detail: str) -> None:
        self.problems.append(
            Problem(kind, [self.disp(k) for k in keys], detail, sorted({self.item_id(k) for k in keys}))
        )

    def scan(self) -> None:
        """Read every image once (in worker processes): size, digest, thumbnails, or what is wrong."""
        c = self.config
        keys = list(self.side_of)
        self.row = {k: i for i, k in enumerate(keys)}
        cache = self._open_cache(keys) if c.cache_dir is not None else None
        self.thumbs = ThumbFile(self.work / THUMB_FILES[0], len(keys), THUMB)
        self.fine = ThumbFile(self.work / THUMB_FILES[1], len(keys), 2 * THUMB)
        if cache is not None:
            for rec in cache.load(ImageRecord, QualityScores):
                if rec.key in self.row:
                    self.records[rec.key] = rec
            self.resumed = len(self.records)
        todo = [k for k in keys if k not in self.records]
        if todo:
            for batch in parallel_map(self.source, _scan_chunk, todo, c.workers, c.chunk, "auditing images"):
                self._store_thumbs(batch)
                for rec in batch:
                    self.records[rec.key] = rec
                if cache is not None:
                    cache.add(batch)
            if cache is not None:
                cache.flush()
        self.records = {k: self.records[k] for k in keys}  # the listing's order, resumed or not
        self.good = [r for r in self.records.values() if r.problem is None]
        self.t_scan = time.perf_counter() - self.t0

    def _open_cache(self, keys: list[str]) -> ScanCache:
        if not (self.work / THUMB_FILES[0]).is_file():  # records without their thumbnails are no use
            clear_scan_cache(self.work)
        fp = ScanCache.fingerprint(self.source, keys, {"thumb": THUMB, "scan": SCAN_VERSION})
        return ScanCache(self.work, fp, self.config.cache_every)  # clears a cache of another source first

    def _store_thumbs(self, batch: list[ImageRecord]) -> None:
        """Thumbnails to their files (flushed before the batch's records are cached), not kept."""
        for attr, file in (("thumb", self.thumbs), ("fine", self.fine)):
            have = [r for r in batch if getattr(r, attr) is not None]
            if have:
                file.write([self.row[r.key] for r in have], np.stack([getattr(r, attr) for r in have]))
        for r in batch:
            r.thumb = r.fine = None

    def shared_files(self) -> list[list[str]]:
        """Groups of item ids that name the same image file: one picture, so one group for the split."""
        return [[self.source.items[i].id for i in ids] for ids in self.items_of.values() if len(ids) > 1]

    def file_findings(self) -> None:
        """Broken files, files named by several items, and objects whose sides are not all usable."""
        for key, ids in self.items_of.items():
            if len(ids) > 1:
                item_ids = [self.source.items[i].id for i in ids]
                detail = f"{len(ids)} items name this file: {', '.join(item_ids[:5])}"
                self.problems.append(Problem("shared_file", [self.disp(key)], detail, item_ids))
        for rec in self.records.values():
            if rec.problem:
                kind, detail = rec.problem
                self._add(kind, [rec.key], detail)
        if self.source.two_sided:
            for item in self.source.items:
                bad = [s.name for s in item.sides if s.key is None or self.records[s.key].problem]
                if bad:
                    self.problems.append(
                        Problem(
                            "missing_side",
                            [s.display for s in item.sides if s.key],
                            f"{item.id}: no usable {' or '.join(bad)}",
                            [item.id],
                        )
                    )

    def duplicates(self) -> tuple[list[list[str]], list[list[str]], dict]:
        """Exact groups (identical bytes, or pixels for in-memory sources) and near groups among
        distinct images; byte-identical copies join their representative's near group."""
        exact = _groups_of({r.key: r.digest for r in self.good})
        t1 = time.perf_counter()
        near: list[list[str]] = []
        info: dict = {"enabled": self.config.near_duplicates}
        if self.config.near_duplicates and len(self.good) > 1:
            reps: dict[str, ImageRecord] = {}
            for r in self.good:
                reps.setdefault(r.digest, r)
            rep_list = list(reps.values())
            rows = np.array([self.row[r.key] for r in rep_list], dtype=np.int64)
            has_fine = np.zeros(len(self.thumbs), dtype=bool)
            has_fine[rows] = [r.has_fine for r in rep_list]
            res = find_near_duplicates(self.thumbs, self.config.neardup, self.fine, has_fine, rows=rows)
            copies = defaultdict(list)
            for r in self.good:
                copies[r.digest].append(r.key)
            position = np.full(len(self.thumbs), -1, dtype=np.int64)
            position[rows] = np.arange(len(rows))
            for g in connected_groups(len(rep_list), position[res.pairs]):
                near.append(sorted(k for idx in g for k in copies[rep_list[idx].digest]))
            info.update(
                {
                    "candidates": res.n_candidates,
                    "verified_pairs": int(len(res.pairs)),
                    "mirrored_pairs": int(res.mirrored.sum()) if res.mirrored is not None else 0,
                    "not_distinctive_pairs": res.n_not_distinctive,
                    "other_texture_pairs": res.n_other_texture,
                    "flat_images_skipped": res.n_flat,
                    "index_used": res.index,
                    "params": asdict(self.config.neardup),
                }
            )
        self.t_near = time.perf_counter() - t1
        return exact, near, info

    def duplicate_findings(self, exact: list[list[str]], near: list[list[str]]) -> None:
        """The groups, duplicates that disagree on the label, and objects showing one picture twice."""
        for g in exact:
            self._add("exact_duplicate", g, f"{len(g)} byte-identical files")
        for g in near:
            self._add("near_duplicate", g, f"{len(g)} near-identical images")
        items = self.source.items
        for g in [*exact, *near]:
            labels = {items[self.side_of[k][0]].label for k in g} - {None}
            if len(labels) > 1:
                self._add(
                    "conflicting_labels", g, f"the same picture is labelled {', '.join(sorted(labels))}"
                )
            by_item = Counter(self.side_of[k][0] for k in g)
            for i, n in by_item.items():
                if n > 1 and self.source.two_sided:
                    it = items[i]
                    self.problems.append(
                        Problem(
                            "same_image_both_sides",
                            [s.display for s in it.sides if s.key],
                            f"{it.id}: its sides are (near-)identical pictures",
                            [it.id],
                        )
                    )

    def quality_findings(self) -> dict:
        """Dark, light, blank and blurry pictures; the thresholds, the set's median sharpness, and
        every picture's scores (``per_image``, written to image_quality.csv by write_audit)."""
        good = [r for r in self.good if r.quality is not None]
        findings, summary = judge([r.quality for r in good], self.config.quality)
        for f in findings:
            self._add(f.kind, [good[f.index].key], f.detail)
            if f.kind == "blank":
                self.blank.add(good[f.index].key)
        summary["per_image"] = {
            "path": [self.disp(r.key) for r in good],
            "item_id": [self.item_id(r.key) for r in good],
            **{
                col: [round(getattr(r.quality, col), 4) for r in good]
                for col in ("p01", "p05", "p95", "p99", "sharpness")
            },
        }
        return summary

    def image_findings(self) -> dict:
        """Odd sizes, odd aspect ratios and grayscale images among the decoded files; their statistics."""
        good, c = self.good, self.config
        if not good:
            return {}
        areas = np.array([r.width * r.height for r in good], dtype=float)
        aspects = np.array([r.width / r.height for r in good])
        med_area, med_aspect = float(np.median(areas)), float(np.median(aspects))
        n_gray = sum(r.gray and r.key not in self.blank for r in good)
        stats = {
            "median_width": float(np.median([r.width for r in good])),
            "median_height": float(np.median([r.height for r in good])),
            "min_width": int(min(r.width for r in good)),
            "min_height": int(min(r.height for r in good)),
            "max_width": int(max(r.width for r in good)),
            "max_height": int(max(r.height for r in good)),
            "grayscale_images": int(n_gray),
        }
        for r, a, asp in zip(good, areas, aspects, strict=True):
            if a < med_area / c.size_factor**2 or a > med_area * c.size_factor**2:
                median = f"{stats['median_width']:.0f}x{stats['median_height']:.0f}"
                self._add("odd_size", [r.key], f"{r.width}x{r.height}, median is {median}")
            if abs(math.log(asp / med_aspect)) > math.log(c.aspect_factor):
                self._add(
                    "odd_aspect",
                    [r.key],
                    f"aspect {asp:.2f} (w/h), median is {med_aspect:.2f}; "
                    "a composite or badly cropped picture?",
                )
        if n_gray < len(good) / 2:
            for r in good:
                if r.gray and r.key not in self.blank:
                    self._add("grayscale_in_color", [r.key], "grayscale image in a mostly colour set")
        return stats

    def class_findings(self) -> Counter:
        """A single class, imbalance and small classes; the class counts."""
        items, c = self.source.items, self.config
        counts = Counter(it.label for it in items if it.label is not None)
        if not counts:
            return counts
        big, small = max(counts.values()), min(counts.values())
        if len(counts) == 1:
            detail = f"all labelled items are {next(iter(counts))!r}: a classifier needs at least two classes"
            self.problems.append(Problem("single_class", [], detail))
        elif big / small > c.imbalance_ratio:
            detail = (
                f"largest class has {big} items, smallest {small} (ratio {big / small:.1f}); "
                "consider class weights or selecting classes"
            )
            self.problems.append(Problem("class_imbalance", [], detail))
        for label, n in sorted(counts.items()):
            if n < c.min_class_size:
                ids = [it.id for it in items if it.label == label]
                self.problems.append(Problem("small_class", [], f"class {label!r} has only {n} items", ids))
        return counts


def write_audit(report: dict, out_dir: str | Path) -> Path:
    """audit.json, and beside it image_quality.csv with every picture's quality scores."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "audit.json"
    quality = report.get("image_quality") or {}
    if "per_image" in quality:
        per = quality["per_image"]
        tmp = out / "image_quality.csv.tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(per))
            w.writerows(zip(*per.values(), strict=True))
        tmp.replace(out / "image_quality.csv")
        report = {**report, "image_quality": {k: v for k, v in quality.items() if k != "per_image"}}
        report["image_quality"]["per_image_file"] = "image_quality.csv"
    atomic_write_text(path, json.dumps(report, indent=1, ensure_ascii=False))
    return path


def load_audit(path: str | Path) -> dict:
    from camscope.errors import CamscopeError

    p = Path(path)
    if p.is_dir():
        p = p / "audit.json"
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CamscopeError(f"no audit at {p}", "run `camscope audit SOURCE --out DIR` first") from None
    except json.JSONDecodeError as e:
        raise CamscopeError(f"{p} is not valid JSON ({e})", "re-run the audit") from None
    if report.get("schema") != "camscope.audit/1":
        raise CamscopeError(f"{p} is not a camscope audit", "re-run `camscope audit`")
    return report
