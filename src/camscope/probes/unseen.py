"""What a model does with a class it never saw: which labels it gives, how sure it is, how stable
those labels are, and how well standard out-of-distribution scores separate the unseen images
from the in-distribution test images.

Scores (higher = more in-distribution): max softmax probability (Hendrycks & Gimpel 2017), max
logit (Hendrycks et al. 2022), energy = logsumexp of the logits (Liu et al. 2020), Mahalanobis
distance to the nearest class mean on penultimate features with a shared covariance (Lee et al.
2018), and the distance to the k-th nearest training feature after L2 normalisation (Sun et al.
2022).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camscope.models.inference import Preprocess

SCORES = ("max_softmax", "max_logit", "energy", "mahalanobis", "knn")


@dataclass
class Reference:
    """What the scores need from the training data: class means, shared precision, features."""

    means: torch.Tensor  # (K, D)
    precision: torch.Tensor  # (D, D)
    train_unit: torch.Tensor  # (N, D) L2-normalised training features


def fit_reference(
    train_feats: torch.Tensor, train_labels: torch.Tensor, k: int, shrink: float = 1e-3
) -> Reference:
    f = train_feats.double()
    means = torch.stack([f[train_labels == c].mean(0) for c in range(k)])
    centred = f - means[train_labels]
    cov = centred.T @ centred / max(1, len(f) - 1)
    cov = cov + shrink * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype)  # invertible
    unit = train_feats / train_feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return Reference(means, torch.linalg.inv(cov), unit)


def scores(
    logits: torch.Tensor, feats: torch.Tensor, ref: Reference, knn_k: int = 10
) -> dict[str, torch.Tensor]:
    out = {
        "max_softmax": logits.softmax(1).max(1).values,
        "max_logit": logits.max(1).values,
        "energy": torch.logsumexp(logits, 1),
    }
    d = feats.double()[:, None, :] - ref.means[None]  # (N, K, D)
    maha = torch.einsum("nkd,de,nke->nk", d, ref.precision, d)
    out["mahalanobis"] = -maha.min(1).values.float()
    unit = feats / feats.norm(dim=1, keepdim=True).clamp_min(1e-12)
    k = min(knn_k, len(ref.train_unit))
    dist = torch.cdist(unit, ref.train_unit)
    out["knn"] = -dist.topk(k, dim=1, largest=False).values[:, -1]
    return out


def auroc_and_fpr95(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[float, float]:
    """AUROC of telling in-distribution (positive) from unseen by the score, and the share of
    unseen images accepted when the threshold keeps 95% of the in-distribution ones."""
    from sklearn.metrics import roc_auc_score

    y = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    auroc = float(roc_auc_score(y, np.r_[in_scores, out_scores]))
    threshold = np.percentile(in_scores, 5)
    return auroc, float((out_scores >= threshold).mean())


@torch.no_grad()
def label_consistency(
    model: nn.Module, images: torch.Tensor, prep: Preprocess, batch: int = 512, device="cpu"
) -> dict:
    """Share of images that keep their label under a flip and under 2-px shifts (reflect pad)."""
    import torch.nn.functional as F

    model.eval()
    base, flipped, shifted = [], [], []
    for i in range(0, len(images), batch):
        x = prep(images[i : i + batch].to(device))
        p = model(x).argmax(1)
        base.append(p.cpu())
        flipped.append((model(x.flip(-1)).argmax(1) == p).cpu())
        h, w = x.shape[-2:]
        pad = F.pad(x, (2, 2, 2, 2), mode="reflect")
        same = torch.ones_like(p, dtype=torch.bool)
        for dy, dx in ((0, 2), (4, 2), (2, 0), (2, 4)):
            same &= model(pad[..., dy : dy + h, dx : dx + w]).argmax(1) == p
        shifted.append(same.cpu())
    return {
        "keeps_label_under_flip": float(torch.cat(flipped).float().mean()),
        "keeps_label_under_2px_shifts": float(torch.cat(shifted).float().mean()),
    }
