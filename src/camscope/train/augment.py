"""Batched augmentation on tensors, on the model's device: no per-image Python work.

Randomness is drawn on the CPU from a generator the caller seeds per step, for the whole global
batch: a resumed run draws exactly the numbers an uninterrupted one would, and the processes of
a distributed run each apply their slice of the same draws a single process would use.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import torch.nn.functional as F


@dataclass
class AugmentParams:
    """Random draws for one global batch; a process of a distributed run takes its slice."""

    flip: torch.Tensor | None = None  # (n,) bool
    dy: torch.Tensor | None = None  # (n,) shift index in 0..2p
    dx: torch.Tensor | None = None
    cy: torch.Tensor | None = None  # (n,) cutout centre
    cx: torch.Tensor | None = None
    mask_on: torch.Tensor | None = None  # (n,) bool: hide part of the object
    mask_outer: torch.Tensor | None = None  # (n,) bool: the outer ring, else the centre
    mask_size: torch.Tensor | None = None  # (n,) fraction of the object's radius

    def take(self, sel) -> AugmentParams:
        return AugmentParams(*(None if t is None else t[sel] for t in astuple(self)))


@dataclass(frozen=True)
class Augment:
    """The augmentation of training batches; every part is off by default."""

    translate: int = 0  # pixels of random shift, reflect padding
    flip: str = "none"  # none | random | alternating
    cutout: int = 0  # side of the zeroed square in pixels
    mask_prob: float = 0.0  # share of images whose centre or outer ring is hidden
    mask_max: float = 0.7  # largest mask, as a fraction of the object's radius

    @classmethod
    def from_config(cls, cfg) -> Augment:
        return cls(cfg.translate, cfg.flip, cfg.cutout, cfg.mask_prob, cfg.mask_max)

    def draw(
        self, index: torch.Tensor, size: tuple[int, int], epoch: int, gen: torch.Generator, seed: int
    ) -> AugmentParams:
        """Draw every random number of one global batch (``index``: its items), in a fixed order."""
        n = len(index)
        p = AugmentParams()
        if self.flip == "random":
            p.flip = torch.rand(n, generator=gen) < 0.5
        elif self.flip == "alternating":
            p.flip = alternating_flip_mask(index, epoch, seed)
        elif self.flip != "none":
            raise ValueError(f"unknown flip mode {self.flip!r}")
        if self.translate > 0:
            p.dy = torch.randint(0, 2 * self.translate + 1, (n,), generator=gen)
            p.dx = torch.randint(0, 2 * self.translate + 1, (n,), generator=gen)
        if self.cutout > 0:
            p.cy = torch.randint(0, size[0], (n,), generator=gen)
            p.cx = torch.randint(0, size[1], (n,), generator=gen)
        if self.mask_prob > 0:
            p.mask_on = torch.rand(n, generator=gen) < self.mask_prob
            p.mask_outer = torch.rand(n, generator=gen) < 0.5
            p.mask_size = torch.rand(n, generator=gen) * self.mask_max
        return p

    def apply(
        self,
        x: torch.Tensor,
        p: AugmentParams,
        distance: torch.Tensor | None = None,
        fill: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the drawn augmentation: object masks (on the untouched geometry), flip, translate,
        cutout. ``distance`` is the (H, W) distance from the object's centre in object radii and
        ``fill`` the (1, C, 1, 1) value of hidden pixels."""
        dev = x.device
        if p.mask_on is not None and distance is not None:
            d = distance[None].to(dev)
            s = p.mask_size.to(dev)[:, None, None]
            outer = p.mask_outer.to(dev)[:, None, None]
            hide = (
                torch.where(outer, (d >= 1 - s) & (d <= 1) & (s > 0), d <= s)
                & p.mask_on.to(dev)[:, None, None]
            )
            x = torch.where(
                hide[:, None], fill.to(dev) if fill is not None else torch.zeros((), device=dev), x
            )
        if p.flip is not None:
            x = flip(x, p.flip.to(dev))
        if p.dy is not None:
            x = translate(x, self.translate, p.dy.to(dev), p.dx.to(dev))
        if p.cy is not None:
            x = cutout(x, self.cutout, p.cy.to(dev), p.cx.to(dev))
        return x


def translate(x: torch.Tensor, pad: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Shift each image by ``dy - pad``, ``dx - pad`` pixels, filling with the reflected border.

    Done as a crop of the reflect-padded batch, one slice per shift value and axis (2 x (2p+1)
    slices) rather than a gather per pixel.
    """
    if pad <= 0:
        return x
    _, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = torch.empty_like(padded[:, :, :h, :])
    for s in range(2 * pad + 1):
        m = dy == s
        rows[m] = padded[m, :, s : s + h, :]
    out = torch.empty_like(x)
    for s in range(2 * pad + 1):
        m = dx == s
        out[m] = rows[m, :, :, s : s + w]
    return out


def alternating_flip_mask(index: torch.Tensor, epoch: int, seed: int) -> torch.Tensor:
    """airbench's alternating flip: each image gets a fixed coin toss; odd epochs invert it, so
    every image is seen both ways in any two consecutive epochs (less redundancy than i.i.d.)."""
    base = (index.long() * 2654435761 + seed * 97 + 12345) % 2**31  # cheap per-index hash
    base = ((base >> 7) & 1).bool()
    return base ^ bool(epoch % 2)


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], x.flip(-1), x)


def cutout(x: torch.Tensor, size: int, cy: torch.Tensor, cx: torch.Tensor) -> torch.Tensor:
    """Zero one ``size`` x ``size`` square per image centred at (cy, cx), clipped at the border."""
    if size <= 0:
        return x
    _, _, h, w = x.shape
    half = size // 2
    ys = torch.arange(h, device=x.device)[None, :] - (cy[:, None] - half)
    xs = torch.arange(w, device=x.device)[None, :] - (cx[:, None] - half)
    my = ((ys >= 0) & (ys < size))[:, :, None]
    mx = ((xs >= 0) & (xs < size))[:, None, :]
    return x * (~(my & mx))[:, None].to(x.dtype)
