"""Near-duplicate search that scales to tens of thousands of images on a CPU.

Two stages on 32x32 grayscale thumbnails:

1. *Candidates*: each thumbnail is blurred and pooled to 16x16, centred and L2-normalised; a
   blocked matrix product (or, on large sets, a FAISS inverted-file index) finds every image's
   nearest neighbours (cosine similarity in a 48-d PCA projection). Blurring
   makes the descriptor tolerant to small shifts, crops and rescaling; centring and normalising
   make it blind to brightness and contrast changes; grayscale makes it blind to recolouring.
   Blurring alone is not enough for a 2-px shift or a 10% crop of a detailed photo, so each
   image is also searched shifted by 2 px (four directions) and with its centre zoomed by 1.12:
   the moved query lands on the copy.
2. *Verification*: a candidate pair is kept only if, at the best of a few small shifts, the
   normalised cross-correlation of the thumbnails is high *and* that of their high-pass detail
   is high too. Two smooth but different photos (sky, fog) correlate well at low frequencies;
   they do not share their fine detail.

3. *Distinctiveness* (pairs with no 64-px check): a verified pair must stand out from what is
   ordinary for its images, its correlation well above theirs with their other nearest images.
   Different photos of one kind of scene (jets on a clear sky) resemble many others about as well.

Flat images (almost no contrast) carry no evidence of identity and are left to exact hashing.

NumPy only (its BLAS and pocketfft): the audit never imports torch, which alone costs 0.65 GB
of memory before any work.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import scipy.fft

from camscope.progress import track_weighted

THUMB = 32
# (dx, dy) on the 32-px thumbnail; the opposite shifts are the other image's search
QUERY_SHIFTS = ((2, 0), (0, 2), (2, 2), (2, -2))
KEEP_DESCRIPTORS = 256 * 2**20  # bytes of full descriptors (1 KB an image) held for the whole set
MOVED_EXACT_LIMIT = 8192  # images; above, the moved searches use the index even when the plain one is exact
ZOOMS = (1.12, 1.25)  # crops of about 10% and 20% of the side, scaled back up
# images or pairs worked on at a time within a chunk: chunk-sized temporaries (70 MB of spectra
# for 16,384 pairs) cost more than the arithmetic on them
VERIFY_BLOCK = 1024
F32, C64 = np.float32, np.complex64


def _blocks(n: int) -> Iterable[slice]:
    return (slice(s, s + VERIFY_BLOCK) for s in range(0, n, VERIFY_BLOCK))


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
    # left-right mirrored copies count as near-duplicates too: off by default until their
    # precision is judged (on CIFAR-10 it doubles the search time and adds 3.5 GB at peak)
    mirrors: bool = False
    # neighbour search: "exact" compares every image with every other (time grows with N^2),
    # "faiss" an inverted-file index (near-linear); "auto" is exact up to ``exact_limit`` images
    index: str = "auto"
    exact_limit: int = 50_000
    nprobe: int = 32  # clusters of the index visited per query (recall against time)
    # each image is also searched moved (QUERY_SHIFTS, and its centre zoomed by ZOOMS[0]), so
    # that a copy shifted by a few pixels or cropped by about 10% is a candidate: its plain
    # descriptor similarity sits near the cut-off. Each moved search keeps this many neighbours
    # (0: none is made), of which those reaching ``moved_sim`` are candidates: an aligned copy
    # scores 0.92 or more (1st percentile on held-out mosaics), a look-alike seldom 0.85.
    moved_neighbours: int = 3
    moved_sim: float = 0.85
    # an aligned copy lies in one of the query's nearest clusters: the moved searches visit fewer
    moved_nprobe: int = 8
    # a pair checked at 32 px only must stand out from its images' other neighbours (see
    # _distinctive): its correlation at least this many standard deviations above theirs (0: no
    # such test). 1.2 keeps 74 of 76 true pairs and drops 12 of 24 false ones of a labelled
    # CIFAR-10 set (benchmarks/data/cifar10_moved_review.csv).
    distinct_z: float = 1.2
    distinct_neighbours: int = 16
    distinct_support: int = 2  # pairs sharing this many verified partners are not tested
    # a pair checked at 32 px only must also agree in its faint texture (see _texture_scores):
    # the correlation of the signs of its detail at least this (0: no such test). Chosen on
    # the labelled CIFAR-10 pairs (benchmarks/data): of 0.20, 0.25 and 0.30 the highest that
    # loses at most 2% of the true pairs the other tests keep (9 of 494); it drops 20 of their
    # 34 false ones.
    min_texture: float = 0.25
    chunk: int = 16384  # candidate pairs verified at a time: bounds memory, not results


def _blur_matrix(n: int, sigma: float) -> np.ndarray:
    """(n, n) matrix of a 1-D Gaussian blur with reflected borders; X -> M X M^T blurs an image."""
    radius = max(1, int(3 * sigma + 0.5))
    offs = np.arange(-radius, radius + 1)
    w = np.exp(-(offs.astype(F32) ** 2) / (2 * sigma**2)).astype(F32)
    w = w / w.sum()
    m = np.zeros((n, n), F32)
    for i in range(n):
        for o, wt in zip(offs.tolist(), w.tolist(), strict=True):
            j = i + o
            j = -j if j < 0 else (2 * n - 2 - j if j >= n else j)  # reflect
            m[i, j] += wt
    return m


def _apply(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Apply a separable linear operator ``m`` to both axes of a batch (N, H, W)."""
    k, h = m.shape
    out = np.empty((len(x), k, k), np.result_type(m, x))
    # a block at a time, each axis as one matrix product over the block's rows rather than a
    # product per image
    for at in _blocks(len(x)):
        b = x[at]
        rows = (b.reshape(-1, h) @ m.T).reshape(len(b), h, k)
        cols = rows.transpose(0, 2, 1).reshape(-1, h) @ m.T
        out[at] = cols.reshape(len(b), k, k).transpose(0, 2, 1)
    return out


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def descriptors(thumbs: np.ndarray) -> np.ndarray:
    """(N, 32, 32) float -> (N, 256) unit vectors: blurred, pooled to 16x16, centred."""
    n = thumbs.shape[-1]
    pool = np.zeros((n // 2, n), F32)
    pool[np.arange(n // 2), np.arange(0, n, 2)] = 0.5
    pool[np.arange(n // 2), np.arange(1, n, 2)] = 0.5
    op = pool @ _blur_matrix(n, 1.2)
    d = _apply(op, thumbs).reshape(len(thumbs), -1)
    return _unit_rows(d - d.mean(1, keepdims=True))


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` largest values (in no particular order)."""
    if k >= values.shape[1]:
        return np.broadcast_to(np.arange(values.shape[1]), values.shape)
    return np.argpartition(-values, k - 1, axis=1)[:, :k]


def _fit_basis(sample: np.ndarray, n: int, dims: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Mean and top ``dims`` principal axes of a sample of the descriptors (a seeded draw of
    8,192 of the ``n``: _sample_rows); None when the set is too small to need a projection."""
    if sample.shape[1] <= dims or n <= dims:
        return None
    mean = sample.mean(0)
    _, _, v = np.linalg.svd(sample - mean, full_matrices=False)
    return mean, v[:dims]


def _sample_rows(n: int) -> np.ndarray:
    return np.random.default_rng(0).permutation(n)[:8192]


def _project(desc: np.ndarray, basis) -> np.ndarray:
    if basis is None:
        return desc
    mean, axes = basis
    return _unit_rows((desc - mean) @ axes.T).astype(F32)


def _exact_neighbours(search: np.ndarray, q_search: np.ndarray, k: int, rows: int, cols: int) -> tuple:
    """Each query row's ``k`` most similar rows of ``search``, tile by tile so that a similarity
    tile stays in cache (a full N x N block is bound by memory, not arithmetic): their
    similarities and indices, (N, k) each."""
    n = len(search)
    out = np.empty((len(q_search), k), np.int64)
    out_sim = np.empty((len(q_search), k), F32)
    for r0 in range(0, len(q_search), rows):
        q = q_search[r0 : r0 + rows]
        vals, idxs = [], []
        for c0 in range(0, n, cols):
            sim = q @ search[c0 : c0 + cols].T
            i_ = _top(sim, k)
            vals.append(np.take_along_axis(sim, i_, 1))
            idxs.append(i_ + c0)
        v_all, i_all = np.concatenate(vals, 1), np.concatenate(idxs, 1)
        best = _top(v_all, k)
        out[r0 : r0 + len(q)] = np.take_along_axis(i_all, best, 1)
        out_sim[r0 : r0 + len(q)] = np.take_along_axis(v_all, best, 1)
    return out_sim, out


class _Index:
    """An inverted-file index (FAISS ``IndexIVFFlat``, inner product) over the projected
    descriptors: each query is compared with the images of its ``nprobe`` nearest of about
    4 sqrt(N) clusters instead of with all N. Built once, queried for plain and mirrored copies."""

    def __init__(self, search: np.ndarray, nprobe: int):
        try:
            import faiss
        except ImportError:
            raise ImportError(
                "the approximate near-duplicate search needs faiss: pip install faiss-cpu "
                "(or set NearDupParams(index='exact'), which is slower on large sets)"
            ) from None
        n, d = search.shape
        nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
        self.index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = search[np.random.default_rng(0).permutation(n)[: 64 * nlist]]
        self.index.train(np.ascontiguousarray(train))
        self.index.add(np.ascontiguousarray(search))
        self.index.nprobe = min(nprobe, nlist)

    def clusters(self) -> np.ndarray:
        """Each indexed row's cluster, numbered along a path through the clusters that steps to
        the most similar one not yet visited, so that near numbers are near in descriptor space."""
        import faiss

        nlist = self.index.nlist
        centres = self.index.quantizer.reconstruct_n(0, nlist)
        sim = centres @ centres.T
        path = np.empty(nlist, np.int64)
        path[0] = 0
        sim[:, 0] = -np.inf
        for step in range(1, nlist):
            path[step] = int(sim[path[step - 1]].argmax())
            sim[:, path[step]] = -np.inf
        place = np.empty(nlist, np.int64)
        place[path] = np.arange(nlist)
        lists = self.index.invlists
        out = np.empty(self.index.ntotal, np.int64)
        for c in range(nlist):
            size = lists.list_size(c)
            if size:
                out[faiss.rev_swig_ptr(lists.get_ids(c), size)] = place[c]
        return out

    def neighbours(
        self,
        q_search: np.ndarray,
        k: int,
        nprobe: int | None = None,
        order: np.ndarray | None = None,
        rows: int = 65536,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each query's ``k`` nearest (similarities, indices), the queries taken in ``order`` when
        given: queries near one another visit the same clusters, which then stay in the CPU's
        cache (a million queries in cluster order run about 1.5x faster). Results do not depend
        on the order."""
        import faiss

        params = None if nprobe is None else faiss.SearchParametersIVF(nprobe=min(nprobe, self.index.nlist))
        out = np.empty((len(q_search), k), np.int64)
        out_sim = np.empty((len(q_search), k), F32)
        for r0 in range(0, len(q_search), rows):
            at = slice(r0, r0 + rows) if order is None else order[r0 : r0 + rows]
            sim, idx = self.index.search(np.ascontiguousarray(q_search[at]), k, params=params)
            out[at] = idx  # -1 where a query found fewer than k
            out_sim[at] = sim
        return out_sim, out


def _shifted(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """(N, H, W) images moved by (dx, dy) pixels, the edge pixels repeated into the gap."""
    h, w = x.shape[-2:]
    out = np.empty_like(x)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = x[:, ys, xs]
    # fill the gap from the nearest moved row / column (np.pad's "edge" mode, at a fraction of its cost)
    if dy > 0:
        out[:, :dy] = out[:, dy : dy + 1]
    elif dy < 0:
        out[:, h + dy :] = out[:, h + dy - 1 : h + dy]
    if dx > 0:
        out[:, :, :dx] = out[:, :, dx : dx + 1]
    elif dx < 0:
        out[:, :, w + dx :] = out[:, :, w + dx - 1 : w + dx]
    return out


def _query_moves() -> list:
    """The transforms a query image is also searched under: 2-px shifts and a 10% crop."""
    moves = [lambda x, dx=dx, dy=dy: _shifted(x, dx, dy) for dx, dy in QUERY_SHIFTS]
    return [*moves, lambda x: _zoom_centre(x, ZOOMS[0])]


def _query_pairs(sim: np.ndarray, idx: np.ndarray, min_sim: float) -> np.ndarray:
    """Neighbour lists -> (query row, neighbour) pairs, in that order (the query was transformed),
    of the neighbours at ``min_sim`` or more."""
    r = np.broadcast_to(np.arange(len(idx))[:, None], idx.shape)
    keep = (idx != r) & (idx >= 0) & (sim >= min_sim)
    return np.stack([r[keep], idx[keep]], 1).astype(np.int64)


def _pairs_of(idx: np.ndarray, n: int) -> np.ndarray:
    """Neighbour lists (row r: its neighbours' indices, -1 for none) -> unique unordered pairs."""
    r = np.broadcast_to(np.arange(len(idx))[:, None], idx.shape)
    keep = (idx != r) & (idx >= 0)
    i, j = r[keep].astype(np.int64), idx[keep].astype(np.int64)
    # a mirrored i resembling j is j's mirror resembling i: one unordered pair either way
    code = np.unique(np.minimum(i, j) * n + np.maximum(i, j))  # 1-D keys sort far faster than rows
    return np.stack([code // n, code % n], 1)


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) linear interpolation with half-pixel centres (as bilinear resizing in torch
    and PIL without antialiasing: source = (dst + 0.5) * in / out - 0.5, clamped at the edges)."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in), F32)
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


def _zoom_centre(x: np.ndarray, zoom: float) -> np.ndarray:
    """Crop the central 1/zoom of each (P, H, W) image and scale it back to H x W."""
    if zoom == 1.0:
        return x
    h = x.shape[-1]
    c = max(4, round(h / zoom))
    o = (h - c) // 2
    return _apply(_resize_matrix(c, h), np.ascontiguousarray(x[:, o : o + c, o : o + c]))


def _spectrum(x: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Centred, tapered, unit-norm image -> its 2-D real FFT. The taper limits wrap-around."""
    n = x.shape[-1]
    out = np.empty((len(x), n, n // 2 + 1), C64)
    for at in _blocks(len(x)):
        b = (x[at] - x[at].mean((1, 2), keepdims=True)) * window
        norm = np.maximum(np.linalg.norm(b.reshape(len(b), -1), axis=1), 1e-6)
        out[at] = scipy.fft.rfft2(b / norm[:, None, None].astype(F32), workers=-1)
    return out


def _shift_scores(fa_conj: np.ndarray, fb: np.ndarray, max_shift: int) -> np.ndarray:
    """Cross-correlation at every shift within +-max_shift, from two spectra (the first one
    conjugated, once per image rather than once per pair): (P, S).

    Only the (2s+1)^2 shifts we need are evaluated, as a separable partial inverse DFT (two
    matrix products over all pairs at once); a full inverse FFT would compute all 1,024 and cost
    twice as much.
    """
    p, n, half = fb.shape
    ev, eu = _partial_idft(n, max_shift)
    s = ev.shape[1]
    x = ((fa_conj * fb).reshape(p * n, half) @ ev).reshape(p, n, s)  # over the half axis
    y = x.transpose(0, 2, 1).reshape(p * s, n) @ eu.T  # then over the full one
    return y.reshape(p, s, s).transpose(0, 2, 1).real.reshape(p, s * s)


_IDFT_CACHE: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _partial_idft(n: int, max_shift: int) -> tuple[np.ndarray, np.ndarray]:
    key = (n, max_shift)
    if key not in _IDFT_CACHE:
        shifts = np.arange(-max_shift, max_shift + 1, dtype=np.float64)
        v = np.arange(n // 2 + 1, dtype=np.float64)
        u = np.arange(n, dtype=np.float64)
        weight = np.full(n // 2 + 1, 2.0)  # the half spectrum counts twice
        weight[0] = 1.0
        if n % 2 == 0:
            weight[-1] = 1.0
        ev = np.exp(2j * math.pi * v[:, None] * shifts[None, :] / n) * weight[:, None] / (n * n)
        eu = np.exp(2j * math.pi * shifts[:, None] * u[None, :] / n)
        _IDFT_CACHE[key] = (ev.astype(C64), eu.astype(C64))
    return _IDFT_CACHE[key]


def _window(n: int = THUMB) -> np.ndarray:
    hann = np.hanning(n + 2)[1:-1].astype(F32)
    return hann[:, None] * hann[None, :]


def verify(
    thumbs: np.ndarray,
    detail: np.ndarray,
    pairs: np.ndarray,
    params: NearDupParams,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (plain, detail) of each candidate pair at its best alignment (shift and zoom).

    A pair passes when some alignment has both scores above their thresholds. A cascade keeps
    this cheap: all pairs are scored at zoom 1 from per-image spectra computed once; the detail
    score only where the plain score passes; crops (either image zoomed by 1.12 or 1.25, spectra
    again computed once per image) only for pairs close enough to be a crop and not yet passed.
    """
    if not len(pairs):
        return np.empty(0, F32), np.empty(0, F32)
    # only the images some pair uses: the fine re-check looks at a few pairs of a large set
    users, inverse = np.unique(pairs, return_inverse=True)
    pairs = inverse.reshape(pairs.shape)
    thumbs, detail = thumbs[users], detail[users]
    window = _window(thumbs.shape[-1])
    spec, dspec = _spectrum(thumbs, window), _spectrum(detail, window)
    plain = np.full(len(pairs), -1.0, F32)
    detail_score = np.full(len(pairs), -1.0, F32)

    def conj(x: np.ndarray) -> np.ndarray:  # x is a gathered copy: conjugate it in place
        return np.conjugate(x, out=x)

    def consider(sel: np.ndarray, a, ia, b, ib, da, db) -> None:
        """Pairs ``sel``: images ``a[ia]`` against ``b[ib]`` (spectra), detail ``da`` / ``db``
        gathered only for the pairs whose plain score passes."""
        scores = _shift_scores(conj(a[ia]), b[ib], params.max_shift)
        arg = scores.argmax(1)
        pl = scores[np.arange(len(arg)), arg]
        de = np.full_like(pl, -1.0)
        ok = pl >= params.min_ncc
        if ok.any():
            detail_all = _shift_scores(conj(da[ia[ok]]), db[ib[ok]], params.max_shift)
            de[ok] = np.take_along_axis(detail_all, arg[ok, None], 1)[:, 0]
        old_ok = (plain[sel] >= params.min_ncc) & (detail_score[sel] >= params.min_detail_ncc)
        new_ok = ok & (de >= params.min_detail_ncc)
        take = (new_ok & ~old_ok) | ((new_ok == old_ok) & (pl > plain[sel]))
        plain[sel] = np.where(take, pl, plain[sel])
        detail_score[sel] = np.where(take, de, detail_score[sel])

    for sel in _blocks(len(pairs)):
        consider(sel, spec, pairs[sel, 0], spec, pairs[sel, 1], dspec, dspec)

    passed = (plain >= params.min_ncc) & (detail_score >= params.min_detail_ncc)
    retry = np.flatnonzero((plain >= params.crop_ncc) & ~passed)
    if len(retry):
        users = np.unique(pairs[retry].ravel())
        local = np.full(len(thumbs), -1, dtype=np.int64)
        local[users] = np.arange(len(users))
        for zoom in ZOOMS:
            zspec = _spectrum(_zoom_centre(thumbs[users], zoom), window)
            zdspec = _spectrum(_zoom_centre(detail[users], zoom), window)
            for at in _blocks(len(retry)):
                sel = retry[at]
                i, j = pairs[sel, 0], pairs[sel, 1]
                consider(sel, spec, i, zspec, local[j], dspec, zdspec)
                consider(sel, zspec, local[i], spec, j, zdspec, dspec)
    return plain, detail_score


@dataclass
class NearDupResult:
    pairs: np.ndarray  # (P, 2) indices into the thumbnails, verified
    plain: np.ndarray  # their correlation
    detail: np.ndarray  # their detail correlation
    n_candidates: int
    n_flat: int
    mirrored: np.ndarray | None = None  # (P,) bool: the first image is a left-right mirror of the second
    index: str = "exact"  # the neighbour search used: "exact" or "faiss"
    n_not_distinctive: int = 0  # verified pairs dropped as ordinary for their images (_distinctive)
    n_other_texture: int = 0  # verified pairs dropped for a faint texture of their own (_texture_scores)


def _detail(x: np.ndarray, sigma: float, clip: float | None = None) -> np.ndarray:
    """High-pass detail; ``clip`` caps it at that many times each image's median magnitude, so a
    few strong outlines (coins on a white background) cannot outweigh everything inside them."""
    d = x - _apply(_blur_matrix(x.shape[-1], sigma), x)
    if clip is not None:
        mag = np.abs(d).reshape(len(d), -1)
        mid = (mag.shape[1] - 1) // 2  # the lower median, as torch.median takes it
        t = np.maximum(np.partition(mag, mid, axis=1)[:, mid], 1.0)[:, None, None] * clip
        d = np.clip(d, -t, t)
    return d


def _texture(detail: np.ndarray) -> np.ndarray:
    """The detail's signs (see ``_texture_scores``)."""
    return np.sign(detail).astype(F32)


def _verify_mixed(
    imgs: np.ndarray, detail: np.ndarray, pairs: np.ndarray, mirrored: np.ndarray, params: NearDupParams
) -> tuple[np.ndarray, np.ndarray]:
    """``verify`` of pairs whose first image is mirrored where ``mirrored`` says so: the mirrored
    images (only those used) are appended to the stack, and those pairs point at them."""
    if not mirrored.any():
        return verify(imgs, detail, pairs, params)
    flip, p = _mirrored_rows(len(imgs), pairs, mirrored)
    stack = np.concatenate([imgs, imgs[flip, :, ::-1]])
    dstack = np.concatenate([detail, detail[flip, :, ::-1]])
    return verify(stack, dstack, p, params)


def _mirrored_rows(n: int, pairs: np.ndarray, mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For pairs into ``n`` images whose first image is mirrored where ``mirrored`` says so: the
    images whose mirror images are needed, and the pairs pointing at those mirror images, taken
    to be appended after the ``n`` images in that order."""
    flip = np.unique(pairs[mirrored, 0])
    at = np.full(n, -1, dtype=np.int64)
    at[flip] = n + np.arange(len(flip))
    out = pairs.copy()
    out[mirrored, 0] = at[pairs[mirrored, 0]]
    return flip, out


class _Rows:
    """The informative thumbnails, read as float32 a chunk of rows at a time. The full descriptors
    of all rows are kept once computed when they fit in ``KEEP_DESCRIPTORS`` bytes (up to about
    250,000 images); beyond, they are recomputed for each chunk of pairs."""

    def __init__(self, thumbs, informative: np.ndarray, side: int, chunk: int, cluster=None):
        self.thumbs, self.informative, self.side, self.chunk = thumbs, informative, side, chunk
        self.kept: np.ndarray | None = None
        self.cluster: np.ndarray | None = cluster  # each row's cluster of the index, when there is one

    def local_order(self, pairs: np.ndarray) -> np.ndarray | None:
        """An order of ``pairs`` in which a chunk uses fewer distinct images, so fewer thumbnails
        are read and fewer spectra computed (on CIFAR-10 about half as many): by the lower of the
        two images' cluster numbers, then the higher. None: keep the order."""
        if self.cluster is None or len(pairs) <= self.chunk:
            return None
        a, b = self.cluster[pairs[:, 0]], self.cluster[pairs[:, 1]]
        return np.lexsort((np.maximum(a, b), np.minimum(a, b)))

    def __len__(self) -> int:
        return len(self.informative)

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        order = np.argsort(idx, kind="stable")  # a file is read in row order
        out = np.empty((len(idx), self.side, self.side), F32)
        out[order] = self.thumbs[self.informative[idx[order]]]
        return out

    def projected(self, basis, transform=None) -> np.ndarray:
        """The projected descriptors of every row, of ``transform``ed images when given."""
        n, step = len(self), self.chunk
        # a descriptor is the 16x16 pooled thumbnail, float32: 1 KB
        keep = transform is None and self.kept is None and n * (THUMB // 2) ** 2 * 4 <= KEEP_DESCRIPTORS
        full, out = [], []
        for s in range(0, n, step):
            x = self(np.arange(s, min(s + step, n)))
            # moved a block at a time: whole-chunk temporaries cost more than the work
            d = np.concatenate(
                [descriptors(x[at] if transform is None else transform(x[at])) for at in _blocks(len(x))]
            )
            out.append(_project(d, basis))
            if keep:
                full.append(d)
        if keep:
            self.kept = np.concatenate(full)
        return np.concatenate(out)

    def descriptors(self, idx: np.ndarray) -> np.ndarray:
        """The full descriptors of rows ``idx``."""
        return self.kept[idx] if self.kept is not None else descriptors(self(idx))

    def similar(self, pairs: np.ndarray, min_sim: float, transform=None) -> np.ndarray:
        """Pairs whose full descriptors (a chunk of pairs at a time) reach ``min_sim``; with a
        ``transform``, the first image's transformed copy against the second."""
        order = self.local_order(pairs)
        ordered = pairs if order is None else pairs[order]
        keep = np.zeros(len(pairs), dtype=bool)
        for s in range(0, len(pairs), self.chunk):
            p = ordered[s : s + self.chunk]
            first, i = np.unique(p[:, 0], return_inverse=True)
            second, j = np.unique(p[:, 1], return_inverse=True)
            q = self.descriptors(first) if transform is None else descriptors(transform(self(first)))
            keep[s : s + self.chunk] = (q[i] * self.descriptors(second)[j]).sum(1) >= min_sim
        if order is not None:
            keep[order] = keep.copy()
        return pairs[keep]


def _mirror(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x[:, :, ::-1])


class _Search:
    """Nearest neighbours among the projected descriptors of all rows: the exact search, or the
    index on large sets."""

    def __init__(self, rows: _Rows, params: NearDupParams):
        n = len(rows)
        self.basis = _fit_basis(descriptors(rows(_sample_rows(n))), n, 48)
        self.search = rows.projected(self.basis)
        self.exact = params.index == "exact" or (params.index == "auto" and n <= params.exact_limit)
        self.index = None if self.exact else _Index(self.search, params.nprobe)
        # the moved searches only look for near-identical aligned copies, which the index finds
        # as well as the exact search does: above a few thousand images it spares five exact searches
        self.moved_index = self.index
        if self.index is None and n > MOVED_EXACT_LIMIT:
            self.moved_index = _Index(self.search, params.nprobe)
        self.cluster = None if self.moved_index is None else self.moved_index.clusters()
        rows.cluster = self.cluster

    def neighbours(
        self,
        q_search: np.ndarray,
        k: int,
        nprobe: int | None = None,
        moved: bool = False,
        rows: np.ndarray | None = None,
    ) -> tuple:
        """The nearest of each query: the projected descriptors of ``rows`` (all rows when None),
        moved or not."""
        within = self.moved_index if moved else self.index
        if within is None:
            return _exact_neighbours(self.search, q_search, k, 1024, 4096)
        cluster = self.cluster if rows is None else self.cluster[rows]
        return within.neighbours(q_search, k, nprobe, np.argsort(cluster, kind="stable"))


def _candidates(rows: _Rows, params: NearDupParams) -> tuple[np.ndarray, np.ndarray, _Search]:
    """Candidate pairs (P, 2) of ``rows`` positions, which of them pair a mirror, and the search."""
    n = len(rows)
    found = _Search(rows, params)
    k = min(params.neighbours + 1, n)
    cand = rows.similar(_pairs_of(found.neighbours(found.search, k)[1], n), params.candidate_sim)
    ks = min(params.moved_neighbours, n)
    every = [cand]
    for move in _query_moves() if ks > 0 else ():
        # the projected similarity runs within a few hundredths of the full one: a cheap first cut
        moved = found.neighbours(rows.projected(found.basis, move), ks, params.moved_nprobe, moved=True)
        pairs = _query_pairs(*moved, params.moved_sim - 0.05)
        every.append(np.sort(rows.similar(pairs, params.moved_sim, move), 1))
    code = np.unique(np.concatenate(every) @ np.array([n, 1]))  # one unordered pair, however found
    cand = np.stack([code // n, code % n], 1)
    mirrored = np.zeros(len(cand), dtype=bool)
    if params.mirrors:
        mcand = rows.similar(
            _pairs_of(found.neighbours(rows.projected(found.basis, _mirror), k)[1], n),
            params.candidate_sim,
            _mirror,
        )
        mirrored = np.concatenate([mirrored, np.ones(len(mcand), dtype=bool)])
        cand = np.concatenate([cand, mcand])
    return cand, mirrored, found


def _partners(pairs: np.ndarray) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for a, b in pairs.tolist():
        out.setdefault(a, set()).add(b)
        out.setdefault(b, set()).add(a)
    return out


def _distinctive(
    gather: _Rows,
    found: _Search,
    pairs: np.ndarray,
    plain: np.ndarray,
    test: np.ndarray,
    params: NearDupParams,
) -> np.ndarray:
    """Which verified pairs stand out from their images' other neighbours (True for pairs not
    ``test``ed).

    At 32 px, two different photos of one kind of scene (a jet on a clear sky, a horse side on)
    can pass verification: there is no finer detail to tell them apart. What tells them apart is
    that such an image resembles many others about as well: its correlation with the pair's other
    image is ordinary for it. A pair is kept when, for both images, its correlation lies at least
    ``distinct_z`` standard deviations above the image's correlations with its
    ``distinct_neighbours`` nearest images that it is not paired with. Many variants of one
    photo (CIFAR-10 holds about 90 pictures of one white car in one pose) would set each other's background: a
    pair whose images share ``distinct_support`` or more verified partners is kept untested.
    """
    keep = np.ones(len(pairs), dtype=bool)
    if params.distinct_z <= 0 or not test.any():
        return keep
    partners = _partners(pairs)
    support = np.array([len(partners[a] & partners[b]) for a, b in pairs.tolist()], dtype=np.int64)
    test = test & (support < params.distinct_support)
    if not test.any():
        return keep
    users = np.unique(pairs[test])
    n, k_bg = len(gather), params.distinct_neighbours
    # the projected search's nearest, ranked again by the full descriptors (the projection
    # orders look-alikes less well), enough that k_bg remain once the image and its partners
    # are set aside
    k = min(n, 4 * k_bg + 1 + min(max(len(partners[u]) for u in users.tolist()), 4 * k_bg))
    _, idx = found.neighbours(found.search[users], k, rows=users)
    bg = np.full((len(users), k_bg), -1, dtype=np.int64)
    step = max(1, gather.chunk // k)
    for s in range(0, len(users), step):
        block = idx[s : s + step]
        near, at = np.unique(np.maximum(block, 0), return_inverse=True)
        sim = np.einsum(
            "rkd,rd->rk",
            gather.descriptors(near)[at.reshape(block.shape)],
            gather.descriptors(users[s : s + step]),
        )
        for r, u in enumerate(users[s : s + step].tolist()):
            mine = partners[u]
            ok = np.array([j >= 0 and j != u and j not in mine for j in block[r].tolist()], dtype=bool)
            others = block[r][ok][np.argsort(-sim[r][ok], kind="stable")[:k_bg]]
            bg[s + r, : len(others)] = others
    q = np.stack([np.repeat(users, k_bg), bg.ravel()], 1)
    valid = q[:, 1] >= 0
    scores = np.full(len(q), np.nan, F32)
    scores[valid], _ = _verify_chunks(
        gather,
        q[valid],
        np.zeros(int(valid.sum()), dtype=bool),
        params,
        lambda x: _detail(x, 1.5),
        "backgrounds",
    )
    scores = scores.reshape(len(users), k_bg)
    counted = np.isfinite(scores).sum(1)
    # too few images to say what is ordinary for them (a small set): the pair is not judged
    mean = np.where(counted >= 4, np.nanmean(np.where(counted[:, None] > 0, scores, 0.0), 1), -np.inf)
    std = np.where(counted >= 4, np.nanstd(np.where(counted[:, None] > 0, scores, 0.0), 1), 0.0)
    at = np.searchsorted(users, pairs[test])
    z = (plain[test, None] - mean[at]) / (std[at] + 0.02)  # the floor: a near-constant background
    keep[test] = z.min(1) >= params.distinct_z
    return keep


def _overlap_ncc(a: np.ndarray, b: np.ndarray, dx: int, dy: int, border: int = 0) -> np.ndarray:
    """Correlation of each image of ``a`` moved by (dx, dy) with its image of ``b`` (P, H, W),
    over the part they share, less ``border`` pixels on each side: no taper, no wrap-around."""
    h, w = a.shape[-2:]

    def part(d: int, n: int) -> slice:
        return slice(max(d, 0) + border, n + min(d, 0) - border)

    pa = a[:, part(dy, h), part(dx, w)].reshape(len(a), -1)
    pb = b[:, part(-dy, h), part(-dx, w)].reshape(len(b), -1)
    pa = pa - pa.mean(1, keepdims=True)
    pb = pb - pb.mean(1, keepdims=True)
    dot = np.einsum("pk,pk->p", pa, pb)
    norm = np.sqrt(np.einsum("pk,pk->p", pa, pa) * np.einsum("pk,pk->p", pb, pb))
    return dot / np.maximum(norm, 1e-6)


def _box_sums(x: np.ndarray, max_shift: int) -> np.ndarray:
    """(N, S): the sums of each image over the part of it that each move (dx, dy) keeps against
    the other image: rows max(dy, 0) to n + min(dy, 0), likewise columns; moves in the order
    dy, then dx, each from -max_shift up (``_overlap_scores``). The whole image's sums less the
    few rows and columns a move leaves out."""
    m = max_shift
    x = x.astype(np.float64)
    columns = x.sum(1)  # (N, n)
    top, bottom = x[:, :m].cumsum(1), x[:, ::-1][:, :m].cumsum(1)  # the first / last k + 1 rows
    out = []
    for dy in range(-m, m + 1):
        kept = columns if dy == 0 else columns - (top[:, dy - 1] if dy > 0 else bottom[:, -dy - 1])
        total = kept.sum(1)
        left, right = kept[:, :m].cumsum(1), kept[:, ::-1][:, :m].cumsum(1)
        for dx in range(-m, m + 1):
            out.append(total if dx == 0 else total - (left[:, dx - 1] if dx > 0 else right[:, -dx - 1]))
    return np.stack(out, 1)


class _Overlaps:
    """What the correlation over the shared part of two images needs of each image (centred):
    the spectrum of the image padded with zeros (so a move does not wrap around) and its sums
    and sums of squares over the part each move keeps."""

    def __init__(self, x: np.ndarray, max_shift: int):
        x = x - x.mean((1, 2), keepdims=True)
        n, m = x.shape[-1], max_shift
        padded = np.zeros((len(x), n + 2 * m, n + 2 * m), F32)
        padded[:, :n, :n] = x
        self.spec = scipy.fft.rfft2(padded, workers=-1)
        self.sums, self.squares = _box_sums(x, m), _box_sums(x * x, m)
        self.n, self.max_shift = n, m


def _overlap_scores(a: _Overlaps, ia: np.ndarray, b: _Overlaps, ib: np.ndarray) -> np.ndarray:
    """(P, S): the correlation of images ``ia`` of ``a`` moved by each (dx, dy) against images
    ``ib`` of ``b``, over the part they share (``_overlap_ncc`` at every move, from spectra)."""
    m, n = a.max_shift, a.n
    # the partial inverse DFT lists the moves the other way round
    ab = _shift_scores(np.conjugate(a.spec[ia]), b.spec[ib], m)[:, ::-1].astype(np.float64)
    # image b's part for a move is image a's part for the opposite move
    sa, sb = a.sums[ia], b.sums[ib][:, ::-1]
    qa, qb = a.squares[ia], b.squares[ib][:, ::-1]
    d = np.arange(-m, m + 1)
    count = ((n - np.abs(d))[:, None] * (n - np.abs(d))[None, :]).ravel()
    cov = ab - sa * sb / count
    var = np.maximum(qa - sa * sa / count, 0) * np.maximum(qb - sb * sb / count, 0)
    return (cov / np.maximum(np.sqrt(var), 1e-6)).astype(F32)


def _texture_scores(imgs: np.ndarray, pairs: np.ndarray, params: NearDupParams) -> np.ndarray:
    """How well each pair's faint texture agrees: the correlation of the signs of their detail
    (which pixels are lighter than their surroundings, however faintly), at the pair's best
    alignment.

    At 32 px two photos of one kind of scene (a jet on a clear sky, a white puppy) pass
    verification: both correlations are ruled by the strong outline, which look-alikes share.
    One photo copied also keeps its faint texture (the grain of the sky, folds, surfaces), which
    the signs weigh as much as the outline; a look-alike's faint texture is its own. The signs do
    not change under a brighter, darker or more contrasted copy.

    The signs match only where the alignment is exact, so it is searched again without the
    verification's taper (which favours the centre): the shift and zoom (``ZOOMS``, either
    image) with the best plain correlation over the shared part of the two images. The signs'
    correlation leaves out a pixel's border, where the blur meets the edge.
    """
    users, inv = np.unique(pairs, return_inverse=True)
    inv = inv.reshape(pairs.shape)
    views, how = _texture_alignment(imgs[users].astype(F32), inv, params.max_shift)
    signs = [_texture(_detail(v, 1.5)) for v in views]
    out = np.empty(len(pairs), F32)
    for code in np.unique(how).tolist():
        sel = how == code
        za, zb, dx, dy = _decode_alignment(code, len(views), params.max_shift)
        out[sel] = _overlap_ncc(signs[za][inv[sel, 0]], signs[zb][inv[sel, 1]], dx, dy, border=1)
    return out


def _texture_alignment(x: np.ndarray, inv: np.ndarray, max_shift: int) -> tuple[list[np.ndarray], np.ndarray]:
    """The views of ``x`` (as they are, then each of ``ZOOMS``) and, for each pair of rows ``inv``
    (P, 2), the zoom of either image and the move with the best plain correlation over the shared
    part, as one code (``_decode_alignment``)."""
    views = [x] + [_zoom_centre(x, z) for z in ZOOMS]
    m = max_shift
    n_moves = (2 * m + 1) ** 2
    best = np.full(len(inv), -np.inf, F32)
    how = np.zeros(len(inv), dtype=np.int64)  # (zoom of a, zoom of b, move) as one number
    plain = _Overlaps(views[0], m)
    for z in range(len(views)):
        zoomed = plain if z == 0 else _Overlaps(views[z], m)  # one zoom's spectra at a time
        for za, zb in [(0, 0)] if z == 0 else [(0, z), (z, 0)]:
            oa, ob = (plain, zoomed) if za == 0 else (zoomed, plain)
            for at in _blocks(len(inv)):
                scores = _overlap_scores(oa, inv[at, 0], ob, inv[at, 1])
                k = scores.argmax(1)
                top = scores[np.arange(len(k)), k]
                better = top > best[at]
                best[at] = np.where(better, top, best[at])
                how[at] = np.where(better, (za * len(views) + zb) * n_moves + k, how[at])
    return views, how


def _decode_alignment(code: int, n_views: int, max_shift: int) -> tuple[int, int, int, int]:
    """(view of a, view of b, dx, dy) of a ``_texture_alignment`` code, as ``_overlap_ncc`` takes
    them: a's pixel (y, x) lies on b's (y - dy, x - dx), so b's view moved by (dx, dy) lies on a's."""
    side = 2 * max_shift + 1
    zoom, k = divmod(code, side * side)
    za, zb = divmod(zoom, n_views)
    dy, dx = divmod(k, side)
    return za, zb, dx - max_shift, dy - max_shift


def _texture_chunks(
    gather: _Rows, pairs: np.ndarray, mirrored: np.ndarray, params: NearDupParams
) -> np.ndarray:
    """``_texture_scores`` a chunk of pairs at a time (in the index's cluster order, so a chunk
    uses fewer images), the first image mirrored where ``mirrored`` says so."""
    order = gather.local_order(pairs)
    if order is not None:
        pairs, mirrored = pairs[order], mirrored[order]
    # an image costs about 40 KB here (three zooms of it, their signs and padded spectra): a
    # quarter of the verification's chunk keeps the peak near the verification's
    step = max(1, params.chunk // 4)
    out = np.empty(len(pairs), F32)
    starts = ((min(step, len(pairs) - s), s) for s in range(0, len(pairs), step))
    for s in track_weighted(starts, len(pairs), "comparing near-duplicates' texture"):
        p, mir = pairs[s : s + step], mirrored[s : s + step]
        users, inv = np.unique(p, return_inverse=True)
        imgs = gather(users)
        flip, inv = _mirrored_rows(len(imgs), inv.reshape(p.shape), mir)
        if len(flip):
            imgs = np.concatenate([imgs, imgs[flip, :, ::-1]])
        out[s : s + len(p)] = _texture_scores(imgs, inv, params)
    if order is not None:
        out[order] = out.copy()
    return out


def _informative(thumbs, rows: np.ndarray, params: NearDupParams) -> np.ndarray:
    """The rows with enough contrast to carry evidence of identity."""
    if not len(rows):
        return rows
    step = params.chunk
    stds = [
        thumbs[rows[s : s + step]].reshape(-1, THUMB * THUMB).astype(F32).std(1, ddof=1)
        for s in range(0, len(rows), step)
    ]
    return rows[np.concatenate(stds) >= params.flat_std]


def find_near_duplicates(
    thumbs,
    params: NearDupParams | None = None,
    fine=None,
    has_fine: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> NearDupResult:
    """Verified near-duplicate pairs among ``thumbs`` ((N, 32, 32) uint8: an array, or a
    ``ThumbFile`` read a chunk of rows at a time), or among its ``rows`` only.

    ``fine`` ((N, 64, 64) uint8), when given, re-verifies the accepted pairs at twice the
    resolution: two coins of one type photographed alike agree at 32 px, and only their legends,
    wear and scratches, visible at 64 px, tell them apart. ``has_fine`` ((N,) bool) says which
    images really hold that much detail; a pair with an image smaller than 64 px is not
    re-verified, since its 64-px thumbnail is only an upsampled copy of the 32-px one. Such a
    pair must pass two other tests instead: its faint texture must agree (``_texture_scores``,
    ``params.min_texture``), then it must stand out from its images' other neighbours
    (``_distinctive``, ``params.distinct_z``).

    With ``params.mirrors``, left-right mirrored copies are searched too (the mirror of each
    image against the originals): to a model trained with flip augmentation a mirrored copy in
    the test set is the training image itself.

    Memory is bounded by ``params.chunk``, not by N: thumbnails are read in chunks, only the
    48-d projected descriptors (192 bytes an image) are held for all images at once, and
    candidates are verified a chunk at a time. The pairs index ``thumbs``.
    """
    params = params or NearDupParams()
    if params.index not in ("auto", "exact", "faiss"):
        raise ValueError(f"NearDupParams.index must be 'auto', 'exact' or 'faiss', not {params.index!r}")
    rows = np.arange(len(thumbs)) if rows is None else np.asarray(rows, dtype=np.int64)
    informative = _informative(thumbs, rows, params)
    n_flat = len(rows) - len(informative)
    if len(informative) < 2:
        empty = np.empty((0, 2), np.int64)
        return NearDupResult(empty, np.empty(0), np.empty(0), 0, n_flat, np.empty(0, bool))
    gather = _Rows(thumbs, informative, THUMB, params.chunk)
    cand, mirrored, found = _candidates(gather, params)
    plain, detail_score = _verify_chunks(gather, cand, mirrored, params, lambda x: _detail(x, 1.5))
    keep = (plain >= params.min_ncc) & (detail_score >= params.min_detail_ncc)
    pairs, plain, detail_score, mirrored = cand[keep], plain[keep], detail_score[keep], mirrored[keep]
    small = np.ones(len(pairs), dtype=bool)  # pairs with no finer check than the 32-px one
    if fine is not None and len(pairs):
        big = np.ones(len(thumbs), dtype=bool) if has_fine is None else np.asarray(has_fine, dtype=bool)
        big = big[informative]
        fine_params = dataclasses.replace(
            params, max_shift=2 * params.max_shift, min_detail_ncc=params.min_fine_detail_ncc
        )
        check = big[pairs[:, 0]] & big[pairs[:, 1]]
        fplain, fdetail = np.empty(0, F32), np.empty(0, F32)
        if check.any():
            fplain, fdetail = _verify_chunks(
                _Rows(fine, informative, 2 * THUMB, params.chunk, gather.cluster),
                pairs[check],
                mirrored[check],
                fine_params,
                lambda x: _detail(x, 1.5, params.fine_clip),
            )
        ok = np.ones(len(pairs), dtype=bool)
        ok[check] = (fplain >= fine_params.min_ncc) & (fdetail >= fine_params.min_detail_ncc)
        detail_score[check] = np.minimum(detail_score[check], fdetail)
        small = ~check[ok]
        pairs, plain, detail_score, mirrored = pairs[ok], plain[ok], detail_score[ok], mirrored[ok]
    ok = np.ones(len(pairs), dtype=bool)
    if params.min_texture > 0 and small.any():
        ok[small] = _texture_chunks(gather, pairs[small], mirrored[small], params) >= params.min_texture
    n_texture = int((~ok).sum())
    pairs, plain, detail_score, mirrored = pairs[ok], plain[ok], detail_score[ok], mirrored[ok]
    small = small[ok]
    ok = _distinctive(gather, found, pairs, plain, small, params)
    n_ordinary = int((~ok).sum())
    pairs, plain, detail_score, mirrored = pairs[ok], plain[ok], detail_score[ok], mirrored[ok]
    # a pair found both plainly and mirrored (a symmetric picture) is one pair: the plain one
    order = np.lexsort((mirrored, pairs[:, 1], pairs[:, 0]))
    pairs, plain, detail_score, mirrored = pairs[order], plain[order], detail_score[order], mirrored[order]
    first = np.ones(len(pairs), dtype=bool)
    first[1:] = (pairs[1:] != pairs[:-1]).any(1)
    return NearDupResult(
        informative[pairs[first]],
        plain[first],
        detail_score[first],
        len(cand),
        n_flat,
        mirrored[first],
        "exact" if found.exact else "faiss",
        n_ordinary,
        n_texture,
    )


def _verify_chunks(
    gather,
    pairs: np.ndarray,
    mirrored: np.ndarray,
    params: NearDupParams,
    detail_of,
    what: str = "candidates",
):
    """``_verify_mixed`` a chunk of pairs at a time, with only the images that chunk uses."""
    order = gather.local_order(pairs)
    if order is not None:
        pairs, mirrored = pairs[order], mirrored[order]
    plain = np.empty(len(pairs), F32)
    detail = np.empty(len(pairs), F32)
    starts = ((min(params.chunk, len(pairs) - s), s) for s in range(0, len(pairs), params.chunk))
    for s in track_weighted(starts, len(pairs), f"verifying near-duplicate {what}"):
        p = pairs[s : s + params.chunk]
        users, inv = np.unique(p, return_inverse=True)
        imgs = gather(users)
        plain[s : s + len(p)], detail[s : s + len(p)] = _verify_mixed(
            imgs, detail_of(imgs), inv.reshape(p.shape), mirrored[s : s + len(p)], params
        )
    if order is not None:
        plain[order], detail[order] = plain.copy(), detail.copy()
    return plain, detail


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
