"""`camscope evaluate RUN`: metrics on a held-out split, written to RUN/eval/ and printed.

Next to the numbers on the whole test split stand the same numbers on the test items that have
no (near-)duplicate in training, so a leak cannot flatter the result unnoticed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from camscope.errors import CamscopeError
from camscope.evaluate.metrics import classification_metrics
from camscope.figures import displayable, grid, pyplot, save_png
from camscope.models.inference import predict_logits
from camscope.runs import Run
from camscope.utils import atomic_write_text


def evaluate_run(
    run: Run,
    *,
    split: str = "test",
    tta: str | None = None,
    bootstrap: int = 1000,
    gallery: int = 24,
    out: str | Path | None = None,
    label_issues: str | Path | None = None,
) -> dict:
    """Metrics of ``run`` on ``split`` (and on its items with no duplicate in training, and, given
    the folder of `camscope label-issues` on the same dataset, on its items not flagged), with
    tables and figures in ``out`` (default RUN/eval)."""
    out = run.out("eval", out)
    classes = run.classes
    images, labels, ids = run.split_tensors(split)
    tta = tta or run.meta["preprocess"].get("tta") or "none"
    logits = predict_logits(
        run.model,
        images,
        run.prep,
        batch_size=512,
        tta=tta,
        device=run.device,
        channels_last=torch.device(run.device).type == "cpu",
    )
    leaked = run.leak_flags(ids)
    result = {
        "split": split,
        "tta": tta,
        "checkpoint": run.meta.get("best"),
        "all": classification_metrics(logits, labels, classes, bootstrap),
    }
    clean = ~leaked
    result["leak_free"] = {
        "n_excluded_with_duplicate_in_train": int(leaked.sum()),
        **(classification_metrics(logits[clean], labels[clean], classes, bootstrap) if clean.any() else {}),
    }
    if label_issues is not None:
        flagged = _flagged(label_issues, run.dataset().info.get("dataset_hash"), ids)
        kept = ~flagged
        result["without_label_issues"] = {
            "label_issues": str(label_issues),
            "n_excluded_flagged": int(flagged.sum()),
            **(classification_metrics(logits[kept], labels[kept], classes, bootstrap) if kept.any() else {}),
        }
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(out, result, classes)
    _confusion_png(out / "confusion.png", np.array(result["all"]["confusion"]), classes)
    _reliability_png(out / "reliability.png", result["all"]["reliability"], result["all"]["ece"])
    _misclassified_png(out / "misclassified.png", images, labels, logits, classes, gallery)
    _write_predictions(out / "predictions.csv", ids, labels, logits, classes, leaked)
    atomic_write_text(out / "metrics.json", json.dumps(result, indent=1))
    return {**result, "out": str(out)}


def _flagged(folder: str | Path, dataset: str | None, ids: list[str]) -> torch.Tensor:
    """Which of ``ids`` a label-issues screen of the same prepared dataset flagged."""
    p = Path(folder)
    p = p / "label_issues.json" if p.is_dir() else p
    try:
        screen = json.loads(p.read_text(encoding="utf-8"))
        flagged = set(screen["flagged_ids"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CamscopeError(
            f"{p} is not the label_issues.json of a label-issues screen",
            "pass the folder camscope label-issues wrote",
        ) from None
    if screen.get("dataset_hash") != dataset:
        raise CamscopeError(
            f"{p} screened another prepared dataset than the run was trained on",
            "screen the run's own dataset: camscope label-issues PREPARED --out DIR",
        )
    return torch.tensor([i in flagged for i in ids], dtype=torch.bool)


def _write_tables(out: Path, result: dict, classes: list[str]) -> None:
    m = result["all"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "precision", "recall", "f1", "support"])
    for row in m["per_class"]:
        w.writerow(
            [
                row["class"],
                f"{row['precision']:.6f}",
                f"{row['recall']:.6f}",
                f"{row['f1']:.6f}",
                row["support"],
            ]
        )
    atomic_write_text(out / "per_class.csv", buf.getvalue())
    for name, key in (("confusion.csv", "confusion"), ("confusion_normalised.csv", "confusion_normalised")):
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, m[key], strict=True):
            w.writerow([c, *(f"{v:.6f}" if isinstance(v, float) else v for v in row)])
        atomic_write_text(out / name, buf.getvalue())
    atomic_write_text(out / "classification_report.txt", m["report"])


def _write_predictions(path: Path, ids, labels, logits, classes, leaked) -> None:
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    loss = F.cross_entropy(logits, labels, reduction="none")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "true", "predicted", "confidence", "loss", "dup_in_train"])
    for i in range(len(ids)):
        w.writerow(
            [
                ids[i],
                classes[int(labels[i])],
                classes[int(pred[i])],
                f"{float(conf[i]):.6f}",
                f"{float(loss[i]):.6f}",
                int(leaked[i]),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _confusion_png(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    plt = pyplot()
    rows = cm.sum(1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    k = len(classes)
    size = min(14, 2.5 + 0.45 * k)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "d"),
        (axes[1], norm, "row-normalised (recall)", ".2f"),
    ):
        ax.imshow(data, cmap="Blues", vmin=0)
        ax.set(xticks=range(k), yticks=range(k), xlabel="predicted", ylabel="true", title=title)
        ax.set_xticklabels(classes, rotation=60, ha="right", fontsize=8)
        ax.set_yticklabels(classes, fontsize=8)
        if k <= 20:
            top = data.max() or 1
            for i in range(k):
                for j in range(k):
                    ax.text(
                        j,
                        i,
                        format(data[i, j], fmt),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if data[i, j] > top / 2 else "black",
                    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reliability_png(path: Path, table: list[dict], ece: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    centres = [(b["lo"] + b["hi"]) / 2 for b in table if b["count"]]
    accs = [b["accuracy"] for b in table if b["count"]]
    ax.bar(centres, accs, width=1 / len(table), edgecolor="black", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    ax.set(
        xlabel="confidence", ylabel="accuracy", title=f"reliability (ECE {ece:.3f})", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _misclassified_png(path: Path, images, labels, logits, classes, n: int) -> None:
    loss = F.cross_entropy(logits, labels, reduction="none")
    conf, pred = logits.softmax(1).max(1)
    order = loss.argsort(descending=True)
    order = order[pred[order] != labels[order]][:n]
    if not len(order):
        return
    tiles = displayable(images[order])
    caps = [
        f"true {classes[int(labels[i])]}\npred {classes[int(pred[i])]} {float(conf[i]):.2f}" for i in order
    ]
    save_png(grid(tiles.contiguous(), caps, cols=8, scale=max(1, 96 // tiles.shape[-2])), path)
