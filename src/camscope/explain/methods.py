"""CAM methods: each turns (activations, gradients) of a layer into a map (N, h, w), raw.

A channel-weight method is one function from (A, G) to weights (N, K); the map is then
sum_k w_k A_k. Adding one is adding a few lines here and a row in ``registry.METHODS``. Formulas
follow the papers and, for parity, pytorch-grad-cam 1.5.7 (its epsilons included).
"""

from __future__ import annotations

import torch

from camscope.explain.outputs import LayerInputs


def gradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Selvaraju et al. 2017: the spatial mean of the gradient."""
    return g.mean((2, 3))


def gradcampp_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Chattopadhay et al. 2018, eq. 19 with the ReLU of eq. 7."""
    g2 = g * g
    g3 = g2 * g
    s = a.sum((2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + s * g3 + 1e-6)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    return (g.clamp_min(0) * alpha).sum((2, 3))


def xgradcam_weights(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Fu et al. 2020: gradients weighted by the normalised activation."""
    return (g * a / (a.sum((2, 3), keepdim=True) + 1e-7)).sum((2, 3))


def hirescam_map(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Draelos & Carin 2020: element-wise gradient x activation, summed over channels."""
    return (g * a).sum(1)


def layercam_map(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Jiang et al. 2021: positive gradients as per-location weights."""
    return (g.clamp_min(0) * a).sum(1)


def eigencam_map(a: torch.Tensor, sign_fix: bool = True) -> torch.Tensor:
    """Muhammad & Yeasin 2020: projection on the first principal component of the (centred)
    activations, one batched SVD. The sign of a singular vector is arbitrary; with ``sign_fix``
    it is chosen so the map correlates positively with the channel-summed activation (what
    pytorch-grad-cam leaves to LAPACK)."""
    n, k, h, w = a.shape
    x = a.reshape(n, k, h * w).transpose(1, 2).double()
    x = x - x.mean(1, keepdim=True)
    x = torch.nan_to_num(x)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    proj = x @ vh[:, 0, :, None]  # (n, hw, 1)
    proj = proj[..., 0]
    if sign_fix:
        ref = a.reshape(n, k, h * w).sum(1).double()
        ref = ref - ref.mean(1, keepdim=True)
        flip = (proj * ref).sum(1) < 0
        proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(n, h, w).to(a.dtype)


def eigencam_raw(inp: LayerInputs) -> torch.Tensor:
    """Eigen-CAM for the engine: the same map for every target."""
    return eigencam_map(inp.acts, inp.eigen_sign_fix)[:, None].expand(-1, inp.targets.shape[1], -1, -1)
