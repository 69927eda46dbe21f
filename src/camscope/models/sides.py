"""Two-sided objects through one backbone: each side on its own, the features joined.

The prepared image of a two-sided object holds its sides side by side (H x S*W). ``PerSide``
cuts it into the sides, runs them through the same backbone as one batch, puts the feature maps
back side by side (the ``joined`` module: CAMs of this layer cover both sides, aligned with the
input), pools each side and classifies the concatenated features.
"""

from __future__ import annotations

import torch
from torch import nn

from camscope.errors import CamscopeError


class PerSide(nn.Module):
    head_name = "head"

    def __init__(self, backbone: nn.Module, sides: int, num_classes: int, drop: float = 0.0):
        super().__init__()
        if not hasattr(backbone, "forward_features") or not hasattr(backbone, "num_features"):
            raise CamscopeError(
                f"{type(backbone).__name__} cannot run per side (it has no forward_features)",
                "use a timm model, or two_sided: joined",
            )
        self.sides = sides
        self.backbone = backbone
        self.joined = nn.Identity()  # the CAM layer: the sides' feature maps side by side
        self.drop = nn.Dropout(drop)
        self.head = nn.Linear(sides * backbone.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, s = len(x), self.sides
        if x.shape[-1] % s:
            raise CamscopeError(f"an image {x.shape[-1]} px wide does not split into {s} sides")
        f = self.backbone.forward_features(torch.cat(x.chunk(s, dim=-1), 0))  # (S*N, K, h, w)
        if f.ndim != 4:
            raise CamscopeError(
                f"{type(self.backbone).__name__} gives no spatial feature map", "use two_sided: joined"
            )
        f = self.joined(torch.cat(f.split(n, 0), dim=-1))  # (N, K, h, S*w)
        pooled = torch.cat([p.mean((2, 3)) for p in f.chunk(s, dim=-1)], 1)  # (N, S*K)
        return self.head(self.drop(pooled))
