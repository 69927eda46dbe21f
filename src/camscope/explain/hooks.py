"""Capturing activations (and their gradients) at named layers, always cleaned up.

The model's parameters are frozen while it is explained, so nothing below the first target layer
reached has a graph: that layer's output becomes a fresh leaf and the backward pass stops there
(no backward through the layers below it, no weight gradients). Each hook hands the rest of the
network a *clone* of the recorded tensor, so an in-place ReLU after the layer cannot corrupt it,
and ``torch.autograd.grad`` on the recorded tensors gives exactly d(score)/d(activation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from camscope.errors import CamscopeError


def resolve_layers(model: nn.Module, layers: str | nn.Module | list | None) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs for module names (or modules); default: the model's CAM layer."""
    named = dict(model.named_modules())
    if layers is None:
        from camscope.models.torchvision_models import default_cam_layer

        layers = [default_cam_layer(model)]
    if isinstance(layers, (str, nn.Module)):
        layers = [layers]
    out = []
    for layer in layers:
        if isinstance(layer, nn.Module):
            name = next((n for n, m in named.items() if m is layer), None)
            if name is None:
                raise CamscopeError(
                    "the target layer is not a module of this model", "pass a module of the model or its name"
                )
            out.append((name, layer))
        elif layer in named:
            out.append((layer, named[layer]))
        else:
            convs = [n for n, m in named.items() if isinstance(m, nn.Conv2d)][-5:]
            raise CamscopeError(
                f"the model has no layer named {layer!r}",
                f"name a module, e.g. one of its last convolutions: {', '.join(convs)}",
            )
    return out


class Capture:
    """Activations of the target layers from the last forward pass (leaves when ``grads``)."""

    def __init__(self) -> None:
        self.activations: list[torch.Tensor | None] = []


@contextmanager
def capture(
    layers: list[tuple[str, nn.Module]],
    grads: bool,
    replace: Callable[[int, torch.Tensor], torch.Tensor | None] | None = None,
) -> Iterator[Capture]:
    """Record each layer's output; ``replace(i, output)`` may substitute what flows on."""
    cap = Capture()
    cap.activations = [None] * len(layers)
    handles = []

    def hook_for(i: int):
        def hook(module, inputs, output):
            if not torch.is_tensor(output):
                raise CamscopeError(
                    f"layer {layers[i][0]} returns {type(output).__name__}, not a tensor",
                    "target a layer whose output is a feature map",
                )
            if output.ndim != 4:
                raise CamscopeError(
                    f"layer {layers[i][0]} gives a {tuple(output.shape)} tensor, not a spatial feature map "
                    "(N, C, H, W)",
                    "target a convolutional layer",
                )
            if replace is not None:
                new = replace(i, output)
                if new is not None:
                    output = new
            if grads:
                # the first target layer reached starts the graph; later ones are already in it
                src = output if output.requires_grad else output.detach().requires_grad_(True)
                cap.activations[i] = src
                return src.clone()
            cap.activations[i] = output.detach()
            return output

        return hook

    try:
        for i, (_, module) in enumerate(layers):
            handles.append(module.register_forward_hook(hook_for(i)))
        yield cap
    finally:
        for h in handles:
            h.remove()


def _is_channels_last(model: nn.Module) -> bool:
    w = next((p for p in model.parameters() if p.ndim == 4), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


@contextmanager
def explaining(model: nn.Module, channels_last: bool = False) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters (and optionally channels_last weights, ~1.5x faster
    convolutions on CPUs) for the duration; the caller's state comes back after."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    was_cl = _is_channels_last(model)
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        if channels_last and not was_cl:
            model.to(memory_format=torch.channels_last)
        yield model
    finally:
        if channels_last and not was_cl:
            model.to(memory_format=torch.contiguous_format)
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
        model.train(was_training)
