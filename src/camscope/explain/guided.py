"""Guided backpropagation (Springenberg et al. 2015) and guided Grad-CAM.

Every ``nn.ReLU`` is swapped, for the duration of the call only, for one whose backward pass lets
through only positive gradients at positive inputs; the original modules (in-place flags
included) are put back in ``finally``. ReLUs called as functions inside ``forward`` cannot be
swapped: such models get plain input gradients there.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from camscope.explain.engine import explain, minmax
from camscope.explain.hooks import explaining
from camscope.explain.outputs import resolve_targets, select_output


class _GuidedReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) & (grad > 0)).to(grad.dtype)


class GuidedReLU(nn.Module):
    def forward(self, x):
        return _GuidedReLUFn.apply(x)


@contextmanager
def guided_relus(model: nn.Module) -> Iterator[int]:
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.ReLU):
                    swapped.append((parent, name, child))
                    setattr(parent, name, GuidedReLU())
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)


def guided_backprop(model: nn.Module, images: torch.Tensor, targets=None, output=None) -> torch.Tensor:
    """(N, T, C, H, W) guided gradients of each target score with respect to the input."""
    device = next(model.parameters()).device
    with explaining(model), guided_relus(model), torch.enable_grad():
        x = images.to(device).detach().requires_grad_(True)
        logits = select_output(model(x), output)
        t = resolve_targets(targets, logits)
        out = []
        for j in range(t.shape[1]):
            score = logits.gather(1, t[:, j : j + 1]).sum()
            (g,) = torch.autograd.grad(score, x, retain_graph=j + 1 < t.shape[1])
            out.append(g)
    return torch.stack(out, 1)


def guided_gradcam(
    model: nn.Module, images: torch.Tensor, targets=None, layers=None, output=None
) -> torch.Tensor:
    """Guided backprop times the Grad-CAM map (Selvaraju et al. 2017): (N, T, C, H, W)."""
    cam = explain(model, images, "gradcam", targets=targets, layers=layers, output=output)
    gb = guided_backprop(model, images, cam.targets, output)
    return gb * cam.maps[:, :, None]


def guided_backprop_map(model: nn.Module, x: torch.Tensor, targets, layers=None) -> torch.Tensor:
    """(N, H, W) in [0, 1]: the absolute guided gradient of the first target, summed over channels."""
    return minmax(guided_backprop(model, x, targets)[:, 0].abs().sum(1))


def guided_gradcam_map(model: nn.Module, x: torch.Tensor, targets, layers=None) -> torch.Tensor:
    return minmax(guided_gradcam(model, x, targets, layers)[:, 0].abs().sum(1))
