"""What happens when the centre or the outer ring of the object is hidden.

A mask is a disk (``centre``) or an annulus reaching the object's edge (``outer``), sized as a
fraction of the object's radius; squares are an option. Two sides joined side by side are masked
each on its own centre. The hidden pixels are filled with black, the dataset mean, a blur of the
image, or noise. A sweep runs every (mode, size) over every image in large batches on the
model's device and reports accuracy, macro-F1 and mean confidence, overall and per class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camscope.errors import CamscopeError
from camscope.geometry import MODES, SHAPES, Geometry, mask  # noqa: F401 - part of this module's API

FILLS = ("zero", "mean", "blur", "noise")


def parse_sizes(text: str) -> list[float]:
    """'0.1:0.9:0.1' (start:stop:step, stop included) or '0.2,0.5,0.8'."""
    try:
        if ":" in text:
            a, b, c = (float(v) for v in text.split(":"))
            n = int(round((b - a) / c)) + 1
            sizes = [round(a + i * c, 6) for i in range(n)]
        else:
            sizes = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CamscopeError(
            f"cannot read sizes {text!r}", "write start:stop:step (0.1:0.9:0.1) or a list"
        ) from None
    if not sizes or any(not 0 <= s <= 1 for s in sizes):
        raise CamscopeError(
            f"mask sizes {sizes} must lie in [0, 1]", "they are fractions of the object's radius"
        )
    return sizes


def fill_values(
    x: torch.Tensor, fill: str, mean: torch.Tensor | None, gen: torch.Generator | None
) -> torch.Tensor:
    """What hidden pixels become, for a normalised batch ``x`` (N, C, H, W)."""
    if fill == "zero":  # black in pixel space
        return torch.zeros_like(x) if mean is None else (-mean).expand_as(x)
    if fill == "mean":  # the dataset mean: 0 after normalisation
        return torch.zeros_like(x)
    if fill == "blur":
        k = max(3, (min(x.shape[-2:]) // 4) | 1)
        return F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1)
    if fill == "noise":
        return torch.randn(x.shape, generator=gen, device=gen.device if gen else None).to(x.device)
    raise CamscopeError(f"unknown fill {fill!r}", f"use one of {', '.join(FILLS)}")


@dataclass
class SweepResult:
    modes: list[str]
    sizes: list[float]
    pred: torch.Tensor  # (M, S, N) predicted class
    conf: torch.Tensor  # (M, S, N) confidence of the prediction
    true_conf: torch.Tensor  # (M, S, N) probability of the true class
    labels: torch.Tensor  # (N,)


@torch.inference_mode()
def sweep(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    preprocess,
    geom: Geometry,
    sizes: list[float],
    modes: tuple[str, ...] = MODES,
    fill: str = "zero",
    shape: str = "disk",
    batch: int = 1024,
    seed: int = 0,
    progress=None,
) -> SweepResult:
    """Predictions for every image under every (mode, size) mask; uint8 ``images`` in."""
    device = next(model.parameters()).device
    model.eval()
    cl = device.type == "cpu"
    grid_masks = [mask(geom, m, s, shape, device) for m in modes for s in sizes]  # (M*S) in order
    # identical masks (size 0 of every mode, a full disk reached both ways) are run once
    unique: list[torch.Tensor] = []
    slot = []
    for m in grid_masks:
        j = next((k for k, u in enumerate(unique) if torch.equal(u, m)), None)
        if j is None:
            unique.append(m)
            j = len(unique) - 1
        slot.append(j)
    masks = torch.stack(unique)  # (U, H, W)
    slot_t = torch.tensor(slot)
    mean_px = (
        torch.tensor(preprocess.mean, device=device)[None, :, None, None]
        / torch.tensor(preprocess.std, device=device)[None, :, None, None]
    )
    n = len(images)
    shape_out = (len(modes) * len(sizes), n)
    pred = torch.empty(shape_out, dtype=torch.long)
    conf = torch.empty(shape_out)
    true_conf = torch.empty(shape_out)
    gen = torch.Generator().manual_seed(seed)
    per_image = max(1, batch // len(unique))
    for i in range(0, n, per_image):
        x = preprocess(images[i : i + per_image].to(device))
        y = labels[i : i + per_image].to(device)
        fills = fill_values(x, fill, mean_px, gen)
        m = masks[:, None, None]  # (U, 1, 1, H, W)
        mixed = (x[None] * (1 - m) + fills[None] * m).reshape(-1, *x.shape[1:])  # (U*b, C, H, W)
        if cl:
            mixed = mixed.contiguous(memory_format=torch.channels_last)
        probs = model(mixed).float().softmax(1).view(len(unique), len(x), -1)[slot_t.to(device)]
        c, p = probs.max(-1)
        pred[:, i : i + len(x)] = p.cpu()
        conf[:, i : i + len(x)] = c.cpu()
        true_conf[:, i : i + len(x)] = probs.gather(-1, y.view(1, -1, 1).expand(len(slot), -1, 1))[
            ..., 0
        ].cpu()
        if progress is not None:
            progress(len(x))
    shape3 = (len(modes), len(sizes), n)
    pred, conf, true_conf = pred.view(shape3), conf.view(shape3), true_conf.view(shape3)
    return SweepResult(list(modes), list(sizes), pred, conf, true_conf, labels.cpu())


def summarise(res: SweepResult, classes: list[str]) -> list[dict]:
    """One row per (mode, size, class or 'all'): accuracy, macro-F1 (for 'all'), mean confidence."""
    from sklearn.metrics import f1_score

    rows = []
    y = res.labels.numpy()
    for mi, mode in enumerate(res.modes):
        for si, size in enumerate(res.sizes):
            p = res.pred[mi, si].numpy()
            rows.append(
                {
                    "mode": mode,
                    "size": size,
                    "class": "all",
                    "n": int(len(y)),
                    "accuracy": float((p == y).mean()),
                    "macro_f1": float(
                        f1_score(y, p, labels=list(range(len(classes))), average="macro", zero_division=0)
                    ),
                    "mean_confidence": float(res.conf[mi, si].mean()),
                    "mean_true_class_prob": float(res.true_conf[mi, si].mean()),
                }
            )
            for c, name in enumerate(classes):
                sel = y == c
                if sel.any():
                    rows.append(
                        {
                            "mode": mode,
                            "size": size,
                            "class": name,
                            "n": int(sel.sum()),
                            "accuracy": float((p[sel] == c).mean()),
                            "macro_f1": None,
                            "mean_confidence": float(res.conf[mi, si][torch.from_numpy(sel)].mean()),
                            "mean_true_class_prob": float(
                                res.true_conf[mi, si][torch.from_numpy(sel)].mean()
                            ),
                        }
                    )
    return rows
