"""Channel conversion of prepared uint8 images: what a run trained on, from what was prepared."""

from __future__ import annotations

import torch

from camscope.errors import CamscopeError


def to_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """uint8 images with ``channels`` channels: RGB -> luminance (ITU-R 601), or gray repeated."""
    if channels is None or images.shape[1] == channels:
        return images
    if channels == 1 and images.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114])[None, :, None, None]
        return (images.float() * w).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)
    if channels == 3 and images.shape[1] == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    raise CamscopeError(
        f"cannot convert {images.shape[1]}-channel images to {channels} channels",
        "prepare the dataset with --channels 1 or 3 and without --combine channels",
    )
