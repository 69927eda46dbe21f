"""Masking-sweep speed: the 10,000 CIFAR-10 test images x 2 modes x 9 sizes with fastnet.

Uses the fastnet run written by `benchmarks/train_cifar10.py --rows a` (its checkpoint) and the
prepared CIFAR file; prints the wall time, the number of forward passes and the accuracy table.

    .venv/bin/python benchmarks/mask_sweep_cifar10.py [--run runs/bench/train/a:_fastnet_(camscope)]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from camscope.data.prepare import load_prepared
from camscope.models.checkpoint import load_model
from camscope.probes.masking import Geometry, summarise, sweep

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "bench" / "train" / "a:_fastnet_(camscope)")
    ap.add_argument("--data", type=Path, default=ROOT / "runs" / "bench" / "cifar" / "prepared.safetensors")
    ap.add_argument("--fill", default="zero")
    ap.add_argument("--batch", type=int, default=2048)
    args = ap.parse_args()
    model, meta, prep = load_model(args.run)
    ds = load_prepared(args.data)
    test = torch.tensor([i for i, s in enumerate(ds.given_splits) if s == "test"])
    images = ds.images[test]
    remap = {ds.classes.index(c): k for k, c in enumerate(meta["classes"])}
    labels = torch.tensor([remap[int(v)] for v in ds.labels[test]])
    sizes = [0.0] + [round(0.1 * i, 1) for i in range(1, 10)]
    t = time.perf_counter()
    res = sweep(
        model, images, labels, prep, Geometry(32, 32), sizes, ("centre", "outer"), args.fill, batch=args.batch
    )
    wall = time.perf_counter() - t
    n_masks = 1 + 2 * 9  # the unmasked view is shared by both modes
    print(
        f"{len(images)} images x 2 modes x 9 sizes (+ unmasked): {len(images) * n_masks:,} forward passes "
        f"in {wall:.1f} s ({len(images) * n_masks / wall:,.0f} images/s), threads {torch.get_num_threads()}"
    )
    rows = [r for r in summarise(res, meta["classes"]) if r["class"] == "all"]
    print("size  " + "  ".join(f"{s:4.1f}" for s in sizes))
    for mode in ("centre", "outer"):
        print(f"{mode:6}" + "  ".join(f"{r['accuracy']:.2f}" for r in rows if r["mode"] == mode))


if __name__ == "__main__":
    main()
