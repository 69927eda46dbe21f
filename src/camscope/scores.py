"""The one definition of macro-F1, for training (validation), evaluation and its bootstrap.

F1 per class from its counts (2 TP / (2 TP + FP + FN), 0 when the class has neither items nor
predictions), averaged over the fixed list of the model's classes: scikit-learn's
``f1_score(average="macro", labels=range(k), zero_division=0)``, checked number for number in the
tests, but vectorised over the bootstrap's resamples.
"""

from __future__ import annotations

import numpy as np


def macro_f1(pred, target, k: int) -> np.ndarray | float:
    """Macro-F1 of predictions ``pred`` against ``target`` (class indices, shape (..., n)); leading
    dimensions (resamples) are kept: one value per row."""
    pred, target = np.asarray(pred), np.asarray(target)
    f1 = np.zeros((*pred.shape[:-1], k))
    for c in range(k):
        p, t = pred == c, target == c
        tp = (p & t).sum(-1)
        denom = 2 * tp + (p & ~t).sum(-1) + (~p & t).sum(-1)
        f1[..., c] = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
    out = f1.mean(-1)
    return float(out) if out.ndim == 0 else out
