"""`camscope predict RUN PATH...`: classify new images with a trained run (optionally with CAMs).

Each image goes through the run's own preparation (decode, EXIF, resize policy, size, channels,
and for two-sided runs the joining of both sides) and preprocessing; bad files are reported and
skipped, never fatal.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch

from camscope.data.imageio import IMAGE_EXTS, ImageProblem
from camscope.data.prepare import prepare_encoded
from camscope.data.sources import read_csv_text
from camscope.errors import CamscopeError
from camscope.models.inference import predict_logits
from camscope.progress import make_progress
from camscope.runs import open_run
from camscope.utils import unique_stems, write_rows_csv


def collect_inputs(
    paths: list[str], image_cols: list[str] | None = None
) -> tuple[list[tuple[str, list[Path]]], list[dict], list[str]]:
    """(name, [side files]) for files, folders (recursively) and CSV files (``image_cols``); the
    CSV rows left out (a row without a path, say) with why; notes (a CSV read as Windows-1252)."""
    items: list[tuple[str, list[Path]]] = []
    problems: list[dict] = []
    notes: list[str] = []
    for arg in paths:
        p = Path(arg)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                    items.append((str(f), [f]))
        elif p.suffix.lower() == ".csv":
            _csv_inputs(p, image_cols, items, problems, notes)
        else:
            items.append((str(p), [p]))
    if not items:
        raise CamscopeError("no images found in the given paths", "pass image files, folders or a CSV")
    return items, problems, notes


def _csv_inputs(p: Path, image_cols, items: list, problems: list, notes: list) -> None:
    try:
        text, warning = read_csv_text(p.read_bytes(), str(p))
    except OSError as e:
        raise CamscopeError(f"cannot read {p}: {e}", "check the path") from None
    if warning:
        notes.append(warning)
    reader = csv.DictReader(io.StringIO(text, newline=""))
    cols = image_cols or (["path"] if "path" in (reader.fieldnames or []) else None)
    if not cols or not set(cols) <= set(reader.fieldnames or []):
        raise CamscopeError(
            f"{p} has no image column {cols or 'path'}",
            f"name it with --image-col; columns: {', '.join(reader.fieldnames or [])}",
        )
    for row_no, row in enumerate(reader, start=1):
        names = [(row.get(c) or "").strip() for c in cols]
        if not all(names):
            empty = [c for c, n in zip(cols, names, strict=True) if not n]
            detail = f"row {row_no} has no value in column(s) {', '.join(empty)}; skipped"
            problems.append({"path": f"{p}:{row_no}", "kind": "missing_file", "detail": detail})
            continue
        items.append((" | ".join(names), [p.parent / n for n in names]))


def _check_sides(items: list[tuple[str, list[Path]]], sides: int) -> None:
    wrong = [(name, len(files)) for name, files in items if len(files) != sides]
    if wrong:
        raise CamscopeError(
            f"the run was trained on {sides}-sided objects, but {wrong[0][0]!r} gives {wrong[0][1]} file(s)",
            "pass a CSV with one --image-col per side" if sides > 1 else "pass one image per item",
        )


def _prepare_one(files: list[Path], spec: dict) -> np.ndarray:
    blobs = []
    for f in files:
        try:
            blobs.append(f.read_bytes())
        except OSError as e:
            raise ImageProblem("missing_file", str(e)) from None
    return prepare_encoded(blobs, spec)


def predict_paths(
    run_dir: str | Path,
    paths: list[str],
    out_csv: str | Path,
    top_k: int = 3,
    image_cols: list[str] | None = None,
    cam: str | None = None,
    cam_dir: str | Path | None = None,
    batch: int = 64,
    device: str = "cpu",
) -> dict:
    run = open_run(run_dir, device=device, need_data=False)
    model, meta, prep = run.model, run.meta, run.prep
    spec = run.prepared_spec()
    sides = int(spec.get("sides", 1))
    if top_k < 1:
        raise CamscopeError(f"--top-k must be at least 1, not {top_k}", "e.g. --top-k 3")
    items, problems, notes = collect_inputs(paths, image_cols)
    _check_sides(items, sides)
    classes = meta["classes"]
    k = min(top_k, len(classes))
    rows = []
    tta = meta["preprocess"].get("tta") or "none"
    cam_out = Path(cam_dir or Path(out_csv).parent / "cams")
    # x/img.jpg and y/img.jpg must not write one img_gradcam.png
    stems = unique_stems([n for n, _ in items], "-_.", 120, lambda n: Path(n.split(" | ")[0]).stem)
    with make_progress() as progress:
        task = progress.add_task("predicting", total=len(items))
        for s in range(0, len(items), batch):
            chunk, arrays = [], []
            for name, files in items[s : s + batch]:
                try:
                    arrays.append(_prepare_one(files, spec))
                    chunk.append(name)
                except ImageProblem as e:
                    problems.append({"path": name, "kind": e.kind, "detail": e.detail})
            if arrays:
                x = torch.from_numpy(np.stack(arrays))
                probs = predict_logits(model, x, prep, batch, tta, device).softmax(1)
                conf, idx = probs.topk(k, dim=1)
                for i, name in enumerate(chunk):
                    row = {"path": name}
                    for j in range(k):
                        row[f"label_{j + 1}"] = classes[int(idx[i, j])]
                        row[f"confidence_{j + 1}"] = f"{float(conf[i, j]):.6f}"
                    if cam:
                        row["cam_file"] = str(cam_out / f"{stems[name]}_{cam}.png")
                    rows.append(row)
                if cam:
                    _save_cams(
                        model,
                        x,
                        prep,
                        idx[:, 0],
                        [Path(r["cam_file"]) for r in rows[-len(chunk) :]],
                        cam,
                        classes,
                        conf[:, 0],
                    )
            progress.advance(task, len(items[s : s + batch]))
    fields = ["path"] + [f for j in range(k) for f in (f"label_{j + 1}", f"confidence_{j + 1}")]
    fields += ["cam_file"] if cam else []
    write_rows_csv(out_csv, rows, fields)
    return {
        "predicted": len(rows),
        "skipped": problems,
        "notes": notes,
        "out": str(out_csv),
    }


def _save_cams(model, x, prep, targets, files: list[Path], method, classes, conf) -> None:
    from camscope.explain.engine import explain
    from camscope.explain.overlay import overlay
    from camscope.figures import grid, save_png

    maps = explain(model, prep(x), method, targets=targets).first().cpu()
    tiles = overlay(x, maps)
    for i, path in enumerate(files):
        cap = [f"{classes[int(targets[i])]} {float(conf[i]):.2f}"]
        save_png(grid(tiles[i : i + 1], cap, cols=1, scale=max(1, 128 // x.shape[-2])), path)
