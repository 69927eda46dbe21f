"""One self-contained HTML report per run folder: figures embedded, no network needed to view it.

``write_report(results, root)`` turns the numbers from ``results.py`` into a page (Jinja2 template
next to this file) and writes ``report.html`` and ``results.json``.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from camscope.report.results import write_results
from camscope.utils import atomic_write_text

MEANINGS = {
    "zero_byte": "empty file",
    "not_an_image": "file is not an image (content sniffed)",
    "truncated": "image data ends early",
    "unreadable": "cannot be decoded",
    "too_large": "claims more pixels than allowed",
    "missing_file": "a listed file does not exist",
    "missing_side": "a two-sided item lacks one side",
    "missing_label": "no label",
    "unparsed_label": "the label rule does not match the text",
    "exact_duplicate": "byte-identical files",
    "near_duplicate": "the same picture re-encoded, resized or slightly shifted",
    "conflicting_labels": "duplicates that carry different labels",
    "same_image_both_sides": "both sides are the same picture",
    "odd_size": "far from the median size",
    "odd_aspect": "far from the median aspect ratio (e.g. composites)",
    "grayscale_in_color": "grayscale image in a colour dataset",
    "small_class": "class with very few items",
    "class_imbalance": "largest class far bigger than the smallest",
    "path_outside_root": "path points outside the data folder",
    "duplicate_id": "the same id twice",
}


def _img(root: Path, rel: str | None) -> str | None:
    if not rel:
        return None
    p = root / rel
    if not p.is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii")


def _fig_png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


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
    src = _fig_png(fig)
    plt.close(fig)
    return src


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _ci(m: dict, key: str) -> str:
    v = m.get("ci", {}).get(key)
    return f" ({100 * v[0]:.1f}–{100 * v[1]:.1f})" if v else ""


def _fig(root: Path, rel: str | None, caption: str, alt: str) -> dict | None:
    src = _img(root, rel)
    return {"src": src, "caption": caption, "alt": alt} if src else None


def _experiment_view(root: Path, e: dict) -> tuple[dict, list[dict]]:
    """The template's view of one experiment, and its answers for the summary."""
    v: dict = {"name": e["name"], "description": e.get("description", "")}
    answers: list[dict] = []
    sp = e.get("split")
    if sp and "counts" in sp:
        classes = sorted({c for k in ("train", "val", "test") for c in sp["counts"].get(k, {}) if c})
        v["split_rows"] = [
            [c, *(sp["counts"].get(k, {}).get(c, 0) for k in ("train", "val", "test"))] for c in classes
        ]
        unseen = sorted(sp["counts"].get("unseen", {}).items(), key=lambda kv: -kv[1])
        if unseen:
            v["unseen_line"] = (
                f"Not trained on (kept as unseen): {len(unseen)} class(es), {sum(n for _, n in unseen)} items"
                + (": " if len(unseen) <= 8 else "; the largest: ")
                + ", ".join(f"{c} {n}" for c, n in unseen[:8])
                + "."
            )
        n_leak = sp.get("test_items_with_duplicate_in_train")
        v["leak_line"] = (
            f"Leakage check: {n_leak} test item(s) have a near-duplicate in training"
            + (" (scored separately below as 'leak-free')." if n_leak else ".")
            if n_leak is not None
            else ""
        )
    run = e.get("run")
    if not run:
        return v, answers
    figs = run.get("figures", {})
    model = (run.get("model") or {}).get("name", "?")
    hist = run.get("history") or []
    best = run.get("best") or {}
    secs = run.get("train_seconds")
    v["training"] = {
        "line": f"{model} on {run.get('n_train')} training and {run.get('n_val')} validation images; "
        f"{len(hist)} epochs"
        + (f" in {secs:.0f} s" if secs else "")
        + (
            f"; best {best.get('metric')} {best.get('value'):.4f} at epoch {best.get('epoch')}"
            if best.get("value") is not None
            else ""
        ),
        "figures": [
            f
            for f in [
                _fig(
                    root,
                    figs.get("learning_curve"),
                    "Learning curves: loss and accuracy per epoch, training and validation.",
                    "learning curve",
                )
            ]
            if f
        ],
    }
    sel = e.get("selection")
    if sel and len(sel.get("candidates", [])) > 1:
        v["monitor"] = sel["monitor"]
        v["selection_rule"] = (
            f"Selection: {sel['rule']}. Only the selected candidate is scored on the test split."
        )
        v["candidates"] = [
            {
                "name": c["name"],
                "settings": ", ".join(f"{k}={val}" for k, val in c["overrides"].items()) or "recipe defaults",
                "value": "–" if c["value"] is None else f"{c['value']:.4f}",
                "epoch": c.get("best_epoch"),
                "seconds": f"{c.get('train_seconds', 0):.0f}",
                "selected": c["name"] == sel["selected"],
            }
            for c in sel["candidates"]
        ]
        chart = _candidate_chart(e.get("candidate_curves", {}), sel)
        if chart:
            v["training"]["figures"].append(
                {
                    "src": chart,
                    "alt": "candidates",
                    "caption": f"Validation {sel['monitor']} per epoch for each candidate; the selected one is drawn thick.",
                }
            )
    ev = run.get("evaluation")
    if ev:
        a, lf = ev["all"], ev.get("leak_free", {})
        cols = ["all test items"]
        has_lf = "accuracy" in lf and lf.get("n_excluded_with_duplicate_in_train", 0) > 0
        if has_lf:
            cols.append(f"leak-free (−{lf['n_excluded_with_duplicate_in_train']})")
        ms = [a] + ([lf] if has_lf else [])
        rows = [
            ["items", *(m["n"] for m in ms)],
            ["accuracy (95% CI)", *(_pct(m["accuracy"]) + _ci(m, "accuracy") for m in ms)],
            ["macro F1 (95% CI)", *(_pct(m["macro"]["f1"]) + _ci(m, "macro_f1") for m in ms)],
            ["macro precision", *(_pct(m["macro"]["precision"]) for m in ms)],
            ["macro recall", *(_pct(m["macro"]["recall"]) for m in ms)],
            ["weighted F1", *(_pct(m["weighted"]["f1"]) for m in ms)],
            ["expected calibration error", *(f"{m['ece']:.3f}" for m in ms)],
        ]
        for k, val in (a.get("top_k_accuracy") or {}).items():
            rows.append([f"{k.replace('top', 'top-')} accuracy", _pct(val), *([""] if has_lf else [])])
        v["evaluation"] = {
            "columns": cols,
            "rows": rows,
            "per_class": [
                [r["class"], _pct(r["precision"]), _pct(r["recall"]), _pct(r["f1"]), r["support"]]
                for r in a["per_class"]
            ],
            "confused": ", ".join(
                f"{d['true']} → {d['predicted']} ({d['count']})" for d in a["most_confused"][:5]
            ),
            "figures": [
                f
                for f in [
                    _fig(
                        root,
                        figs.get("confusion"),
                        "Confusion matrix: counts and row-normalised (each row is a true class).",
                        "confusion matrix",
                    ),
                    _fig(
                        root,
                        figs.get("reliability"),
                        "Calibration: mean confidence against accuracy per confidence bin; the diagonal is perfect calibration.",
                        "reliability diagram",
                    ),
                    _fig(
                        root,
                        figs.get("misclassified"),
                        "The test images the model got wrong with the highest loss: true label, prediction and confidence.",
                        "misclassified gallery",
                    ),
                ]
                if f
            ],
        }
        answers.append(
            {
                "q": f"How well are the classes separated? ({e['name']})",
                "a": f"{model} reaches {_pct(a['accuracy'])}{_ci(a, 'accuracy')} test accuracy and macro-F1 "
                f"{_pct(a['macro']['f1'])}{_ci(a, 'macro_f1')} on {a['n']} test images"
                + (
                    f"; {_pct(lf['accuracy'])} on the {lf['n']} without a near-duplicate in training"
                    if has_lf
                    else ""
                )
                + (
                    f"; most confused: {a['most_confused'][0]['true']} → {a['most_confused'][0]['predicted']}"
                    if a["most_confused"]
                    else ""
                )
                + ".",
            }
        )
    galleries = run.get("galleries", [])
    faith = run.get("faithfulness")
    if galleries or faith:
        ex: dict = {"figures": []}
        for g in galleries:
            method, cls, group = g["method"], g["class"], g["group"]
            f = _fig(
                root,
                g["file"],
                f"{method}: class {cls}, {'correct' if group == 'correct' else 'wrong'} predictions, most confident first "
                "(heat map: where the evidence for the predicted class lies).",
                f"{method} {cls} {group}",
            )
            if f:
                ex["figures"].append(f)
        if faith:
            rows_f = faith["methods"]
            region = faith.get("has_evidence_regions")
            ex["faith_cols"] = [
                "method",
                "deletion AUC ↓",
                "insertion AUC ↑",
                "average drop ↓",
                "increase ↑",
            ] + (["pointing game ↑", "energy inside evidence ↑"] if region else [])
            ex["faith_rows"] = [
                [
                    r["method"],
                    f"{r['deletion_auc']:.3f}",
                    f"{r['insertion_auc']:.3f}",
                    f"{r['average_drop_pct']:.1f}%",
                    f"{r['increase_pct']:.1f}%",
                    *([_pct(r["pointing_game"]), _pct(r["energy_inside"])] if region else []),
                ]
                for r in rows_f
            ]
            ex["faith_note"] = (
                f"On {faith['n']} test images, target: the predicted class. 'random' is smooth noise at about the CAM's resolution: a method "
                "is only informative where it beats it."
                + (
                    f" The evidence regions cover {_pct(faith['region_area_share'])} of the image: a map blind to the image "
                    "would put that share of its energy inside them."
                    if region
                    else ""
                )
            )
            real = [r for r in rows_f if r["method"] != "random"]
            rnd = next((r for r in rows_f if r["method"] == "random"), None)
            if real and rnd:
                r0 = real[0]
                text = (
                    f"{r0['method']}: insertion AUC {r0['insertion_auc']:.3f} vs {rnd['insertion_auc']:.3f} for a random map, "
                    f"deletion AUC {r0['deletion_auc']:.3f} vs {rnd['deletion_auc']:.3f}"
                )
                if region:
                    text += (
                        f"; {_pct(r0['energy_inside'])} of its energy lies on the known evidence "
                        f"(chance {_pct(faith['region_area_share'])}), pointing game {_pct(r0['pointing_game'])}"
                    )
                answers.append({"q": f"Where does the model look? ({e['name']})", "a": text + "."})
        v["explain"] = ex
    mk = run.get("masking")
    if mk:
        modes = sorted({r["mode"] for r in mk["overall"]})
        sizes = sorted({r["size"] for r in mk["overall"]})
        look = {(r["mode"], r["size"]): r for r in mk["overall"]}
        cam = {(r["mode"], r["size"]): r for r in mk.get("cam", [])}
        cols = ["mask size (share of radius)"]
        for m in modes:
            cols += [f"accuracy, {m} hidden", f"CAM energy on visible part, {m}"]
        rows = []
        for s in sizes:
            row = [f"{s:.2f}"]
            for m in modes:
                row += [
                    _pct(look[(m, s)]["accuracy"]) if (m, s) in look else "–",
                    _pct(cam[(m, s)]["visible_energy_share"]) if (m, s) in cam else "–",
                ]
            rows.append(row)
        verdict = mk["answer"].get("verdict", "")
        v["masking"] = {
            "verdict": verdict,
            "cols": cols,
            "rows": rows,
            "figures": [
                f
                for f in [
                    _fig(
                        root,
                        run["figures"].get("masking_curves"),
                        f"Accuracy, macro-F1 and confidence as a growing centre disk or outer ring is hidden ({mk['fill']} fill), overall and per class.",
                        "masking curves",
                    ),
                    _fig(
                        root,
                        run["figures"].get("cam_shift"),
                        "The same test images at growing mask sizes, with their Grad-CAM: how the evidence moves when part of the object is hidden.",
                        "CAM shift",
                    ),
                ]
                if f
            ],
        }
        if verdict:
            answers.append(
                {
                    "q": f"Does the model rely on the centre or on the rim? ({e['name']})",
                    "a": verdict[0].upper() + verdict[1:] + ".",
                }
            )
    un = run.get("unseen")
    if un:
        dist = ", ".join(f"{k}: {n}" for k, n in un["label_distribution"].items())
        best_score = max(un["separation"].items(), key=lambda kv: kv[1]["auroc"])
        line = (
            f"{un['n_unseen']} images of {', '.join(un['unseen_classes'])}, which the model never saw, were labelled {dist}. "
            f"Mean confidence {un['mean_confidence_unseen']:.2f} (known classes: {un['mean_confidence_in_distribution']:.2f}); "
            f"{_pct(un['consistency']['keeps_label_under_flip'])} keep their label under a flip, "
            f"{_pct(un['consistency']['keeps_label_under_2px_shifts'])} under 2-pixel shifts."
        )
        captions = {
            "confidence": "Confidence of the unseen images against the test images of known classes.",
            "roc": "ROC curve of each out-of-distribution score: unseen images against the test images of known classes.",
            "gradcam_unseen": "Grad-CAM of the unseen images for the label they were given, most confident first.",
        }
        figs_u = []
        for rel in run.get("unseen_figures", []):
            stem = Path(rel).stem
            cap = next((c for k, c in captions.items() if k in stem), "Unseen-class figure.")
            f = _fig(root, rel, cap, stem)
            if f:
                figs_u.append(f)
        v["unseen"] = {
            "line": line,
            "rows": [
                [k, f"{s['auroc']:.3f}", f"{s['fpr_at_95_tpr']:.3f}"] for k, s in un["separation"].items()
            ],
            "figures": figs_u,
        }
        answers.append(
            {
                "q": f"Where does the class it never saw land? ({e['name']})",
                "a": line
                + f" The best score to flag it is {best_score[0]} (AUROC {best_score[1]['auroc']:.3f}).",
            }
        )
    ft = run.get("features")
    if ft:
        p = ft["probes"]
        line = (
            f"{ft['n']} items, {ft['dim']} penultimate features; projections: {', '.join(ft['projections'])}."
        )
        if "linear_probe_accuracy" in p:
            line += f" A linear probe on them scores {_pct(p['linear_probe_accuracy'])} and 5-NN {_pct(p['knn5_accuracy'])} on the test items."
        v["features"] = {
            "line": line,
            "figures": [
                f
                for f in [
                    _fig(
                        root,
                        run["figures"].get("projections"),
                        "2-D projections of the penultimate features, coloured by class; classes the model never saw are highlighted.",
                        "projections",
                    )
                ]
                if f
            ],
        }
    return v, answers


def _candidate_chart(curves: dict, sel: dict) -> str | None:
    key = sel["monitor"]
    if not curves or not any(any(r.get(key) is not None for r in h) for h in curves.values()):
        return None
    from camscope.figures import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, hist in curves.items():
        pts = [(r["epoch"], r[key]) for r in hist if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=3 if name == sel["selected"] else 1, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} (validation)")
    ax.legend(fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    src = _fig_png(fig)
    plt.close(fig)
    return src


def render(results: dict, root: str | Path) -> str:
    root = Path(root)
    study = results.get("study") or {}
    data = results.get("data", {})
    title = study.get("name") or (results["experiments"][0]["name"] if results["experiments"] else root.name)
    view: dict = {
        "title": title,
        "subtitle": (study.get("description") or "").strip() + f"  Report written {results['created']}.",
        "answers": [],
        "experiments": [],
        "study_text": study.get("text"),
    }
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
                "meaning": MEANINGS.get(k, ""),
                "example": (au["examples"].get(k) or [{}])[0].get("detail", ""),
            }
            for k, n in sorted(au["problem_counts"].items(), key=lambda kv: -kv[1])
        ]
        thumbs = {k: _img(root, rel) for k, rel in au.get("thumbnails", {}).items()}
        dv["thumbs"] = [{"kind": k, "src": src} for k, src in thumbs.items() if src]
    if data.get("planted_problems"):
        dv["planted"] = ", ".join(f"{k} {n}" for k, n in data["planted_problems"].items())
    pr = data.get("prepared")
    if pr:
        dv["class_chart"] = _class_chart(pr["class_counts"])
        dv["dropped"] = sorted(pr["excluded_by_reason"].items(), key=lambda kv: -kv[1])
    view["data"] = dv
    toc = []
    comparison = []
    for e in results["experiments"]:
        ev, answers = _experiment_view(root, e)
        view["experiments"].append(ev)
        view["answers"] += answers
        run = e.get("run") or {}
        m = (run.get("evaluation") or {}).get("all")
        if m:
            lf = run["evaluation"].get("leak_free", {})
            comparison.append(
                {
                    "name": e["name"],
                    "model": (run.get("model") or {}).get("name", "?"),
                    "classes": len(run.get("classes") or []),
                    "n": m["n"],
                    "acc": _pct(m["accuracy"]) + _ci(m, "accuracy"),
                    "f1": _pct(m["macro"]["f1"]) + _ci(m, "macro_f1"),
                    "leak_free": _pct(lf["accuracy"]) if "accuracy" in lf else "–",
                    "seconds": f"{run['train_seconds']:.0f} s" if run.get("train_seconds") else "–",
                }
            )
    view["comparison"] = comparison if len(comparison) > 1 else []
    if view["answers"]:
        toc.append({"id": "answers", "label": "Answers"})
    if dv:
        toc.append({"id": "data", "label": "Data"})
        if dv.get("audit_rows"):
            toc.append({"id": "audit", "label": "Audit", "sub": True})
        if dv.get("class_chart"):
            toc.append({"id": "classes", "label": "Classes", "sub": True})
    if view["comparison"]:
        toc.append({"id": "comparison", "label": "Side by side"})
    for ev in view["experiments"]:
        toc.append({"id": f"exp-{ev['name']}", "label": f"Experiment {ev['name']}"})
        for key, label in (
            ("split_rows", "Split"),
            ("training", "Training"),
            ("evaluation", "Evaluation"),
            ("explain", "Explanations"),
            ("masking", "Masking"),
            ("unseen", "Unseen class"),
            ("features", "Features"),
        ):
            if ev.get(key):
                anchor = {
                    "split_rows": "split",
                    "training": "train",
                    "evaluation": "eval",
                    "masking": "mask",
                }.get(key, key)
                toc.append({"id": f"{anchor}-{ev['name']}", "label": label, "sub": True})
    toc.append({"id": "provenance", "label": "Provenance"})
    view["toc"] = toc
    prov = results.get("provenance", {})
    rows = [["camscope", prov.get("versions", {}).get("camscope")]]
    rows += [[k, val] for k, val in prov.get("versions", {}).items() if k != "camscope"]
    rows += [[f"machine: {k}", val] for k, val in prov.get("machine", {}).items()]
    rows += [[f"seed: {k}", val] for k, val in (prov.get("seeds") or {}).items()]
    rows += [[f"data hash: {k}", val] for k, val in prov.get("dataset_hashes", {}).items()]
    if pr:
        rows.append(["prepared dataset hash", pr["dataset_hash"]])
        rows.append(["preprocessing", json.dumps(pr["preprocessing"])])
    view["provenance"] = rows
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


def write_report(results: dict, root: str | Path) -> Path:
    root = Path(root)
    write_results(results, root)
    path = root / "report.html"
    atomic_write_text(path, render(results, root))
    return path
