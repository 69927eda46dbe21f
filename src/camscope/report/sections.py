"""The report's view of one experiment: one function per section, each returning what the
template shows and the answers the section gives for the summary at the top."""

from __future__ import annotations

from pathlib import Path

from camscope.report.embed import ci, fig, fig_png, figs, pct


def experiment_view(root: Path, e: dict) -> tuple[dict, list[dict]]:
    """The template's view of one experiment, and its answers for the summary."""
    v: dict = {"name": e["name"], "description": e.get("description", ""), **_split(e.get("split"))}
    answers: list[dict] = []
    run = e.get("run")
    if not run:
        return v, answers
    v["training"] = _training(root, run)
    v.update(_selection(e.get("selection"), e.get("candidate_curves", {}), v["training"]))
    for key, section in (
        ("evaluation", _evaluation),
        ("explain", _explain),
        ("masking", _masking),
        ("unseen", _unseen),
        ("features", _features),
    ):
        view, said = section(root, e["name"], run)
        if view is not None:
            v[key] = view
        answers += said
    return v, answers


def _split(sp: dict | None) -> dict:
    if not sp or "counts" not in sp:
        return {}
    v: dict = {}
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
    return v


def model_label(run: dict) -> str:
    """The model's name, and how a pretrained one was trained (probe or fine-tune, joined or per side)."""
    name = (run.get("model") or {}).get("name", "?")
    cfg = run.get("config") or {}
    if not run.get("weights"):
        return name
    mode = {"probe": "linear probe", "head": "head only", "head_then_full": "head, then all"}.get(
        cfg.get("finetune"), "fine-tuned"
    )
    return f"{name} ({mode}" + (", each side on its own)" if cfg.get("two_sided") == "per_side" else ")")


def weights_label(w: dict | None) -> str:
    """Where pretrained weights came from, with the hash of the file read."""
    if not w:
        return "none (from scratch)"
    where = {
        "package": f"ImageNet, {w.get('package')} {w.get('version', '')}".strip(),
        "timm": f"ImageNet, timm {w.get('hf_hub_id') or w.get('url')}",
        "torchvision": f"ImageNet, torchvision {w.get('weights', '')}".strip(),
        "file": f"file {Path(str(w.get('file'))).name}",
    }.get(w.get("source"), str(w.get("source")))
    return where + (f" (sha256 {w['sha256'][:12]}…)" if w.get("sha256") else "")


def _training(root: Path, run: dict) -> dict:
    model = model_label(run)
    hist = run.get("history") or []
    best = run.get("best") or {}
    secs = run.get("train_seconds")
    line = (
        f"{model} on {run.get('n_train')} training and {run.get('n_val')} validation images; {len(hist)} epochs"
        + (f" in {secs:.0f} s" if secs else "")
    )
    if best.get("value") is not None:
        line += f"; best {best.get('metric')} {best.get('value'):.4f} at epoch {best.get('epoch')}"
    if run.get("weights"):
        line += f"; pretrained weights: {weights_label(run['weights'])}"
    caption = "Learning curves: loss and accuracy per epoch, training and validation."
    return {
        "line": line,
        "figures": figs(fig(root, run.get("figures", {}).get("learning_curve"), caption, "learning curve")),
    }


def _selection(sel: dict | None, curves: dict, training: dict) -> dict:
    """The candidates of a search, and the chart of their validation curves (added to training's)."""
    if not sel or len(sel.get("candidates", [])) <= 1:
        return {}
    v = {
        "monitor": sel["monitor"],
        "selection_rule": f"Selection: {sel['rule']}. Only the selected candidate is scored on the test split.",
        "candidates": [
            {
                "name": c["name"],
                "settings": ", ".join(f"{k}={val}" for k, val in c["overrides"].items() if k != "name")
                or "recipe defaults",
                "value": "–" if c["value"] is None else f"{c['value']:.4f}",
                "epoch": c.get("best_epoch"),
                "seconds": f"{c.get('train_seconds', 0):.0f}",
                "selected": c["name"] == sel["selected"],
            }
            for c in sel["candidates"]
        ],
    }
    chart = _candidate_chart(curves, sel)
    if chart:
        training["figures"].append(
            {
                "src": chart,
                "alt": "candidates",
                "caption": f"Validation {sel['monitor']} per epoch for each candidate; the selected one is drawn thick.",
            }
        )
    return v


def _evaluation(root: Path, name: str, run: dict) -> tuple[dict | None, list[dict]]:
    ev = run.get("evaluation")
    if not ev:
        return None, []
    a, lf = ev["all"], ev.get("leak_free", {})
    cols = ["all test items"]
    has_lf = "accuracy" in lf and lf.get("n_excluded_with_duplicate_in_train", 0) > 0
    if has_lf:
        cols.append(f"leak-free (−{lf['n_excluded_with_duplicate_in_train']})")
    ms = [a] + ([lf] if has_lf else [])
    li = ev.get("without_label_issues", {})
    if "accuracy" in li:
        cols.append(f"without label issues (−{li['n_excluded_flagged']})")
        ms.append(li)
    rows = [
        ["items", *(m["n"] for m in ms)],
        ["accuracy (95% CI)", *(pct(m["accuracy"]) + ci(m, "accuracy") for m in ms)],
        ["macro F1 (95% CI)", *(pct(m["macro"]["f1"]) + ci(m, "macro_f1") for m in ms)],
        ["macro precision", *(pct(m["macro"]["precision"]) for m in ms)],
        ["macro recall", *(pct(m["macro"]["recall"]) for m in ms)],
        ["weighted F1", *(pct(m["weighted"]["f1"]) for m in ms)],
        ["expected calibration error", *(f"{m['ece']:.3f}" for m in ms)],
    ]
    for k, val in (a.get("top_k_accuracy") or {}).items():
        rows.append([f"{k.replace('top', 'top-')} accuracy", pct(val), *([""] * (len(ms) - 1))])
    f = run.get("figures", {})
    view = {
        "columns": cols,
        "rows": rows,
        "per_class": [
            [r["class"], pct(r["precision"]), pct(r["recall"]), pct(r["f1"]), r["support"]]
            for r in a["per_class"]
        ],
        "confused": ", ".join(
            f"{d['true']} → {d['predicted']} ({d['count']})" for d in a["most_confused"][:5]
        ),
        "figures": figs(
            fig(
                root,
                f.get("confusion"),
                "Confusion matrix: counts and row-normalised (each row is a true class).",
                "confusion matrix",
            ),
            fig(
                root,
                f.get("reliability"),
                "Calibration: mean confidence against accuracy per confidence bin; the diagonal is perfect calibration.",
                "reliability diagram",
            ),
            fig(
                root,
                f.get("misclassified"),
                "The test images the model got wrong with the highest loss: true label, prediction and confidence.",
                "misclassified gallery",
            ),
        ),
    }
    model = model_label(run)
    answer = (
        f"{model} reaches {pct(a['accuracy'])}{ci(a, 'accuracy')} test accuracy and macro-F1 "
        f"{pct(a['macro']['f1'])}{ci(a, 'macro_f1')} on {a['n']} test images"
    )
    if has_lf:
        answer += f"; {pct(lf['accuracy'])} on the {lf['n']} without a near-duplicate in training"
    if a["most_confused"]:
        answer += f"; most confused: {a['most_confused'][0]['true']} → {a['most_confused'][0]['predicted']}"
    return view, [{"q": f"How well are the classes separated? ({name})", "a": answer + "."}]


def _explain(root: Path, name: str, run: dict) -> tuple[dict | None, list[dict]]:
    galleries = run.get("galleries", [])
    faith = run.get("faithfulness")
    if not (galleries or faith):
        return None, []
    ex: dict = {"figures": []}
    for g in galleries:
        method, cls, group = g["method"], g["class"], g["group"]
        caption = (
            f"{method}: class {cls}, {'correct' if group == 'correct' else 'wrong'} predictions, most confident first "
            "(heat map: where the evidence for the predicted class lies)."
        )
        ex["figures"] += figs(fig(root, g["file"], caption, f"{method} {cls} {group}"))
    if not faith:
        return ex, []
    ex.update(_faithfulness_table(faith))
    return ex, _faithfulness_answer(name, faith)


def _faithfulness_table(faith: dict) -> dict:
    region = faith.get("has_evidence_regions")
    cols = ["method", "deletion AUC ↓", "insertion AUC ↑", "average drop ↓", "increase ↑"]
    rows = [
        [
            r["method"],
            f"{r['deletion_auc']:.3f}",
            f"{r['insertion_auc']:.3f}",
            f"{r['average_drop_pct']:.1f}%",
            f"{r['increase_pct']:.1f}%",
            *([pct(r["pointing_game"]), pct(r["energy_inside"])] if region else []),
        ]
        for r in faith["methods"]
    ]
    note = (
        f"On {faith['n']} test images, target: the predicted class. 'random' is smooth noise at about the CAM's resolution: a method "
        "is only informative where it beats it."
    )
    if region:
        note += (
            f" The evidence regions cover {pct(faith['region_area_share'])} of the image: a map blind to the image "
            "would put that share of its energy inside them."
        )
    return {
        "faith_cols": cols + (["pointing game ↑", "energy inside evidence ↑"] if region else []),
        "faith_rows": rows,
        "faith_note": note,
    }


def _faithfulness_answer(name: str, faith: dict) -> list[dict]:
    rows = faith["methods"]
    real = [r for r in rows if r["method"] != "random"]
    rnd = next((r for r in rows if r["method"] == "random"), None)
    if not (real and rnd):
        return []
    r0 = real[0]
    text = (
        f"{r0['method']}: insertion AUC {r0['insertion_auc']:.3f} vs {rnd['insertion_auc']:.3f} for a random map, "
        f"deletion AUC {r0['deletion_auc']:.3f} vs {rnd['deletion_auc']:.3f}"
    )
    if faith.get("has_evidence_regions"):
        text += (
            f"; {pct(r0['energy_inside'])} of its energy lies on the known evidence "
            f"(chance {pct(faith['region_area_share'])}), pointing game {pct(r0['pointing_game'])}"
        )
    return [{"q": f"Where does the model look? ({name})", "a": text + "."}]


def _masking(root: Path, name: str, run: dict) -> tuple[dict | None, list[dict]]:
    from camscope.probes.mask_run import masking_table

    mk = run.get("masking")
    if not mk:
        return None, []
    modes, table = masking_table(mk["overall"], mk.get("cam", []))
    cols = ["mask size (share of radius)"]
    for m in modes:
        cols += [f"accuracy, {m} hidden", f"CAM energy on visible part, {m}"]
    rows = [
        [f"{r['size']:.2f}", *(pct(r[k][m]) for m in modes for k in ("accuracy", "visible_energy_share"))]
        for r in table
    ]
    verdict = mk["answer"].get("verdict", "")
    f = run.get("figures", {})
    view = {
        "verdict": verdict,
        "cols": cols,
        "rows": rows,
        "figures": figs(
            fig(
                root,
                f.get("masking_curves"),
                f"Accuracy, macro-F1 and confidence as a growing centre disk or outer ring is hidden ({mk['fill']} fill), overall and per class.",
                "masking curves",
            ),
            fig(
                root,
                f.get("cam_shift"),
                "The same test images at growing mask sizes, with their Grad-CAM: how the evidence moves when part of the object is hidden.",
                "CAM shift",
            ),
        ),
    }
    if not verdict:
        return view, []
    q = f"Does the model rely on the centre or on the rim? ({name})"
    return view, [{"q": q, "a": verdict[0].upper() + verdict[1:] + "."}]


UNSEEN_CAPTIONS = {
    "confidence": "Confidence of the unseen images against the test images of known classes.",
    "roc": "ROC curve of each out-of-distribution score: unseen images against the test images of known classes.",
    "gradcam_unseen": "Grad-CAM of the unseen images for the label they were given, most confident first.",
}


def _unseen(root: Path, name: str, run: dict) -> tuple[dict | None, list[dict]]:
    un = run.get("unseen")
    if not un:
        return None, []
    dist = ", ".join(f"{k}: {n}" for k, n in un["label_distribution"].items())
    best_score = max(un["separation"].items(), key=lambda kv: kv[1]["auroc"])
    line = (
        f"{un['n_unseen']} images of {', '.join(un['unseen_classes'])}, which the model never saw, were labelled {dist}. "
        f"Mean confidence {un['mean_confidence_unseen']:.2f} (known classes: {un['mean_confidence_in_distribution']:.2f}); "
        f"{pct(un['consistency']['keeps_label_under_flip'])} keep their label under a flip, "
        f"{pct(un['consistency']['keeps_label_under_2px_shifts'])} under 2-pixel shifts."
    )
    figures = []
    for rel in run.get("unseen_figures", []):
        stem = Path(rel).stem
        cap = next((c for k, c in UNSEEN_CAPTIONS.items() if k in stem), "Unseen-class figure.")
        figures += figs(fig(root, rel, cap, stem))
    view = {
        "line": line,
        "rows": [[k, f"{s['auroc']:.3f}", f"{s['fpr_at_95_tpr']:.3f}"] for k, s in un["separation"].items()],
        "figures": figures,
    }
    answer = line + f" The best score to flag it is {best_score[0]} (AUROC {best_score[1]['auroc']:.3f})."
    return view, [{"q": f"Where does the class it never saw land? ({name})", "a": answer}]


def _features(root: Path, name: str, run: dict) -> tuple[dict | None, list[dict]]:
    ft = run.get("features")
    if not ft:
        return None, []
    p = ft["probes"]
    line = f"{ft['n']} items, {ft['dim']} penultimate features; projections: {', '.join(ft['projections'])}."
    if "linear_probe_accuracy" in p:
        line += f" A linear probe on them scores {pct(p['linear_probe_accuracy'])} and 5-NN {pct(p['knn5_accuracy'])} on the test items."
    caption = "2-D projections of the penultimate features, coloured by class; classes the model never saw are highlighted."
    return {
        "line": line,
        "figures": figs(fig(root, run.get("figures", {}).get("projections"), caption, "projections")),
    }, []


def _candidate_chart(curves: dict, sel: dict) -> str | None:
    key = sel["monitor"]
    if not curves or not any(any(r.get(key) is not None for r in h) for h in curves.values()):
        return None
    from camscope.figures import pyplot

    plt = pyplot()
    figure, ax = plt.subplots(figsize=(6, 3.2))
    for cand, hist in curves.items():
        pts = [(r["epoch"], r[key]) for r in hist if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), lw=3 if cand == sel["selected"] else 1, label=cand)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} (validation)")
    ax.legend(fontsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    src = fig_png(figure)
    plt.close(figure)
    return src
