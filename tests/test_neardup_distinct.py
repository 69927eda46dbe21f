"""At 32 px, different photos of one kind of scene (a dark plane on a clear sky) can pass the
near-duplicate verification: the pairs kept must stand out from their images' other
neighbours. Generated look-alikes, true copies among them, and many variants of one picture."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import gaussian_filter

from camscope.data.neardup import NearDupParams, connected_groups, find_near_duplicates


def _silhouettes(n: int, rng, spread: float = 6.0) -> list[np.ndarray]:
    """n different pictures of one kind: a dark wing with a fin on a smooth sky, its place, size
    and the sky drawn anew for each; ``spread`` scales how much they differ."""
    yy, xx = np.mgrid[0:32, 0:32].astype(float)
    out = []
    for _ in range(n):
        cy, cx = 16 + rng.normal(0, 0.8 * spread, 2)
        a, b = 9 + rng.normal(0, 0.6 * spread), 3.2 + rng.normal(0, 0.3 * spread)
        body = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1
        fin = (np.abs(xx - (cx + 0.6 * a)) < 1.5) & (yy > cy - b - 3 + rng.normal(0, 0.5)) & (yy < cy)
        sky = 170 + 40 * (yy / 32) * rng.uniform(0.5, 1.5) + gaussian_filter(rng.normal(0, 6, (32, 32)), 2)
        img = np.where(body | fin, 40 + rng.normal(0, 8), sky) + rng.normal(0, 1.5, (32, 32))
        out.append(np.clip(gaussian_filter(img, 0.6), 0, 255).astype(np.uint8))
    return out


def _textures(n: int, rng) -> list[np.ndarray]:
    c = gaussian_filter(rng.normal(size=(n, 32, 32)), (0, 1.2, 1.2))
    c = (c - c.mean((1, 2), keepdims=True)) / c.std((1, 2), keepdims=True)
    return list(np.clip(128 + 50 * c, 0, 255).astype(np.uint8))


def _jpeg(x: np.ndarray, quality: int = 60) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf))


@pytest.fixture(scope="module")
def scene():
    """60 look-alike silhouettes, 300 textures, JPEG copies of the first 20 textures."""
    rng = np.random.default_rng(0)
    family, textures = _silhouettes(60, rng), _textures(300, rng)
    copies = [_jpeg(t) for t in textures[:20]]
    planted = {(60 + k, 360 + k) for k in range(20)}
    return np.stack(family + textures + copies), planted


def _pairs(res) -> set[tuple[int, int]]:
    return {tuple(p) for p in res.pairs.tolist()}


def test_look_alike_pairs_are_dropped_and_true_copies_kept(scene):
    thumbs, planted = scene
    off = find_near_duplicates(thumbs, NearDupParams(distinct_z=0.0))
    on = find_near_duplicates(thumbs)
    false_off = {p for p in _pairs(off) if max(p) < 60}
    false_on = {p for p in _pairs(on) if max(p) < 60}
    assert planted <= _pairs(off) and planted <= _pairs(on)
    assert _pairs(off) - planted == false_off  # the look-alikes are all the false pairs there are
    assert len(false_off) >= 40  # the test is about something: verification alone accepts them
    assert len(false_on) <= len(false_off) // 2, (len(false_on), len(false_off))
    assert on.n_not_distinctive == len(off.pairs) - len(on.pairs)
    largest = [
        max(map(len, connected_groups(len(thumbs), np.array(sorted(s))))) for s in (false_off, false_on)
    ]
    assert largest[1] < largest[0] // 2, largest  # the chain of look-alikes falls apart


def test_many_variants_of_one_picture_stay_one_group(scene):
    # a dozen tinted, noisy variants of one silhouette among its look-alikes: they do not stand
    # out from the look-alikes by much, and are kept because they match each other
    thumbs, _ = scene
    rng = np.random.default_rng(1)
    base = thumbs[0].astype(float)
    variants = [
        base * rng.uniform(0.8, 1.1)
        + rng.uniform(-20, 20)
        + gaussian_filter(rng.normal(0, 10, (32, 32)), 0.7)
        for _ in range(12)
    ]
    stack = np.concatenate([thumbs, np.clip(variants, 0, 255).astype(np.uint8)])
    ours = {0, *range(len(thumbs), len(stack))}

    def variant_pairs(params: NearDupParams) -> tuple[int, list[set]]:
        res = find_near_duplicates(stack, params)
        groups = [set(g) & ours for g in connected_groups(len(stack), res.pairs)]
        return sum(a in ours and b in ours for a, b in res.pairs.tolist()), [g for g in groups if g]

    n_on, groups = variant_pairs(NearDupParams())
    assert groups == [ours]
    n_off, _ = variant_pairs(NearDupParams(distinct_z=0.0))
    assert n_on == n_off
    n_unsupported, _ = variant_pairs(NearDupParams(distinct_support=10**6))
    assert n_unsupported < n_on  # without the shared-partner rule some would be lost


def test_pairs_checked_at_64px_are_not_tested(scene):
    thumbs, _ = scene
    fine = np.stack([np.asarray(Image.fromarray(t).resize((64, 64), Image.BICUBIC)) for t in thumbs])
    on = find_near_duplicates(thumbs, fine=fine)
    off = find_near_duplicates(thumbs, dataclasses.replace(NearDupParams(), distinct_z=0.0), fine=fine)
    assert on.n_not_distinctive == 0 and _pairs(on) == _pairs(off)
    assert sum(max(p) < 60 for p in _pairs(on)) >= 20  # look-alike pairs the 32-px test would judge
    # the same pictures said to be 32 px (their 64-px thumbnails upsampled): tested
    small = find_near_duplicates(thumbs, fine=fine, has_fine=np.zeros(len(thumbs), dtype=bool))
    assert small.n_not_distinctive > 0
