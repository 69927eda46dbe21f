"""Heat-map overlays in RGB (matplotlib colour maps, no BGR mix-ups)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def _lut(name: str) -> torch.Tensor:
    import matplotlib

    cmap = matplotlib.colormaps[name]
    return torch.tensor(cmap(np.linspace(0, 1, 256))[:, :3], dtype=torch.float32)  # (256, 3) RGB


def colorize(maps: torch.Tensor, cmap: str = "jet") -> torch.Tensor:
    """(N, H, W) maps in [0, 1] -> (N, 3, H, W) float RGB in [0, 1]."""
    lut = _lut(cmap).to(maps.device)
    idx = (maps.clamp(0, 1) * 255).round().long()
    return lut[idx].permute(0, 3, 1, 2)


def overlay(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.45, cmap: str = "jet") -> torch.Tensor:
    """uint8 images (N, C, H, W) blended with their maps -> uint8 (N, 3, H, W'), see ``displayable``."""
    from camscope.figures import displayable

    sides = images.shape[1] // 3 if images.shape[1] > 3 and images.shape[1] % 3 == 0 else 1
    img = displayable(images).float() / 255
    if sides > 1:  # one map for sides stacked as channels: show it on each side
        maps = maps.repeat(1, 1, sides)
    if maps.shape[-2:] != img.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps[:, None], size=img.shape[-2:], mode="bilinear")[:, 0]
    heat = colorize(maps.to(img.device), cmap)
    return ((1 - alpha) * img + alpha * heat).mul(255).round().clamp(0, 255).to(torch.uint8)
