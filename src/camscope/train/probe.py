"""A linear head on a frozen backbone's features: the 'linear probe' of transfer learning.

The features of the training and validation images are computed once; a multinomial logistic
regression is fitted on them (standardised, full batch, L-BFGS) for each L2 strength of a small
grid, and the strength with the best validation score is kept. The standardisation is folded into
the head's weights, so the result is an ordinary ``nn.Linear`` of the model and every later
stage sees an ordinary run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from camscope.scores import macro_f1

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


@dataclass
class ProbeFit:
    weight: torch.Tensor  # (K, D) for the raw features
    bias: torch.Tensor  # (K,)
    l2: float
    candidates: list[dict]  # per L2 strength: its validation numbers


def fit_linear_head(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    val_f: torch.Tensor,
    val_y: torch.Tensor,
    k: int,
    monitor: str = "val_acc",
    class_weight: torch.Tensor | None = None,
    grid: tuple[float, ...] = L2_GRID,
) -> ProbeFit:
    """The head chosen on validation (on training loss when there is no validation split)."""
    mu, sd = train_f.mean(0), train_f.std(0).clamp_min(1e-6)
    xs, vs = (train_f - mu) / sd, (val_f - mu) / sd
    fits = []
    for l2 in grid:
        w, b = _logistic(xs, train_y, k, l2, class_weight)
        row = {"l2": l2, **_scores(xs @ w.T + b, train_y, "train")}
        if len(val_y):
            row.update(_scores(vs @ w.T + b, val_y, "val"))
        fits.append((row, w, b))
    key = monitor if len(val_y) else "train_loss"
    lower = key.endswith("loss")
    row, w, b = (min if lower else max)(fits, key=lambda f: (f[0][key], -f[0]["l2"] if lower else f[0]["l2"]))
    # fold the standardisation into the head: w (x - mu) / sd + b = (w / sd) x + (b - w mu / sd)
    weight = w / sd
    return ProbeFit(weight, b - weight @ mu, row["l2"], [f[0] for f in fits])


def _logistic(x, y, k: int, l2: float, class_weight, iters: int = 200):
    torch.manual_seed(0)
    w = torch.zeros(k, x.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y, weight=class_weight) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def _scores(logits: torch.Tensor, y: torch.Tensor, prefix: str) -> dict:
    pred = logits.argmax(1)
    return {
        f"{prefix}_loss": float(F.cross_entropy(logits, y)),
        f"{prefix}_acc": float((pred == y).float().mean()),
        f"{prefix}_macro_f1": macro_f1(pred.numpy(), y.numpy(), logits.shape[1]),
    }
