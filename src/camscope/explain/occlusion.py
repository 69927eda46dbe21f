"""Occlusion sensitivity (Zeiler & Fergus 2014): how much the target score drops when a patch of
the image is replaced by a baseline. Every (image, window) occluded copy goes through the model
in large batches; a pixel's value is the mean drop over the windows that cover it (as Captum's
``Occlusion`` computes it)."""

from __future__ import annotations

import torch
from torch import nn

from camscope.explain.engine import minmax
from camscope.explain.hooks import explaining
from camscope.explain.outputs import resolve_targets, select_output


@torch.no_grad()
def occlusion(
    model: nn.Module,
    images: torch.Tensor,
    targets=None,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] = 4,
    baseline: float = 0.0,
    batch: int = 256,
    output=None,
) -> torch.Tensor:
    """(N, T, H, W) mean drop of each target's score over the windows covering each pixel."""
    wh, ww = (window, window) if isinstance(window, int) else window
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    device = next(model.parameters()).device
    x = images.to(device)
    n, _, h, w = x.shape
    with explaining(model):
        logits = select_output(model(x), output)
        t = resolve_targets(targets, logits)
        base = logits.gather(1, t)  # (n, T)
        ys = list(range(0, h - wh + 1, sh))
        xs = list(range(0, w - ww + 1, sw))
        masks = torch.zeros(len(ys) * len(xs), h, w, device=device)
        for k, (y, x0) in enumerate((y, x0) for y in ys for x0 in xs):
            masks[k, y : y + wh, x0 : x0 + ww] = 1
        count = masks.sum(0)
        total = torch.zeros(n, t.shape[1], h, w, device=device)
        jobs = torch.cartesian_prod(torch.arange(n, device=device), torch.arange(len(masks), device=device))
        for s in range(0, len(jobs), batch):
            img, win = jobs[s : s + batch].unbind(1)
            m = masks[win][:, None]
            out = select_output(model(x[img] * (1 - m) + baseline * m), output)
            drop = base[img] - out.gather(1, t[img])  # (b, T)
            total.index_add_(0, img, drop[:, :, None, None] * m)
    return total / count.clamp_min(1)


def occlusion_map(model: nn.Module, x: torch.Tensor, targets, layers=None) -> torch.Tensor:
    """(N, H, W) in [0, 1]: the positive score drops, windows of 1/8 of the side at a stride of 1/16."""
    h = x.shape[-2]
    return minmax(
        occlusion(model, x, targets, window=max(2, h // 8), stride=max(1, h // 16))[:, 0].clamp_min(0)
    )
