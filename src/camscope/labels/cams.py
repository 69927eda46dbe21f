"""The evidence behind a suspect label: CAMs for the given and the suggested class, from the very
model that scored the item out of fold (the frozen backbone with the head of the fold that held
the item out, or the model trained on the other folds).

The head is a logistic regression on standardised, globally pooled features; folded into one
linear layer it becomes the backbone's classifier, so Grad-CAM at the backbone's CAM layer is
the classic class activation map of that head (for pooled features and a linear head the two are
the same map).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn


def folded_head(head, scaler, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, D) weight and (K,) bias of one linear layer on raw features that gives the head's
    logits (up to a per-item constant, which softmax ignores), absent classes at -1e4."""
    coef, icpt = head.coef_ / scaler.scale_, head.intercept_ - head.coef_ @ (scaler.mean_ / scaler.scale_)
    if len(head.classes_) == 2 and coef.shape[0] == 1:  # binary: one decision function, class 1 vs 0
        coef, icpt = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], icpt])
    weight = np.zeros((k, coef.shape[1]))
    bias = np.full(k, -1e4)
    weight[head.classes_], bias[head.classes_] = coef, icpt
    return weight, bias


def with_head(model: nn.Module, head_name: str, weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    m = copy.deepcopy(model)
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(weight).float())
        lin.bias.copy_(torch.from_numpy(bias).float())
    parent, _, child = head_name.rpartition(".")
    setattr(m.get_submodule(parent) if parent else m, child, lin)
    return m.eval()


def suspect_cams(
    ds, rows: list[dict], classes: list[str], model_for: Callable[[int], tuple], path: Path
) -> Path | None:
    """A sheet of the suspects: each row the image, the CAM for its given label and the CAM for
    the suggested one, captioned with both labels and the fold model's probabilities.
    ``model_for(fold)`` gives (model, preprocessing, channels) of the model that held ``fold`` out."""
    from camscope.data.channels import to_channels
    from camscope.explain.engine import explain
    from camscope.explain.overlay import overlay
    from camscope.figures import displayable, grid, save_png

    if not rows:
        return None
    pos = {i: n for n, i in enumerate(ds.ids)}
    cells: dict[str, tuple[list, list[str]]] = {}  # id -> its three tiles and captions
    for fold in sorted({int(r["fold"]) for r in rows}):
        mine = [r for r in rows if int(r["fold"]) == fold]
        model, prep, channels = model_for(fold)
        images = to_channels(ds.images[torch.tensor([pos[r["id"]] for r in mine])], channels)
        targets = torch.tensor([[classes.index(r["given"]), classes.index(r["suggested"])] for r in mine])
        res = explain(model, prep(images), "gradcam", targets=targets)
        probs = res.logits.softmax(1)
        for n, r in enumerate(mine):
            one = images[n : n + 1]
            p_given, p_sugg = (float(probs[n, t]) for t in targets[n])
            cells[r["id"]] = (
                [displayable(one)[0], *overlay(one.expand(2, -1, -1, -1), res.maps[n])],
                [
                    f"{r['rank']}. {r['id']}",
                    f"given {r['given']} ({p_given:.2f})",
                    f"suggested {r['suggested']} ({p_sugg:.2f})",
                ],
            )
    tiles = [t for r in rows for t in cells[r["id"]][0]]  # rows come most suspect first
    caps = [c for r in rows for c in cells[r["id"]][1]]
    side = max(tiles[0].shape[-2:])
    return save_png(grid(torch.stack(tiles), caps, cols=3, scale=max(1, 128 // side)), path)
