"""Any torchvision classification model by name, with ImageNet weights (torchvision's download
and cache) or weights from a local file."""

from __future__ import annotations

import torchvision
from torch import nn

from camscope.errors import CamscopeError
from camscope.models.resnet import adapt_first_conv
from camscope.models.weights import IMAGENET, file_weights, no_weights_error, sha256_file

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
    if getattr(model, "camscope_no_spatial", False):
        raise CamscopeError(
            f"{type(model).__name__} has no spatial feature map (a vision transformer?): CAMs need a CNN",
            "pick a convolutional model, or name a layer whose output is (N, C, H, W) with --layer",
        )
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


def build_torchvision(
    name: str, num_classes: int, in_channels: int, weights: str | None, **kwargs
) -> tuple[nn.Module, str, str]:
    """(model, default CAM layer, head module name) for torchvision's ``name``."""
    tv = name.removeprefix("tv:").removesuffix("_tv")
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
    model.camscope_weights = None
    if weights:
        state, model.camscope_weights, norm = _weights(tv, weights)
        if norm:
            model.camscope_norm = {k: v[:in_channels] for k, v in norm.items()}
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


def _weights(name: str, weights: str):
    """(state dict, provenance, normalisation or None) of ``imagenet`` or a file."""
    if weights != IMAGENET:
        state, provenance = file_weights(weights)
        return state, provenance, None
    try:
        w = torchvision.models.get_model_weights(name).DEFAULT
    except ValueError:
        raise no_weights_error(name, "torchvision publishes none for it") from None
    try:
        state = w.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # no network and nothing in torch.hub's cache
        raise no_weights_error(name, f"torchvision could not download them ({type(e).__name__})") from None
    from pathlib import Path

    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(w.url).name
    provenance = {"source": "torchvision", "weights": str(w), "url": w.url}
    if cached.is_file():
        provenance.update(file=str(cached), sha256=sha256_file(cached))
    t = w.transforms()
    return state, provenance, {"mean": list(t.mean), "std": list(t.std)}
