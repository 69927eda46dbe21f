"""Gather every number a run folder holds into one ``results.json``.

Works on a study run folder (stages.json, one sub-folder per experiment) and on a plain training
run folder made with ``camscope train`` (one experiment: the folder itself). Figures are listed as
paths relative to the root, so the report can embed them and a notebook can open them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from camscope import __version__
from camscope.errors import CamscopeError
from camscope.utils import atomic_write_text

SCHEMA = "camscope.results/1"


def _json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def _rel(root: Path, path: Path) -> str | None:
    return str(path.relative_to(root)) if path.is_file() else None


def _versions() -> dict:
    out = {"camscope": __version__, "python": sys.version.split()[0]}
    for pkg in ("torch", "torchvision", "numpy", "scikit-learn", "matplotlib", "pillow", "safetensors"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def _machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def _figure_list(root: Path, folder: Path, names: list[str] | None = None) -> list[str]:
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.png")) if names is None else [folder / n for n in names]
    return [str(p.relative_to(root)) for p in files if p.is_file()]


def _galleries(root: Path, folder: Path) -> list[dict]:
    """The CAM galleries of a run, each with its method, class and group (correct or wrong)."""
    index = _json(folder / "galleries.json")
    if isinstance(index, list):
        return [
            {**{k: e[k] for k in ("method", "class", "group")}, "file": _rel(root, folder / e["file"])}
            for e in index
            if isinstance(e, dict)
            and Path(str(e.get("file"))).name == e.get("file")  # a plain name inside the folder
            and (folder / e["file"]).is_file()
        ]
    out = []  # a run explained before galleries.json existed: read its file names
    for rel in _figure_list(root, folder):
        method, _, rest = Path(rel).stem.partition("_")
        cls, _, group = rest.rpartition("_")
        if group in ("correct", "wrong"):
            out.append({"method": method, "class": cls, "group": group, "file": rel})
    return out


def _run_section(root: Path, run: Path) -> dict:
    """Training, evaluation, explanations and probes of one trained run folder."""
    ck = _json(run / "best.json") or _json(run / "last.json") or {}
    last = _json(run / "last.json") or ck  # the whole history; best.json stops at the best epoch
    out: dict = {
        "run_dir": str(run.relative_to(root)) if run != root else ".",
        "model": ck.get("model"),
        "cam_layer": ck.get("cam_layer"),
        "classes": ck.get("classes"),
        "config": ck.get("config"),
        "weights": ck.get("weights"),
        "dataset_hash": ck.get("dataset_hash"),
        "n_train": ck.get("n_train"),
        "n_val": ck.get("n_val"),
        "best": ck.get("best"),
        "history": last.get("history", []),
        "train_seconds": (last.get("position") or {}).get("elapsed_s"),
        "figures": {"learning_curve": _rel(root, run / "learning_curve.png")},
    }
    ev = _json(run / "eval" / "metrics.json")
    if ev:
        out["evaluation"] = ev
        out["figures"].update(
            {
                "confusion": _rel(root, run / "eval" / "confusion.png"),
                "reliability": _rel(root, run / "eval" / "reliability.png"),
                "misclassified": _rel(root, run / "eval" / "misclassified.png"),
            }
        )
    galleries = _galleries(root, run / "explain")
    if galleries:
        out["galleries"] = galleries
    faith = _json(run / "explain" / "faithfulness.json")
    if faith:
        out["faithfulness"] = faith
    mask = _json(run / "probes" / "masking" / "masking.json")
    if mask:
        out["masking"] = mask
        out["figures"]["masking_curves"] = _rel(root, run / "probes" / "masking" / "masking_curves.png")
        out["figures"]["cam_shift"] = _rel(root, run / "probes" / "masking" / "cam_shift.png")
    unseen = _json(run / "probes" / "unseen" / "unseen.json")
    if unseen:
        out["unseen"] = unseen
        out["unseen_figures"] = _figure_list(root, run / "probes" / "unseen")
    feats = _json(run / "probes" / "features" / "features.json")
    if feats:
        out["features"] = feats
        out["figures"]["projections"] = _rel(root, run / "probes" / "features" / "projections.png")
    out["figures"] = {k: v for k, v in out["figures"].items() if v}
    return out


def collect_results(root: str | Path) -> dict:
    root = Path(root).resolve()
    stages = _json(root / "stages.json")
    is_run = (root / "best.safetensors").is_file() or (root / "last.safetensors").is_file()
    if stages is None and not is_run:
        raise CamscopeError(
            f"{root} is neither a study run folder nor a training run folder",
            "give the folder `camscope run` or `camscope train` wrote",
        )
    results: dict = {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "root": str(root),
        "provenance": {"versions": _versions(), "machine": _machine()},
    }
    study = _json(root / "study.resolved.json")
    if study:
        results["study"] = {
            "name": study.get("name"),
            "description": study.get("description", ""),
            "seed": study.get("seed"),
            "resolved": study,
            "text": (root / "study.yaml").read_text(encoding="utf-8")
            if (root / "study.yaml").is_file()
            else None,
        }
    if stages:
        results["stages"] = {
            k: {kk: v.get(kk) for kk in ("kind", "status", "seconds", "error", "summary") if kk in v}
            for k, v in stages.items()
        }
    results["data"] = _data_section(root)
    experiments = []
    if study:
        experiments = [_experiment_section(root, exp) for exp in study["experiments"]]
    elif is_run:
        split = _json(root / "split.json")
        entry = {"name": root.name, "description": "a single training run", "run": _run_section(root, root)}
        if split:
            entry["split"] = {k: split[k] for k in SPLIT_KEYS if k in split}
        experiments.append(entry)
    results["experiments"] = experiments
    hashes = {e["name"]: e.get("run", {}).get("dataset_hash") for e in experiments}
    results["provenance"]["dataset_hashes"] = {k: v for k, v in hashes.items() if v}
    if study:
        results["provenance"]["seeds"] = {
            "study": study.get("seed"),
            "split": study.get("split", {}).get("seed"),
        }
    return results


SPLIT_KEYS = ("counts", "totals", "selected_classes", "unseen_classes")


def _dropped_label_issues(root: Path) -> int:
    """Items some experiment's split took out of training as probable label issues
    (clean.drop_label_issues)."""
    import csv

    ids = set()
    for path in root.glob("*/split.csv"):
        with open(path, newline="", encoding="utf-8") as f:
            ids |= {
                r["id"] for r in csv.DictReader(f) if r.get("note", "").startswith("probable label issue")
            }
    return len(ids)


def _data_section(root: Path) -> dict:
    """The source, its audit and the prepared dataset of a study run folder."""
    data: dict = {}
    src = _json(root / "source.json")
    if src:
        data["source"] = {k: v for k, v in src.items() if k != "planted"}
        if "planted" in src:
            data["planted_problems"] = {k: len(v) for k, v in src["planted"].items()}
    audit = _json(root / "audit" / "audit.json") or _json(root / "audit.json")
    if audit:
        data["audit"] = {
            "n_items": audit["n_items"],
            "n_images": audit["n_images"],
            "n_readable": audit["n_readable"],
            "class_counts": audit["class_counts"],
            "problem_counts": audit["problem_counts"],
            "exact_duplicate_groups": len(audit["exact_duplicate_groups"]),
            "near_duplicate_groups": len(audit["near_duplicate_groups"]),
            "timing_s": audit["timing_s"],
            "examples": {
                kind: [p for p in audit["problems"] if p["kind"] == kind][:5]
                for kind in audit["problem_counts"]
            },
            "thumbnails": {
                p.stem: str(p.relative_to(root)) for p in sorted((root / "audit" / "thumbs").glob("*.png"))
            },
            "image_quality": audit.get("image_quality") or {},  # thresholds and counts, no per-image scores
        }
    screen = _json(root / "label_issues" / "label_issues.json")
    if screen:
        data["label_issues"] = {
            k: screen.get(k)
            for k in (
                "n_items",
                "n_flagged",
                "out_of_fold_accuracy",
                "flagged_per_class",
                "backbone",
                "config",
            )
        } | {
            "most_suspect": screen.get("most_suspect", [])[:24],
            "figure": "label_issues/suspects.png"
            if (root / "label_issues" / "suspects.png").is_file()
            else None,
            "cams": "label_issues/suspects_cams.png"
            if (root / "label_issues" / "suspects_cams.png").is_file()
            else None,
            "dropped_from_training": _dropped_label_issues(root),
        }
    prepared = root / "prepared" / "data.safetensors"
    if prepared.is_file():
        from camscope.data.prepare import load_prepared

        ds = load_prepared(prepared)
        reasons: dict[str, int] = {}
        for e in ds.info["excluded"]:
            reasons[e["reason"].split(":")[0]] = reasons.get(e["reason"].split(":")[0], 0) + 1
        data["prepared"] = {
            "items": len(ds),
            "shape": list(ds.images.shape),
            "class_counts": ds.class_counts(),
            "dataset_hash": ds.info["dataset_hash"],
            "preprocessing": ds.info["preprocessing"],
            "excluded_by_reason": reasons,
            "excluded_examples": ds.info["excluded"][:20],
        }
    return data


def _experiment_section(root: Path, exp: dict) -> dict:
    """One experiment of a study: its split, the selection among candidates, the selected run."""
    d = root / exp["name"]
    entry: dict = {"name": exp["name"], "description": exp.get("description", ""), "spec": exp}
    split = _json(d / "split.json")
    if split:
        entry["split"] = {k: split[k] for k in SPLIT_KEYS if k in split}
        entry["split"].update(
            {
                k: v
                for k, v in split.get("summary", split).items()
                if k.startswith(("duplicate", "test_items", "items_in"))
            }
        )
    sel = _json(d / "selection.json")
    if sel:
        entry["selection"] = sel
        run = Path(sel["run_dir"])
        if run.is_dir():
            entry["run"] = _run_section(root, run)
            entry["candidate_curves"] = {
                c["name"]: _candidate_history(Path(c["run_dir"])) for c in sel["candidates"]
            }
    return entry


def _candidate_history(run: Path) -> list[dict]:
    ck = _json(run / "last.json") or _json(run / "best.json") or {}
    return [
        {k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_acc", "val_macro_f1")}
        for r in ck.get("history", [])
    ]


def write_results(results: dict, root: str | Path) -> Path:
    path = Path(root) / "results.json"
    atomic_write_text(path, json.dumps(results, indent=1, default=str))
    return path
