"""Near-duplicate precision and recall over thresholds: camscope, imagededup PHash and cleanvision,
on one folder with labelled pairs, including transforms camscope's finder was not built for.

The folder: the 10,000 CIFAR-10 test JPEGs and, for 800 of them drawn at random, one edited copy
each (100 per kind). Four kinds the finder was built for (JPEG q40 re-encode, 2-px shift, 10%
crop, recolouring) and four it was not (rotation by 5-15 degrees, a 30% crop, Gaussian blur,
JPEG q20) plus horizontal flip: rows `tuned` and `new` in the table.

Labelled pairs: every (original, copy) pair is positive. Negatives are pairs of different test
images of the same class: 2,000 drawn at random, and 2,000 hard ones, each image with its
nearest same-class neighbour by pixel distance on 32x32 grayscale. (CIFAR-10 holds a few real
near-duplicates, so a handful of "negatives" may be true copies; the sheet of the hard negatives
each finder accepts is written for inspection by eye.)

Each finder runs on the whole folder at each of its settings, as a user would run it:
- camscope: the audit's near-duplicate search with every threshold (candidate similarity,
  correlation, detail, crop retry) moved by the same delta; delta 0 is the default. Pairs count
  as found when the two images land in one group.
- imagededup PHash: Hamming distance <= t between the 64-bit hashes, t = 0..20 (its default 10).
- cleanvision 0.3.7: its near_duplicates check (images whose perceptual hashes are equal) at
  hash_size 4, 6, 8 (default), 10, 12, 16.
Precision is measured on the labelled pairs (positives and the 4,000 negatives); recall per kind.

    .venv/bin/python benchmarks/neardup_curves.py [--out runs/bench/neardup_curves]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
TUNED = ("reencode_q40", "shift_2px", "crop_10pct", "recolour")
NEW = ("rotate_5_15", "crop_30pct", "blur", "jpeg_q20", "hflip")
KINDS = TUNED + NEW
DELTAS = (-0.3, -0.25, -0.2, -0.15, -0.1, -0.05, 0.0, 0.03, 0.06, 0.1)
HAMMING = tuple(range(0, 21, 2))
HASH_SIZES = (4, 6, 8, 10, 12, 16)
DEFAULTS = ("delta +0.00", "hamming <= 10", "hash_size 8")


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, int | None]:
    """An edited copy and the JPEG quality to save it with (None: PNG, lossless)."""
    if kind == "reencode_q40":
        return img, 40
    if kind == "jpeg_q20":
        return img, 20
    if kind == "shift_2px":
        dy, dx = (int(v) for v in rng.choice([-2, 2], 2))
        a = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)), mode="edge")
        return Image.fromarray(a[2 + dy : 34 + dy, 2 + dx : 34 + dx]), None
    if kind == "crop_10pct":
        return img.crop((2, 2, 30, 30)).resize((32, 32), Image.BICUBIC), None
    if kind == "crop_30pct":  # keep 70% of the side, anywhere
        s = 22
        y, x = (int(v) for v in rng.integers(0, 32 - s + 1, 2))
        return img.crop((x, y, x + s, y + s)).resize((32, 32), Image.BICUBIC), None
    if kind == "recolour":
        a = np.asarray(img).astype(float)[..., [2, 0, 1]] * 0.9 + 15
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)), None
    if kind == "rotate_5_15":
        angle = float(rng.uniform(5, 15)) * float(rng.choice([-1, 1]))
        return img.rotate(
            angle, Image.BILINEAR, fillcolor=tuple(np.asarray(img).reshape(-1, 3).mean(0).astype(int))
        ), None
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(1.0)), None
    if kind == "hflip":
        return img.transpose(Image.FLIP_LEFT_RIGHT), None
    raise ValueError(kind)


def write_folder(root: Path, per_kind: int, seed: int) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """The test JPEGs under root/test/<class>/ and the edited copies under root/copies/<class>/."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(ZIP) as zf:
        names = sorted(n for n in zf.namelist() if n.endswith(".jpg") and "/test/" in n)
        rel = [n.split("/", 1)[1] for n in names]
        for n, r in zip(names, rel, strict=True):
            (root / r).parent.mkdir(parents=True, exist_ok=True)
            (root / r).write_bytes(zf.read(n))
        copies = {}
        picks = rng.choice(len(names), per_kind * len(KINDS), replace=False)
        for i, idx in enumerate(picks):
            kind = KINDS[i % len(KINDS)]
            img = Image.open(io.BytesIO(zf.read(names[idx]))).convert("RGB")
            out, quality = edit(img, kind, rng)
            cls = rel[idx].split("/")[1]
            dest = f"copies/{cls}/{kind}_{i:04d}.{'jpg' if quality else 'png'}"
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            out.save(root / dest, quality=quality) if quality else out.save(root / dest)
            copies[dest] = (rel[idx], kind)
    return rel, copies


def negatives(root: Path, originals: list[str], n: int, seed: int) -> tuple[list, list]:
    """Random and hard (nearest same-class neighbour) pairs of different test images."""
    import torch

    rng = random.Random(seed)
    by_class: dict[str, list[str]] = {}
    for r in originals:
        by_class.setdefault(r.split("/")[1], []).append(r)
    rand = set()
    while len(rand) < n:
        c = rng.choice(sorted(by_class))
        a, b = rng.sample(by_class[c], 2)
        rand.add((min(a, b), max(a, b)))
    hard = set()
    for members in by_class.values():
        x = torch.tensor(
            np.stack([np.asarray(Image.open(root / m).convert("L"), dtype=np.float32) for m in members])
        ).flatten(1)
        d = torch.cdist(x, x)
        d.fill_diagonal_(float("inf"))
        nn = d.argmin(1).tolist()
        for i, j in enumerate(nn):
            hard.add((min(members[i], members[j]), max(members[i], members[j])))
    hard = sorted(hard)
    rng.shuffle(hard)
    return sorted(rand), hard[:n]


def as_groups(groups: list[list[str]]) -> dict[str, int]:
    return {p: g for g, members in enumerate(groups) for p in members}


def score(found, positives: dict, neg: tuple[list, list]) -> dict:
    """found(a, b) -> bool; recall per kind, false positives among the (random, hard) negatives,
    precision on the labelled pairs."""
    hits = {k: 0 for k in KINDS}
    n_kind = {k: 0 for k in KINDS}
    for copy, (orig, kind) in positives.items():
        n_kind[kind] += 1
        hits[kind] += found(copy, orig)
    accepted = [(a, b) for a, b in neg[1] if found(a, b)]  # the hard ones first, for the sheet
    fp_hard = len(accepted)
    accepted += [(a, b) for a, b in neg[0] if found(a, b)]
    fp = len(accepted)
    tp = sum(hits.values())
    return {
        "recall": round(tp / len(positives), 4),
        "recall_tuned": round(sum(hits[k] for k in TUNED) / sum(n_kind[k] for k in TUNED), 4),
        "recall_new": round(sum(hits[k] for k in NEW) / sum(n_kind[k] for k in NEW), 4),
        "recall_by_kind": {k: round(hits[k] / max(1, n_kind[k]), 3) for k in KINDS},
        "false_positives": fp,
        "false_positives_hard": fp_hard,
        "precision": round(tp / max(1, tp + fp), 4),
        "accepted_negatives": accepted[:40],  # for the sheet
    }


def camscope_curve(root: Path, positives: dict, neg: tuple, mirrors: bool = False) -> list[dict]:
    from dataclasses import replace

    import camscope.data.audit as A
    from camscope.data.neardup import NearDupParams, connected_groups, find_near_duplicates
    from camscope.data.sources import FolderSource

    t = time.perf_counter()
    a = A._Audit(FolderSource(root), A.AuditConfig())
    with tempfile.TemporaryDirectory() as work:
        a.work = Path(work)
        a.scan()  # the audit's own scan: thumbnails as the audit makes them
        good = a.good
        rows = np.array([a.row[r.key] for r in good], dtype=np.int64)
        thumbs, fine = a.thumbs[rows], a.fine[rows]
    scan_s = time.perf_counter() - t
    has_fine = np.array([r.has_fine for r in good])
    keys = [a.disp(r.key) for r in good]
    base = NearDupParams(mirrors=mirrors)
    finder = "camscope (mirrors)" if mirrors else "camscope"
    rows = []
    for delta in DELTAS:
        p = replace(
            base,
            candidate_sim=base.candidate_sim + delta,
            min_ncc=base.min_ncc + delta,
            min_detail_ncc=base.min_detail_ncc + delta,
            crop_ncc=base.crop_ncc + delta,
            min_fine_detail_ncc=base.min_fine_detail_ncc + delta,
        )
        t = time.perf_counter()
        res = find_near_duplicates(thumbs, p, fine, has_fine)
        gi = as_groups([[keys[i] for i in g] for g in connected_groups(len(keys), res.pairs)])
        search_s = time.perf_counter() - t
        s = score(lambda x, y, gi=gi: x in gi and gi.get(x) == gi.get(y), positives, neg)
        rows.append({"finder": finder, "setting": f"delta {delta:+.2f}", "search_s": round(search_s, 1), **s})
        print(f"{finder} delta {delta:+.2f}: {s['recall']:.3f} recall, {s['false_positives']} fp", flush=True)
    rows[0]["scan_s"] = round(scan_s, 1)
    return rows


def phash_curve(root: Path, positives: dict, neg: tuple) -> list[dict]:
    from imagededup.methods import PHash

    t = time.perf_counter()
    enc = PHash(verbose=False).encode_images(image_dir=root, recursive=True)
    enc_s = time.perf_counter() - t
    code = {k.replace("\\", "/"): int(v, 16) for k, v in enc.items()}

    def dist(a: str, b: str) -> int:
        return (code[a] ^ code[b]).bit_count() if a in code and b in code else 99

    rows = []
    for th in HAMMING:
        s = score(lambda x, y, th=th: dist(x, y) <= th, positives, neg)
        rows.append({"finder": "imagededup PHash", "setting": f"hamming <= {th}", **s})
    rows[0]["encode_s"] = round(enc_s, 1)
    return rows


def cleanvision_curve(root: Path, positives: dict, neg: tuple) -> list[dict]:
    from cleanvision import Imagelab

    rows = []
    for hs in HASH_SIZES:
        t = time.perf_counter()
        lab = Imagelab(data_path=str(root))
        lab.find_issues({"near_duplicates": {"hash_size": hs}}, verbose=False)
        sets = lab.info["near_duplicates"]["sets"]
        groups = [[str(Path(p).relative_to(root)).replace("\\", "/") for p in s] for s in sets]
        gi = as_groups(groups)
        s = score(lambda x, y, gi=gi: x in gi and gi.get(x) == gi.get(y), positives, neg)
        rows.append(
            {
                "finder": "cleanvision",
                "setting": f"hash_size {hs}",
                "seconds": round(time.perf_counter() - t, 1),
                **s,
            }
        )
        print(f"cleanvision hash_size {hs}: {s['recall']:.3f} recall, {s['false_positives']} fp", flush=True)
    return rows


def pair_sheet(root: Path, pairs: list, path: Path) -> None:
    """The negative pairs a finder accepted, two 64-px tiles a row, for a look by eye."""
    cell = 68
    img = Image.new("RGB", (2 * cell, len(pairs) * cell), "white")
    for r, pair in enumerate(pairs):
        for c, p in enumerate(pair):
            img.paste(
                Image.open(root / p).convert("RGB").resize((64, 64), Image.NEAREST), (c * cell, r * cell)
            )
    img.save(path)


def report(rows: list[dict], out: Path) -> None:
    (out / "neardup_curves.json").write_text(json.dumps(rows, indent=1))
    print("finder | setting | precision | recall | tuned kinds | new kinds | false pos. (all / hard)")
    for r in rows:
        print(
            f"{r['finder']} | {r['setting']} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['recall_tuned']:.3f} | {r['recall_new']:.3f} | {r['false_positives']} / "
            f"{r['false_positives_hard']}"
        )
    print("recall by kind at each finder's default:")
    for r in rows:
        if r["setting"] in DEFAULTS:
            print(f"  {r['finder']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["recall_by_kind"].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-kind", type=int, default=100)
    ap.add_argument("--negatives", type=int, default=2000, help="random ones, and as many hard ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_curves")
    ap.add_argument("--finders", default="camscope,phash,cleanvision", help="and camscope-mirrors")
    args = ap.parse_args()
    if not ZIP.is_file():
        raise SystemExit(f"{ZIP} not found: this benchmark needs the shared CIFAR-10 JPEGs")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="camscope-curves-"))
    try:
        root = tmp / "cifar"
        originals, positives = write_folder(root, args.per_kind, args.seed)
        rand_neg, hard_neg = negatives(root, originals, args.negatives, args.seed)
        neg = (rand_neg, hard_neg)
        print(
            f"{len(originals)} originals, {len(positives)} copies, {len(rand_neg)} random and "
            f"{len(hard_neg)} hard negative pairs",
            flush=True,
        )
        rows = []
        wanted = set(args.finders.split(","))
        if "camscope" in wanted:
            rows += camscope_curve(root, positives, neg)
        if "camscope-mirrors" in wanted:
            rows += camscope_curve(root, positives, neg, mirrors=True)
        if "phash" in wanted:
            rows += phash_curve(root, positives, neg)
        if "cleanvision" in wanted:
            rows += cleanvision_curve(root, positives, neg)
        for r in rows:
            if r["setting"] in DEFAULTS and r["accepted_negatives"]:
                name = r["finder"].replace(" (mirrors)", "-mirrors").split()[-1].lower()
                pair_sheet(root, r["accepted_negatives"], args.out / f"false_pairs_{name}.png")
        report(rows, args.out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
