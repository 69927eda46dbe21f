"""Confident learning (Northcutt, Jiang & Chuang, 2021) on out-of-sample probabilities.

An item is a label issue when its probability for some *other* class reaches that class's own
threshold (the mean probability the model gives the class on the items labelled with it) and
that class is the model's best guess, while the model does not still prefer the given label.
These are the off-diagonal counts of the confident joint; cleanlab calls the filter
``filter_by="confident_learning"``, and ``tests/test_label_issues.py`` checks ours against it on
the same probabilities. Items are ranked by their label quality: the normalised margin
``(p[given] - max p[other] + 1) / 2`` (0: surely wrong, 1: surely right) or the self-confidence
``p[given]``.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-6  # fuzzy comparisons, as in the reference implementation
_FLOOR = 2 * _EPS  # thresholds never reach zero
_ABSENT = 2.0  # a class no item carries: no probability reaches its threshold

SCORES = ("normalized_margin", "self_confidence")


def thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per class: the mean probability of that class over the items labelled with it."""
    k = probs.shape[1]
    out = np.full(k, _ABSENT)
    for c in range(k):
        mine = labels == c
        if mine.any():
            out[c] = probs[mine, c].mean()
    return np.clip(out, _FLOOR, None)


def confident_joint(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K x K counts of given label x confidently guessed label, each item's guess or -1)."""
    labels = np.asarray(labels)
    above = probs >= thresholds(labels, probs) - _EPS
    n_above = above.sum(axis=1)
    # several classes above their threshold: the likeliest; one: that one; none: no guess
    guess = np.where(n_above > 1, probs.argmax(axis=1), above.argmax(axis=1))
    guess = np.where(n_above > 0, guess, -1)
    k = probs.shape[1]
    joint = np.zeros((k, k), dtype=np.int64)
    sure = guess >= 0
    np.add.at(joint, (labels[sure], guess[sure]), 1)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))
    return joint, guess


def quality(labels: np.ndarray, probs: np.ndarray, score: str = "normalized_margin") -> np.ndarray:
    """Each item's label quality in [0, 1]: low means the given label is probably wrong."""
    labels = np.asarray(labels)
    given = probs[np.arange(len(labels)), labels]
    if score == "self_confidence":
        return given
    if score != "normalized_margin":
        raise ValueError(f"unknown score {score!r}; use one of {', '.join(SCORES)}")
    return (given - _others(labels, probs).max(axis=1) + 1) / 2


def find_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Boolean mask of the items confident learning flags."""
    labels = np.asarray(labels)
    _, guess = confident_joint(labels, probs)
    flagged = (guess >= 0) & (guess != labels)
    # the model still prefers the given label (ties included): not an issue
    nudged = probs.copy()
    nudged[np.arange(len(labels)), labels] += _EPS
    return flagged & (nudged.argmax(axis=1) != labels)


def suggested(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The label the model would give instead: its likeliest class other than the given one."""
    return _others(np.asarray(labels), probs).argmax(axis=1)


def _others(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The probabilities with each item's given class masked out."""
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return others
