"""`make demo`: everything that exists so far, end to end, on synthetic coins.

Writes a messy two-sided coin dataset (planted problems of every kind), audits it, prepares it
(leaving out what the audit found broken), makes a leak-free split, trains a small CNN, evaluates
it and draws Grad-CAM galleries. Output: ./demo-output.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from camscope.cli import BAD_FILE_KINDS, console, print_audit, print_evaluation, print_split, print_training
from camscope.data.audit import audit, write_audit
from camscope.data.messy import HEADS, LABEL_REGEX, TAILS, write_messy_coins
from camscope.data.prepare import PrepareConfig, prepare, save_prepared
from camscope.data.sources import CsvSource
from camscope.data.splits import SplitConfig, make_split, write_split


def main(out: str | Path = "demo-output") -> Path:
    out = Path(out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    manifest, _ = write_messy_coins(out / "data", n=600, seed=0)
    console.rule("1. source: synthetic two-sided coins, with planted problems")
    src = CsvSource(manifest, patterns=[HEADS, TAILS], label_from="Obverse", label_regex=LABEL_REGEX)
    console.print(f"{len(src)} coins from {src.description}")
    console.rule("2. audit")
    report = audit(src)
    audit_path = write_audit(report, out / "run")
    print_audit(report)
    console.rule("3. prepare")
    exclude = {
        i: f"{p['kind']} (audit)"
        for p in report["problems"]
        if p["kind"] in BAD_FILE_KINDS
        for i in p["item_ids"]
    }
    ds = prepare(src, PrepareConfig(size=48), exclude)
    prepared = save_prepared(ds, out / "run" / "prepared.safetensors")
    console.print(
        f"{len(ds)} coins prepared as {tuple(ds.images.shape)} uint8; "
        f"{len(ds.info['excluded'])} left out with their reason"
    )
    console.rule("4. split (stratified, duplicates kept together)")
    result = make_split(ds, SplitConfig(seed=0), report)
    split_csv, _ = write_split(result, out / "run")
    print_split(result.summary)
    console.rule("5. train (deep_cnn, no flips: coins have a handedness)")
    from camscope.evaluate.run import evaluate_run
    from camscope.explain.gallery import cam_gallery
    from camscope.train.config import make_config
    from camscope.train.run import train_from_files

    cfg = make_config(
        "deep_cnn",
        epochs=12,
        batch_size=32,
        lr=2e-3,
        flip="none",
        translate=2,
        model_args={"widths": [16, 32, 64, 64]},
    )
    print_training(train_from_files(prepared, out / "run", cfg))
    console.rule("6. evaluate on the test split")
    print_evaluation(evaluate_run(out / "run", prepared, bootstrap=500))
    console.rule("7. explain (Grad-CAM galleries per class, correct and wrong)")
    gal = cam_gallery(out / "run", prepared, method="gradcam", per_class=4)
    console.rule("done")
    console.print(
        f"audit:    {audit_path}\nprepared: {prepared}\nsplit:    {split_csv}\n"
        f"run:      {out / 'run'} (checkpoints, metrics, learning_curve.png)\n"
        f"eval:     {out / 'run' / 'eval'}\ngalleries: {gal['out']}"
    )
    console.print(
        f"demo finished in {time.perf_counter() - t0:.1f} s; "
        "probes and the HTML report arrive with the next layers"
    )
    return out


if __name__ == "__main__":
    main()
