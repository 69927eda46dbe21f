"""CAMs from masked forward passes, no gradients: Score-CAM and Ablation-CAM.

Both batch their masked forward passes across images and channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from camscope.explain.hooks import capture
from camscope.explain.outputs import LayerInputs, select_output


@torch.no_grad()
def scorecam(inp: LayerInputs) -> torch.Tensor:
    """Wang et al. 2020: each channel, upsampled and min-max scaled, masks the input; the masked
    input's target score (softmax over channels) weighs the channel.

    All (image, channel) masked inputs go through the model in large batches. Channels whose
    mask is empty (a constant activation map) all give the same, all-zero input: the model sees
    it once.
    """
    model, x, acts, t, output, chunk = inp.model, inp.x, inp.acts, inp.targets, inp.output, inp.score_batch
    n, k = acts.shape[:2]
    h, w = x.shape[-2:]
    up = F.interpolate(acts, size=(h, w), mode="bilinear", align_corners=True)  # as pytorch-grad-cam
    lo = up.amin((2, 3), keepdim=True)
    hi = up.amax((2, 3), keepdim=True)
    up = (up - lo) / (hi - lo + 1e-8)
    empty = (hi - lo).flatten(1) == 0  # (n, k): mask exactly zero
    scores = torch.empty(n, k, t.shape[1], device=x.device, dtype=x.dtype)
    if empty.any():
        zero_logits = select_output(model(torch.zeros_like(x[:1])), output)[0]
        scores[empty] = zero_logits[t].unsqueeze(1).expand(-1, k, -1)[empty]
    todo = (~empty).nonzero()  # (P, 2): image, channel
    for s in range(0, len(todo), chunk):
        idx = todo[s : s + chunk]
        batch = x[idx[:, 0]] * up[idx[:, 0], idx[:, 1]][:, None]
        out = select_output(model(batch), output)
        scores[idx[:, 0], idx[:, 1]] = out.gather(1, t[idx[:, 0]])
    weights = torch.softmax(scores, dim=1)  # over channels, per target
    return torch.einsum("nkt,nkhw->nthw", weights, acts)


@torch.no_grad()
def ablationcam(inp: LayerInputs) -> torch.Tensor:
    """Desai & Ramaswamy 2020: the relative drop of the target score when one channel of the
    layer is set to zero. The layer's output is replaced by the ablated copies; the layers below
    it run once per image when the model allows (a batch of one broadcasts), else per copy."""
    model, x, acts, t, logits, output = inp.model, inp.x, inp.acts, inp.targets, inp.logits, inp.output
    layer, chunk = inp.layer, inp.score_batch
    n, k = acts.shape[:2]
    name, module = layer
    base = logits.gather(1, t)  # (n, T)
    ablated = torch.empty(n, k, t.shape[1], device=x.device, dtype=x.dtype)
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
                    out = select_output(model(x[i : i + 1]), output)
                except RuntimeError:
                    out = None
                if out is None or out.shape[0] != len(ch):
                    out = select_output(model(x[i : i + 1].expand(len(ch), -1, -1, -1)), output)
            ablated[i, s : s + len(ch)] = out[:, t[i]]
    weights = (base[:, None, :] - ablated) / base[:, None, :]
    return torch.einsum("nkt,nkhw->nthw", weights, acts)
