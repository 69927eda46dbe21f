"""The two things every explanation method asks of a model's output: which tensor holds the
logits (models may return tuples or dicts), and which classes to explain."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from camscope.errors import CamscopeError


def select_output(out, output: Callable | int | None) -> torch.Tensor:
    if callable(output):
        return output(out)
    if isinstance(out, (tuple, list)):
        return out[output or 0]
    if isinstance(out, dict):
        if output is None:
            raise CamscopeError(
                "the model returns a dict", "pass output=<key or function> to pick the logits"
            )
        return out[output]
    return out


def resolve_targets(targets, logits: torch.Tensor) -> torch.Tensor:
    n, k = logits.shape
    if targets is None:
        t = logits.argmax(1)[:, None]
    elif isinstance(targets, int):
        t = torch.full((n, 1), targets, dtype=torch.long)
    else:
        t = torch.as_tensor(targets, dtype=torch.long)
        if t.ndim == 1:
            t = t[:, None] if len(t) == n else t[None, :].expand(n, -1)
    t = t.to(logits.device)
    if t.shape[0] != n:
        raise CamscopeError(f"{t.shape[0]} targets for {n} images", "give one target (or one row) per image")
    if (t < 0).any() or (t >= k).any():
        raise CamscopeError(
            f"target class out of range 0..{k - 1}", "give class indices of the model's classes"
        )
    return t


@dataclass
class LayerInputs:
    """What a gradient-free CAM method is given for one target layer."""

    model: nn.Module
    x: torch.Tensor  # the preprocessed batch
    acts: torch.Tensor  # (N, K, h, w) activations of the layer
    targets: torch.Tensor  # (N, T) classes to explain
    logits: torch.Tensor  # (N, classes) of the unmodified batch
    output: Callable | int | None  # picks the logits from the model's output
    layer: tuple[str, nn.Module]
    score_batch: int  # masked copies per forward pass
    eigen_sign_fix: bool = True
