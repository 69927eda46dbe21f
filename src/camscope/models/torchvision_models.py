"""Any torchvision classification model by name, with pretrained weights from a local file."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from camscope.errors import CamscopeError
from camscope.models.resnet import adapt_first_conv

# default CAM layer by family; other models get their last convolution
_CAM_LAYERS = {
    "resnet": "layer4",
    "resnext": "layer4",
    "wide_resnet": "layer4",
    "regnet": "trunk_output",
    "vgg": "features",
    "densenet": "features",
    "mobilenet": "features",
    "efficientnet": "features",
    "convnext": "features",
    "mnasnet": "layers",
    "shufflenet": "conv5",
    "squeezenet": "features",
}


def torchvision_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def last_conv_name(model: nn.Module) -> str:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    if name is None:
        raise CamscopeError("the model has no Conv2d layer", "name a target layer explicitly")
    return name


def default_cam_layer(model: nn.Module) -> str:
    """The registry's layer, the family's usual layer (torchvision class names), or the last conv."""
    layer = getattr(model, "camscope_cam_layer", None)
    if layer:
        return layer
    family = type(model).__name__.lower()
    names = dict(model.named_modules())
    for prefix, name in _CAM_LAYERS.items():
        if family.startswith(prefix.replace("_", "")) and name in names:
            return name
    return last_conv_name(model)


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from .pt/.pth read with ``weights_only`` (no code runs)."""
    p = Path(path)
    if not p.is_file():
        raise CamscopeError(f"weights file {p} not found", "give the path of a .safetensors or .pth file")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CamscopeError(
            f"cannot read weights from {p}: {type(e).__name__}: {e}",
            "save a plain state dict (torch.save(model.state_dict(), path)) or use safetensors",
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CamscopeError(
            f"{p} does not hold a state dict", "save it with torch.save(model.state_dict(), path)"
        )
    return state


def build_torchvision(
    name: str, num_classes: int, in_channels: int, weights: str | None, **kwargs
) -> tuple[nn.Module, str, str]:
    """(model, default CAM layer, head module name) for torchvision's ``name``."""
    tv = name[:-3] if name.endswith("_tv") else name
    names = torchvision_names()
    if tv not in names:
        from camscope.models.registry import available

        close = [n for n in names if tv.split("_")[0] in n][:8]
        raise CamscopeError(
            f"unknown model {name!r}",
            f"camscope models: {', '.join(available())}; torchvision has {len(names)} more"
            + (f", e.g. {', '.join(close)}" if close else " (see torchvision.models.list_models())"),
        )
    model = torchvision.models.get_model(tv, weights=None, **kwargs)
    if weights:
        state = load_weights_file(weights)
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or len(missing) > 0:
            raise CamscopeError(
                f"{weights} does not fit {tv}: {len(missing)} missing and {len(unexpected)} unexpected keys"
                f" (e.g. {(list(missing) + list(unexpected))[:3]})",
                f"use weights saved from torchvision's {tv}",
            )
    head = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear):
            head = n
    if head is None:
        raise CamscopeError(
            f"{tv} has no linear classifier head camscope can replace",
            "pick a classification model from torchvision.models.list_models()",
        )
    old = model.get_submodule(head)
    if old.out_features != num_classes:
        _set_module(model, head, nn.Linear(old.in_features, num_classes))
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if in_channels != 3:
        _set_module(model, first, adapt_first_conv(model.get_submodule(first), in_channels))
    family = next((v for k, v in _CAM_LAYERS.items() if tv.startswith(k)), None)
    cam = family if family and family in dict(model.named_modules()) else last_conv_name(model)
    return model, cam, head
