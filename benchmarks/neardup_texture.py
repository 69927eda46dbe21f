"""How the texture test (``NearDupParams.min_texture``) was chosen: on the labelled CIFAR-10
pairs, which signals tell one picture copied from two pictures alike, and what each threshold
keeps and drops.

    .venv/bin/python benchmarks/neardup_texture.py

The labelled pairs: every verified pair of the search (the texture test off) whose two images lie
in one group of benchmarks/data/cifar10_neardup_review.csv or cifar10_moved_review.csv, labelled
by the group's verdict (``same``: a true pair, ``different``: a false one; a group of more than
10 images was judged on its first 10, so only pairs among those count; ``mixed`` groups by the
subsets their notes name, in MIXED below). The labels are the development set: every group judged
before the test existed. Fresh samples judged afterwards are in docs/benchmarks.md.

1. Signals: each scored over the labelled pairs the other tests keep (plain, detail,
   distinctiveness), at the alignment the texture test finds (the best plain correlation over the
   shared part, shifts of +-3 px and the ZOOMS of either image). For each, the share of false
   pairs dropped at the threshold that loses 1%, 2% or 5% of the true ones.
2. Thresholds: the search run with ``min_texture`` 0 (off), 0.20, 0.25 and 0.30: labelled pairs
   kept, groups, the largest groups, and test images grouped with a training image.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from neardup_speed import ZIP, thumbnails  # noqa: E402

from camscope.data import neardup as nd  # noqa: E402

LABELS = [
    ROOT / "benchmarks" / "data" / f for f in ("cifar10_neardup_review.csv", "cifar10_moved_review.csv")
]
JUDGED = 10  # neardup_review.MAX_SHOWN: a larger group was judged on its first 10 images
# the true subsets of the development set's mixed groups, as their notes say
MIXED = [
    ["test/horse/0703.jpg", "train/horse/1072.jpg"],
    ["train/automobile/2401.jpg", "train/automobile/4998.jpg"],
    ["train/ship/1828.jpg", "train/ship/3323.jpg", "train/ship/4073.jpg"],
    ["train/ship/4267.jpg", "train/ship/4270.jpg"],
]
# the development set: the labels that existed when the test was designed (session 30 appended
# the fresh samples it judged afterwards: they are not used here)
DEV_ROWS = {"cifar10_neardup_review.csv": 309, "cifar10_moved_review.csv": 103}


def _verdicts(keys: list[str]) -> tuple[set, set]:
    """(true pairs, false pairs) of the development labels, as sorted index pairs."""
    at = {k: i for i, k in enumerate(keys)}
    same, diff = set(), set()

    def add(members: list[int], part: dict[int, int] | None, verdict: str) -> None:
        for a in members:
            for b in members:
                if a < b:
                    true = verdict == "same" if part is None else part.get(a, -1) == part.get(b, -2)
                    (same if true else diff).add((a, b))

    for path in LABELS:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))[: DEV_ROWS[path.name]]
        for r in rows:
            group = r["group"].split()
            if r["verdict"] != "mixed":
                add([at[p] for p in group[:JUDGED]], None, r["verdict"])
                continue
            parts = [s for s in MIXED if set(s) <= set(group)]
            if parts:
                add([at[p] for p in group], {at[p]: n for n, s in enumerate(parts) for p in s}, "mixed")
    return same, diff


def pair_labels(pairs: np.ndarray, keys: list[str]) -> np.ndarray:
    """+1 a true pair, 0 a false one, -1 not labelled."""
    same, diff = _verdicts(keys)
    return np.array(
        [1 if p in same else 0 if p in diff else -1 for p in map(tuple, np.sort(pairs, 1).tolist())]
    )


def signals(thumbs: np.ndarray, pairs: np.ndarray) -> dict[str, np.ndarray]:
    """Each candidate signal of each pair, at the texture test's alignment."""
    users, inv = np.unique(pairs, return_inverse=True)
    x, inv = thumbs[users].astype(np.float32), inv.reshape(pairs.shape)
    params = nd.NearDupParams()

    def scored(transform) -> np.ndarray:
        saved = nd._texture
        nd._texture = transform  # the signal in place of the detail's signs
        try:
            return nd._texture_scores(x, inv, params)
        finally:
            nd._texture = saved

    def rank(v: np.ndarray) -> np.ndarray:
        r = v.reshape(len(v), -1).argsort(1).argsort(1).reshape(v.shape).astype(np.float32)
        return r / r[0].size - 0.5

    def grad(d: np.ndarray) -> np.ndarray:
        return np.hypot(np.gradient(d, axis=1), np.gradient(d, axis=2))

    def lcn(d: np.ndarray) -> np.ndarray:
        energy = nd._apply(nd._blur_matrix(d.shape[-1], 2.0), d * d)
        return d / (np.sqrt(np.maximum(energy, 0)) + 2.0)

    return {
        "detail (sigma 1.5) as it is": scored(lambda d: d.astype(np.float32)),
        "signs of the detail (now)": scored(nd._texture),
        "ranks of the detail": scored(rank),
        "ranks of the detail's gradient magnitude": scored(lambda d: rank(grad(d))),
        "detail over its local energy": scored(lcn),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_speed", help="thumbnail cache"
    )
    args = ap.parse_args()
    if not ZIP.is_file():
        raise SystemExit(f"{ZIP} not found: this benchmark needs the shared CIFAR-10 JPEGs (../shared/data)")
    thumbs = np.load(thumbnails(args.out))  # the zip's JPEGs in name order, in grayscale
    with zipfile.ZipFile(ZIP) as z:
        keys = sorted(n.split("/", 1)[1] for n in z.namelist() if n.endswith(".jpg"))

    # the pairs the other tests keep: the search with the texture test off
    off = nd.find_near_duplicates(thumbs, nd.NearDupParams(min_texture=0.0))
    pairs = off.pairs
    labels = pair_labels(pairs, keys)
    n_true, n_false = (labels == 1).sum(), (labels == 0).sum()
    print(f"{len(pairs)} pairs kept by the other tests; labelled: {n_true} true, {n_false} false")
    print()
    print("| signal | false pairs dropped at a loss of 1% / 2% / 5% of the true ones |")
    print("|---|---|")
    sel = labels >= 0
    for name, score in signals(thumbs, pairs[sel]).items():
        true, false = score[labels[sel] == 1], score[labels[sel] == 0]
        drops = [np.mean(false < np.percentile(true, loss)) for loss in (1, 2, 5)]
        print(f"| {name} | {' / '.join(f'{d:.2f}' for d in drops)} |")
    print()

    head = (
        "| threshold | pairs | true kept | false kept | groups | largest | test images with a training copy |"
    )
    print(head)
    print("|---|---|---|---|---|---|---|")
    for t in (0.0, 0.20, 0.25, 0.30):
        start = time.perf_counter()
        res = off if t == 0 else nd.find_near_duplicates(thumbs, nd.NearDupParams(min_texture=t))
        lab = pair_labels(res.pairs, keys)
        groups = nd.connected_groups(len(keys), res.pairs)
        leaks = sum(
            sum(keys[i].startswith("test/") for i in g)
            for g in groups
            if any(keys[i].startswith("train/") for i in g)
        )
        largest = ", ".join(str(n) for n in sorted(map(len, groups))[-4:][::-1])
        took = f"{time.perf_counter() - start:.0f} s" if t else "the run above"
        print(
            f"| {t:.2f} | {len(res.pairs):,} | {(lab == 1).sum()} of {(labels == 1).sum()} | "
            f"{(lab == 0).sum()} of {(labels == 0).sum()} | {len(groups):,} | {largest} | {leaks} | ({took})",
            flush=True,
        )


if __name__ == "__main__":
    main()
