"""Training configuration: generic defaults, overlaid by the model's recipe, then by the user."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from camscope.errors import CamscopeError


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = "fastnet"
    model_args: dict = Field(default_factory=dict)
    weights: str | None = None  # pretrained: "imagenet" or a file (torchvision and timm models)
    # full: everything learns; head: only the classifier; head_then_full: the body joins at
    # unfreeze_epoch; probe: the frozen backbone's features are computed once and a linear head
    # is fitted on them (seconds, not minutes)
    finetune: Literal["full", "head", "head_then_full", "probe"] = "full"
    unfreeze_epoch: int = 1  # head_then_full: the body starts learning at this epoch
    body_lr_mult: float = 1.0  # the body's learning rate as a share of the head's (discriminative)
    bn: Literal["train", "frozen"] = "train"  # frozen: the body's batch-norm statistics stay as loaded
    # two-sided objects: the joined image through the model, or each side through a shared
    # backbone with the pooled features concatenated (timm models); auto: per side for a pretrained
    # timm backbone (better on the coins' validation split, docs/benchmarks.md), else joined
    two_sided: Literal["auto", "joined", "per_side"] = "auto"

    epochs: float = 20  # fractional epochs are allowed (the schedule runs over whole steps)
    batch_size: int = 256
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Literal["constant", "cosine", "onecycle", "triangle"] = "cosine"
    schedule_args: dict = Field(default_factory=dict)
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    class_weights: Literal["none", "balanced"] = "none"
    grad_clip: float | None = None
    lookahead: bool = False
    lookahead_every: int = 5
    whiten_bias_epochs: int = 3  # models with a data-whitening stem (fastnet)

    translate: int = 2  # pixels, reflect padding
    # progressive resizing: [[fraction of the run, short side in px], ...], e.g. [[0.4, 24]] trains
    # the first 40% of the steps at 24 px (fewer FLOPs), the rest at full size
    resize_schedule: list[tuple[float, int]] | None = None
    flip: Literal["none", "random", "alternating"] = "random"
    cutout: int = 0  # side of the zeroed square in pixels; 0 = off
    mask_prob: float = 0.0  # masked training: share of images whose centre or outer ring is hidden
    mask_max: float = 0.7  # largest mask, as a fraction of the object's radius
    tta: Literal["none", "flip", "flip_translate"] = "none"  # at validation
    normalize: bool = True
    channels: int | None = None  # convert the prepared images to 1 or 3 channels

    monitor: Literal["val_acc", "val_loss", "val_macro_f1"] = "val_acc"
    patience: int | None = None  # epochs without improvement before stopping; None = never stop early
    restore_best: bool = True
    max_train_s: float | None = None  # stop (after evaluating the partial epoch) once training took this long

    seed: int = 0
    deterministic: bool = True
    device: str = "auto"
    amp: Literal["auto", "none", "bf16", "fp16"] = "auto"
    channels_last: bool | None = None  # None: on for CPU, where it is ~1.7x faster
    eval_batch_size: int = 1024
    checkpoint_every_s: float = 120.0
    checkpoint_every_steps: int | None = None
    tensorboard: bool = False
    mlflow_uri: str | None = None

    @field_validator("epochs")
    @classmethod
    def _epochs(cls, v):
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @field_validator("batch_size", "eval_batch_size", "lookahead_every")
    @classmethod
    def _positive(cls, v):
        if v < 1:
            raise ValueError("must be at least 1")
        return v

    @field_validator("lr")
    @classmethod
    def _lr(cls, v):
        if not v > 0:
            raise ValueError("must be positive")
        return v

    @field_validator("channels")
    @classmethod
    def _channels(cls, v):
        if v not in (None, 1, 3):
            raise ValueError("must be 1 or 3")
        return v

    @field_validator("resize_schedule")
    @classmethod
    def _resize(cls, v):
        if not v:
            return None
        last = 0.0
        for until, side in v:
            if not last < until <= 1:
                raise ValueError("fractions must rise within (0, 1], e.g. [[0.4, 24]]")
            if int(side) < 4:
                raise ValueError(f"side {side} px is too small (4 px at least)")
            last = until
        return [(float(u), int(s)) for u, s in v]

    @field_validator("body_lr_mult")
    @classmethod
    def _mult(cls, v):
        if not 0 <= v <= 10:
            raise ValueError("must be in [0, 10]")
        return v

    @field_validator("label_smoothing")
    @classmethod
    def _smoothing(cls, v):
        if not 0 <= v < 1:
            raise ValueError("must be in [0, 1)")
        return v


def parse_model_args(items: list[str] | None, flag: str = "--model-arg") -> dict | None:
    """['widths=[32,64,64]', 'name=x'] -> {'widths': [32, 64, 64], 'name': 'x'} (JSON values)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise CamscopeError(
                f"cannot read {flag} {item!r}", "write key=value (a JSON value), e.g. widths=[32,64,64]"
            )
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out or None


def parse_resize(items: list[str] | None) -> list[tuple[float, int]] | None:
    """['0.4:24'] -> [(0.4, 24)]: progressive resizing, checked by ``TrainConfig``."""
    out = []
    for item in items or []:
        try:
            frac, side = item.split(":")
            out.append((float(frac), int(side)))
        except ValueError:
            raise CamscopeError(
                f"cannot read --resize {item!r}", "write FRACTION:SIDE, e.g. --resize 0.4:24"
            ) from None
    return out or None


# fine-tuning an ImageNet backbone on a few hundred images per class: AdamW, the head learning 10x
# faster than the body, one cycle, label smoothing, the body's batch-norm statistics kept
PRETRAINED_RECIPE = {
    "optimizer": "adamw",
    "lr": 3e-3,
    "body_lr_mult": 0.1,
    "weight_decay": 0.01,
    "schedule": "onecycle",
    "label_smoothing": 0.1,
    "epochs": 12,
    "batch_size": 32,
    "bn": "frozen",
}


def make_config(model: str = "fastnet", use_recipe: bool = True, **options) -> TrainConfig:
    """The model's recipe (or, for pretrained weights, ``PRETRAINED_RECIPE``), overlaid by
    ``options`` (None values mean 'not given')."""
    from camscope.models import entry

    values: dict = {"model": model}
    e = entry(model)
    if use_recipe and e is not None:
        values.update(e.recipe)
    elif use_recipe and options.get("weights"):
        values.update(PRETRAINED_RECIPE)
    values.update({k: v for k, v in options.items() if v is not None})
    try:
        return TrainConfig(**values)
    except ValidationError as err:
        msgs = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in err.errors())
        raise CamscopeError(f"bad training options: {msgs}", "see camscope train --help") from err
