"""CAM galleries for a trained run: per class, the most confident correct and wrong predictions
of a split, each with its heat map, true and predicted label and confidence."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save

from camscope.errors import CamscopeError
from camscope.explain.engine import saliency_maps
from camscope.explain.overlay import overlay
from camscope.explain.registry import lookup
from camscope.figures import grid, save_png
from camscope.models.inference import predict_logits
from camscope.progress import make_progress
from camscope.runs import Run
from camscope.utils import atomic_write_bytes, atomic_write_text, unique_stems


def explain_run(
    run: Run,
    *,
    split: str = "test",
    method: str = "gradcam",
    layers: list[str] | None = None,
    per_class: int = 6,
    target: str = "pred",
    batch: int = 64,
    out: str | Path | None = None,
) -> dict:
    """Per class, the most confident correct and wrong predictions of ``split`` with their maps
    (``target``: explain the 'pred'icted or the 'true' class), in ``out`` (default RUN/explain)."""
    if target not in ("pred", "true"):
        raise CamscopeError(f"target {target!r} is not pred or true", "use --target pred or --target true")
    method = lookup(method).key
    out = run.out("explain", out)
    model, prep, device = run.model, run.prep, run.device
    images, labels, ids = run.split_tensors(split)
    classes = run.classes
    logits = predict_logits(model, images, prep, batch_size=256, device=device)
    probs = logits.softmax(1)
    conf, pred = probs.max(1)
    chosen: list[tuple[int, str, int]] = []  # (row, group, class)
    for c in range(len(classes)):
        for group, mask in (("correct", (labels == c) & (pred == c)), ("wrong", (labels == c) & (pred != c))):
            rows = mask.nonzero().flatten()
            rows = rows[conf[rows].argsort(descending=True)][:per_class]
            chosen += [(int(r), group, c) for r in rows]
    if not chosen:
        raise CamscopeError("the split has no images to explain", "pick another --split")
    sel = torch.tensor([r for r, _, _ in chosen])
    tgt = pred[sel] if target == "pred" else labels[sel]
    maps = []
    with make_progress() as progress:
        task = progress.add_task(f"{method} maps", total=len(sel))
        for s in range(0, len(sel), batch):
            part = sel[s : s + batch]
            m = saliency_maps(model, prep(images[part].to(device)), method, tgt[s : s + batch], layers)
            maps.append(m.cpu())
            progress.advance(task, len(part))
    maps_t = torch.cat(maps)
    tiles = overlay(images[sel], maps_t)
    stems = unique_stems(classes)  # class names may hold '/', spaces or differ only in case
    written, index = [], []
    for c, name in enumerate(classes):
        for group in ("correct", "wrong"):
            k = [i for i, (_, g, cc) in enumerate(chosen) if g == group and cc == c]
            if not k:
                continue
            caps = [
                f"true {classes[int(labels[sel[i]])]}\n"
                f"pred {classes[int(pred[sel[i]])]} {float(conf[sel[i]]):.2f}"
                for i in k
            ]
            scale = max(1, 96 // tiles.shape[-2])
            img = grid(tiles[k], caps, cols=per_class, scale=scale)
            path = save_png(img, out / f"{method}_{stems[name]}_{group}.png")
            written.append(path)
            index.append({"file": path.name, "method": method, "class": name, "group": group, "n": len(k)})
    _update_index(out / "galleries.json", method, index)
    atomic_write_bytes(
        out / f"{method}_maps.safetensors",
        save(
            {"maps": maps_t.contiguous(), "rows": sel},
            metadata={"ids": json.dumps([ids[int(i)] for i in sel])},
        ),
    )
    return {"files": [str(p) for p in written], "n": len(sel), "out": str(out), "split": split}


def _update_index(path: Path, method: str, entries: list[dict]) -> None:
    """galleries.json lists each gallery with its class and group, so nobody parses file names;
    galleries of other methods written earlier into the same folder stay listed."""
    kept = []
    if path.is_file():
        try:
            kept = [e for e in json.loads(path.read_text(encoding="utf-8")) if e.get("method") != method]
        except (ValueError, AttributeError):
            kept = []
    atomic_write_text(path, json.dumps(kept + entries, indent=1, ensure_ascii=False))
