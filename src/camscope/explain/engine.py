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
from camscope.explain.methods import Method, eigencam_map, method


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


def _select(out, output: Callable | int | None) -> torch.Tensor:
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


def _targets(targets, logits: torch.Tensor) -> torch.Tensor:
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
    m = method(method_name)
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
        m.name,
    )


def _explain_batch(model, x, m: Method, targets, named, output, score_batch, eigen_sign_fix):
    size = tuple(x.shape[-2:])
    if m.needs_grad:
        with torch.enable_grad(), capture(named, grads=True) as cap:
            logits = _select(model(x), output)
            t = _targets(targets, logits)
            acts = list(cap.activations)
            raws: list[list[torch.Tensor]] = [[] for _ in named]
            for j in range(t.shape[1]):
                score = logits.gather(1, t[:, j : j + 1]).sum()
                grads = torch.autograd.grad(score, acts, retain_graph=j + 1 < t.shape[1])
                for li, (a, g) in enumerate(zip(acts, grads, strict=True)):
                    a = a.detach()
                    if m.weights is not None:
                        w = m.weights(a, g)
                        raws[li].append((w[:, :, None, None] * a).sum(1))
                    else:
                        raws[li].append(m.spatial(a, g))
        raw = [torch.stack(r, 1).detach() for r in raws]
        logits = logits.detach()
    else:
        with torch.no_grad(), capture(named, grads=False) as cap:
            logits = _select(model(x), output)
            t = _targets(targets, logits)
            acts = list(cap.activations)
        if m.kind == "eigen":
            raw = [eigencam_map(a, eigen_sign_fix)[:, None].expand(-1, t.shape[1], -1, -1) for a in acts]
        elif m.kind == "score":
            raw = [_scorecam(model, x, a, t, output, score_batch) for a in acts]
        else:
            raw = [
                _ablationcam(model, x, a, t, logits, output, named[li], score_batch)
                for li, a in enumerate(acts)
            ]
    maps = aggregate(raw, size)
    return maps, raw, t, logits


@torch.no_grad()
def _scorecam(model, x, acts, t, output, chunk: int) -> torch.Tensor:
    """Wang et al. 2020: each channel, upsampled and min-max scaled, masks the input; the masked
    input's target score (softmax over channels) weighs the channel.

    All (image, channel) masked inputs go through the model in large batches. Channels whose
    mask is empty (a constant activation map) all give the same, all-zero input: the model sees
    it once.
    """
    n, k = acts.shape[:2]
    h, w = x.shape[-2:]
    up = F.interpolate(acts, size=(h, w), mode="bilinear", align_corners=True)  # as pytorch-grad-cam
    lo = up.amin((2, 3), keepdim=True)
    hi = up.amax((2, 3), keepdim=True)
    up = (up - lo) / (hi - lo + 1e-8)
    empty = (hi - lo).flatten(1) == 0  # (n, k): mask exactly zero
    scores = torch.empty(n, k, t.shape[1], device=x.device)
    if empty.any():
        zero_logits = _select(model(torch.zeros_like(x[:1])), output)[0]
        scores[empty] = zero_logits[t].unsqueeze(1).expand(-1, k, -1)[empty]
    todo = (~empty).nonzero()  # (P, 2): image, channel
    for s in range(0, len(todo), chunk):
        idx = todo[s : s + chunk]
        batch = x[idx[:, 0]] * up[idx[:, 0], idx[:, 1]][:, None]
        out = _select(model(batch), output)
        scores[idx[:, 0], idx[:, 1]] = out.gather(1, t[idx[:, 0]])
    weights = torch.softmax(scores, dim=1)  # over channels, per target
    return torch.einsum("nkt,nkhw->nthw", weights, acts)


@torch.no_grad()
def _ablationcam(model, x, acts, t, logits, output, layer, chunk: int) -> torch.Tensor:
    """Desai & Ramaswamy 2020: the relative drop of the target score when one channel of the
    layer is set to zero. The layer's output is replaced by the ablated copies; the layers below
    it run once per image when the model allows (a batch of one broadcasts), else per copy."""
    n, k = acts.shape[:2]
    name, module = layer
    base = logits.gather(1, t)  # (n, T)
    ablated = torch.empty(n, k, t.shape[1], device=x.device)
    for i in range(n):
        for s in range(0, k, chunk):
            ch = torch.arange(s, min(s + chunk, k), device=x.device)
            copies = acts[i].expand(len(ch), -1, -1, -1).clone()
            copies[torch.arange(len(ch)), ch] = 0

            def replace(_, out, copies=copies):
                return copies

            out = None
            with capture([(name, module)], grads=False, replace=replace):
                try:
                    out = _select(model(x[i : i + 1]), output)
                except RuntimeError:
                    out = None
                if out is None or out.shape[0] != len(ch):
                    out = _select(model(x[i : i + 1].expand(len(ch), -1, -1, -1)), output)
            ablated[i, s : s + len(ch)] = out[:, t[i]]
    weights = (base[:, None, :] - ablated) / base[:, None, :]
    return torch.einsum("nkt,nkhw->nthw", weights, acts)
