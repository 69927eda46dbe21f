"""One self-contained HTML report per run folder: figures embedded, no network needed to view it.

``write_report(results, root)`` turns the numbers from ``results.py`` into a page (Jinja2 template
next to this file) and writes ``report.html`` and ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from camscope.data.audit import PROBLEM_KINDS
from camscope.folders import owned, record
from camscope.report.embed import ci, fig_png, img, pct
from camscope.report.results import write_results
from camscope.report.sections import experiment_view, model_label, weights_label
from camscope.utils import atomic_write_text


def _class_chart(counts: dict[str, int]) -> str | None:
    if not counts:
        return None
    from camscope.figures import pyplot

    plt = pyplot()
    items = sorted(counts.items(), key=lambda kv: -kv[1])[:40]
    fig, ax = plt.subplots(figsize=(min(12, 1.5 + 0.35 * len(items)), 3.2))
    ax.bar(range(len(items)), [v for _, v in items], color="#2f5d9e")
    ax.set_xticks(
        range(len(items)),
        [k for k, _ in items],
        rotation=60 if len(items) > 6 else 0,
        ha="right" if len(items) > 6 else "center",
        fontsize=8,
    )
    ax.set_ylabel("items")
    ax.spines[["top", "right"]].set_visible(False)
    src = fig_png(fig)
    plt.close(fig)
    return src


def render(results: dict, root: str | Path) -> str:
    root = Path(root)
    study = results.get("study") or {}
    title = study.get("name") or (results["experiments"][0]["name"] if results["experiments"] else root.name)
    view: dict = {
        "title": title,
        "subtitle": (study.get("description") or "").strip() + f"  Report written {results['created']}.",
        "answers": [],
        "experiments": [],
        "study_text": study.get("text"),
        "data": _data_view(root, results.get("data", {})),
    }
    comparison = []
    for e in results["experiments"]:
        ev, answers = experiment_view(root, e)
        view["experiments"].append(ev)
        view["answers"] += answers
        row = _comparison_row(e)
        if row:
            comparison.append(row)
    view["comparison"] = comparison if len(comparison) > 1 else []
    view["toc"] = _toc(view)
    view["provenance"] = _provenance(results)
    view["stages"] = [
        {
            "name": k,
            "status": s.get("status"),
            "seconds": f"{s.get('seconds') or 0:.1f}",
            "error": s.get("error") or "",
        }
        for k, s in (results.get("stages") or {}).items()
    ]
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["html", "j2"])
    )
    return env.get_template("template.html.j2").render(**view)


def _quality_line(q: dict) -> str:
    """How the image-quality findings were judged: the thresholds and the set's own sharpness."""
    p = q.get("params")
    if not p:
        return ""
    blur = (
        f"blurry below {p['blur_ratio']}x the set's median sharpness {q['median_sharpness']:.3f}"
        if q.get("blur_threshold") is not None
        else f"blurry not judged (fewer than {p['min_images_for_blur']} scored pictures)"
    )
    return (
        f"Image quality (luminance 0-1, each picture at most 128 px): dark when 95% of a picture is "
        f"below {p['dark_p95']}, light when 95% is above {p['light_p05']}, blank when its 1st-99th "
        f"percentile range is under {p['blank_range']}; {blur}. Every picture's scores: "
        f"audit/{q.get('per_image_file', 'image_quality.csv')}."
    )


def _data_view(root: Path, data: dict) -> dict:
    """The source, the audit's findings with their meaning and thumbnails, the classes."""
    dv: dict = {}
    if "source" in data:
        dv["source"] = f"{data['source'].get('description', '')} ({data['source'].get('items', '?')} items)"
    au = data.get("audit")
    if au:
        dv["audit_line"] = (
            f"{au['n_items']} items, {au['n_images']} image files, {au['n_readable']} readable; "
            f"{au['exact_duplicate_groups']} exact and {au['near_duplicate_groups']} near-duplicate groups; "
            f"audit took {au['timing_s'].get('total', 0):.1f} s."
        )
        dv["audit_rows"] = [
            {
                "kind": k,
                "count": n,
                "meaning": PROBLEM_KINDS.get(k, ""),
                "example": (au["examples"].get(k) or [{}])[0].get("detail", ""),
            }
            for k, n in sorted(au["problem_counts"].items(), key=lambda kv: -kv[1])
        ]
        dv["quality_line"] = _quality_line(au.get("image_quality") or {})
        thumbs = {k: img(root, rel) for k, rel in au.get("thumbnails", {}).items()}
        dv["thumbs"] = [{"kind": k, "src": src} for k, src in thumbs.items() if src]
    if data.get("planted_problems"):
        dv["planted"] = ", ".join(f"{k} {n}" for k, n in data["planted_problems"].items())
    li = data.get("label_issues")
    if li:
        dv["label_issues"] = {
            "line": f"{li['n_flagged']} of {li['n_items']} labels flagged by confident learning on out-of-fold "
            f"probabilities ({li['backbone']} features, {li['config']['folds']} folds, out-of-fold accuracy "
            f"{pct(li['out_of_fold_accuracy'])}). "
            + (
                f"{li['dropped_from_training']} of them were taken out of training and validation "
                "(clean.drop_label_issues), never out of the test set; "
                if li.get("dropped_from_training")
                else "Nothing was relabelled or dropped; "
            )
            + "each experiment's evaluation also scores its test items without the flagged ones.",
            "rows": [
                [r["rank"], r["id"], r["given"], r["suggested"], r[li["config"]["score"]]]
                for r in li["most_suspect"][:12]
            ],
            "score": li["config"]["score"],
            "figure": img(root, li.get("figure")),
            "cams": img(root, li.get("cams")),
        }
    pr = data.get("prepared")
    if pr:
        dv["class_chart"] = _class_chart(pr["class_counts"])
        dv["dropped"] = sorted(pr["excluded_by_reason"].items(), key=lambda kv: -kv[1])
    return dv


def _comparison_row(e: dict) -> dict | None:
    """An experiment's line in the side-by-side table (None when it was not evaluated)."""
    run = e.get("run") or {}
    m = (run.get("evaluation") or {}).get("all")
    if not m:
        return None
    lf = run["evaluation"].get("leak_free", {})
    return {
        "name": e["name"],
        "model": model_label(run),
        "weights": weights_label(run.get("weights")),
        "classes": len(run.get("classes") or []),
        "n": m["n"],
        "acc": pct(m["accuracy"]) + ci(m, "accuracy"),
        "f1": pct(m["macro"]["f1"]) + ci(m, "macro_f1"),
        "leak_free": pct(lf["accuracy"]) if "accuracy" in lf else "–",
        "seconds": f"{run['train_seconds']:.0f} s" if run.get("train_seconds") else "–",
    }


# an experiment's sections, in page order, with their anchors
SECTIONS = (
    ("split_rows", "Split", "split"),
    ("training", "Training", "train"),
    ("evaluation", "Evaluation", "eval"),
    ("explain", "Explanations", "explain"),
    ("masking", "Masking", "mask"),
    ("unseen", "Unseen class", "unseen"),
    ("features", "Features", "features"),
)


def _toc(view: dict) -> list[dict]:
    toc = []
    dv = view["data"]
    if view["answers"]:
        toc.append({"id": "answers", "label": "Answers"})
    if dv:
        toc.append({"id": "data", "label": "Data"})
        if dv.get("audit_rows"):
            toc.append({"id": "audit", "label": "Audit", "sub": True})
        if dv.get("class_chart"):
            toc.append({"id": "classes", "label": "Classes", "sub": True})
        if dv.get("label_issues"):
            toc.append({"id": "label-issues", "label": "Label issues", "sub": True})
    if view["comparison"]:
        toc.append({"id": "comparison", "label": "Side by side"})
    for ev in view["experiments"]:
        toc.append({"id": f"exp-{ev['name']}", "label": f"Experiment {ev['name']}"})
        for key, label, anchor in SECTIONS:
            if ev.get(key):
                toc.append({"id": f"{anchor}-{ev['name']}", "label": label, "sub": True})
    toc.append({"id": "provenance", "label": "Provenance"})
    return toc


def _provenance(results: dict) -> list[list]:
    prov = results.get("provenance", {})
    rows = [["camscope", prov.get("versions", {}).get("camscope")]]
    rows += [[k, val] for k, val in prov.get("versions", {}).items() if k != "camscope"]
    rows += [[f"machine: {k}", val] for k, val in prov.get("machine", {}).items()]
    rows += [[f"seed: {k}", val] for k, val in (prov.get("seeds") or {}).items()]
    rows += [[f"data hash: {k}", val] for k, val in prov.get("dataset_hashes", {}).items()]
    pr = results.get("data", {}).get("prepared")
    if pr:
        rows.append(["prepared dataset hash", pr["dataset_hash"]])
        rows.append(["preprocessing", json.dumps(pr["preprocessing"])])
    return rows


def write_report(results: dict, root: str | Path) -> Path:
    root = Path(root)
    write_results(results, root)
    path = root / "report.html"
    page = render(results, root)
    atomic_write_text(path, page)
    if owned(root):  # the web page serves only a report whose hash the run folder recorded
        digest = hashlib.sha256(page.encode("utf-8")).hexdigest()
        record(root, "report", {"file": path.name, "sha256": digest})
    return path
