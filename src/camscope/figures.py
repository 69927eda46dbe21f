"""Image grids with captions, written as PNG: shared by every stage that shows pictures."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from camscope.utils import atomic_write_bytes


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (figures are only ever saved)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def displayable(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, 3, H, W'): gray repeated; sides stacked as channels (C = 3s) laid side by side."""
    c = images.shape[1]
    if c == 1:
        return images.expand(-1, 3, -1, -1)
    if c > 3 and c % 3 == 0:
        return torch.cat([images[:, i : i + 3] for i in range(0, c, 3)], dim=-1)
    if c != 3:
        return images[:, :1].expand(-1, 3, -1, -1)
    return images


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

    buf = io.BytesIO()
    img.save(buf, "PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)
