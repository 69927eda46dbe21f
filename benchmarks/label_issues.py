"""Label issues with planted flips: camscope's screen against cleanlab on the same probabilities
and against a random ranking.

A copy of a prepared dataset gets --rate of its labels flipped: for CIFAR-10 half of the flips go
to the similar class (cat<->dog, automobile<->truck, deer<->horse, airplane<->ship, bird<->frog),
half uniformly to another class; for any other dataset all flips are uniform among the screened
classes. The flipped copy is screened (`camscope.labels.screen`), then scored:

- camscope: the flagged set (confident learning) and the top-N of its ranking (N = planted);
- cleanlab 2.x `find_label_issues` on the *same* out-of-fold probabilities, its default filter
  (prune_by_noise_rate) and confident_learning;
- random: a random ranking's expected precision is the flip rate.

    .venv/bin/python benchmarks/label_issues.py PREPARED --out runs/bench/label_issues/NAME \
        [--rate 0.03] [--seed 0] [--model fastnet --folds 3 --epochs 8 --set batch_size=512 ...]

Seeds share the output folder's screen: the backbone's features are computed once (they do not
depend on the labels), each seed plants its own flips and fits its own folds.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from camscope.data.prepare import dataset_hash, load_prepared, save_prepared
from camscope.labels.screen import ScreenConfig, screen
from camscope.train.config import parse_model_args

SIMILAR = [("cat", "dog"), ("automobile", "truck"), ("deer", "horse"), ("airplane", "ship"), ("bird", "frog")]


def plant(ds, rate: float, seed: int, eligible: set[str]) -> dict[str, tuple[str, str]]:
    """Flip ``rate`` of the eligible items' labels in place; id -> (true, planted)."""
    rng = np.random.default_rng(seed)
    cls = ds.classes
    idx = [i for i, lab in enumerate(ds.labels.tolist()) if lab >= 0 and cls[lab] in eligible]
    chosen = rng.choice(idx, size=int(round(rate * len(idx))), replace=False)
    partner = {a: b for a, b in SIMILAR} | {b: a for a, b in SIMILAR}
    labels = ds.labels.clone()
    out = {}
    for n, i in enumerate(chosen):
        true = cls[int(labels[i])]
        if n % 2 == 0 and partner.get(true) in eligible:
            new = partner[true]
        else:
            new = str(rng.choice(sorted(eligible - {true})))
        labels[i] = cls.index(new)
        out[ds.ids[i]] = (true, new)
    ds.labels = labels
    ds.info["dataset_hash"] = dataset_hash(ds)
    return out


def prf(flagged: set[str], planted: set[str]) -> tuple[float, float, int]:
    hit = len(flagged & planted)
    return hit / max(1, len(flagged)), hit / max(1, len(planted)), len(flagged)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prepared")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rate", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--min-side", type=int, default=96)
    ap.add_argument("--model", default="frozen", help="frozen, or a model trained per fold (fastnet)")
    ap.add_argument("--epochs", type=float, default=None, help="trained folds: epochs per fold")
    ap.add_argument("--set", action="append", default=[], help="trained folds: training option key=JSON")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_prepared(args.prepared)
    counts = ds.class_counts()
    eligible = {c for c, n in counts.items() if n >= args.folds}
    planted = plant(ds, args.rate, args.seed, eligible)
    noisy = save_prepared(ds, out / f"noisy-seed{args.seed}.safetensors")
    t = time.perf_counter()
    cfg = ScreenConfig(
        folds=args.folds,
        min_side=args.min_side,
        seed=args.seed,
        model=args.model,
        epochs=args.epochs,
        train=parse_model_args(args.set, "--set") or {},
    )
    res = screen(noisy, out / "screen", cfg)
    seconds = time.perf_counter() - t

    from cleanlab.filter import find_label_issues

    rows = list(csv.DictReader((out / "screen" / "label_issues.csv").open(encoding="utf-8")))
    probs_rows = list(csv.DictReader((out / "screen" / "probabilities.csv").open(encoding="utf-8")))
    classes = [c for c in probs_rows[0] if c != "id"]
    ids = [r["id"] for r in probs_rows]
    probs = np.array([[float(r[c]) for c in classes] for r in probs_rows])
    given = {r["id"]: r["given"] for r in rows}
    y = np.array([classes.index(given[i]) for i in ids])
    truth = set(planted)
    n = len(truth & set(ids))
    table = [("camscope confident learning (flagged)", *prf(set(res["flagged_ids"]), truth))]
    table.append(("camscope ranking, top-N", *prf({r["id"] for r in rows[:n]}, truth)))
    for f in ("prune_by_noise_rate", "confident_learning"):
        mask = find_label_issues(y, probs, filter_by=f)
        table.append((f"cleanlab {f}", *prf({ids[i] for i in np.flatnonzero(mask)}, truth)))
    hits = np.cumsum([r["id"] in truth for r in rows])
    prec = hits / np.arange(1, len(rows) + 1)
    ok = np.flatnonzero(prec >= 0.5)
    k = int(ok.max()) + 1 if len(ok) else 0
    table.append(
        ("camscope ranking, deepest top-k at precision >= 0.5", *prf({r["id"] for r in rows[:k]}, truth))
    )
    table.append(("random ranking, top-N (expected)", n / len(ids), n / len(ids), n))
    print(
        f"\n{Path(args.prepared).name}: {len(ids)} items screened, {n} flips planted ({args.rate:.0%}), "
        f"out-of-fold accuracy {res['out_of_fold_accuracy']:.3f}, screen {seconds:.0f} s "
        f"({res['backbone']}, {args.folds} folds)\n"
    )
    print("| method | precision | recall | flagged |")
    print("|---|---|---|---|")
    for name, p, r, k in table:
        print(f"| {name} | {p:.3f} | {r:.3f} | {k} |")
    (out / f"planted-seed{args.seed}.csv").write_text(
        "id,true,planted\n" + "".join(f"{i},{t},{p}\n" for i, (t, p) in sorted(planted.items()))
    )
    (out / f"result-seed{args.seed}.json").write_text(
        json.dumps(
            {
                "table": table,
                "seconds": seconds,
                "summary": {k: v for k, v in res.items() if k not in ("flagged_ids", "most_suspect")},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
