"""Image-quality findings: dark, light, blank and blurry pictures, scored during the audit's scan."""

import csv
import json

import numpy as np
import pytest
from PIL import Image, ImageFilter

from camscope.data.audit import audit, write_audit
from camscope.data.messy import HEADS, LABEL_REGEX, TAILS
from camscope.data.quality import QualityParams, judge, measure
from camscope.data.sources import CsvSource, FolderSource
from camscope.data.synthetic import CoinSpec, generate


@pytest.fixture(scope="module")
def coins():
    return generate(CoinSpec(n=40, size=96, seed=3)).images[:, 0]  # N x H x W x 3 uint8, sharp


def _pic(arr) -> Image.Image:
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _blur(arr, r=2.5) -> Image.Image:
    return _pic(arr).filter(ImageFilter.GaussianBlur(r))


def test_blur_lowers_sharpness_and_contrast_does_not(coins):
    for arr in coins[:10]:
        sharp = measure(_pic(arr)).sharpness
        assert measure(_blur(arr)).sharpness < 0.5 * sharp
        # the same picture at half the contrast: the score is a ratio to the contrast
        faint = measure(_pic(arr.astype(np.float32) * 0.5 + 64)).sharpness
        assert faint == pytest.approx(sharp, rel=0.25)


def test_each_kind_is_found_on_its_picture_and_nowhere_else(coins):
    pictures = [_pic(a) for a in coins]  # 40 sharp coins
    planted = {
        "dark": _pic(coins[0].astype(np.float32) * 0.1),
        "light": _pic(coins[1].astype(np.float32) * 0.1 + 230),
        "blurry": _blur(coins[2]),
        "blank": _pic(np.full_like(coins[3], 200)),
    }
    index = {kind: len(pictures) + k for k, kind in enumerate(planted)}
    findings, summary = judge([measure(p) for p in [*pictures, *planted.values()]])
    found = {(f.index, f.kind) for f in findings}
    assert found == {(index[k], k) for k in planted}, found
    assert summary["counts"] == {k: 1 for k in planted}
    assert summary["blur_threshold"] == pytest.approx(0.3 * summary["median_sharpness"], abs=1e-4)


def test_an_object_on_white_is_not_light_and_on_black_is_not_dark(coins):
    yy, xx = np.mgrid[:96, :96]
    disk = ((yy - 48) ** 2 + (xx - 48) ** 2 < 30**2)[..., None]  # about 30% of the picture
    for bg in (0, 255):
        arr = np.where(disk, coins[5], bg)
        assert not judge([measure(_pic(arr))])[0]


def test_too_few_pictures_are_never_called_blurry(coins):
    scores = [measure(_pic(a)) for a in coins[:5]] + [measure(_blur(coins[6], 4))]
    assert not [f for f in judge(scores)[0] if f.kind == "blurry"]
    assert [f for f in judge(scores, QualityParams(min_images_for_blur=3))[0] if f.kind == "blurry"]


def test_large_pictures_are_scored_at_a_bounded_size(coins):
    big = _pic(coins[7]).resize((1600, 1200), Image.BICUBIC)
    s = measure(big)
    assert 0 <= s.p01 <= s.p05 <= s.p95 <= s.p99 <= 1
    assert s.sharpness == s.sharpness  # not nan


def test_the_audit_reports_quality_and_writes_every_score(messy, tmp_path):
    manifest, planted = messy
    src = CsvSource(manifest, patterns=[HEADS, TAILS], label_from="Obverse", label_regex=LABEL_REGEX)
    report = audit(src)
    by_kind: dict[str, set] = {}
    for p in report["problems"]:
        by_kind.setdefault(p["kind"], set()).update(p["item_ids"])
    # the planted copy rescaled 2x (bicubic) is truly less sharp than the rest: upscaled
    upscaled = planted["near_duplicate"][-1]
    for kind in ("dark", "light", "blurry", "blank"):
        # exactly the planted picture: no false finding among the 390-odd others
        allowed = set(planted[kind]) | ({upscaled} if kind == "blurry" else set())
        assert set(planted[kind]) <= by_kind.get(kind, set()) <= allowed, (kind, by_kind.get(kind))
    assert planted["blank"][0] not in by_kind.get("grayscale_in_color", set())
    write_audit(report, tmp_path)
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert "per_image" not in saved["image_quality"]
    assert saved["image_quality"]["per_image_file"] == "image_quality.csv"
    with open(tmp_path / "image_quality.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report["n_readable"]
    assert {"path", "item_id", "p01", "p05", "p95", "p99", "sharpness"} <= set(rows[0])


def test_quality_needs_no_labels_or_csv(tmp_path, coins):
    (tmp_path / "a").mkdir()
    for k, arr in enumerate(coins[:25]):
        _pic(arr).save(tmp_path / "a" / f"{k}.png")
    _pic(coins[25].astype(np.float32) * 0.1).save(tmp_path / "a" / "night.png")
    report = audit(FolderSource(tmp_path))
    dark = [p for p in report["problems"] if p["kind"] == "dark"]
    assert [p["paths"] for p in dark] == [["a/night.png"]]


def test_sharpness_blurs_as_scipys_gaussian_filter_does():
    # measure() applies the 5-tap kernel itself (computed once); it must stay scipy's filter
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(5)
    img = Image.fromarray(rng.integers(0, 256, (40, 57), dtype=np.uint8))
    g = np.asarray(img).astype(np.float32)
    expected = float((g - gaussian_filter(g, 1.0, mode="nearest", truncate=2.0)).std()) / float(g.std())
    assert measure(img).sharpness == expected
