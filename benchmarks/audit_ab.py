"""`camscope audit` by the current code and by an earlier revision, side by side in one run.

Each round runs both (the order alternating, ABBA, so that a machine slowing down during the run
does not favour one side), each under /usr/bin/time -v, into its own output folder. Prints the wall
time, the audit's own scan and near-duplicate phases and the peak memory of every run, the median
of each side and their ratio, and whether the two sides' findings agree (near-duplicate groups,
problems, image-quality scores).

    .venv/bin/python benchmarks/audit_ab.py --ref 6053ae7 [SOURCE] [--rounds 2]

SOURCE defaults to the shared CIFAR-10 JPEGs. The revision is checked out as a git worktree
under --root and run with this checkout's virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from prepare_scale import PY, ROOT, timed, worktree


def run(code_src: Path, source: str, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code_src), "CAMSCOPE_PROGRESS": "0"}
    res = timed([str(PY), "-m", "camscope.cli", "audit", source, "--out", str(out)], env)
    report = json.loads((out / "audit.json").read_text())
    res.update(scan_s=report["timing_s"]["scan"], near_dup_s=report["timing_s"]["near_duplicates"])
    res["report"] = report
    return res


def agreement(a: dict, b: dict) -> str:
    ga = {tuple(g) for g in a["near_duplicate_groups"]}
    gb = {tuple(g) for g in b["near_duplicate_groups"]}
    same = [k for k in ("problems", "image_quality", "images") if a.get(k) == b.get(k)]
    return (
        f"near-duplicate groups: {len(ga)} and {len(gb)}, {len(ga & gb)} identical; "
        f"identical sections: {', '.join(same) or 'none'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", default=str(ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"))
    ap.add_argument("--ref", required=True, help="the earlier git revision")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--root", type=Path, default=ROOT / "runs" / "bench" / "audit_ab")
    args = ap.parse_args()
    if not Path(args.source).exists():
        sys.exit(f"{args.source} not found: give a folder, zip or CSV to audit")
    args.root.mkdir(parents=True, exist_ok=True)
    sides = {args.ref: worktree(args.ref, args.root), "now": ROOT / "src"}
    names = list(sides)
    rows, last = [], {}
    for r in range(args.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            res = run(sides[name], args.source, args.root / f"{name}-{r}")
            last[name] = res.pop("report")
            rows.append({"code": name, "round": r, **res})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| code | round | wall | scan | near-dup | peak RSS |\n|---|---|---|---|---|---|")
    for x in rows:
        print(
            f"| {x['code']} | {x['round']} | {x['wall_s']:.1f} s | {x['scan_s']:.1f} s "
            f"| {x['near_dup_s']:.1f} s | {x['peak_rss_gb']:.2f} GB |"
        )
    med = {n: statistics.median(x["wall_s"] for x in rows if x["code"] == n) for n in names}
    ratio = med[args.ref] / med["now"]
    print(f"\nmedian wall: {args.ref} {med[args.ref]:.1f} s, now {med['now']:.1f} s, ratio {ratio:.2f}x")
    print(agreement(last[args.ref], last["now"]))


if __name__ == "__main__":
    main()
