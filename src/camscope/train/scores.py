"""Validation scores the training loop and the linear probe share."""

from __future__ import annotations

import torch


def macro_f1(pred: torch.Tensor, target: torch.Tensor, k: int) -> float:
    cm = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).double()
    tp = cm.diag()
    denom = cm.sum(0) + cm.sum(1)
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp_min(1), torch.zeros_like(tp))
    present = cm.sum(1) > 0
    return float(f1[present].mean()) if present.any() else 0.0
