"""Near-duplicate search that scales to tens of thousands of images on a CPU.

Two stages on 32x32 grayscale thumbnails:

1. *Candidates*: each thumbnail is blurred and pooled to 16x16, centred and L2-normalised; a
   blocked matrix product finds every image's nearest neighbours (cosine similarity). Blurring
   makes the descriptor tolerant to small shifts, crops and rescaling; centring and normalising
   make it blind to brightness and contrast changes; grayscale makes it blind to recolouring.
2. *Verification*: a candidate pair is kept only if, at the best of a few small shifts, the
   normalised cross-correlation of the thumbnails is high *and* that of their high-pass detail
   is high too. Two smooth but different photos (sky, fog) correlate well at low frequencies;
   they do not share their fine detail.

Flat images (almost no contrast) carry no evidence of identity and are left to exact hashing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

THUMB = 32
ZOOMS = (1.12, 1.25)  # crops of about 10% and 20% of the side, scaled back up


@dataclass(frozen=True)
class NearDupParams:
    neighbours: int = 8  # candidates per image
    candidate_sim: float = 0.70  # cosine similarity of the blurred descriptors
    min_ncc: float = 0.85  # correlation of the aligned, tapered thumbnails
    min_detail_ncc: float = 0.70  # correlation of their high-pass detail
    crop_ncc: float = 0.65  # pairs scoring this at zoom 1 are also tried as crops
    min_fine_detail_ncc: float = 0.75  # detail correlation on 64x64 thumbnails (when given)
    fine_clip: float = 3.0  # fine detail is capped at this many times its median magnitude
    max_shift: int = 3  # pixels (on the 32-px thumbnail) searched for alignment
    flat_std: float = 4.0  # thumbnails with less contrast (0-255 scale) are skipped


def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur with reflected borders; X -> M X M^T blurs an image."""
    radius = max(1, int(3 * sigma + 0.5))
    offs = torch.arange(-radius, radius + 1)
    w = torch.exp(-(offs.float() ** 2) / (2 * sigma**2))
    w = w / w.sum()
    m = torch.zeros(n, n)
    for i in range(n):
        for o, wt in zip(offs.tolist(), w.tolist(), strict=True):
            j = i + o
            j = -j if j < 0 else (2 * n - 2 - j if j >= n else j)  # reflect
            m[i, j] += wt
    return m


def _apply(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a separable linear operator ``m`` to both axes of a batch (N, H, W)."""
    return m @ x @ m.T


def descriptors(thumbs: torch.Tensor) -> torch.Tensor:
    """(N, 32, 32) float -> (N, 256) unit vectors: blurred, pooled to 16x16, centred."""
    n = thumbs.shape[-1]
    pool = torch.zeros(n // 2, n)
    pool[torch.arange(n // 2), torch.arange(0, n, 2)] = 0.5
    pool[torch.arange(n // 2), torch.arange(1, n, 2)] = 0.5
    op = pool @ _blur_matrix(n, 1.2)
    d = _apply(op, thumbs).flatten(1)
    d = d - d.mean(1, keepdim=True)
    return d / d.norm(dim=1, keepdim=True).clamp_min(1e-6)


def candidate_pairs(
    desc: torch.Tensor, k: int, min_sim: float, dims: int = 48, rows: int = 1024, cols: int = 4096
) -> torch.Tensor:
    """Pairs (i < j) among each row's top-k neighbours with similarity >= min_sim: (P, 2).

    Neighbours are searched in a ``dims``-dimensional PCA projection, tile by tile so that a
    similarity tile stays in cache (a full N x N block is bound by memory, not arithmetic); the
    similarity of each found pair is then recomputed exactly on the full descriptor.
    """
    n = desc.shape[0]
    k = min(k + 1, n)
    search = desc
    if desc.shape[1] > dims and n > dims:
        sample = desc[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:8192]]
        mean = sample.mean(0)
        _, _, v = torch.linalg.svd(sample - mean, full_matrices=False)
        search = (desc - mean) @ v[:dims].T
        search = search / search.norm(dim=1, keepdim=True).clamp_min(1e-6)
    found = []
    for r0 in range(0, n, rows):
        q = search[r0 : r0 + rows]
        vals, idxs = [], []
        for c0 in range(0, n, cols):
            v_, i_ = (q @ search[c0 : c0 + cols].T).topk(min(k, min(cols, n - c0)), dim=1)
            vals.append(v_)
            idxs.append(i_ + c0)
        top = torch.cat(vals, 1).topk(k, dim=1)[1]
        idx = torch.cat(idxs, 1).gather(1, top)
        r = torch.arange(r0, r0 + len(q))[:, None].expand_as(idx)
        keep = idx != r
        i, j = r[keep], idx[keep]
        found.append(torch.minimum(i, j) * n + torch.maximum(i, j))
    code = torch.unique(torch.cat(found))  # 1-D keys sort far faster than rows
    pairs = torch.stack([code // n, code % n], 1)
    exact = (desc[pairs[:, 0]] * desc[pairs[:, 1]]).sum(1)
    return pairs[exact >= min_sim]


def _zoom_centre(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Crop the central 1/zoom of each (P, H, W) image and scale it back to H x W."""
    if zoom == 1.0:
        return x
    h = x.shape[-1]
    c = max(4, round(h / zoom))
    o = (h - c) // 2
    return F.interpolate(x[:, None, o : o + c, o : o + c], size=(h, h), mode="bilinear", align_corners=False)[
        :, 0
    ]


def _spectrum(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Centred, tapered, unit-norm image -> its 2-D real FFT. The taper limits wrap-around."""
    x = (x - x.mean((1, 2), keepdim=True)) * window
    x = x / x.flatten(1).norm(dim=1).clamp_min(1e-6)[:, None, None]
    return torch.fft.rfft2(x)


def _shift_scores(fa: torch.Tensor, fb: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Cross-correlation at every shift within +-max_shift, from two spectra: (P, S).

    Only the (2s+1)^2 shifts we need are evaluated, as a separable partial inverse DFT (two small
    complex matrix products); a full inverse FFT would compute all 1,024 and cost twice as much.
    """
    ev, eu = _partial_idft(fa.shape[-2], max_shift)
    return (eu @ ((fa.conj() * fb) @ ev)).real.flatten(1)


_IDFT_CACHE: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}


def _partial_idft(n: int, max_shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    key = (n, max_shift)
    if key not in _IDFT_CACHE:
        shifts = torch.arange(-max_shift, max_shift + 1, dtype=torch.float64)
        v = torch.arange(n // 2 + 1, dtype=torch.float64)
        u = torch.arange(n, dtype=torch.float64)
        weight = torch.full((n // 2 + 1,), 2.0, dtype=torch.float64)  # the half spectrum counts twice
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        ev = torch.exp(2j * math.pi * v[:, None] * shifts[None, :] / n) * weight[:, None] / (n * n)
        eu = torch.exp(2j * math.pi * shifts[:, None] * u[None, :] / n)
        _IDFT_CACHE[key] = (ev.to(torch.complex64), eu.to(torch.complex64))
    return _IDFT_CACHE[key]


def _window(n: int = THUMB) -> torch.Tensor:
    hann = torch.hann_window(n + 2, periodic=False)[1:-1]
    return hann[:, None] * hann[None, :]


def _score(
    f1: torch.Tensor, f2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor, max_shift: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Best plain correlation over shifts, and the detail correlation at that same shift."""
    plain, arg = _shift_scores(f1, f2, max_shift).max(1)
    detail = _shift_scores(g1, g2, max_shift).gather(1, arg[:, None])[:, 0]
    return plain, detail


def verify(
    thumbs: torch.Tensor,
    detail: torch.Tensor,
    pairs: torch.Tensor,
    params: NearDupParams,
    chunk: int = 16384,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (plain, detail) of each candidate pair at its best alignment (shift and zoom).

    A pair passes when some alignment has both scores above their thresholds. A cascade keeps
    this cheap: all pairs are scored at zoom 1 from per-image spectra computed once; the detail
    score only where the plain score passes; crops (either image zoomed by 1.12 or 1.25, spectra
    again computed once per image) only for pairs close enough to be a crop and not yet passed.
    """
    window = _window(thumbs.shape[-1])
    spec, dspec = _spectrum(thumbs, window), _spectrum(detail, window)
    plain = torch.full((len(pairs),), -1.0)
    detail_score = torch.full((len(pairs),), -1.0)

    def consider(sel: torch.Tensor, f1, f2, g1, g2) -> None:
        pl, arg = _shift_scores(f1, f2, params.max_shift).max(1)
        de = torch.full_like(pl, -1.0)
        ok = pl >= params.min_ncc
        if ok.any():
            de[ok] = _shift_scores(g1[ok], g2[ok], params.max_shift).gather(1, arg[ok, None])[:, 0]
        old_ok = (plain[sel] >= params.min_ncc) & (detail_score[sel] >= params.min_detail_ncc)
        new_ok = ok & (de >= params.min_detail_ncc)
        take = (new_ok & ~old_ok) | ((new_ok == old_ok) & (pl > plain[sel]))
        plain[sel] = torch.where(take, pl, plain[sel])
        detail_score[sel] = torch.where(take, de, detail_score[sel])

    for s in range(0, len(pairs), chunk):
        sel = torch.arange(s, min(s + chunk, len(pairs)))
        i, j = pairs[sel, 0], pairs[sel, 1]
        consider(sel, spec[i], spec[j], dspec[i], dspec[j])

    passed = (plain >= params.min_ncc) & (detail_score >= params.min_detail_ncc)
    retry = ((plain >= params.crop_ncc) & ~passed).nonzero().flatten()
    if len(retry):
        users = torch.unique(pairs[retry].flatten())
        local = torch.full((len(thumbs),), -1, dtype=torch.long)
        local[users] = torch.arange(len(users))
        for zoom in ZOOMS:
            zspec = _spectrum(_zoom_centre(thumbs[users], zoom), window)
            zdspec = _spectrum(_zoom_centre(detail[users], zoom), window)
            for s in range(0, len(retry), chunk):
                sel = retry[s : s + chunk]
                i, j = pairs[sel, 0], pairs[sel, 1]
                consider(sel, spec[i], zspec[local[j]], dspec[i], zdspec[local[j]])
                consider(sel, zspec[local[i]], spec[j], zdspec[local[i]], dspec[j])
    return plain, detail_score


@dataclass
class NearDupResult:
    pairs: np.ndarray  # (P, 2) indices into the thumbnails, verified
    plain: np.ndarray  # their correlation
    detail: np.ndarray  # their detail correlation
    n_candidates: int
    n_flat: int


def _detail(x: torch.Tensor, sigma: float, clip: float | None = None) -> torch.Tensor:
    """High-pass detail; ``clip`` caps it at that many times each image's median magnitude, so a
    few strong outlines (coins on a white background) cannot outweigh everything inside them."""
    d = x - _apply(_blur_matrix(x.shape[-1], sigma), x)
    if clip is not None:
        t = d.abs().flatten(1).median(1).values.clamp_min(1.0)[:, None, None] * clip
        d = torch.maximum(torch.minimum(d, t), -t)
    return d


def find_near_duplicates(
    thumbs: np.ndarray,
    params: NearDupParams | None = None,
    fine: np.ndarray | None = None,
    has_fine: np.ndarray | None = None,
) -> NearDupResult:
    """Verified near-duplicate pairs among ``thumbs`` ((N, 32, 32) uint8).

    ``fine`` ((N, 64, 64) uint8), when given, re-verifies the accepted pairs at twice the
    resolution: two coins of one type photographed alike agree at 32 px, and only their legends,
    wear and scratches, visible at 64 px, tell them apart. ``has_fine`` ((N,) bool) says which
    images really hold that much detail; a pair with an image smaller than 64 px is not
    re-verified, since its 64-px thumbnail is only an upsampled copy of the 32-px one.
    """
    params = params or NearDupParams()
    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(thumbs)).float()
        informative = (t.flatten(1).std(1) >= params.flat_std).nonzero().flatten()
        n_flat = len(t) - len(informative)
        if len(informative) < 2:
            empty = np.empty((0, 2), np.int64)
            return NearDupResult(empty, np.empty(0), np.empty(0), 0, n_flat)
        sub = t[informative]
        cand = candidate_pairs(descriptors(sub), params.neighbours, params.candidate_sim)
        plain, detail_score = verify(sub, _detail(sub, 1.5), cand, params)
        keep = (plain >= params.min_ncc) & (detail_score >= params.min_detail_ncc)
        pairs, plain, detail_score = cand[keep], plain[keep], detail_score[keep]
        if fine is not None and len(pairs):
            big = torch.ones(len(t), dtype=torch.bool)
            if has_fine is not None:
                big = torch.from_numpy(np.asarray(has_fine, dtype=bool))
            big = big[informative]
            fine_params = NearDupParams(
                **{
                    **params.__dict__,
                    "max_shift": 2 * params.max_shift,
                    "min_detail_ncc": params.min_fine_detail_ncc,
                }
            )
            check = big[pairs[:, 0]] & big[pairs[:, 1]]
            fplain, fdetail = torch.empty(0), torch.empty(0)
            if check.any():
                f = torch.from_numpy(np.ascontiguousarray(fine))[informative].float()
                fplain, fdetail = verify(f, _detail(f, 1.5, params.fine_clip), pairs[check], fine_params)
            ok = torch.ones(len(pairs), dtype=torch.bool)
            ok[check] = (fplain >= fine_params.min_ncc) & (fdetail >= fine_params.min_detail_ncc)
            detail_score[check] = torch.minimum(detail_score[check], fdetail)
            pairs, plain, detail_score = pairs[ok], plain[ok], detail_score[ok]
        return NearDupResult(
            informative[pairs].numpy(), plain.numpy(), detail_score.numpy(), len(cand), n_flat
        )


def connected_groups(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the graph on ``n`` nodes with edges ``pairs``."""
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def merge_groups(groups: Iterable[Iterable[str]]) -> list[list[str]]:
    """Groups of names that share a member become one; each sorted, singletons dropped."""
    index: dict[str, int] = {}
    pairs = []
    for g in groups:
        ids = [index.setdefault(x, len(index)) for x in g]
        pairs += [(ids[0], other) for other in ids[1:]]
    names = list(index)
    merged = connected_groups(len(names), np.array(pairs, dtype=np.int64).reshape(-1, 2))
    return sorted((sorted(names[i] for i in g) for g in merged), key=lambda g: g[0])
