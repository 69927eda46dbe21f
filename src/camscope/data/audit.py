"""The data audit: what is wrong with a source before anything is trained on it.

One pass decodes every image (in parallel, JPEGs at reduced scale) to record its hash, size,
colour and a 32x32 thumbnail; the thumbnails then feed the near-duplicate search. Every finding
is a ``Problem(kind, paths, detail, item_ids)``; nothing is fixed here, only reported.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from camscope import __version__
from camscope.data.imageio import ImageProblem, open_header
from camscope.data.neardup import THUMB, NearDupParams, connected_groups, find_near_duplicates, merge_groups
from camscope.data.parallel import parallel_map, worker_source
from camscope.data.sources import Problem, Source
from camscope.utils import atomic_write_text

PROBLEM_KINDS = {
    "zero_byte": "file is empty",
    "not_an_image": "file is not an image",
    "truncated": "file is cut short",
    "unreadable": "image cannot be decoded",
    "too_large": "header claims too many pixels",
    "missing_file": "referenced file does not exist",
    "missing_side": "object lacks one of its sides",
    "path_outside_root": "path leaves the data root",
    "missing_label": "label missing or empty",
    "unparsed_label": "label text does not match the rule",
    "duplicate_id": "id used twice",
    "missing_id": "id empty",
    "exact_duplicate": "byte-identical files",
    "near_duplicate": "near-identical images",
    "conflicting_labels": "duplicates with different labels",
    "same_image_both_sides": "both sides show the same picture",
    "odd_size": "size far from the rest",
    "odd_aspect": "aspect ratio far from the rest",
    "grayscale_in_color": "grayscale image in a colour set",
    "class_imbalance": "classes of very different sizes",
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


@dataclass
class AuditConfig:
    near_duplicates: bool = True
    neardup: NearDupParams = field(default_factory=NearDupParams)
    workers: int = 0  # 0: one per core
    imbalance_ratio: float = 3.0  # largest / smallest class above this is reported
    min_class_size: int = 5
    size_factor: float = 4.0  # an image with area this far from the median is odd
    aspect_factor: float = 1.5  # an aspect ratio this far from the median is odd
    chunk: int = 256


@dataclass
class ImageRecord:
    key: str
    nbytes: int
    digest: str | None
    width: int = 0
    height: int = 0
    gray: bool = False
    problem: tuple[str, str] | None = None
    thumb: np.ndarray | None = None
    fine: np.ndarray | None = None  # 64x64 grayscale, for the fine near-duplicate check


def _scan_one(source: Source, key: str) -> ImageRecord:
    try:
        raw = source.fetch(key)
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
            img = source.load(key, draft=(4 * THUMB, 4 * THUMB))
        except ImageProblem as e:
            return ImageRecord(key, nbytes, digest, problem=(e.kind, e.detail))
    rgb = img.convert("RGB")
    small = rgb.resize((THUMB, THUMB), Image.BILINEAR, reducing_gap=2.0)
    arr = np.asarray(small, dtype=np.int16)
    gray = img.mode == "L" or float(np.percentile(arr.max(2) - arr.min(2), 99)) <= 6
    thumb = np.asarray(small.convert("L"))
    fine = np.asarray(rgb.convert("L").resize((2 * THUMB, 2 * THUMB), Image.BILINEAR, reducing_gap=2.0))
    return ImageRecord(key, nbytes, digest, w, h, gray, None, thumb, fine)


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
    config = config or AuditConfig()
    t0 = time.perf_counter()
    problems: list[Problem] = list(source.problems)
    side_of: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(source.items):
        for s, side in enumerate(item.sides):
            if side.key is not None and side.key not in side_of:
                side_of[side.key] = (i, s)
    keys = list(side_of)
    records: dict[str, ImageRecord] = {}
    for batch in parallel_map(source, _scan_chunk, keys, config.workers, config.chunk, "auditing images"):
        for rec in batch:
            records[rec.key] = rec
    t_scan = time.perf_counter() - t0

    def disp(key: str) -> str:
        i, s = side_of[key]
        return source.items[i].sides[s].display

    def item_id(key: str) -> str:
        return source.items[side_of[key][0]].id

    for rec in records.values():
        if rec.problem:
            kind, detail = rec.problem
            problems.append(Problem(kind, [disp(rec.key)], detail, [item_id(rec.key)]))

    # objects whose sides are not all usable
    if source.two_sided:
        for item in source.items:
            bad = [s.name for s in item.sides if s.key is None or records[s.key].problem]
            if bad:
                problems.append(
                    Problem(
                        "missing_side",
                        [s.display for s in item.sides if s.key],
                        f"{item.id}: no usable {' or '.join(bad)}",
                        [item.id],
                    )
                )

    good = [r for r in records.values() if r.problem is None]
    # exact duplicates: identical bytes (or identical pixels for in-memory sources)
    exact = _groups_of({r.key: r.digest for r in good})
    exact_groups = [[disp(k) for k in g] for g in exact]

    # near duplicates among distinct images; byte-identical copies join their representative's group
    t1 = time.perf_counter()
    near_groups_keys: list[list[str]] = []
    nd_info: dict = {"enabled": config.near_duplicates}
    if config.near_duplicates and len(good) > 1:
        reps: dict[str, ImageRecord] = {}
        for r in good:
            reps.setdefault(r.digest, r)
        rep_list = list(reps.values())
        thumbs = np.stack([r.thumb for r in rep_list])
        fine = np.stack([r.fine for r in rep_list])
        has_fine = np.array([min(r.width, r.height) >= 2 * THUMB for r in rep_list])
        res = find_near_duplicates(thumbs, config.neardup, fine, has_fine)
        copies = defaultdict(list)
        for r in good:
            copies[r.digest].append(r.key)
        for g in connected_groups(len(rep_list), res.pairs):
            near_groups_keys.append(sorted(k for idx in g for k in copies[rep_list[idx].digest]))
        nd_info.update(
            {
                "candidates": res.n_candidates,
                "verified_pairs": int(len(res.pairs)),
                "flat_images_skipped": res.n_flat,
                "params": asdict(config.neardup),
            }
        )
    t_near = time.perf_counter() - t1
    near_groups = [[disp(k) for k in g] for g in near_groups_keys]

    for g in exact:
        problems.append(
            Problem(
                "exact_duplicate",
                [disp(k) for k in g],
                f"{len(g)} byte-identical files",
                sorted({item_id(k) for k in g}),
            )
        )
    for g in near_groups_keys:
        problems.append(
            Problem(
                "near_duplicate",
                [disp(k) for k in g],
                f"{len(g)} near-identical images",
                sorted({item_id(k) for k in g}),
            )
        )

    # duplicates that disagree on the label, and objects showing one picture on both sides
    for g in [*exact, *near_groups_keys]:
        labels = {source.items[side_of[k][0]].label for k in g} - {None}
        if len(labels) > 1:
            problems.append(
                Problem(
                    "conflicting_labels",
                    [disp(k) for k in g],
                    f"the same picture is labelled {', '.join(sorted(labels))}",
                    sorted({item_id(k) for k in g}),
                )
            )
        by_item = Counter(side_of[k][0] for k in g)
        for i, n in by_item.items():
            if n > 1 and source.two_sided:
                it = source.items[i]
                problems.append(
                    Problem(
                        "same_image_both_sides",
                        [s.display for s in it.sides if s.key],
                        f"{it.id}: its sides are (near-)identical pictures",
                        [it.id],
                    )
                )

    # odd sizes, odd aspect ratios and grayscale images (only meaningful for decoded files)
    size_stats: dict = {}
    if good:
        areas = np.array([r.width * r.height for r in good], dtype=float)
        aspects = np.array([r.width / r.height for r in good])
        med_area, med_aspect = float(np.median(areas)), float(np.median(aspects))
        n_gray = sum(r.gray for r in good)
        size_stats = {
            "median_width": float(np.median([r.width for r in good])),
            "median_height": float(np.median([r.height for r in good])),
            "min_width": int(min(r.width for r in good)),
            "min_height": int(min(r.height for r in good)),
            "max_width": int(max(r.width for r in good)),
            "max_height": int(max(r.height for r in good)),
            "grayscale_images": int(n_gray),
        }
        for r, a, asp in zip(good, areas, aspects, strict=True):
            if a < med_area / config.size_factor**2 or a > med_area * config.size_factor**2:
                problems.append(
                    Problem(
                        "odd_size",
                        [disp(r.key)],
                        f"{r.width}x{r.height}, median is {size_stats['median_width']:.0f}x"
                        f"{size_stats['median_height']:.0f}",
                        [item_id(r.key)],
                    )
                )
            if abs(math.log(asp / med_aspect)) > math.log(config.aspect_factor):
                problems.append(
                    Problem(
                        "odd_aspect",
                        [disp(r.key)],
                        f"aspect {asp:.2f} (w/h), median is {med_aspect:.2f}; "
                        "a composite or badly cropped picture?",
                        [item_id(r.key)],
                    )
                )
        if n_gray < len(good) / 2:
            for r in good:
                if r.gray:
                    problems.append(
                        Problem(
                            "grayscale_in_color",
                            [disp(r.key)],
                            "grayscale image in a mostly colour set",
                            [item_id(r.key)],
                        )
                    )

    class_counts = Counter(it.label for it in source.items if it.label is not None)
    if class_counts:
        big, small = max(class_counts.values()), min(class_counts.values())
        if len(class_counts) == 1:
            problems.append(
                Problem(
                    "single_class",
                    [],
                    f"all labelled items are {next(iter(class_counts))!r}: "
                    "a classifier needs at least two classes",
                )
            )
        elif big / small > config.imbalance_ratio:
            problems.append(
                Problem(
                    "class_imbalance",
                    [],
                    f"largest class has {big} items, smallest {small} (ratio {big / small:.1f}); "
                    "consider class weights or selecting classes",
                )
            )
        for label, n in sorted(class_counts.items()):
            if n < config.min_class_size:
                problems.append(
                    Problem(
                        "small_class",
                        [],
                        f"class {label!r} has only {n} items",
                        [it.id for it in source.items if it.label == label],
                    )
                )

    # item-level duplicate groups: what a leak-free split must keep together
    item_groups = merge_groups([item_id(k) for k in g] for g in [*exact, *near_groups_keys])

    counts = Counter(p.kind for p in problems)
    return {
        "schema": "camscope.audit/1",
        "camscope_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "source": {
            "kind": source.kind,
            "description": source.description,
            "side_names": list(source.side_names),
        },
        "n_items": len(source.items),
        "n_images": len(keys),
        "n_readable": len(good),
        "class_counts": dict(sorted(class_counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        "unlabelled": sum(1 for it in source.items if it.label is None),
        "problem_counts": dict(sorted(counts.items())),
        "problems": [p.to_json() for p in problems],
        "exact_duplicate_groups": exact_groups,
        "near_duplicate_groups": near_groups,
        "duplicate_item_groups": item_groups,
        "images": size_stats,
        "near_duplicate_search": nd_info,
        "timing_s": {
            "scan": round(t_scan, 2),
            "near_duplicates": round(t_near, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }


def write_audit(report: dict, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "audit.json"
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
