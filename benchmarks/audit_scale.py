"""The audit at 60,000, 250,000 and 1,000,000 images: time, peak memory and the recall of planted
copies, so that the growth with N is visible.

The sets are built from the shared CIFAR-10 JPEGs. Each image is a mosaic of four CIFAR images
(each quadrant one image reduced to 16x16, drawn at random), so a million of them are a million
distinct natural-looking pictures, not a few thousand repeated. Into every set the same 2,000
copies are planted, each an edited copy of one of the first 2,000 mosaics, 400 of each kind:
a 2-px shift, recolouring, JPEG re-encoding at quality 40, a 10% crop scaled back, and upscaling
to 96 px. The sets are nested (the first 60,000 files of the 1M set are the 60k set, as hard
links), so the planted pairs are the same at every size.

Each audit is the CLI (`camscope audit DIR --out OUT`), run under /usr/bin/time -v for its peak
resident memory: the largest of the audit's processes (GNU time reports the maximum over the
process and the scan workers it reaps, not their sum; the main process is the largest). The
60k set is audited twice, with the exact neighbour search and with the FAISS index, so the
recall of the index is measured against the exact search on the same set.

    .venv/bin/python benchmarks/audit_scale.py [--sizes 60000 250000 1000000] [--root runs/bench/audit_scale]

Building the 1M set takes about 10 minutes and 2.5 GB of disk; it is kept for later runs.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
PLANTED = 2000
KINDS = ("shift", "recolour", "jpeg40", "crop10", "upscale96")
PER_DIR = 10_000  # files per folder: a million files in one folder is slow on most file systems
_QUADS: np.ndarray | None = None


def load_quadrants() -> np.ndarray:
    """Every CIFAR-10 image reduced to 16x16 RGB: (60000, 16, 16, 3) uint8."""
    out = []
    with zipfile.ZipFile(ZIP) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        for n in names:
            img = Image.open(io.BytesIO(z.read(n))).convert("RGB")
            out.append(np.asarray(img.resize((16, 16), Image.BOX)))
    return np.stack(out)


def mosaic(i: int) -> np.ndarray:
    rng = np.random.default_rng(i)
    q = _QUADS[rng.integers(0, len(_QUADS), 4)]
    top = np.concatenate([q[0], q[1]], 1)
    return np.concatenate([top, np.concatenate([q[2], q[3]], 1)], 0)


def edited(i: int) -> tuple[Image.Image, int]:
    """The planted copy number ``i``: an edit of mosaic ``i`` (kind i % 5); and its quality."""
    img = Image.fromarray(mosaic(i))
    kind = KINDS[i % len(KINDS)]
    rng = np.random.default_rng(10**9 + i)
    if kind == "shift":
        dx, dy = (int(v) for v in rng.choice([-2, 2], 2))
        a = np.pad(np.asarray(img), ((2, 2), (2, 2), (0, 0)), mode="edge")  # edges repeated
        img = Image.fromarray(np.ascontiguousarray(a[2 + dy : 34 + dy, 2 + dx : 34 + dx]))
    elif kind == "recolour":
        a = np.asarray(img).astype(np.float32)
        mix = np.eye(3) * 0.7 + rng.uniform(0.0, 0.3, (3, 3))
        img = Image.fromarray(
            np.clip(a @ mix.T * rng.uniform(0.8, 1.1) + rng.uniform(-20, 20), 0, 255).astype(np.uint8)
        )
    elif kind == "jpeg40":
        return img, 40
    elif kind == "crop10":
        img = img.crop((2, 2, 30, 30)).resize((32, 32), Image.BILINEAR)
    elif kind == "upscale96":
        img = img.resize((96, 96), Image.BICUBIC)
    return img, 90


def path_of(root: Path, i: int) -> Path:
    return root / f"d{i // PER_DIR:03d}" / f"{i:07d}.jpg"


def write_range(args: tuple[str, int, int]) -> int:
    root, lo, hi = Path(args[0]), args[1], args[2]
    for i in range(lo, hi):
        p = path_of(root, i)
        if p.is_file():
            continue
        if PLANTED <= i < 2 * PLANTED:
            img, quality = edited(i - PLANTED)
        else:
            img, quality = Image.fromarray(mosaic(i)), 90
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(p)
    return hi - lo


def build(root: Path, n: int) -> None:
    """Images 0..n-1 under ``root`` (missing ones only: a build can be resumed or extended)."""
    global _QUADS
    have = sum(1 for _ in root.glob("d*/*.jpg")) if root.is_dir() else 0
    if have >= n:
        return
    if _QUADS is None:
        _QUADS = load_quadrants()
    t = time.perf_counter()
    step = 5000
    with Pool(os.cpu_count() or 1) as pool:
        done = 0
        for k in pool.imap_unordered(
            write_range, [(str(root), s, min(s + step, n)) for s in range(0, n, step)]
        ):
            done += k
            print(f"\r  built {done:,}/{n:,} images", end="", flush=True)
    print(f"  ({time.perf_counter() - t:.0f} s)")


def link_subset(full: Path, sub: Path, n: int) -> None:
    """The first ``n`` images of ``full`` as hard links under ``sub`` (no extra disk)."""
    for i in range(n):
        dst = path_of(sub, i)
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(path_of(full, i), dst)


def audit(folder: Path, out: Path, index: str) -> dict:
    cli = str(Path(sys.executable).parent / "camscope")
    cmd = ["/usr/bin/time", "-v", cli, "audit", str(folder), "--out", str(out), "--index", index]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"audit failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    report = json.loads((out / "audit.json").read_text())
    return {"wall_s": wall, "peak_rss_gb": rss_kb / 1024**2, "report": report}


def planted_recall(report: dict) -> dict[str, float]:
    group_of = {}
    for g, members in enumerate(report["near_duplicate_groups"]):
        for m in members:
            group_of[Path(m).stem] = g
    found = {k: 0 for k in KINDS}
    for i in range(PLANTED):
        a, b = group_of.get(f"{i:07d}"), group_of.get(f"{PLANTED + i:07d}")
        found[KINDS[i % len(KINDS)]] += a is not None and a == b
    per = {k: v / (PLANTED / len(KINDS)) for k, v in found.items()}
    return {"all": sum(found.values()) / PLANTED, **per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[60_000, 250_000, 1_000_000])
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "bench" / "audit_scale")
    ap.add_argument("--exact-at", type=int, default=60_000, help="also run the exact search at this size")
    args = ap.parse_args()
    if not ZIP.is_file():
        raise SystemExit(f"{ZIP} not found: this benchmark needs the shared CIFAR-10 JPEGs")
    biggest = max(args.sizes)
    full = args.root / f"set-{biggest}"
    print(f"building {biggest:,} images in {full}")
    build(full, biggest)
    rows = []
    for n in sorted(args.sizes):
        folder = full if n == biggest else args.root / f"set-{n}"
        if n != biggest:
            link_subset(full, folder, n)
        for index in ["exact", "faiss"] if n == args.exact_at else ["auto"]:
            out = args.root / f"audit-{n}-{index}"
            print(f"auditing {n:,} images ({index})", flush=True)
            r = audit(folder, out, index)
            rep = r["report"]
            rec = planted_recall(rep)
            nd = rep["near_duplicate_search"]
            rows.append(
                {
                    "images": n,
                    "index": nd["index_used"],
                    "wall_s": round(r["wall_s"], 1),
                    "scan_s": rep["timing_s"]["scan"],
                    "near_dup_s": rep["timing_s"]["near_duplicates"],
                    "peak_rss_gb": round(r["peak_rss_gb"], 2),
                    "candidates": nd["candidates"],
                    "groups": len(rep["near_duplicate_groups"]),
                    "planted_recall": round(rec["all"], 4),
                    "recall_by_kind": {k: round(v, 3) for k, v in rec.items() if k != "all"},
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            (args.root / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n| images | search | wall | scan | near-dup | peak RSS | candidates | groups | planted recall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['images']:,} | {r['index']} | {r['wall_s']:.0f} s | {r['scan_s']:.0f} s "
            f"| {r['near_dup_s']:.0f} s | {r['peak_rss_gb']:.2f} GB | {r['candidates']:,} | {r['groups']:,} "
            f"| {r['planted_recall']:.4f} |"
        )


if __name__ == "__main__":
    main()
