"""The audit side by side with cleanvision 0.3.7 on the same folders: time, peak memory, findings
by kind and the overlap of what both call near-duplicates.

Folders (extracted once from ../shared/data into runs/bench/extracted/):
- ``cifar-test``: the 10,000 CIFAR-10 test JPEGs (32x32), class subfolders;
- ``coins``: the Roman coin photographs, 2,520 coins with both sides (about 5,000 JPEGs of a few
  hundred pixels), read by camscope through the scraped CSV (two sides and a label per row) and
  by cleanvision as the folder of images.

Each tool runs as a new user would run it, in a fresh process under /usr/bin/time -v (wall time
and peak resident memory, imports included): `camscope audit` through the CLI, and cleanvision's
`Imagelab(data_path).find_issues()` with its default checks. The tools alternate, ``--rounds``
times each; the table gives the median. Findings come from the last round.

    .venv/bin/python benchmarks/audit_vs_cleanvision.py [--rounds 3] [--sets cifar-test coins]

Needs the bench extra (`pip install -e .[bench]`: cleanvision).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
import zipfile
from itertools import combinations
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "runs" / "bench" / "audit_vs_cleanvision"
EXTRACTED = ROOT / "runs" / "bench" / "extracted"
PY = ROOT / ".venv" / "bin" / "python"
CLI = ROOT / ".venv" / "bin" / "camscope"
RULER = r"(?:Head|Bust)s? of (?:Divus )?([A-Z][a-z]+)"

CLEANVISION = r"""
import json, sys
from pathlib import Path
from cleanvision import Imagelab
root = Path(sys.argv[1])
lab = Imagelab(data_path=str(root))
lab.find_issues(verbose=False)
rel = lambda p: str(Path(p).resolve().relative_to(root.resolve())).replace("\\", "/")
issues = lab.issues
flags = {c[3:-6]: sorted(rel(p) for p in issues.index[issues[c]]) for c in issues.columns
         if c.startswith("is_") and c.endswith("_issue")}
out = {"flags": flags,
       "near_duplicate_sets": [[rel(p) for p in s] for s in lab.info["near_duplicates"]["sets"]],
       "exact_duplicate_sets": [[rel(p) for p in s] for s in lab.info["exact_duplicates"]["sets"]],
       "n_images": len(issues)}
Path(sys.argv[2]).write_text(json.dumps(out))
"""


def extract() -> dict[str, dict]:
    cifar = EXTRACTED / "cifar10-jpeg"
    if not (cifar / "test").is_dir():
        with zipfile.ZipFile(DATA / "cifar10-jpeg.zip") as z:
            z.extractall(EXTRACTED)
    coins = EXTRACTED / "roman-coins"
    if not (coins / "roman-coins" / "coins.csv").is_file():
        with zipfile.ZipFile(DATA / "roman-coins.zip") as z:
            z.extractall(coins)
    csv = coins / "roman-coins" / "coins.csv"
    return {
        "cifar-test": {"folder": cifar / "test", "camscope": [str(cifar / "test")]},
        "coins": {
            "folder": coins / "roman-coins" / "images",
            "camscope": [
                str(csv),
                "--pattern",
                "images/heads{row:05d}.jpg",
                "--pattern",
                "images/tails{row:05d}.jpg",
                "--label-from",
                "Obverse",
                "--label-regex",
                RULER,
            ],
        },
    }


def timed(cmd: list[str]) -> dict:
    t = time.perf_counter()
    env = {**os.environ, "CAMSCOPE_PROGRESS": "0"}
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)
    return {"wall_s": wall, "peak_gb": int(m.group(1)) / 1e6}


def overlap(a: set, b: set) -> dict[str, int]:
    return {"camscope": len(a), "cleanvision": len(b), "both": len(a & b)}


def pairs_of(groups: list[list[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in combinations(g, 2)}


def camscope_findings(report: dict, folder: Path, csv_root: Path | None) -> dict:
    """Findings of an audit.json, with paths made relative to ``folder`` (as cleanvision's are)."""

    def rel(p: str) -> str:
        if csv_root is None:
            return p
        full = (csv_root / p).resolve()
        return str(full.relative_to(folder.resolve())).replace("\\", "/")

    by_kind: dict[str, set[str]] = {}
    for prob in report["problems"]:
        by_kind.setdefault(prob["kind"], set()).update(rel(p) for p in prob["paths"])
    return {
        "counts": report["problem_counts"],
        "images": {k: sorted(v) for k, v in by_kind.items()},
        "near": [[rel(p) for p in g] for g in report["near_duplicate_groups"]],
        "exact": [[rel(p) for p in g] for g in report["exact_duplicate_groups"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sets", nargs="+", default=["cifar-test", "coins"])
    args = ap.parse_args()
    sets = extract()
    OUT.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.sets:
        s = sets[name]
        runs: dict[str, list[dict]] = {"camscope": [], "cleanvision": []}
        for r in range(args.rounds):
            order = ("camscope", "cleanvision") if r % 2 == 0 else ("cleanvision", "camscope")
            for tool in order:
                if tool == "camscope":
                    cmd = [str(CLI), "audit", *s["camscope"], "--out", str(OUT / name)]
                else:
                    cmd = [str(PY), "-c", CLEANVISION, str(s["folder"]), str(OUT / f"{name}-cv.json")]
                runs[tool].append(timed(cmd))
                print(name, tool, f"round {r + 1}: {runs[tool][-1]['wall_s']:.1f} s", flush=True)
        report = json.loads((OUT / name / "audit.json").read_text())
        csv_root = Path(s["camscope"][0]).parent if name == "coins" else None
        cam = camscope_findings(report, s["folder"], csv_root)
        cv = json.loads((OUT / f"{name}-cv.json").read_text())
        cam_pairs, cv_pairs = pairs_of(cam["near"]), pairs_of(cv["near_duplicate_sets"])
        cam_exact, cv_exact = pairs_of(cam["exact"]), pairs_of(cv["exact_duplicate_sets"])
        results[name] = {
            "time": {t: statistics.median(x["wall_s"] for x in v) for t, v in runs.items()},
            "peak_gb": {t: statistics.median(x["peak_gb"] for x in v) for t, v in runs.items()},
            "runs": runs,
            "camscope_counts": cam["counts"],
            "cleanvision_counts": {k: len(v) for k, v in cv["flags"].items() if v},
            "near_pairs": overlap(cam_pairs, cv_pairs),
            "near_groups": {"camscope": len(cam["near"]), "cleanvision": len(cv["near_duplicate_sets"])},
            "exact_pairs": overlap(cam_exact, cv_exact),
            "quality_overlap": {
                k: {
                    "camscope": len(cam["images"].get(k, [])),
                    "cleanvision": len(cv["flags"].get(k, [])),
                    "both": len(set(cam["images"].get(k, [])) & set(cv["flags"].get(k, []))),
                }
                for k in ("dark", "light", "blurry")
            },
            "only_cleanvision_near_pairs": sorted(cv_pairs - cam_pairs)[:200],
        }
        brief = {k: v for k, v in results[name].items() if k not in ("runs", "only_cleanvision_near_pairs")}
        print(json.dumps(brief))
    (OUT / "results.json").write_text(json.dumps(results, indent=1))
    print(
        "\n| data | tool | median wall | peak RSS | near-dup groups / pairs | pairs found by both | "
        "dark | light | blurry |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        for tool in ("camscope", "cleanvision"):
            q = r["quality_overlap"]
            print(
                f"| {name} | {tool} | {r['time'][tool]:.1f} s | {r['peak_gb'][tool]:.2f} GB | "
                f"{r['near_groups'][tool]} / {r['near_pairs'][tool]} | {r['near_pairs']['both']} | "
                + " | ".join(f"{q[k][tool]} ({q[k]['both']} both)" for k in ("dark", "light", "blurry"))
                + " |"
            )


if __name__ == "__main__":
    main()
