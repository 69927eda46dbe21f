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
    **kwargs,
) -> nn.Module:
    """Build ``name`` for ``num_classes`` classes and ``in_channels`` input channels.

    The model carries ``camscope_spec`` (everything needed to rebuild it from a checkpoint),
    ``camscope_cam_layer`` and ``camscope_head`` (module name of the classifier head).
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
                f"--weights is for torchvision models; {name} has no published weights",
                "drop --weights, or pick a torchvision model such as resnet18_tv or resnet50",
            )
        try:
            model = e.builder(
                num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
            )
        except TypeError as err:
            raise CamscopeError(f"bad model arguments for {name}: {err}") from err
        cam_layer, head = e.cam_layer, getattr(model, "head_name", "head")
    else:
        from camscope.models.torchvision_models import build_torchvision

        model, cam_layer, head = build_torchvision(name, num_classes, in_channels, weights, **kwargs)
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
