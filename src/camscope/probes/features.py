"""`camscope features RUN`: the penultimate-layer embeddings of every item, 2-D projections
coloured by class (unseen classes highlighted), and linear-probe and kNN accuracy on them.

Embeddings come from a trained run, or from a torchvision backbone with local weights (its
classifier head is dropped)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from camscope.errors import CamscopeError
from camscope.models.inference import logits_and_features
from camscope.runs import Run
from camscope.utils import atomic_write_bytes, atomic_write_text


def extract(run: Run, batch: int = 256) -> dict:
    """Features of every labelled item: (N, D) float32, with ids, class names and splits."""
    ds = run.dataset()
    split = run.split()
    keep = [i for i, lab in enumerate(ds.labels.tolist()) if lab >= 0]
    idx = torch.tensor(keep)
    images = ds.rows(idx, run.channels)
    _, feats = logits_and_features(run.model, images, run.prep, run.head, batch, run.device)
    return {
        "features": feats.numpy().astype(np.float32),
        "ids": [ds.ids[i] for i in keep],
        "labels": [ds.classes[int(ds.labels[i])] for i in keep],
        "splits": [split.get(ds.ids[i], "") for i in keep],
        "model_classes": run.classes,
    }


def probe_accuracy(feats: np.ndarray, labels: list[str], splits: list[str], known: set[str]) -> dict:
    """Linear probe (logistic regression) and 5-NN accuracy: fit on train, score on test."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    lab = np.array(labels)
    sp = np.array(splits)
    tr = (sp == "train") & np.isin(lab, list(known))
    te = (sp == "test") & np.isin(lab, list(known))
    if tr.sum() < 2 or te.sum() < 1 or len(set(lab[tr])) < 2:
        return {"note": "needs train and test items of at least two classes"}
    scaler = StandardScaler().fit(feats[tr])
    xtr, xte = scaler.transform(feats[tr]), scaler.transform(feats[te])
    lin = LogisticRegression(max_iter=2000).fit(xtr, lab[tr])
    knn = KNeighborsClassifier(n_neighbors=min(5, int(tr.sum()))).fit(xtr, lab[tr])
    return {
        "linear_probe_accuracy": float((lin.predict(xte) == lab[te]).mean()),
        "knn5_accuracy": float((knn.predict(xte) == lab[te]).mean()),
        "n_train": int(tr.sum()),
        "n_test": int(te.sum()),
    }


def project(
    feats: np.ndarray,
    methods: tuple[str, ...] = ("pca", "tsne", "umap"),
    seed: int = 0,
    max_points: int = 5000,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """2-D coordinates per method (on at most ``max_points`` items, drawn with a seed)."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(feats), min(max_points, len(feats)), replace=False))
    x = feats[pick]
    out = {}
    if "pca" in methods:
        out["pca"] = (pick, PCA(2, random_state=seed).fit_transform(x))
    if "tsne" in methods and len(x) > 5:
        from sklearn.manifold import TSNE

        out["tsne"] = (
            pick,
            TSNE(2, perplexity=min(30, max(2, len(x) // 4)), random_state=seed, init="pca").fit_transform(x),
        )
    if "umap" in methods:
        try:
            import umap

            out["umap"] = (pick, umap.UMAP(random_state=seed).fit_transform(x))
        except ImportError:
            pass
    return out


def features_run(
    run: Run,
    *,
    projections: tuple[str, ...] = ("pca", "tsne", "umap"),
    out: str | Path | None = None,
) -> dict:
    """Penultimate-layer features of every labelled item, their 2-D ``projections`` and linear-probe
    and kNN accuracy; in ``out`` (default RUN/probes/features; a backbone needs ``out``)."""
    if out is None and run.dir is None:
        raise CamscopeError("--out is needed when no run is given", "add --out DIR for the features")
    out = run.out("probes/features", out)
    f = extract(run)
    known = set(f["model_classes"] or f["labels"])
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, f["features"])
    atomic_write_bytes(out / "features.npy", buf.getvalue())
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["row", "id", "label", "split", "seen_in_training"])
    for i, (uid, lab, sp) in enumerate(zip(f["ids"], f["labels"], f["splits"], strict=True)):
        w.writerow([i, uid, lab, sp, int(lab in known)])
    atomic_write_text(out / "features.csv", text.getvalue())
    probes = probe_accuracy(f["features"], f["labels"], f["splits"], known)
    proj = project(f["features"], projections)
    _plot(out / "projections.png", proj, f["labels"], known)
    result = {
        "n": len(f["ids"]),
        "dim": int(f["features"].shape[1]),
        "probes": probes,
        "projections": sorted(proj),
        "source": str(run.dir) if run.dir is not None else run.meta.get("source", run.meta["model"]["name"]),
    }
    atomic_write_text(out / "features.json", json.dumps(result, indent=1))
    return {**result, "out": str(out)}


def _plot(path: Path, proj: dict, labels: list[str], known: set[str]) -> None:
    from camscope.figures import pyplot

    plt = pyplot()

    if not proj:
        return
    fig, axes = plt.subplots(1, len(proj), figsize=(5.2 * len(proj), 4.6), squeeze=False)
    lab = np.array(labels)
    classes = sorted(set(labels), key=lambda c: (c not in known, c))
    for ax, (name, (pick, xy)) in zip(axes[0], sorted(proj.items()), strict=True):
        for ci, c in enumerate(classes):
            sel = lab[pick] == c
            unseen = c not in known
            ax.scatter(
                xy[sel, 0],
                xy[sel, 1],
                s=14 if unseen else 5,
                marker="x" if unseen else "o",
                color="black" if unseen and len(classes) - len(known) == 1 else f"C{ci % 10}",
                alpha=0.9 if unseen else 0.5,
                label=f"{c} (unseen)" if unseen else c,
            )
        ax.set(title=name.upper(), xticks=[], yticks=[])
    axes[0][-1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
