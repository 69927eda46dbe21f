"""The near-duplicate search alone on CIFAR-10's 60,000 thumbnails: what the distinctiveness test
costs and what verifying in cluster order saves, each variant in a fresh process, alternating.

    .venv/bin/python benchmarks/neardup_speed.py [--rounds 2]

The thumbnails are made once as the audit makes them (32x32 grayscale of each JPEG) and kept in
runs/bench/neardup_speed/thumbs.npy. Variants:
- ``no test, found order``: the distinctiveness test off and pairs verified in the order they
  were found (session 27's search, with the current code's other speed work);
- ``test, found order``: the test, pairs in found order;
- ``test, cluster order``: the current default.
Prints a table of wall seconds per round and the verified pairs (equal for the last two).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"
VARIANTS = ("no test, found order", "test, found order", "test, cluster order")

CHILD = """
import json, sys, time
import numpy as np
from camscope.data import neardup as nd
variant, path = sys.argv[1], sys.argv[2]
if variant != "test, cluster order":
    nd._Rows.local_order = lambda self, pairs: None
params = nd.NearDupParams(distinct_z=0.0) if variant.startswith("no test") else nd.NearDupParams()
thumbs = np.load(path, mmap_mode="r")
t = time.perf_counter()
res = nd.find_near_duplicates(thumbs, params)
print(json.dumps({"seconds": time.perf_counter() - t, "pairs": len(res.pairs)}))
"""


def thumbnails(out: Path) -> Path:
    path = out / "thumbs.npy"
    if not path.is_file():
        out.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(ZIP) as z:
            names = sorted(n for n in z.namelist() if n.endswith(".jpg"))
            gray = [Image.open(io.BytesIO(z.read(n))).convert("RGB").convert("L") for n in names]
        thumbs = [np.asarray(g) for g in gray]
        np.save(path, np.stack(thumbs))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_speed")
    args = ap.parse_args()
    if not ZIP.is_file():
        raise SystemExit(f"{ZIP} not found: this benchmark needs the shared CIFAR-10 JPEGs")
    path = thumbnails(args.out)
    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for r in range(args.rounds):
        for v in VARIANTS:
            run = subprocess.run(
                [sys.executable, "-c", CHILD, v, str(path)], capture_output=True, text=True, check=True
            )
            results[v].append(json.loads(run.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1} {v}: {results[v][-1]['seconds']:.1f} s", flush=True)
    rounds = " | ".join(f"round {r + 1}" for r in range(args.rounds))
    print(f"\n| variant | {rounds} | verified pairs |")
    print("|---|" + "---|" * (args.rounds + 1))
    for v in VARIANTS:
        secs = " | ".join(f"{x['seconds']:.1f} s" for x in results[v])
        print(f"| {v} | {secs} | {results[v][0]['pairs']:,} |")


if __name__ == "__main__":
    main()
