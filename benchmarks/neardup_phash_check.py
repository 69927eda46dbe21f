"""A check of the near-duplicate search from outside its own features: the pairs of CIFAR-10
images whose perceptual hashes (imagehash.phash, the hash cleanvision groups by) are identical or
differ in a few bits, and whether the audit groups them together.

    .venv/bin/python benchmarks/neardup_phash_check.py --audit runs/bench/cifar-s30/audit.json [--bits 4]

Identical hashes are cleanvision's near-duplicate rule; the issue asked whether such pairs should
be added to the search's candidates. A pair the audit does not group is listed, and drawn as
runs/bench/neardup_phash_check/sheet-NN.png (``neardup_review.draw_sheets``). Verdicts kept in
benchmarks/data/cifar10_phash_check.csv (pair, verdict, note; verdicts ``same`` one picture,
``reshot`` one scene photographed again with something moved, ``different``) are tallied.
Needs the bench extra (imagehash).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
import zipfile
from collections import Counter
from pathlib import Path

import faiss
import imagehash
import numpy as np
from neardup_review import ZIP, draw_sheets
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
LABELS = ROOT / "benchmarks" / "data" / "cifar10_phash_check.csv"
VERDICTS = ("same", "reshot", "different")


def hashes(zpath: Path, cache: Path) -> tuple[list[str], np.ndarray]:
    """(paths, their 64-bit pHashes as uint64) of every JPEG in the zip, in name order; kept in
    ``cache`` for as long as the zip keeps its size and time."""
    stamp = np.array([zpath.stat().st_size, zpath.stat().st_mtime_ns])
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if "stamp" in z.files and np.array_equal(z["stamp"], stamp):
            return list(z["paths"]), z["hashes"]
    with zipfile.ZipFile(zpath) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
        out = np.empty(len(names), np.uint64)
        for i, n in enumerate(names):
            with Image.open(io.BytesIO(z.read(n))) as im:
                bits = imagehash.phash(im).hash.ravel()  # 8 x 8 bools
            out[i] = np.packbits(bits).view(">u8")[0]
    paths = [n.split("/", 1)[1] for n in names]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, paths=np.array(paths), hashes=out, stamp=stamp)
    return paths, out


def close_pairs(h: np.ndarray, bits: int) -> np.ndarray:
    """(P, 3): i < j and their Hamming distance, for every pair within ``bits`` (FAISS's exact
    binary search, which the audit's index already depends on)."""
    codes = np.ascontiguousarray(h.astype(">u8").view(np.uint8).reshape(len(h), 8))
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, dist, j = index.range_search(codes, bits + 1)  # distances below the radius
    i = np.repeat(np.arange(len(h)), np.diff(lims.astype(np.int64)))
    keep = i < j
    return np.stack([i[keep], j[keep], dist[keep].astype(np.int64)], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", type=Path, default=ROOT / "runs" / "bench" / "cifar" / "audit.json")
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--bits", type=int, default=4, help="the most bits two hashes may differ in")
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_phash_check")
    args = ap.parse_args()
    if not args.zip.is_file():
        raise SystemExit(f"{args.zip} not found: this check needs the shared CIFAR-10 JPEGs (../shared/data)")
    if not args.audit.is_file():
        raise SystemExit(f"{args.audit} not found: give --audit, the audit.json of a CIFAR-10 audit")
    start = time.perf_counter()
    paths, h = hashes(args.zip, args.out / "phash.npz")
    hashed = time.perf_counter()
    pairs = close_pairs(h, args.bits)
    print(
        f"{len(paths):,} hashes in {hashed - start:.1f} s (0 when cached); "
        f"the pairs within {args.bits} bits in {time.perf_counter() - hashed:.1f} s"
    )
    audit = json.loads(args.audit.read_text(encoding="utf-8"))
    group = {p: n for n, g in enumerate(audit["near_duplicate_groups"]) for p in g}
    grouped = np.array([group.get(paths[i], -1) == group.get(paths[j], -2) for i, j, _ in pairs], bool)
    print()
    print("| bits apart | pairs | grouped by the audit | not grouped |")
    print("|---|---|---|---|")
    for d in sorted(set(pairs[:, 2].tolist())):
        at = pairs[:, 2] == d
        print(f"| {d} | {at.sum()} | {(at & grouped).sum()} | {(at & ~grouped).sum()} |")
    missed = [f"{paths[i]} {paths[j]}" for i, j, _ in pairs[~grouped]]
    if not missed:
        return
    sheets = draw_sheets([m.split() for m in missed], args.zip, args.out, per_sheet=10, scale=5)
    print(f"\nnot grouped, drawn in order on {len(sheets)} sheets in {args.out}:")
    labels = {}
    if args.labels.is_file():
        with open(args.labels, newline="", encoding="utf-8") as f:
            labels = {r["pair"]: r for r in csv.DictReader(f)}
    bad = [r["verdict"] for r in labels.values() if r["verdict"] not in VERDICTS]
    if bad:
        raise SystemExit(f"{args.labels}: verdicts must be one of {VERDICTS}, not {bad[0]!r}")
    for n, m in enumerate(missed, 1):
        r = labels.get(m, {})
        leak = " (test/train)" if {p.split("/")[0] for p in m.split()} == {"test", "train"} else ""
        print(f"{n:3d} {m}{leak}  {r.get('verdict', '-')}  {r.get('note', '')}")
    judged = Counter(labels[m]["verdict"] for m in missed if m in labels)
    if judged:
        tally = ", ".join(f"{judged[v]} {v}" for v in VERDICTS)
        print(f"\njudged: {sum(judged.values())} of {len(missed)}: {tally}")


if __name__ == "__main__":
    main()
