"""Learning-rate multipliers as pure functions of the step: resuming needs no scheduler state."""

from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "onecycle", "triangle")


def lr_multiplier(kind: str, step: int, total: int, warmup: int = 0, **args) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total`` steps.

    - constant / cosine: linear warm-up over ``warmup`` steps from ``warmup_start`` (0.1), then
      flat / cosine down to ``final`` (0);
    - onecycle: warm-up from ``start`` (0.04) to 1 over ``pct`` (0.25) of the run, then cosine
      down to ``final`` (1e-4), as in Smith's one-cycle policy;
    - triangle: linear from ``start`` to 1 at ``peak`` (fraction of the run), then linear to ``end``.
    """
    total = max(1, total)
    t = min(max(step, 0), total) / total
    if kind == "triangle":
        start, peak, end = args.get("start", 0.2), args.get("peak", 0.23), args.get("end", 0.0)
        if t < peak:
            return start + (1 - start) * t / peak
        return 1 + (end - 1) * (t - peak) / max(1e-12, 1 - peak)
    if kind == "onecycle":
        start, pct, final = args.get("start", 0.04), args.get("pct", 0.25), args.get("final", 1e-4)
        if t < pct:
            return start + (1 - start) * t / pct
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * (t - pct) / max(1e-12, 1 - pct)))
    if kind not in ("constant", "cosine"):
        raise ValueError(f"unknown schedule {kind!r}; use one of {', '.join(SCHEDULES)}")
    if step < warmup:
        s = args.get("warmup_start", 0.1)
        return s + (1 - s) * step / warmup
    if kind == "constant":
        return 1.0
    final = args.get("final", 0.0)
    u = (step - warmup) / max(1, total - warmup)
    return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, u)))
