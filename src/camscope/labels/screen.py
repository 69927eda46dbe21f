"""`camscope label-issues PREPARED --out DIR`: every labelled item scored by a model that never
saw it, and the items whose label is probably wrong.

Out-of-fold probabilities come from a frozen pretrained backbone (features computed once) and a
logistic-regression head fitted K times, once per fold. The folds are stratified by class and
grouped by duplicate groups (the audit's exact and near duplicates, and items naming one file),
so a copy never scores its twin. That model is cheap enough to repeat K times on a CPU; a
short from-scratch schedule K times would cost K trainings. The features and each finished
fold are saved in the output folder, so a killed screen resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from camscope.data.prepare import dataset_hash, images_digest, load_prepared
from camscope.data.splits import duplicate_groups
from camscope.errors import CamscopeError
from camscope.folders import run_folder
from camscope.labels.cams import folded_head, suspect_cams, with_head
from camscope.labels.confident import SCORES, find_issues, quality, suggested
from camscope.labels.trained import FROZEN, fold_config, fold_models, trained_out_of_fold
from camscope.probes.features import extract
from camscope.progress import make_progress
from camscope.runs import DEFAULT_BACKBONE, default_split, open_backbone
from camscope.utils import atomic_write_bytes, atomic_write_text, write_rows_csv


@dataclass
class ScreenConfig:
    folds: int = 5
    # frozen: the backbone's features and a logistic head per fold; else a camscope model (e.g.
    # fastnet) trained per fold with its recipe, ``epochs`` and the TrainConfig options in ``train``
    model: str = FROZEN
    epochs: float | None = None
    train: dict = field(default_factory=dict)
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = "imagenet"
    score: str = "normalized_margin"
    C: float = 0.1  # the head's inverse regularisation on standardised features
    # ImageNet features of a 16- or 32-px image are noise; the backbone sees the image enlarged so
    # that its short side has at least this many pixels (batch by batch, nothing is stored bigger)
    min_side: int = 96
    seed: int = 0
    device: str = "cpu"
    cams: int = 12  # the most suspect items shown with CAMs for the given and the suggested label

    def validate(self) -> None:
        if self.folds < 2:
            raise CamscopeError(
                f"--folds must be at least 2, not {self.folds}", "pass --folds 5 (the default)"
            )
        if self.score not in SCORES:
            raise CamscopeError(f"unknown score {self.score!r}", f"use one of {', '.join(SCORES)}")
        if not self.C > 0:
            raise CamscopeError(
                f"C must be positive, not {self.C}", "0.1 is the default; larger fits the head closer"
            )
        if self.min_side < 1:
            raise CamscopeError(
                f"--min-side must be positive, not {self.min_side}",
                "96 suits ImageNet backbones on small images",
            )
        if self.model != FROZEN:
            fold_config(self, 0)  # bad training options are refused before any work
        elif self.epochs is not None or self.train:
            raise CamscopeError(
                "epochs and training options apply to a model trained per fold, not the frozen backbone",
                "add --model fastnet (or another camscope model), or drop them",
            )


def fold_of(labels: np.ndarray, groups: list[list[int]], folds: int, seed: int) -> np.ndarray:
    """Each item's fold: stratified by class, a duplicate group always in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    group = np.arange(len(labels))
    for g, members in enumerate(groups):
        group[members] = len(labels) + g
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    if smallest < folds:
        raise CamscopeError(
            f"a class has {smallest} labelled item(s), fewer than the {folds} folds",
            "pass fewer --folds, or leave that class out of the prepared dataset",
        )
    out = np.empty(len(labels), dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(cv.split(np.zeros(len(labels)), labels, group)):
        out[held] = f
    return out


def fold_fit(
    feats: np.ndarray, labels: np.ndarray, held: np.ndarray, k: int, c: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The held-out items' probabilities, and the head as one linear layer on the raw features
    ((K, D) weight, (K,) bias; labels/cams.py explains with it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(feats[~held])
    head = LogisticRegression(C=c, max_iter=2000).fit(scaler.transform(feats[~held]), labels[~held])
    probs = np.zeros((int(held.sum()), k))
    probs[:, head.classes_] = head.predict_proba(scaler.transform(feats[held]))
    return (probs, *folded_head(head, scaler, k))


class _Enlarged:
    """The run's preprocessing, then a bilinear enlargement to the backbone's working size."""

    def __init__(self, prep, scale: float):
        self.prep, self.scale = prep, scale

    def __call__(self, x, dtype=None):
        import torch.nn.functional as F

        y = self.prep(x) if dtype is None else self.prep(x, dtype)
        return F.interpolate(y, scale_factor=self.scale, mode="bilinear", align_corners=False)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_npy(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _features(run, out: Path, key: str) -> dict:
    """The backbone's features of every labelled item, cached in the output folder. The cache is
    keyed by the pixels, not the labels: relabelled copies of a dataset reuse it."""
    ds, split = run.dataset(), run.split()
    cache = out / "features.npz"
    labelled = (ds.labels >= 0).numpy()
    digest = images_digest(ds.images)
    digest.update(json.dumps([key, ds.ids, labelled.tolist()]).encode())
    key = digest.hexdigest()
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                feats, ids = z["features"], z["ids"].tolist()
                names = {i: ds.classes[int(lab)] for i, lab in zip(ds.ids, ds.labels.tolist(), strict=True)}
                return {
                    "features": feats,
                    "ids": ids,
                    "labels": [names[i] for i in ids],
                    "splits": [split.get(i, "") for i in ids],
                }
    got = extract(run)
    _save_npy(cache, key=key, features=got["features"], ids=np.asarray(got["ids"]))
    return got


def _out_of_fold(feats, y, folds, k, config: ScreenConfig, out: Path, key: str) -> tuple[np.ndarray, dict]:
    """Every item's out-of-fold probabilities, and each fold's head (weight, bias) as saved."""
    probs = np.zeros((len(y), k))
    heads: dict[int, tuple] = {}
    (out / "folds").mkdir(exist_ok=True)
    with make_progress() as progress:
        task = progress.add_task("label issues: folds", total=config.folds)
        for f in range(config.folds):
            held = folds == f
            saved = out / "folds" / f"fold{f}-{key}.npz"
            if saved.is_file():
                with np.load(saved, allow_pickle=False) as z:
                    probs[held] = z["probs"]
                    if "weight" in z:
                        heads[f] = (z["weight"], z["bias"])
            else:
                probs[held], weight, bias = fold_fit(feats, y, held, k, config.C)
                heads[f] = (weight, bias)
                _save_npy(saved, probs=probs[held], weight=weight, bias=bias)
            progress.advance(task)
    return probs, heads


def screen(
    prepared: str | Path, out: str | Path, config: ScreenConfig | None = None, audit: dict | None = None
) -> dict:
    """Score every labelled item out of fold, flag the probable label issues, write them to ``out``."""
    config = config or ScreenConfig()
    config.validate()
    t0 = time.perf_counter()
    with run_folder(out, "labels") as folder:
        run, ds, key, got, source = _open(prepared, config, folder)
        feats, ids, names = np.asarray(got["features"], dtype=np.float64), list(got["ids"]), got["labels"]
        # a class with fewer items than folds cannot be held out and learnt at once: not screened
        counts = {c: names.count(c) for c in set(names)}
        too_few = sorted(c for c, n in counts.items() if n < config.folds)
        keep = np.array([counts[c] >= config.folds for c in names], dtype=bool)
        feats, ids, names = (
            feats[keep],
            [i for i, k in zip(ids, keep, strict=True) if k],
            [c for c, k in zip(names, keep, strict=True) if k],
        )
        splits = [s for s, k in zip(got["splits"], keep, strict=True) if k]
        classes = [c for c in ds.classes if c in set(names)]
        if len(classes) < 2:
            raise CamscopeError(
                f"fewer than two classes have {config.folds} or more labelled items",
                "pass fewer --folds, or screen a dataset with more items per class",
            )
        y = np.array([classes.index(lab) for lab in names])
        pos = {i: n for n, i in enumerate(ids)}
        groups = [[pos[i] for i in g if i in pos] for g in duplicate_groups(ds, audit)]
        groups = [g for g in groups if len(g) > 1]
        folds = fold_of(y, groups, config.folds, config.seed)
        # the pixels too: a re-prepared dataset with the same ids and labels is scored afresh
        fold_key = _key(key, dataset_hash(ds), asdict(config), [sorted(g) for g in groups], ids, y.tolist())
        if run is not None:
            probs, heads = _out_of_fold(feats, y, folds, len(classes), config, folder, fold_key)
        else:
            k = len(classes)
            probs = trained_out_of_fold(Path(prepared), ds, ids, folds, k, config, folder, fold_key)
        summary = _write(folder, ids, classes, y, probs, folds, splits, config)
        _suspects_png(folder / "suspects.png", ds, summary["most_suspect"][:24], config.score)
        suspects = summary["most_suspect"][: config.cams]
        if run is not None:
            for f in {int(r["fold"]) for r in suspects} - set(heads):  # folds saved before heads were kept
                heads[f] = fold_fit(feats, y, folds == f, len(classes), config.C)[1:]

            def model_for(f: int, run=run) -> tuple:
                return with_head(run.model, run.head, *heads[f]), run.prep, run.channels
        else:
            model_for = fold_models(folder, fold_key, config.device)
        suspect_cams(ds, suspects, classes, model_for, folder / "suspects_cams.png")
        summary |= {
            "dataset_hash": ds.info.get("dataset_hash"),
            **source,
            "duplicate_groups": len(groups),
            "not_screened": {c: counts[c] for c in too_few},
            "audit_used": audit is not None,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_text(folder / "label_issues.json", json.dumps(summary, indent=1))
    return summary


def _open(prepared, config: ScreenConfig, folder: Path) -> tuple:
    """(backbone run or None, dataset, features key, items, where the probabilities come from)."""
    if config.model == FROZEN:
        run = open_backbone(prepared, config.backbone, config.weights, config.device)
        ds = run.dataset()
        scale = config.min_side / min(ds.images.shape[-2:])
        if scale > 1:
            run.prep = _Enlarged(run.prep, scale)
        key = _key(config.backbone, config.weights, run.meta.get("weights"), max(scale, 1))
        source = {"backbone": run.meta["source"], "weights": run.meta.get("weights")}
        return run, ds, key, _features(run, folder, key), source
    cfg = fold_config(config, 0)  # a model trained per fold: no features, the items themselves
    ds = load_prepared(prepared)
    source = {"backbone": f"{config.model} trained per fold ({cfg.epochs:g} epochs)", "weights": cfg.weights}
    return None, ds, "", _items(ds), source


def _items(ds) -> dict:
    """The labelled items, as ``_features`` gives them, without features (a (N, 0) array)."""
    split = default_split(ds)  # as open_backbone's
    labelled = [n for n, lab in enumerate(ds.labels.tolist()) if lab >= 0]
    ids = [ds.ids[n] for n in labelled]
    return {
        "features": np.zeros((len(ids), 0)),
        "ids": ids,
        "labels": [ds.classes[int(ds.labels[n])] for n in labelled],
        "splits": [split.get(i, "") for i in ids],
    }


def _suspects_png(path: Path, ds, rows: list[dict], score: str) -> None:
    """The most suspect items as a contact sheet: id, given -> suggested label, score."""
    import torch

    from camscope.figures import displayable, grid, save_png

    if not rows:
        return
    pos = {i: n for n, i in enumerate(ds.ids)}
    tiles = displayable(ds.images[torch.tensor([pos[r["id"]] for r in rows])])
    caps = [f"{r['rank']}. {r['id']}\n{r['given']} -> {r['suggested']} ({float(r[score]):.2f})" for r in rows]
    side = max(tiles.shape[-2:])
    save_png(grid(tiles, caps, cols=6, scale=max(1, 128 // side)), path)


def _write(out: Path, ids, classes, y, probs, folds, splits, config: ScreenConfig) -> dict:
    flagged = find_issues(y, probs)
    score = quality(y, probs, config.score)
    other = suggested(y, probs)
    order = np.lexsort((np.arange(len(y)), score))  # most suspect first, stable
    rows = [
        {
            "rank": r + 1,
            "id": ids[i],
            "given": classes[y[i]],
            "suggested": classes[other[i]],
            "flagged": int(flagged[i]),
            config.score: f"{score[i]:.6f}",
            "p_given": f"{probs[i, y[i]]:.6f}",
            "p_suggested": f"{probs[i, other[i]]:.6f}",
            "split": splits[i],
            "fold": int(folds[i]),
        }
        for r, i in enumerate(order)
    ]
    write_rows_csv(out / "label_issues.csv", rows)
    prob_rows = [
        {"id": ids[i], **{c: f"{probs[i, j]:.6f}" for j, c in enumerate(classes)}} for i in range(len(y))
    ]
    write_rows_csv(out / "probabilities.csv", prob_rows)
    per_class = {c: int(flagged[y == j].sum()) for j, c in enumerate(classes)}
    oof_acc = float((probs.argmax(1) == y).mean())
    return {
        "schema": "camscope.label_issues/1",
        "config": asdict(config),
        "n_items": len(y),
        "n_flagged": int(flagged.sum()),
        "flagged_per_class": per_class,
        "out_of_fold_accuracy": oof_acc,
        "most_suspect": rows[:30],
        "flagged_ids": [ids[i] for i in order if flagged[i]],
    }
