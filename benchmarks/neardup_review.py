"""Near-duplicate groups judged by eye: a seeded sample of an audit's groups drawn as contact
sheets, and the precision of the groups a person has labelled.

    .venv/bin/python benchmarks/neardup_review.py [--audit runs/bench/cifar/audit.json] [--sample 100]

Writes runs/bench/neardup_review/sheet-NN.png (each row one group: its number, then its images
enlarged 3x, captioned with their paths) and prints the precision over the labelled groups of the
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
import zipfile
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
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


def draw_sheets(groups: list[list[str]], zpath: Path, out: Path, per_sheet: int = 20) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zpath) as z:
        names = {n.split("/", 1)[1]: n for n in z.namelist() if n.endswith(".jpg")}
        paths = []
        widest = min(MAX_SHOWN, max(len(g) for g in groups)) + 1
        tile, label_w, cap_h = 96, 40, 14
        for s in range(0, len(groups), per_sheet):
            page = groups[s : s + per_sheet]
            sheet = Image.new("RGB", (label_w + widest * (tile + 6), len(page) * (tile + cap_h + 6)), "white")
            d = ImageDraw.Draw(sheet)
            for r, g in enumerate(page):
                y = r * (tile + cap_h + 6)
                d.text((4, y + tile // 2), str(s + r + 1), fill="black")
                if len(g) > MAX_SHOWN:
                    more = f"+{len(g) - MAX_SHOWN} more"
                    d.text((label_w + MAX_SHOWN * (tile + 6), y + tile // 2), more, fill="red")
                for c, p in enumerate(g[:MAX_SHOWN]):
                    with Image.open(io.BytesIO(z.read(names[p]))) as im:
                        img = im.convert("RGB").resize((tile, tile), Image.NEAREST)
                    x = label_w + c * (tile + 6)
                    sheet.paste(img, (x, y))
                    d.text((x, y + tile + 1), p.replace(".jpg", "")[-18:], fill="black")
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
    args = ap.parse_args()
    audit = json.loads(args.audit.read_text(encoding="utf-8"))
    groups = sample_groups(audit, args.sample, args.seed)
    sheets = draw_sheets(groups, args.zip, args.out)
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
