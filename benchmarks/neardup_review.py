"""Near-duplicate groups judged by eye: a seeded sample of an audit's groups drawn as contact
sheets, and the precision of the groups a person has labelled.

    .venv/bin/python benchmarks/neardup_review.py [--audit runs/bench/cifar/audit.json] [--sample 100]
        [--seed 0] [--scale 3] [--per-sheet 20]

Writes runs/bench/neardup_review/sheet-NN.png (each row one group: its number, then its images
enlarged ``--scale`` times, captioned with their paths; a pair also as its second image aligned
onto the first and as their difference) and prints the precision over the labelled groups of the
sample. The labels live in the repository (benchmarks/data/cifar10_neardup_review.csv: the group
as its sorted paths joined by spaces, a verdict and a note), so the thumbnails can be regenerated
from the shared data at any time. Verdicts: ``same`` (every image is one picture: re-encoded,
shifted, recoloured, cropped or mirrored), ``mixed`` (a true pair plus an unrelated image),
``different`` (no two images are one picture). A group the current audit forms differently from
the labelled one is unlabelled: grouping changes are judged again, never assumed.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from camscope.data import neardup as nd  # noqa: E402

ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
LABELS = ROOT / "benchmarks" / "data" / "cifar10_neardup_review.csv"
VERDICTS = ("same", "mixed", "different")
MAX_SHOWN = 10  # images drawn per group; a larger group is judged on these


def group_key(group: list[str]) -> str:
    return " ".join(sorted(group))


def sample_groups(audit: dict, n: int, seed: int) -> list[list[str]]:
    """The ``n`` groups whose seeded hash is lowest: a random sample that stays the same, group
    for group, when a change of the audit adds or removes a few other groups."""

    def rank(g: list[str]) -> str:
        return hashlib.blake2b(f"{seed} {group_key(g)}".encode(), digest_size=8).hexdigest()

    return sorted((sorted(g) for g in audit["near_duplicate_groups"]), key=rank)[:n]


def read_labels(path: Path) -> dict[str, dict]:
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        rows = {r["group"]: r for r in csv.DictReader(f)}
    bad = [r for r in rows.values() if r["verdict"] not in VERDICTS]
    if bad:
        raise SystemExit(f"{path}: verdicts must be one of {VERDICTS}, not {bad[0]['verdict']!r}")
    return rows


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


def draw_sheets(
    groups: list[list[str]],
    zpath: Path,
    out: Path,
    per_sheet: int = 20,
    scale: int = 3,
    captions: bool = True,
) -> list[Path]:
    """Numbered rows, one a group: its images (the first ``MAX_SHOWN``) enlarged ``scale`` times,
    captioned with their paths if ``captions``; a pair also as its second image aligned onto the
    first and as their difference, 3x brighter (a moved subject shows against a still
    background)."""
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath) as z:
        names = {n.split("/", 1)[1]: n for n in z.namelist() if n.endswith(".jpg")}

        def load(p: str) -> np.ndarray:
            with Image.open(io.BytesIO(z.read(names[p]))) as im:
                return np.asarray(im.convert("RGB"))

        tile, label_w, cap_h = 32 * scale, 40, 14 if captions else 2
        paths = []
        for s in range(0, len(groups), per_sheet):
            page = groups[s : s + per_sheet]
            widest = max(4, min(MAX_SHOWN, max(len(g) for g in page)))
            sheet = Image.new("RGB", (label_w + widest * (tile + 6), len(page) * (tile + cap_h + 6)), "white")
            d = ImageDraw.Draw(sheet)
            for r, g in enumerate(page):
                y = r * (tile + cap_h + 6)
                d.text((4, y + tile // 2), str(s + r + 1), fill="black")
                if len(g) > MAX_SHOWN:
                    d.text((4, y + tile // 2 + 14), f"+{len(g) - MAX_SHOWN}", fill="red")
                images = [load(p) for p in g[:MAX_SHOWN]]
                if len(g) == 2:
                    va, moved = _aligned(*images)
                    shared = moved.any(-1, keepdims=True)  # the moved view is black where it is missing
                    images += [moved, np.abs(va - moved) * 3 * shared]
                for c, img in enumerate(images):
                    x = label_w + c * (tile + 6)
                    pic = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
                    sheet.paste(pic.resize((tile, tile), Image.BICUBIC), (x, y))
                    if captions and c < len(g):
                        d.text((x, y + tile + 1), g[c].replace(".jpg", "")[-18:], fill="black")
            path = out / f"sheet-{s // per_sheet + 1:02d}.png"
            sheet.save(path)
            paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", type=Path, default=ROOT / "runs" / "bench" / "cifar" / "audit.json")
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_review")
    ap.add_argument("--scale", type=int, default=3, help="how many times the 32-px images are enlarged")
    ap.add_argument("--per-sheet", type=int, default=20, help="groups a sheet")
    args = ap.parse_args()
    audit = json.loads(args.audit.read_text(encoding="utf-8"))
    groups = sample_groups(audit, args.sample, args.seed)
    sheets = draw_sheets(groups, args.zip, args.out, args.per_sheet, args.scale)
    labels = read_labels(args.labels)
    verdicts = [labels.get(group_key(g), {}).get("verdict") for g in groups]
    todo = [n + 1 for n, v in enumerate(verdicts) if v is None]
    # every labelled group this audit still forms counts (earlier samples were random too)
    present = {group_key(g) for g in audit["near_duplicate_groups"]}
    judged = [r["verdict"] for k, r in labels.items() if k in present]
    total = len(audit["near_duplicate_groups"])
    print(f"{total} groups in the audit; a sample of {len(groups)} (seed {args.seed})")
    print(f"sheets: {', '.join(str(p) for p in sheets)}")
    if todo:
        more = " ..." if len(todo) > 30 else ""
        print(f"{len(todo)} sampled groups have no verdict yet (rows {todo[:30]}{more})")
    print("| groups | judged | same | mixed | different | precision (same) | precision (same or mixed) |")
    print("|---|---|---|---|---|---|---|")
    for name, vs in (("this sample", [v for v in verdicts if v]), ("all labelled groups formed", judged)):
        if vs:
            n, same, mixed, diff = len(vs), vs.count("same"), vs.count("mixed"), vs.count("different")
            print(f"| {name} | {n} | {same} | {mixed} | {diff} | {same / n:.3f} | {(same + mixed) / n:.3f} |")


if __name__ == "__main__":
    main()
