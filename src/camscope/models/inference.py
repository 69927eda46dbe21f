"""Running a model on prepared uint8 tensors: preprocessing, batching, test-time augmentation.

Shared by training (validation) and every later stage, so a model always sees its inputs
exactly as it was trained on them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camscope.errors import CamscopeError

TTA_MODES = ("none", "flip", "flip_translate")


@dataclass
class Preprocess:
    """uint8 N x C x H x W -> float, scaled to [0, 1] and normalised per channel."""

    mean: list[float]
    std: list[float]

    @classmethod
    def from_images(cls, images: torch.Tensor, normalize: bool = True, chunk: int = 8192) -> Preprocess:
        c = images.shape[1]
        if not normalize:
            return cls([0.0] * c, [1.0] * c)
        s = torch.zeros(c, dtype=torch.float64)
        s2 = torch.zeros(c, dtype=torch.float64)
        for i in range(0, len(images), chunk):
            x = images[i : i + chunk].double() / 255
            s += x.sum((0, 2, 3))
            s2 += (x * x).sum((0, 2, 3))
        n = len(images) * images.shape[2] * images.shape[3]
        mean = s / n
        std = (s2 / n - mean**2).clamp_min(1e-12).sqrt()
        return cls(mean.tolist(), std.clamp_min(1e-3).tolist())

    def __call__(self, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=dtype)[None, :, None, None]
        std = torch.tensor(self.std, device=x.device, dtype=dtype)[None, :, None, None]
        return (x.to(dtype) / 255 - mean) / std

    def to_dict(self) -> dict:
        return {"mean": self.mean, "std": self.std, "scale": 1 / 255}


def forward_tta(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Logits averaged over test-time views: flips, and flips of 1-px translations (airbench)."""
    if tta == "none":
        return model(x)
    logits = 0.5 * (model(x) + model(x.flip(-1)))
    if tta == "flip":
        return logits
    if tta != "flip_translate":
        raise ValueError(f"unknown TTA mode {tta!r}; use one of {', '.join(TTA_MODES)}")
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [padded[..., 0:h, 0:w], padded[..., 2 : h + 2, 2 : w + 2]]
    moved = torch.stack([0.5 * (model(s) + model(s.flip(-1))) for s in shifted]).mean(0)
    return 0.5 * logits + 0.5 * moved


def finite(logits: torch.Tensor) -> torch.Tensor:
    """The logits, or an error when any is NaN or infinite: such outputs must never become a score
    (argmax of NaN is class 0, and accuracy, ECE and the rest would look like numbers)."""
    bad = ~torch.isfinite(logits).all(dim=1)
    if bad.any():
        raise CamscopeError(
            f"the model gave NaN or infinite outputs for {int(bad.sum())} of {len(logits)} images",
            "its checkpoint is damaged (a zero std in its normalisation, say) or training diverged; "
            "retrain, or use another checkpoint",
        )
    return logits


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    preprocess: Preprocess,
    batch_size: int = 512,
    tta: str = "none",
    device: torch.device | str | None = None,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Logits (float32, on the CPU) of ``model`` for uint8 ``images``, in eval mode."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for i in range(0, len(images), batch_size):
            x = preprocess(images[i : i + batch_size].to(device, non_blocking=True))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out.append(forward_tta(model, x, tta).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return finite(torch.cat(out))


@torch.no_grad()
def logits_and_features(
    model: nn.Module, images: torch.Tensor, prep: Preprocess, head: str, batch: int = 512, device="cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the penultimate features (the input of the ``head`` module) of uint8 images,
    in eval mode (the model's mode comes back after)."""
    feats: list[torch.Tensor] = []
    module = model.get_submodule(head)
    handle = module.register_forward_hook(
        lambda m, inp, out: feats.append(inp[0].detach().flatten(1).float().cpu())
    )
    was_training = model.training
    model.eval()
    logits = []
    try:
        for i in range(0, len(images), batch):
            logits.append(model(prep(images[i : i + batch].to(device))).float().cpu())
    finally:
        handle.remove()
        model.train(was_training)
    return finite(torch.cat(logits)), torch.cat(feats)
