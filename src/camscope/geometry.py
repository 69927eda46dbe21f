"""Where the object is in a prepared image, and masks of its centre or its outer ring.

Shared by the masking probe and masked-training augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from camscope.errors import CamscopeError

MODES = ("centre", "outer")
SHAPES = ("disk", "square")


@dataclass(frozen=True)
class Geometry:
    """Where the objects are: ``sides`` squares side by side (or stacked as channels), each with
    the object centred and filling it (prepare pads to square and centres)."""

    height: int
    width: int
    sides: int = 1

    @property
    def side_width(self) -> int:
        return self.width // self.sides

    @classmethod
    def from_prepared(cls, spec: dict | None, height: int, width: int) -> Geometry:
        spec = spec or {}
        sides = int(spec.get("sides", 1)) if spec.get("combine", "side_by_side") == "side_by_side" else 1
        if width % sides:
            sides = 1
        return cls(height, width, sides)


def distance_map(geom: Geometry, shape: str = "disk", device=None) -> torch.Tensor:
    """(H, W) distance of each pixel from its side's centre, in units of the object's radius."""
    h, sw = geom.height, geom.side_width
    r_obj = min(h, sw) / 2
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] + 0.5 - h / 2
    xs = torch.arange(sw, device=device, dtype=torch.float32)[None, :] + 0.5 - sw / 2
    d = torch.maximum(ys.abs(), xs.abs()) if shape == "square" else torch.sqrt(ys**2 + xs**2)
    return (d / r_obj).repeat(1, geom.sides)


def mask(geom: Geometry, mode: str, size: float, shape: str = "disk", device=None) -> torch.Tensor:
    """(H, W) float, 1 where hidden. ``centre``: radius ``size`` x R; ``outer``: from (1 - size) x R
    to the edge of the object (R, half the side); squares use the same half-widths."""
    if mode not in MODES:
        raise CamscopeError(f"unknown mask mode {mode!r}", f"use {' or '.join(MODES)}")
    if shape not in SHAPES:
        raise CamscopeError(f"unknown mask shape {shape!r}", f"use {' or '.join(SHAPES)}")
    h, sw = geom.height, geom.side_width
    r_obj = min(h, sw) / 2
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] + 0.5 - h / 2
    xs = torch.arange(sw, device=device, dtype=torch.float32)[None, :] + 0.5 - sw / 2
    d = torch.maximum(ys.abs(), xs.abs()) if shape == "square" else torch.sqrt(ys**2 + xs**2)
    d = d / r_obj  # distance in units of the object's radius
    m = (
        d <= size
        if mode == "centre"
        else (d >= 1 - size) & (d <= 1)
        if size > 0
        else torch.zeros_like(d, dtype=torch.bool)
    )
    return m.float().repeat(1, geom.sides)
