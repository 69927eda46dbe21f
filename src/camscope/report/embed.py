"""Figures and numbers as the report shows them: PNGs embedded as data URIs, percentages, intervals."""

from __future__ import annotations

import base64
import io
from pathlib import Path


def img(root: Path, rel: str | None) -> str | None:
    """A PNG of the run folder as a data URI (None when it is not there)."""
    if not rel:
        return None
    p = root / rel
    if not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def fig(root: Path, rel: str | None, caption: str, alt: str) -> dict | None:
    src = img(root, rel)
    return {"src": src, "caption": caption, "alt": alt} if src else None


def figs(*items: dict | None) -> list[dict]:
    """The figures that exist, in order."""
    return [f for f in items if f]


def fig_png(figure) -> str:
    """A matplotlib figure as a data URI."""
    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def ci(m: dict, key: str) -> str:
    v = m.get("ci", {}).get(key)
    return f" ({100 * v[0]:.1f}–{100 * v[1]:.1f})" if v else ""
