"""Heat-map overlays and captioned grids, in RGB (matplotlib colour maps, no BGR mix-ups)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


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
    """uint8 images (N, C, H, W; C = 1 or 3) blended with their maps -> uint8 (N, 3, H, W)."""
    img = images.float() / 255
    if img.shape[1] == 1:
        img = img.expand(-1, 3, -1, -1)
    if maps.shape[-2:] != img.shape[-2:]:
        maps = torch.nn.functional.interpolate(maps[:, None], size=img.shape[-2:], mode="bilinear")[:, 0]
    heat = colorize(maps.to(img.device), cmap)
    return ((1 - alpha) * img + alpha * heat).mul(255).round().clamp(0, 255).to(torch.uint8)


def grid(
    tiles: torch.Tensor,
    captions: list[str] | None = None,
    cols: int = 8,
    scale: int = 1,
    pad: int = 4,
    caption_lines: int = 2,
) -> Image.Image:
    """uint8 (N, 3, H, W) tiles in a grid with up to ``caption_lines`` lines of text under each."""
    tiles = tiles.cpu()
    n, _, h, w = tiles.shape
    h, w = h * scale, w * scale
    cols = max(1, min(cols, n))
    rows = max(1, -(-n // cols))
    font = ImageFont.load_default()
    line_h = 12 if captions else 0
    cell_h = h + pad + line_h * caption_lines
    sheet = Image.new("RGB", (cols * (w + pad) + pad, rows * cell_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (w + pad), pad + r * cell_h
        tile = Image.fromarray(tiles[i].permute(1, 2, 0).numpy())
        if scale != 1:
            tile = tile.resize((w, h), Image.NEAREST)
        sheet.paste(tile, (x0, y0))
        if captions:
            for k, line in enumerate(captions[i].split("\n")[:caption_lines]):
                draw.text((x0, y0 + h + 1 + k * line_h), _fit(draw, line, w, font), fill="black", font=font)
    return sheet


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


def save_png(img: Image.Image, path: str | Path) -> Path:
    import io

    from camscope.utils import atomic_write_bytes

    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
