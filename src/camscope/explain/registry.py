"""The one list of explanation methods. The engine, the command line's help and validation, the
web page's method list and the study file's validation all read it.

It imports no torch (the CLI's help stays fast): each entry names its implementation, loaded when
the method is first used. What an implementation is given depends on the entry's kind:

- ``gradient``: a CAM from (activations A, gradients G) of a layer, ``gives`` either channel
  weights (N, K), the map being sum_k w_k A_k, or the map (N, h, w) itself;
- ``activation``: a CAM without gradients, from ``LayerInputs`` (the layer's activations, the
  model, the input, the targets) to raw maps (N, T, h, w);
- ``pixel``: a saliency map at input resolution, (model, x, targets, layers) -> (N, H, W) in [0, 1].

Adding a method is one function and one row here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from camscope.errors import CamscopeError

KINDS = ("gradient", "activation", "pixel")


@dataclass(frozen=True)
class MethodInfo:
    key: str  # what users type
    title: str  # what figures and reports print
    kind: str  # gradient | activation | pixel
    impl: str  # "module:function" under camscope.explain
    gives: str = "weights"  # gradient methods: "weights" (N, K) or "map" (N, h, w)
    aliases: tuple[str, ...] = ()

    def function(self) -> Callable:
        module, name = self.impl.split(":")
        return getattr(importlib.import_module(f"camscope.explain.{module}"), name)

    @property
    def is_cam(self) -> bool:
        """A class activation map of a layer (pixel methods are not)."""
        return self.kind != "pixel"


METHODS: dict[str, MethodInfo] = {
    m.key: m
    for m in (
        MethodInfo("gradcam", "Grad-CAM", "gradient", "methods:gradcam_weights", aliases=("grad-cam",)),
        MethodInfo(
            "gradcam++", "Grad-CAM++", "gradient", "methods:gradcampp_weights", aliases=("gradcampp",)
        ),
        MethodInfo("xgradcam", "XGrad-CAM", "gradient", "methods:xgradcam_weights", aliases=("xgrad-cam",)),
        MethodInfo("hirescam", "HiResCAM", "gradient", "methods:hirescam_map", gives="map"),
        MethodInfo(
            "layercam", "LayerCAM", "gradient", "methods:layercam_map", gives="map", aliases=("layer-cam",)
        ),
        MethodInfo("eigencam", "Eigen-CAM", "activation", "methods:eigencam_raw", aliases=("eigen-cam",)),
        MethodInfo("scorecam", "Score-CAM", "activation", "perturbation:scorecam", aliases=("score-cam",)),
        MethodInfo(
            "ablationcam", "Ablation-CAM", "activation", "perturbation:ablationcam", aliases=("ablation-cam",)
        ),
        MethodInfo("guided_backprop", "Guided Backprop", "pixel", "guided:guided_backprop_map"),
        MethodInfo("guided_gradcam", "Guided Grad-CAM", "pixel", "guided:guided_gradcam_map"),
        MethodInfo("occlusion", "Occlusion", "pixel", "occlusion:occlusion_map"),
    )
}
_ALIASES = {a: m.key for m in METHODS.values() for a in m.aliases}


def lookup(name: str) -> MethodInfo:
    """The method called ``name`` (or one of its aliases), or a clear error listing them all."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in METHODS:
        raise CamscopeError(f"unknown explanation method {name!r}", f"use one of {', '.join(METHODS)}")
    return METHODS[key]


def names(cams_only: bool = False) -> list[str]:
    """The methods' keys (only the class activation maps with ``cams_only``)."""
    return [k for k, m in METHODS.items() if m.is_cam or not cams_only]
