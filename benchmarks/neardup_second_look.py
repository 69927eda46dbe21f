"""A second, blind look at near-duplicate groups already judged: how far the precision figures
of benchmarks/neardup_review.py can be trusted, given that a person judges 32-px images.

    .venv/bin/python benchmarks/neardup_second_look.py --audit AUDIT --seeds 2 3 --draw
    .venv/bin/python benchmarks/neardup_second_look.py --audit AUDIT --seeds 2 3

With ``--draw``: the groups of the seeds' samples (``neardup_review.sample_groups``) that have a
first verdict, shuffled, drawn as numbered sheets without paths or verdicts
(runs/bench/neardup_second_look/sheet-NN.png; line n of key.txt holds row n's paths). Each
image is enlarged 5x; a pair is also shown as its second image aligned onto the first (the
texture test's alignment: the zoom and shift with the best plain correlation) and as their
difference, 3x brighter.

Without it: the second verdicts (benchmarks/data/cifar10_neardup_second_look.csv, in the labels'
format: group, verdict, note) against the first (cifar10_neardup_review.csv): how often they
agree, and each seed's precision by either look.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from neardup_review import LABELS, VERDICTS, ZIP, draw_sheets, group_key, read_labels, sample_groups

ROOT = Path(__file__).resolve().parents[1]
SECOND = ROOT / "benchmarks" / "data" / "cifar10_neardup_second_look.csv"
SCALE = 5
SHUFFLE_SEED = 31  # the order of the sheets: fixed, so the numbers on them stay valid


def judged(samples: dict[int, list[list[str]]], first: dict) -> list[str]:
    """The distinct groups of the samples that have a first verdict, sorted."""
    return sorted({group_key(g) for gs in samples.values() for g in gs if group_key(g) in first})


def compare(samples: dict[int, list[list[str]]], first: dict, second: dict) -> None:
    keys = judged(samples, first)
    missing = [k for k in keys if k not in second]
    if missing:
        print(
            f"{len(missing)} of {len(keys)} groups have no second verdict yet (draw the sheets, judge them)"
        )
    both = [k for k in keys if k in second]
    if not both:
        return
    table = Counter((first[k]["verdict"], second[k]["verdict"]) for k in both)
    agree = sum(table[(v, v)] for v in VERDICTS)
    print(f"{len(both)} groups judged twice; the two looks agree on {agree} ({agree / len(both):.3f})")
    print()
    print("| first look \\ second look | " + " | ".join(VERDICTS) + " |")
    print("|---|" + "---|" * len(VERDICTS))
    for v in VERDICTS:
        print(f"| {v} | " + " | ".join(str(table[(v, w)]) for w in VERDICTS) + " |")
    print()
    print("| seed | groups judged twice | precision, first look | precision, second look |")
    print("|---|---|---|---|")
    for seed, gs in samples.items():
        ks = [group_key(g) for g in gs if group_key(g) in first and group_key(g) in second]
        if ks:
            p1 = sum(first[k]["verdict"] == "same" for k in ks) / len(ks)
            p2 = sum(second[k]["verdict"] == "same" for k in ks) / len(ks)
            print(f"| {seed} | {len(ks)} | {p1:.3f} | {p2:.3f} |")
    changed = [
        (k, first[k]["verdict"], second[k]["verdict"])
        for k in both
        if first[k]["verdict"] != second[k]["verdict"]
    ]
    if changed:
        print()
        for k, a, b in changed:
            print(f"{a} -> {b}: {k}  ({second[k].get('note') or first[k].get('note') or ''})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audit", type=Path, default=ROOT / "runs" / "bench" / "cifar" / "audit.json")
    ap.add_argument("--zip", type=Path, default=ZIP)
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--labels", type=Path, default=LABELS)
    ap.add_argument("--second", type=Path, default=SECOND)
    ap.add_argument("--draw", action="store_true", help="draw the blind sheets instead of comparing")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "neardup_second_look")
    args = ap.parse_args()
    if not args.audit.is_file():
        raise SystemExit(f"{args.audit} not found: give --audit, the audit.json of a CIFAR-10 audit")
    audit = json.loads(args.audit.read_text(encoding="utf-8"))
    first = read_labels(args.labels)
    samples = {s: sample_groups(audit, args.sample, s) for s in args.seeds}
    if args.draw:
        if not args.zip.is_file():
            raise SystemExit(
                f"{args.zip} not found: the sheets need the shared CIFAR-10 JPEGs (../shared/data)"
            )
        keys = judged(samples, first)
        random.Random(SHUFFLE_SEED).shuffle(keys)
        groups = [k.split() for k in keys]
        sheets = draw_sheets(groups, args.zip, args.out, per_sheet=10, scale=SCALE, captions=False)
        (args.out / "key.txt").write_text("".join(k + "\n" for k in keys), encoding="utf-8")
        print(f"{len(groups)} groups on {len(sheets)} sheets in {args.out}; line n of key.txt is row n")
        return
    compare(samples, first, read_labels(args.second))


if __name__ == "__main__":
    main()
