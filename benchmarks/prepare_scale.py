"""`camscope prepare` on 250,000 and 1,000,000 images, and a training run's data path on the file:
time and peak memory, so that the growth with N is visible.

The sets are the mosaic folders benchmarks/audit_scale.py builds (four CIFAR-10 images at 16x16
per 32x32 JPEG; one folder per 10,000 files, which the folder source reads as a class). Each size:

1. `camscope prepare SET --out FILE --size 32` under /usr/bin/time -v: wall time and peak resident
   memory (GNU time's maximum over the process and the workers it reaps).
2. What training does before its first step, in a fresh process: open the file, take 80% of the
   rows at random as the training tensor (`PreparedDataset.rows`, as `select_data` does) and
   compute the normalisation over it (`Preprocess.from_images`), then read every training row once
   in batches of 512 in random order, as an epoch does. Reported: wall time and the peak of
   RssAnon, the anonymous memory the process holds (mapped file pages are RssFile, which the
   kernel drops under pressure; that is what lets a file larger than RAM be read).

With ``--ref REV`` the same prepare is also run by the code at that git revision (a worktree, on
this virtual environment), once, right after the current code's run of the same size: the before/after
of streaming in memory (one run each; the wall times are single runs, not a spread).

    .venv/bin/python benchmarks/prepare_scale.py [--sizes 250000 1000000] [--ref b7f6445 --ref-sizes 250000]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / ".venv" / "bin" / "python"

USE = r"""
import json, sys, threading, time
import torch
from camscope.data.prepare import load_prepared
from camscope.models.inference import Preprocess

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

peak = [anon()]
stop = threading.Event()
def poll():
    while not stop.is_set():
        peak[0] = max(peak[0], anon()); time.sleep(0.01)
threading.Thread(target=poll, daemon=True).start()
base = anon()
t0 = time.perf_counter()
ds = load_prepared(sys.argv[1])
t_open = time.perf_counter() - t0
g = torch.Generator().manual_seed(0)
index = torch.randperm(len(ds), generator=g)[: int(0.8 * len(ds))]
x = ds.rows(index, 3)
t_select = time.perf_counter() - t0 - t_open
prep = Preprocess.from_images(x)
order = torch.randperm(len(x), generator=g)
total = 0
for i in range(0, len(x), 512):
    total += int(x[order[i : i + 512]].sum())
stop.set()
peak[0] = max(peak[0], anon())
print(json.dumps({"rows": len(x), "bytes": x.numel(), "open_s": round(t_open, 2),
                  "select_s": round(t_select, 1), "total_s": round(time.perf_counter() - t0, 1),
                  "peak_anon_gb": round((peak[0] - base) / 1e9, 3),
                  "mapped": ds.path is not None, "mean": [round(m, 4) for m in prep.mean]}))
"""


def timed(cmd: list[str], env: dict | None = None) -> dict:
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return {"wall_s": round(wall, 1), "peak_rss_gb": round(int(m.group(1)) / 1e6, 2) if m else None}


def prepare(code_src: Path, folder: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_src), "CAMSCOPE_PROGRESS": "0"}
    cmd = [str(PY), "-m", "camscope.cli", "prepare", str(folder), "--out", str(out), "--size", "32"]
    res = timed(cmd, env)
    res["file_gb"] = round(out.stat().st_size / 1e9, 2)
    return res


def worktree(ref: str, root: Path) -> Path:
    path = root / f"ref-{ref}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True)
    return path / "src"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "bench" / "audit_scale")
    ap.add_argument("--sizes", type=int, nargs="+", default=[250_000, 1_000_000])
    ap.add_argument("--ref", help="a git revision to run prepare with too (before streaming)")
    ap.add_argument("--ref-sizes", type=int, nargs="*", default=[250_000])
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        folder = args.root / f"set-{n}"
        if not folder.is_dir():
            sys.exit(f"no {folder}: build it with benchmarks/audit_scale.py --sizes {n}")
        out = args.root / f"prepared-{n}.safetensors"
        runs = [("current", ROOT / "src")]
        if args.ref and n in args.ref_sizes:
            runs.append((args.ref, worktree(args.ref, args.root)))
        for name, src in runs:
            res = prepare(src, folder, out)
            row = {"images": n, "code": name, **res}
            if name == "current":
                use = subprocess.run(
                    [str(PY), "-c", USE, str(out)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                )
                if use.returncode != 0:
                    sys.exit(use.stderr[-3000:])
                row["use"] = json.loads(use.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row), flush=True)
        out.unlink()
    print(
        "\n| images | code | prepare wall | prepare peak RSS | file | train rows | mapped | select | "
        "total | peak RssAnon |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        u = r.get("use") or {}
        print(
            f"| {r['images']:,} | {r['code']} | {r['wall_s']:.0f} s | {r['peak_rss_gb']:.2f} GB | "
            f"{r['file_gb']:.2f} GB | {u.get('rows', '-')} | {u.get('mapped', '-')} | "
            f"{u.get('select_s', '-')} s | {u.get('total_s', '-')} s | {u.get('peak_anon_gb', '-')} GB |"
        )
    (args.root / "prepare_results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
