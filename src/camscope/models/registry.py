"""Name -> model builder, with each model's default layer for CAMs and its training recipe.

The CLI and the trainer look models up here, so adding a model never grows an if/else elsewhere.
Names not registered fall through to torchvision's classification models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from camscope.errors import CamscopeError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    cam_layer: str  # module name of the default target layer for CAMs
    description: str
    recipe: dict = field(default_factory=dict)  # training defaults that suit this model


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, cam_layer: str, description: str, recipe: dict | None = None):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, fn, cam_layer, description, dict(recipe or {}))
        return fn

    return deco


def registered() -> dict[str, ModelEntry]:
    _load_builtin()
    return dict(_REGISTRY)


def entry(name: str) -> ModelEntry | None:
    _load_builtin()
    return _REGISTRY.get(name)


def _load_builtin() -> None:
    # importing the modules registers their models
    from camscope.models import fastnet, resnet, simple  # noqa: F401


def build_model(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: tuple[int, int] = (32, 32),
    weights: str | None = None,
    per_side: int = 0,
    **kwargs,
) -> nn.Module:
    """Build ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    Names not registered are torchvision's (``tv:`` forces it), then timm's (``timm:`` forces it).
    ``weights``: ``imagenet`` or a file (pretrained models only). ``per_side``: the number of sides
    a shared backbone sees one by one (``models/sides.py``).
    The model carries ``camscope_spec`` (everything needed to rebuild it from a checkpoint),
    ``camscope_cam_layer`` and ``camscope_head`` (module name of the classifier head), and for
    pretrained weights ``camscope_weights`` (where they came from) and ``camscope_norm`` (the
    normalisation they expect).
    """
    if num_classes < 2:
        raise CamscopeError(
            f"a classifier needs at least 2 classes, not {num_classes}",
            "select at least two classes for training (camscope split --classes/--top-k)",
        )
    if in_channels < 1:
        raise CamscopeError(
            f"in_channels must be positive, not {in_channels}", "use 1 (grayscale) or 3 (RGB)"
        )
    e = entry(name)
    if e is not None:
        if weights:
            raise CamscopeError(
                f"--weights is for torchvision and timm models; {name} has no published weights",
                "drop --weights, or pick a pretrained model such as tf_efficientnet_lite0 or resnet50",
            )
        if per_side:
            raise CamscopeError(f"{name} cannot run per side", "use a timm model, or two_sided: joined")
        try:
            model = e.builder(
                num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
            )
        except TypeError as err:
            raise CamscopeError(f"bad model arguments for {name}: {err}") from err
        cam_layer, head = e.cam_layer, getattr(model, "head_name", "head")
    elif is_torchvision_name(name) and not per_side:
        from camscope.models.torchvision_models import build_torchvision

        model, cam_layer, head = build_torchvision(name, num_classes, in_channels, weights, **kwargs)
    else:
        from camscope.models.timm_models import build_timm

        if kwargs:
            raise CamscopeError(f"model arguments {sorted(kwargs)} are not taken by timm models here")
        model, cam_layer, head = build_timm(name, num_classes, in_channels, weights, per_side)
    if per_side:
        kwargs = {**kwargs, "per_side": per_side}
    model.camscope_spec = {
        "name": name,
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": list(image_size),
        "kwargs": kwargs,
    }
    model.camscope_cam_layer = cam_layer
    model.camscope_head = head
    return model


def available() -> list[str]:
    return sorted(registered())


def is_torchvision_name(name: str) -> bool:
    if name.startswith("timm:"):
        return False
    if name.startswith("tv:") or name.endswith("_tv"):
        return True
    from camscope.models.torchvision_models import torchvision_names

    if name in torchvision_names():
        return True
    from camscope.models.timm_models import is_timm_model

    return not is_timm_model(name)  # neither: torchvision's builder says what exists


def is_timm_backbone(name: str) -> bool:
    """``name`` is built by timm (not a camscope model, not torchvision's)."""
    return entry(name) is None and not is_torchvision_name(name)
