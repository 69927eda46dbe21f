"""Thumbnails of what the audit found, one sheet per problem kind, for the report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from camscope.figures import grid, save_png
from camscope.utils import safe_filename

TILE = 64


def _tile(source, key: str | None) -> tuple[np.ndarray, str | None]:
    """A TILE x TILE RGB thumbnail, or a grey placeholder and why it is one."""
    if key is not None:
        try:
            img = source.load(key, draft=(TILE * 2, TILE * 2)).convert("RGB")
            img.thumbnail((TILE, TILE))
            canvas = Image.new("RGB", (TILE, TILE), (255, 255, 255))
            canvas.paste(img, ((TILE - img.width) // 2, (TILE - img.height) // 2))
            return np.asarray(canvas), None
        except Exception as e:  # any decode failure is what the audit reported: show a placeholder
            why = type(e).__name__
    else:
        why = "missing"
    canvas = Image.new("RGB", (TILE, TILE), (200, 200, 200))
    d = ImageDraw.Draw(canvas)
    d.line((0, 0, TILE, TILE), fill=(150, 0, 0), width=2)
    d.line((0, TILE, TILE, 0), fill=(150, 0, 0), width=2)
    return np.asarray(canvas), why


def problem_thumbnails(report: dict, source, out: str | Path, per_kind: int = 8) -> dict[str, str]:
    """Write ``out/<kind>.png`` for each problem kind in the audit; returns kind -> file."""
    out = Path(out)
    by_kind: dict[str, list[dict]] = {}
    for p in report["problems"]:
        by_kind.setdefault(p["kind"], []).append(p)
    written = {}
    for kind, probs in sorted(by_kind.items()):
        tiles, caps = [], []
        for p in [p for p in probs if p["paths"]][:per_kind]:  # dataset-level findings have no files
            for path in p["paths"][:2]:
                arr, why = _tile(source, path)
                tiles.append(torch.from_numpy(arr.copy()).permute(2, 0, 1))
                name = (p["item_ids"] or [path or ""])[0]
                caps.append(f"{name}\n{why or (path or '').rsplit('/', 1)[-1]}")
        if not tiles:
            continue
        img = grid(torch.stack(tiles), caps, cols=8, scale=1)
        written[kind] = str(save_png(img, out / f"{safe_filename(kind)}.png"))
    return written
