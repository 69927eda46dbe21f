"""The CAM engine: batched, torch-native, on the model's device.

One forward pass captures the target layers; gradient methods take one backward pass per
target class, from the score down to the deepest target layer only; score and ablation methods
batch their masked forward passes across images and channels. Maps are upsampled and
normalised on the device; nothing goes through numpy per image.

Normalisation matches pytorch-grad-cam so the two can be compared number for number: per layer
the map goes through a ReLU, a per-image min-max scaling and a bilinear resize to the input size
(align_corners=False); several layers are averaged and min-max scaled again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camscope.errors import CamscopeError
from camscope.explain.hooks import capture, explaining, resolve_layers
from camscope.explain.outputs import LayerInputs, resolve_targets, select_output
from camscope.explain.registry import MethodInfo, lookup


@dataclass
class CAMResult:
    maps: torch.Tensor  # (N, T, H, W) in [0, 1], aggregated over layers, at the input size
    raw: list[torch.Tensor]  # per layer: (N, T, h, w) before ReLU and scaling
    targets: torch.Tensor  # (N, T) class indices explained
    logits: torch.Tensor  # (N, K) of the unmodified inputs
    layers: list[str]
    method: str

    def first(self) -> torch.Tensor:
        """(N, H, W): the map of each image's first target."""
        return self.maps[:, 0]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Per-map min-max scaling over the last two dims (pytorch-grad-cam's epsilon)."""
    lo = x.amin((-2, -1), keepdim=True)
    x = x - lo
    return x / (1e-7 + x.amax((-2, -1), keepdim=True))


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    lead = x.shape[:-2]
    y = F.interpolate(x.reshape(-1, 1, *x.shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return y.reshape(*lead, *size)


def aggregate(raw: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    per_layer = [_resize(minmax(r.clamp_min(0)), size) for r in raw]
    return minmax(torch.stack(per_layer, 0).clamp_min(0).mean(0))


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method_name: str = "gradcam",
    targets=None,
    layers=None,
    output: Callable | int | None = None,
    batch_size: int | None = None,
    score_batch: int | None = None,
    eigen_sign_fix: bool = True,
    channels_last: bool | None = None,
) -> CAMResult:
    """CAMs of ``images`` (already preprocessed float N x C x H x W) for ``model``.

    ``targets``: None (the predicted class), a class index, one index per image, or an (N, T)
    tensor for several classes per image. ``layers``: module names or modules (default: the
    registry's CAM layer, else the last convolution). ``output`` picks the logits from models
    that return tuples or dicts. ``channels_last`` (default: on for CPUs) runs the convolutions in
    that layout. The model's mode, ``requires_grad`` flags and memory format are restored.
    """
    m = lookup(method_name)
    if not m.is_cam:
        raise CamscopeError(
            f"{m.key} is not a class activation map of a layer",
            "use saliency_maps() for pixel methods (guided backprop, occlusion)",
        )
    named = resolve_layers(model, layers)
    device = next(model.parameters()).device
    cl = device.type == "cpu" if channels_last is None else channels_last
    images = images.to(device)
    if cl and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    bs = batch_size or len(images)
    if score_batch is None:  # masked copies per forward pass: ~1 M pixels stays in cache
        score_batch = max(8, min(512, (1 << 20) // (images.shape[-1] * images.shape[-2])))
    parts = []
    with explaining(model, cl):
        for i in range(0, len(images), bs):
            chunk_targets = targets
            if targets is not None and not isinstance(targets, int):
                t = torch.as_tensor(targets)
                chunk_targets = t[i : i + bs] if t.ndim >= 1 and len(t) == len(images) else t
            parts.append(
                _explain_batch(
                    model, images[i : i + bs], m, chunk_targets, named, output, score_batch, eigen_sign_fix
                )
            )
    raw = [torch.cat([p[1][j] for p in parts]) for j in range(len(named))]
    return CAMResult(
        torch.cat([p[0] for p in parts]),
        raw,
        torch.cat([p[2] for p in parts]),
        torch.cat([p[3] for p in parts]),
        [n for n, _ in named],
        m.title,
    )


def _explain_batch(model, x, m: MethodInfo, targets, named, output, score_batch, eigen_sign_fix):
    size = tuple(x.shape[-2:])
    fn = m.function()
    if m.kind == "gradient":
        with torch.enable_grad(), capture(named, grads=True) as cap:
            logits = select_output(model(x), output)
            t = resolve_targets(targets, logits)
            acts = list(cap.activations)
            raws: list[list[torch.Tensor]] = [[] for _ in named]
            for j in range(t.shape[1]):
                score = logits.gather(1, t[:, j : j + 1]).sum()
                grads = torch.autograd.grad(score, acts, retain_graph=j + 1 < t.shape[1])
                for li, (a, g) in enumerate(zip(acts, grads, strict=True)):
                    a = a.detach()
                    if m.gives == "weights":  # channel weights: the map is sum_k w_k A_k
                        raws[li].append((fn(a, g)[:, :, None, None] * a).sum(1))
                    else:
                        raws[li].append(fn(a, g))
        raw = [torch.stack(r, 1).detach() for r in raws]
        logits = logits.detach()
    else:
        with torch.no_grad(), capture(named, grads=False) as cap:
            logits = select_output(model(x), output)
            t = resolve_targets(targets, logits)
            acts = list(cap.activations)
        raw = [
            fn(LayerInputs(model, x, a, t, logits, output, named[li], score_batch, eigen_sign_fix))
            for li, a in enumerate(acts)
        ]
    maps = aggregate(raw, size)
    return maps, raw, t, logits


def saliency_maps(model: nn.Module, x: torch.Tensor, method_name: str, targets, layers=None) -> torch.Tensor:
    """(N, H, W) maps in [0, 1] of any registered method: a CAM's map of each image's target, or a
    pixel method's saliency (guided backprop, guided Grad-CAM, occlusion)."""
    m = lookup(method_name)
    if m.is_cam:
        return explain(model, x, m.key, targets=targets, layers=layers).first()
    return m.function()(model, x, targets, layers)
