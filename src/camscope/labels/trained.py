"""Out-of-fold probabilities from a model trained once per fold (`camscope label-issues --model
fastnet`): better probabilities than a frozen backbone's where a short training run beats it
(CIFAR-10: a few fastnet epochs against lite0's 74%), at the price of K trainings.

Each fold is an ordinary training run in ``OUT/folds/fold<f>-<key>/`` on the items of the other
folds, without a validation set (the schedule is fixed, nothing is chosen on the held-out fold);
its checkpoints make a killed fold resume mid-epoch like any training, and a finished fold's
held-out probabilities are saved beside it, so a killed screen redoes nothing that finished.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from camscope.errors import CamscopeError
from camscope.utils import atomic_write_bytes

FROZEN = "frozen"  # ScreenConfig.model: the frozen backbone and a logistic head, no training


def fold_config(config, fold: int):
    """The TrainConfig of one fold: the model's recipe, the screen's overrides, a seed per fold."""
    from camscope.train.config import make_config

    options = dict(config.train)
    if config.epochs is not None:
        options["epochs"] = config.epochs
    for key in ("model", "seed", "device"):
        if key in options:
            raise CamscopeError(
                f"train option {key!r} is set by the screen itself",
                f"use --{key} of label-issues instead" if key != "model" else "use --model",
            )
    return make_config(config.model, seed=config.seed + fold, device=config.device, **options)


def fold_dir(out: Path, fold: int, key: str) -> Path:
    return out / "folds" / f"fold{fold}-{key}"


def trained_out_of_fold(
    prepared: Path, ds, ids: list[str], folds: np.ndarray, k: int, config, out: Path, key: str
) -> np.ndarray:
    """(N, K) probabilities of the ``ids`` (in the screened classes' order), each from the fold
    model that never saw it."""
    from camscope.train.data import select_data
    from camscope.train.trainer import train

    probs = np.zeros((len(ids), k))
    pos = {i: n for n, i in enumerate(ds.ids)}
    for f in range(config.folds):
        held = folds == f
        run = fold_dir(out, f, key)
        saved = run / "out_of_fold.npz"
        if saved.is_file():
            with np.load(saved, allow_pickle=False) as z:
                probs[held] = z["probs"]
            continue
        if not (run / "best.safetensors").is_file():  # not trained to the end yet
            cfg = fold_config(config, f)
            train_ids = {i: "train" for i, h in zip(ids, held, strict=True) if not h}
            data = select_data(ds, train_ids, cfg.channels)
            if len(data.classes) != k:  # stratified folds leave every screened class in each part
                raise CamscopeError(
                    f"fold {f} trains on {len(data.classes)} of the {k} screened classes",
                    "pass fewer --folds",
                )
            data.dataset_path = str(prepared)
            print(
                f"label issues: fold {f + 1}/{config.folds}: {cfg.model} on {len(data.train_y)} items",
                file=sys.stderr,
            )
            train(cfg, data, run, resume=(run / "last.safetensors").is_file())
        model, prep, channels, tta = open_fold(run, config.device)
        index = torch.tensor([pos[i] for i, h in zip(ids, held, strict=True) if h])
        logits = _predict(model, ds.rows(index, channels), prep, tta, config.device)
        probs[held] = logits.softmax(1).double().numpy()
        buf = io.BytesIO()
        np.savez(buf, probs=probs[held])
        atomic_write_bytes(saved, buf.getvalue())
    return probs


def open_fold(run: Path, device: str):
    """(model, preprocessing, channels, TTA) of a finished fold."""
    from camscope.models.checkpoint import load_model

    model, meta, prep = load_model(run / "best.safetensors", device)
    return model, prep, meta["preprocess"]["channels"], meta["preprocess"].get("tta") or "none"


def _predict(model, images, prep, tta: str, device: str) -> torch.Tensor:
    from camscope.models.inference import predict_logits

    # channels-last convolutions are about 1.7x faster on a CPU, as in training
    return predict_logits(
        model, images, prep, 512, tta, device, channels_last=torch.device(device).type == "cpu"
    )


def fold_models(out: Path, key: str, device: str) -> Callable[[int], tuple]:
    """fold -> (model, preprocessing, channels) for the suspects' CAMs, each fold opened once."""
    cache: dict[int, tuple] = {}

    def get(fold: int) -> tuple:
        if fold not in cache:
            cache[fold] = open_fold(fold_dir(out, fold, key), device)[:3]
        return cache[fold]

    return get
