"""`camscope unseen RUN --classes C`: a trained run faced with images of classes it never saw."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from camscope.errors import CamscopeError
from camscope.explain.engine import saliency_maps
from camscope.explain.overlay import overlay
from camscope.figures import grid, save_png
from camscope.models.inference import logits_and_features
from camscope.probes.unseen import (
    SCORES,
    auroc_and_fpr95,
    fit_reference,
    label_consistency,
    scores,
)
from camscope.runs import Run
from camscope.utils import atomic_write_text


def unseen_images(run: Run, classes: list[str] | None) -> tuple[torch.Tensor, list[str], list[str]]:
    """uint8 images (run's channels), their true class names and ids, for classes outside the model."""
    ds = run.dataset()
    known = set(run.classes)
    wanted = set(classes) if classes else {c for c in ds.classes if c not in known}
    bad = wanted & known
    if bad:
        raise CamscopeError(
            f"{', '.join(sorted(bad))} were seen in training", "name classes the model never saw"
        )
    missing = wanted - set(ds.classes)
    if missing:
        raise CamscopeError(
            f"no class {', '.join(sorted(missing))} in the prepared dataset",
            f"its classes: {', '.join(ds.classes)}",
        )
    idx = [i for i, lab in enumerate(ds.labels.tolist()) if lab >= 0 and ds.classes[lab] in wanted]
    if not idx:
        raise CamscopeError("no images of an unseen class", "prepare the dataset with those classes in it")
    t = torch.tensor(idx)
    return (
        ds.rows(t, run.channels),
        [ds.classes[int(ds.labels[i])] for i in idx],
        [ds.ids[i] for i in idx],
    )


def unseen_run(
    run: Run,
    *,
    classes: list[str] | None = None,
    max_train: int = 10000,
    gallery: int = 24,
    seed: int = 0,
    out: str | Path | None = None,
) -> dict:
    """What the model says about images of ``classes`` it never saw (default: every class of the
    dataset outside the model), and how well OOD scores tell them from the test set; in ``out``
    (default RUN/probes/unseen)."""
    out = run.out("probes/unseen", out)
    model, prep, device, head, names = run.model, run.prep, run.device, run.head, run.classes
    u_images, u_true, u_ids = unseen_images(run, classes)
    in_images, _, _ = run.split_tensors("test")
    tr_images, tr_labels, _ = run.split_tensors("train")
    if len(tr_images) > max_train:
        pick = torch.randperm(len(tr_images), generator=torch.Generator().manual_seed(seed))[:max_train]
        tr_images, tr_labels = tr_images[pick], tr_labels[pick]
    u_logits, u_feats = logits_and_features(model, u_images, prep, head, device=device)
    i_logits, i_feats = logits_and_features(model, in_images, prep, head, device=device)
    _, t_feats = logits_and_features(model, tr_images, prep, head, device=device)
    ref = fit_reference(t_feats, tr_labels, len(names))
    s_in, s_out = scores(i_logits, i_feats, ref), scores(u_logits, u_feats, ref)
    separation = {}
    for name in SCORES:
        auroc, fpr = auroc_and_fpr95(s_in[name].numpy(), s_out[name].numpy())
        separation[name] = {"auroc": auroc, "fpr_at_95_tpr": fpr}
    probs = u_logits.softmax(1)
    conf, pred = probs.max(1)
    dist = Counter(names[int(p)] for p in pred)
    by_true: dict[str, Counter] = {}
    for t, p in zip(u_true, pred.tolist(), strict=True):
        by_true.setdefault(t, Counter())[names[p]] += 1
    result = {
        "unseen_classes": sorted(set(u_true)),
        "n_unseen": len(u_ids),
        "n_in_distribution_test": len(in_images),
        "label_distribution": {n: dist.get(n, 0) for n in names},
        "label_distribution_by_class": {t: dict(c) for t, c in by_true.items()},
        "mean_confidence_unseen": float(conf.mean()),
        "mean_confidence_in_distribution": float(i_logits.softmax(1).max(1).values.mean()),
        "consistency": label_consistency(model, u_images, prep, device=device),
        "separation": separation,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "unseen.json", json.dumps(result, indent=1))
    _write_predictions(out / "unseen_predictions.csv", u_ids, u_true, names, pred, conf, s_out)
    _figures(out, conf.numpy(), i_logits.softmax(1).max(1).values.numpy(), s_in, s_out, separation)
    k = min(gallery, len(u_ids))
    order = conf.argsort(descending=True)[:k]
    maps = saliency_maps(model, prep(u_images[order].to(device)), "gradcam", pred[order])
    caps = [f"{u_true[int(i)]}\nsaid {names[int(pred[i])]} {float(conf[i]):.2f}" for i in order]
    tiles = overlay(u_images[order], maps.cpu())
    save_png(grid(tiles, caps, cols=8, scale=max(1, 96 // tiles.shape[-2])), out / "gradcam_unseen.png")
    return {**result, "out": str(out)}


def _write_predictions(path: Path, ids, true, names, pred, conf, s_out) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "true_class", "predicted", "confidence", *SCORES])
    for i, uid in enumerate(ids):
        w.writerow(
            [
                uid,
                true[i],
                names[int(pred[i])],
                f"{float(conf[i]):.6f}",
                *(f"{float(s_out[n][i]):.6f}" for n in SCORES),
            ]
        )
    atomic_write_text(path, buf.getvalue())


def _figures(out: Path, conf_u, conf_in, s_in, s_out, separation) -> None:
    from camscope.figures import pyplot

    plt = pyplot()
    from sklearn.metrics import roc_curve

    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.linspace(0, 1, 21)
    ax.hist(conf_in, bins, alpha=0.6, density=True, label="in-distribution test")
    ax.hist(conf_u, bins, alpha=0.6, density=True, label="unseen class")
    ax.set(xlabel="confidence of the predicted label", ylabel="density", title="how sure is the model?")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "confidence_hist.png", dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name in SCORES:
        y = np.r_[np.ones(len(s_in[name])), np.zeros(len(s_out[name]))]
        fpr, tpr, _ = roc_curve(y, np.r_[s_in[name].numpy(), s_out[name].numpy()])
        ax.plot(fpr, tpr, label=f"{name} (AUROC {separation[name]['auroc']:.3f})")
    ax.plot([0, 1], [0, 1], "k:")
    ax.set(
        xlabel="unseen images accepted",
        ylabel="in-distribution images accepted",
        title="separating the unseen class",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)
