"""Faithfulness numbers for a trained run: do its CAMs point at what the model uses?

Deletion / insertion AUC and average drop / increase for each method, next to the same numbers
for a random map as smooth as a CAM (the floor any method must beat); where the prepared dataset
carries evidence regions (synthetic coins), the pointing-game hit rate and the share of CAM energy
inside the region, next to what a map that ignores the image would score (the region's share).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from camscope.explain.engine import saliency_maps
from camscope.explain.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    energy_inside,
    pointing_game,
)
from camscope.explain.registry import lookup
from camscope.models.inference import predict_logits
from camscope.progress import make_progress
from camscope.runs import Run
from camscope.utils import atomic_write_text, write_rows_csv


def smooth_noise(n: int, h: int, w: int, seed: int = 0, factor: int = 8) -> torch.Tensor:
    """Random maps as smooth as a CAM (noise at 1/``factor`` of the size, upsampled): the floor a
    method must beat. Pixel-level noise would be an unfair floor for deletion, since scattering
    deleted pixels over the whole image hurts a CNN faster than removing any compact region."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, max(2, -(-h // factor)), max(2, -(-w // factor)), generator=g)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0]


def _regions(ds, ids: list[str]) -> torch.Tensor | None:
    if ds.masks is None:
        return None
    pos = {i: k for k, i in enumerate(ds.ids)}
    return ds.masks[torch.tensor([pos[i] for i in ids])][:, 0] > 0


def faithfulness_run(
    run: Run,
    *,
    methods: list[str] | tuple[str, ...] = ("gradcam",),
    n_images: int = 128,
    split: str = "test",
    seed: int = 0,
    out: str | Path | None = None,
) -> dict:
    """Deletion / insertion and the other faithfulness numbers of each method against a smooth
    random map, on up to ``n_images`` of ``split``; in ``out`` (default RUN/explain)."""
    methods = [lookup(m).key for m in methods]
    out = run.out("explain", out)
    model, prep, device = run.model, run.prep, run.device
    images, labels, ids = run.split_tensors(split)
    k = min(n_images, len(images))
    sub = torch.linspace(0, len(images) - 1, k).round().long().unique()
    x = prep(images[sub].to(device))
    pred = predict_logits(model, images[sub], prep, batch_size=256, device=device).argmax(1)
    regions = _regions(run.dataset(), [ids[int(i)] for i in sub])
    random_maps = smooth_noise(len(sub), *x.shape[-2:], seed=seed)
    rows = []
    with make_progress() as progress:
        task = progress.add_task("faithfulness", total=len(methods) + 1)
        for name in [*methods, "random"]:
            maps = random_maps if name == "random" else saliency_maps(model, x, name, pred).cpu()
            curves = deletion_insertion(model, x, maps, pred)
            row = {
                "method": name,
                "n": len(sub),
                "deletion_auc": float(curves.deletion_auc.mean()),  # lower is better
                "insertion_auc": float(curves.insertion_auc.mean()),  # higher is better
                **average_drop_increase(model, x, maps, pred),
            }
            if regions is not None:
                row["pointing_game"] = float(pointing_game(maps, regions).float().mean())
                row["energy_inside"] = float(energy_inside(maps, regions).mean())
            rows.append(row)
            progress.advance(task)
    result = {
        "split": split,
        "n": len(sub),
        "target": "predicted class",
        "methods": rows,
        "has_evidence_regions": regions is not None,
    }
    if regions is not None:
        result["region_area_share"] = float(regions.float().mean())  # what an image-blind map scores
    out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(out / "faithfulness.csv", rows)
    atomic_write_text(out / "faithfulness.json", json.dumps(result, indent=1))
    return {**result, "out": str(out)}
