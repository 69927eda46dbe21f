"""A second, blind look at near-duplicate groups already judged: how far the precision figures
of benchmarks/neardup_review.py can be trusted, given that a person judges 32-px images.

    .venv/bin/python benchmarks/neardup_second_look.py --audit AUDIT --seeds 2 3 --draw
    .venv/bin/python benchmarks/neardup_second_look.py --audit AUDIT --seeds 2 3

With ``--draw``: the groups of the seeds' samples (``neardup_review.sample_groups``) that have a
first verdict, shuffled, drawn as numbered sheets without paths or verdicts
(runs/bench/neardup_second_look/sheet-NN.png; line n of key.txt holds row n's paths). Each
image is enlarged 5x; a pair is also shown as its second image aligned onto the first (the
texture test's alignment: the zoom and shift with the best plain correlation) and as their
difference, 3x brighter.

Without it: the second verdicts (benchmarks/data/cifar10_neardup_second_look.csv, in the labels'
format: group, verdict, note) against the first (cifar10_neardup_review.csv): how often they
agree, and each seed's precision by either look.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from neardup_review import LABELS, MAX_SHOWN, VERDICTS, ZIP, group_key, read_labels, sample_groups  # noqa: E402

from camscope.data import neardup as nd  # noqa: E402

SECOND = ROOT / "benchmarks" / "data" / "cifar10_neardup_second_look.csv"
SCALE = 5
SHUFFLE_SEED = 31  # the order of the sheets: fixed, so the numbers on them stay valid


def _aligned(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a's view, b's view moved onto it) for two RGB images (H, W, 3), at the zooms and move
    with the best plain correlation of their grey levels; b's view is black where it is missing."""
    rgb = np.stack([a, b]).astype(np.float32)
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    views, how = nd._texture_alignment(grey, np.array([[0, 1]]), nd.NearDupParams().max_shift)
    za, zb, dx, dy = nd._decode_alignment(int(how[0]), len(views), nd.NearDupParams().max_shift)

    def view(img: np.ndarray, z: int) -> np.ndarray:
        if z == 0:
            return img
        channels = np.moveaxis(img, -1, 0)  # each channel zoomed as an image of its own
        return np.moveaxis(nd._zoom_centre(channels, nd.ZOOMS[z - 1]), 0, -1)

    va, vb = view(rgb[0], za), view(rgb[1], zb)
    h, w = va.shape[:2]
    moved = np.zeros_like(vb)
    # a's pixel (y, x) lies on b's (y - dy, x - dx) (``_overlap_ncc``)
    moved[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = vb[
        max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
    ]
    return va, moved


def draw(groups: list[list[str]], zpath: Path, out: Path, per_sheet: int = 10) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath) as z:
        names = {n.split("/", 1)[1]: n for n in z.namelist() if n.endswith(".jpg")}

        def load(p: str) -> np.ndarray:
            with Image.open(io.BytesIO(z.read(names[p]))) as im:
                return np.asarray(im.convert("RGB"))

        tile, label_w = 32 * SCALE, 40
        paths = []
        for s in range(0, len(groups), per_sheet):
            page = groups[s : s + per_sheet]
            widest = max(4, min(MAX_SHOWN, max(len(g) for g in page)))
            sheet = Image.new("RGB", (label_w + widest * (tile + 6), len(page) * (tile + 8)), "white")
            d = ImageDraw.Draw(sheet)
            for r, g in enumerate(page):
                y = r * (tile + 8)
                d.text((4, y + tile // 2), str(s + r + 1), fill="black")
                images = [load(p) for p in g[:MAX_SHOWN]]
                if len(g) == 2:
                    va, moved = _aligned(*images)
                    shared = moved.any(-1, keepdims=True)  # b's view is black where it is missing
                    images += [moved, np.abs(va - moved) * 3 * shared]
                elif len(g) > MAX_SHOWN:
                    d.text((4, y + tile // 2 + 14), f"+{len(g) - MAX_SHOWN}", fill="red")
                for c, img in enumerate(images):
                    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
                    sheet.paste(pic.resize((tile, tile), Image.BICUBIC), (label_w + c * (tile + 6), y))
            path = out / f"sheet-{s // per_sheet + 1:02d}.png"
            sheet.save(path)
            paths.append(path)
    return paths


def compare(samples: dict[int, list[list[str]]], first: dict, second: dict) -> None:
    keys = sorted({group_key(g) for gs in samples.values() for g in gs if group_key(g) in first})
    missing = [k for k in keys if k not in second]
    if missing:
        print(
            f"{len(missing)} of {len(keys)} groups have no second verdict yet (draw the sheets, judge them)"
        )
    both = [k for k in keys if k in second]
    if not both:
        return
    table = Counter((first[k]["verdict"], second[k]["verdict"]) for k in both)
    agree = sum(table[(v, v)] for v in VERDICTS)
    print(f"{len(both)} groups judged twice; the two looks agree on {agree} ({agree / len(both):.3f})")
    print()
    print("| first look \\ second look | " + " | ".join(VERDICTS) + " |")
    print("|---|" + "---|" * len(VERDICTS))
    for v in VERDICTS:
        print(f"| {v} | " + " | ".join(str(table[(v, w)]) for w in VERDICTS) + " |")
    print()
    print("| seed | groups judged twice | precision, first look | precision, second look |")
    print("|---|---|---|---|")
    for seed, gs in samples.items():
        ks = [group_key(g) for g in gs if group_key(g) in first and group_key(g) in second]
        if ks:
            p1 = sum(first[k]["verdict"] == "same" for k in ks) / len(ks)
            p2 = sum(second[k]["verdict"] == "same" for k in ks) / len(ks)
            print(f"| {seed} | {len(ks)} | {p1:.3f} | {p2:.3f} |")
    changed = [
        (k, first[k]["verdict"], second[k]["verdict"])
        for k in both
        if first[k]["verdict"] != second[k]["verdict"]
    ]
    if changed:
        print()
        for k, a, b in changed:
            print(f"{a} -> {b}: {k}  ({second[k].get('note') or first[k].get('note') or ''})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", type=Path, default=ROOT / "runs" / "bench" / "cifar" / "audit.json")
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--second", type=Path, default=SECOND)
    ap.add_argument("--draw", action="store_true", help="draw the blind sheets instead of comparing")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_second_look")
    args = ap.parse_args()
    if not args.audit.is_file():
        raise SystemExit(f"{args.audit} not found: give --audit, the audit.json of a CIFAR-10 audit")
    audit = json.loads(args.audit.read_text(encoding="utf-8"))
    first = read_labels(args.labels)
    samples = {s: sample_groups(audit, args.sample, s) for s in args.seeds}
    if args.draw:
        if not args.zip.is_file():
            raise SystemExit(
                f"{args.zip} not found: the sheets need the shared CIFAR-10 JPEGs (../shared/data)"
            )
        keys = sorted({group_key(g) for gs in samples.values() for g in gs if group_key(g) in first})
        random.Random(SHUFFLE_SEED).shuffle(keys)
        groups = [k.split() for k in keys]
        sheets = draw(groups, args.zip, args.out)
        (args.out / "key.txt").write_text("".join(k + "\n" for k in keys), encoding="utf-8")
        print(f"{len(groups)} groups on {len(sheets)} sheets in {args.out}; line n of key.txt is row n")
        return
    compare(samples, first, read_labels(args.second))


if __name__ == "__main__":
    main()
