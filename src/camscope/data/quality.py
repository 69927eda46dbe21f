"""Image quality, measured during the audit's scan: exposure, blank pictures and sharpness.

Every score comes from the luminance (Rec. 601 luma, what Pillow's "L" mode gives) of the picture
at its own size, or reduced to at most ``QUALITY_SIDE`` pixels on its longer side: the decoded
draft the scan already holds, so the scores cost well under a millisecond an image.

- exposure: luminance percentiles. *dark* when 95% of the picture is darker than
  ``dark_p95``; *light* (washed out) when 95% of it is brighter than ``light_p05``. A coin on a
  white background is not light: the coin's own pixels keep the 5th percentile low.
- *blank*: the 1st and 99th luminance percentiles lie within ``blank_range`` of each other, a
  picture of one colour (a placeholder, a lens cap, a failed scan). Blank pictures get no other
  quality finding.
- sharpness: the share of the picture's variation that lives at the finest scale, the spread
  of (luminance - its Gaussian blur of sigma 1 px) over the spread of the luminance. Blur
  removes exactly that finest scale, so the score falls fast as blur grows (a 2.5-px blur of a
  64-px coin divides it by 6 to 20), and contrast does not move it (a ratio). Textureless
  pictures (a sky, a wall) have little fine detail either, which is why *blurry* is relative:
  sharpness below ``blur_ratio`` times the median of the set, a set of sharp 32-px thumbnails
  and one of phone photos each judged against its own kind. With fewer than
  ``min_images_for_blur`` pictures nothing is called blurry (the median would mean little).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

QUALITY_SIDE = 128
QUALITY_KINDS = {
    "dark": "underexposed: most of the picture is near black",
    "light": "overexposed or washed out: most of the picture is near white",
    "blank": "a picture of one colour (placeholder, failed scan?)",
    "blurry": "far less sharp than the rest of the set (out of focus, upscaled?)",
}


@dataclass
class QualityParams:
    dark_p95: float = 0.20  # dark: the 95th luminance percentile below this (0..1)
    light_p05: float = 0.88  # light: the 5th luminance percentile above this
    blank_range: float = 0.02  # blank: 99th - 1st luminance percentile below this
    blur_ratio: float = 0.3  # blurry: sharpness below this share of the set's median
    min_images_for_blur: int = 20


@dataclass(frozen=True)
class QualityScores:
    p01: float  # luminance percentiles, 0..1
    p05: float
    p95: float
    p99: float
    sharpness: float  # nan for a blank picture

    @property
    def blank_range(self) -> float:
        return self.p99 - self.p01


def _gaussian_taps(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1)
    phi = np.exp(-0.5 / (sigma * sigma) * x**2)
    return phi / phi.sum()


_BLUR_TAPS = _gaussian_taps(1.0, 2)


def luminance(img: Image.Image) -> np.ndarray:
    """The picture's luma as uint8, reduced to at most QUALITY_SIDE on its longer side."""
    gray = img.convert("L")
    w, h = gray.size
    if max(w, h) > QUALITY_SIDE:
        s = QUALITY_SIDE / max(w, h)
        gray = gray.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR, reducing_gap=2.0)
    return np.asarray(gray)


def measure(img: Image.Image) -> QualityScores:
    y = luminance(img)
    cum = np.cumsum(np.bincount(y.ravel(), minlength=256)) / y.size
    p01, p05, p95, p99 = (float(np.searchsorted(cum, q)) / 255 for q in (0.01, 0.05, 0.95, 0.99))
    contrast = p99 - p01
    sharpness = float("nan")
    g = y.astype(np.float32)
    spread = float(g.std())
    if contrast > 0 and spread > 0 and min(y.shape) >= 5:
        from scipy.ndimage import correlate1d  # scipy comes with scikit-learn

        # a Gaussian blur of sigma 1 px, 5 taps, edges repeated: scipy's gaussian_filter(g, 1.0,
        # mode="nearest", truncate=2.0), one axis after the other, its kernel computed once
        blur = correlate1d(g, _BLUR_TAPS, 0, mode="nearest")
        correlate1d(blur, _BLUR_TAPS, 1, blur, mode="nearest")
        sharpness = float((g - blur).std()) / spread
    return QualityScores(p01, p05, p95, p99, sharpness)


@dataclass
class QualityFinding:
    index: int  # into the scored list
    kind: str
    detail: str


def _exposure(s: QualityScores, p: QualityParams) -> list[tuple[str, str]]:
    out = []
    if s.p95 < p.dark_p95:
        out.append(("dark", f"95% of the picture below luminance {s.p95:.2f} (threshold {p.dark_p95})"))
    if s.p05 > p.light_p05:
        out.append(("light", f"95% of the picture above luminance {s.p05:.2f} (threshold {p.light_p05})"))
    return out


def judge(
    scores: list[QualityScores], params: QualityParams | None = None
) -> tuple[list[QualityFinding], dict]:
    """The quality findings of a set of pictures, and a summary (thresholds, the median sharpness,
    counts) for the report."""
    p = params or QualityParams()
    out: list[QualityFinding] = []
    blank = [s.blank_range < p.blank_range for s in scores]
    sharp = np.array([s.sharpness for s, b in zip(scores, blank, strict=True) if not b and s.sharpness >= 0])
    median = float(np.median(sharp)) if len(sharp) else float("nan")
    blur_on = len(sharp) >= p.min_images_for_blur and median > 0
    for i, (s, b) in enumerate(zip(scores, blank, strict=True)):
        if b:
            detail = f"one colour: luminance {s.p01:.2f}-{s.p99:.2f} (1st-99th percentile)"
            out.append(QualityFinding(i, "blank", detail))
            continue
        out += [QualityFinding(i, kind, detail) for kind, detail in _exposure(s, p)]
        if blur_on and s.sharpness < p.blur_ratio * median:
            detail = (
                f"sharpness {s.sharpness:.3f}, {s.sharpness / median:.2f}x the set's median {median:.3f} "
                f"(threshold {p.blur_ratio}x)"
            )
            out.append(QualityFinding(i, "blurry", detail))
    counts: dict[str, int] = {}
    for f in out:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    qs = (1, 5, 25, 50, 75, 95) if len(sharp) else ()
    pct = {str(q): round(float(np.percentile(sharp, q)), 4) for q in qs}
    summary = {
        "params": {k: getattr(p, k) for k in p.__dataclass_fields__},
        "median_sharpness": round(median, 4) if median == median else None,
        "blur_threshold": round(p.blur_ratio * median, 4) if blur_on else None,
        "sharpness_percentiles": pct,
        "counts": dict(sorted(counts.items())),
    }
    return out, summary
