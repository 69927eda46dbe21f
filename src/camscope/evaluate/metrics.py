"""Classification metrics from logits and labels (scikit-learn where it has them).

Everything is computed from one (N, K) logit tensor and the true labels, so the same function
serves the whole test split, the leak-free part of it, and a bootstrap resample.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix, precision_recall_fscore_support

from camscope.scores import macro_f1


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = 15
) -> tuple[float, list[dict]]:
    """ECE (Guo et al. 2017) with equal-width confidence bins, and the reliability table."""
    conf = probs.max(1)
    correct = probs.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi) if lo > 0 else (conf >= lo) & (conf <= hi)
        n = int(inside.sum())
        if n:
            acc, mean_conf = float(correct[inside].mean()), float(conf[inside].mean())
            ece += n / len(conf) * abs(acc - mean_conf)
        else:
            acc = mean_conf = float("nan")
        table.append({"lo": float(lo), "hi": float(hi), "count": n, "accuracy": acc, "confidence": mean_conf})
    return float(ece), table


def top_k_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(1).mean())


def bootstrap_ci(
    pred: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Percentile bootstrap intervals of accuracy and macro-F1 (resampling test items)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    idx = rng.integers(0, n, (resamples, n))
    p, y = pred[idx], labels[idx]  # (R, n)
    acc = (p == y).mean(1)
    macro = macro_f1(p, y, n_classes)  # the point estimate's definition, one value per resample
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {
        "level": level,
        "resamples": resamples,
        "accuracy": [float(v) for v in np.percentile(acc, q)],
        "macro_f1": [float(v) for v in np.percentile(macro, q)],
    }


def classification_metrics(
    logits: torch.Tensor, labels: torch.Tensor, classes: list[str], bootstrap: int = 1000, seed: int = 0
) -> dict:
    lg = logits.float().numpy()
    y = labels.numpy()
    k = len(classes)
    probs = torch.softmax(logits.float(), 1).numpy()
    pred = lg.argmax(1)
    ids = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=ids, zero_division=0)
    macro = precision_recall_fscore_support(y, pred, labels=ids, average="macro", zero_division=0)
    weighted = precision_recall_fscore_support(y, pred, labels=ids, average="weighted", zero_division=0)
    cm = confusion_matrix(y, pred, labels=ids)
    rows = cm.sum(1, keepdims=True)
    cm_norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=float), where=rows > 0)
    ece, reliability = expected_calibration_error(probs, y)
    confused = sorted(
        (
            {"true": classes[i], "predicted": classes[j], "count": int(cm[i, j])}
            for i in range(k)
            for j in range(k)
            if i != j and cm[i, j] > 0
        ),
        key=lambda d: -d["count"],
    )
    out = {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "macro": {"precision": float(macro[0]), "recall": float(macro[1]), "f1": macro_f1(pred, y, k)},
        "weighted": {"precision": float(weighted[0]), "recall": float(weighted[1]), "f1": float(weighted[2])},
        "per_class": [
            {
                "class": c,
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        ],
        "top_k_accuracy": {f"top{kk}": top_k_accuracy(lg, y, kk) for kk in (1, 3, 5) if kk <= k},
        "ece": ece,
        "reliability": reliability,
        "confusion": cm.tolist(),
        "confusion_normalised": cm_norm.tolist(),
        "most_confused": confused[:10],
        "report": classification_report(y, pred, labels=ids, target_names=classes, zero_division=0, digits=4),
    }
    if bootstrap and len(y):
        out["ci"] = bootstrap_ci(pred, y, k, bootstrap, seed)
    return out
