"""Masking probe: geometry of the masks, fills, the sweep on a model with known evidence."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from camscope.cli import app
from camscope.errors import CamscopeError
from camscope.models.inference import Preprocess
from camscope.probes.masking import Geometry, mask, parse_sizes, summarise, sweep
from tests.helpers import runner


def test_mask_geometry():
    g = Geometry(20, 40, sides=2)
    centre = mask(g, "centre", 0.5)
    assert centre.shape == (20, 40)
    assert centre[10, 10] == 1 and centre[10, 30] == 1  # each side masked on its own centre
    assert centre[0, 0] == 0 and centre[10, 20] == 0
    outer = mask(g, "outer", 0.3)
    assert outer[10, 10] == 0 and outer[10, 1] == 1 and outer[0, 0] == 0  # ring, corners beyond the object
    assert torch.equal(mask(g, "centre", 0.0), torch.zeros(20, 40))
    full = mask(Geometry(20, 20), "centre", 1.0)
    assert abs(full.mean().item() - torch.pi / 4) < 0.03  # the whole disk of radius R
    assert mask(Geometry(20, 20), "centre", 1.0, "square").sum() == 400
    # masks grow with size
    sizes = [mask(Geometry(32, 32), "outer", s).sum().item() for s in (0.1, 0.4, 0.7, 1.0)]
    assert sizes == sorted(sizes) and sizes[-1] == mask(Geometry(32, 32), "centre", 1.0).sum().item()
    with pytest.raises(CamscopeError):
        mask(g, "middle", 0.5)


def test_parse_sizes():
    assert parse_sizes("0.1:0.9:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert parse_sizes("0.2, 0.5") == [0.2, 0.5]
    with pytest.raises(CamscopeError):
        parse_sizes("0.5:2:0.5")


class CentreReader(nn.Module):
    """Class 1 if the centre of the image is bright, else 0: relies on the centre only."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))

    def forward(self, x):
        h, w = x.shape[-2:]
        c = x[:, :, h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2].mean((1, 2, 3)) * self.w
        return torch.stack([-c, c], 1) * 5


def test_sweep_centre_model_fails_under_centre_masks_only():
    n = 40
    images = torch.full((n, 1, 16, 16), 40, dtype=torch.uint8)
    labels = torch.arange(n) % 2
    images[labels == 1, :, 6:10, 6:10] = 250
    prep = Preprocess([0.5], [0.25])
    # size 0.1 hides the 4 central pixels (of the 16 read): the bright mean still wins
    res = sweep(CentreReader(), images, labels, prep, Geometry(16, 16), [0.0, 0.1, 0.5, 0.8], batch=64)
    rows = {(r["mode"], r["size"]): r for r in summarise(res, ["dark", "bright"]) if r["class"] == "all"}
    assert rows[("centre", 0.0)]["accuracy"] == 1.0 and rows[("outer", 0.8)]["accuracy"] == 1.0
    assert rows[("centre", 0.5)]["accuracy"] == 0.5  # every bright centre hidden -> all "dark"
    per_class = [
        r for r in summarise(res, ["dark", "bright"]) if r["class"] == "bright" and r["mode"] == "centre"
    ]
    assert [r["accuracy"] for r in per_class] == [1.0, 1.0, 0.0, 0.0]


def test_mask_command_end_to_end(trained_run, tmp_path):
    run, prepared = trained_run.copy(tmp_path / "run"), trained_run.prepared
    r = runner.invoke(
        app,
        [
            "mask",
            str(run),
            "--data",
            str(prepared),
            "--sizes",
            "0.3,0.6",
            "--cam-images",
            "8",
            "--fill",
            "blur",
        ],
    )
    assert r.exit_code == 0, r.output
    out = run / "probes" / "masking"
    for f in ("masking.csv", "cam_visible_energy.csv", "masking.json", "masking_curves.png", "cam_shift.png"):
        assert (out / f).is_file(), f
    import json

    res = json.loads((out / "masking.json").read_text())
    assert res["sizes"] == [0.0, 0.3, 0.6] and "the model relies on" in res["answer"]["verdict"]
    assert {r["mode"] for r in res["cam"]} == {"centre", "outer"}
    r = runner.invoke(app, ["mask", str(run), "--data", str(prepared), "--fill", "paint"])
    assert r.exit_code == 2 and "unknown fill" in r.output


def test_masked_training_augmentation_hides_the_drawn_region(tmp_path):
    from camscope.geometry import Geometry, distance_map, mask
    from camscope.train import augment
    from camscope.train.config import make_config
    from camscope.train.data import TrainData
    from camscope.train.trainer import train

    g = torch.Generator().manual_seed(0)
    aug = augment.Augment(mask_prob=0.5, mask_max=0.8)
    p = aug.draw(torch.arange(64), (16, 32), 0, g, 0)
    assert 0.25 < p.mask_on.float().mean() < 0.75 and p.mask_size.max() <= 0.8
    geom = Geometry(16, 32, sides=2)
    x = torch.ones(64, 3, 16, 32)
    out = aug.apply(x, p, distance=distance_map(geom), fill=torch.full((1, 3, 1, 1), -1.0))
    for i in range(64):
        expected = torch.zeros(16, 32)
        if p.mask_on[i]:
            expected = mask(geom, "outer" if p.mask_outer[i] else "centre", float(p.mask_size[i]))
        assert torch.equal(out[i, 0] == -1, expected.bool()), i
    # and a run with it trains
    data = TrainData(
        torch.randint(0, 255, (48, 3, 16, 16), dtype=torch.uint8),
        torch.arange(48) % 2,
        torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8),
        torch.arange(8) % 2,
        ["a", "b"],
        [str(i) for i in range(48)],
        [str(i) for i in range(8)],
        "h",
    )
    res = train(make_config("gray_cnn", epochs=1, batch_size=16, mask_prob=0.5), data, tmp_path / "run")
    assert len(res.history) == 1


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(8, 40),
    w=st.integers(8, 40),
    sides=st.sampled_from([1, 2]),
    a=st.floats(0, 1),
    b=st.floats(0, 1),
    shape=st.sampled_from(["disk", "square"]),
)
def test_mask_geometry_properties(h, w, sides, a, b, shape):
    g = Geometry(h, w * sides, sides=sides)
    lo, hi = sorted((a, b))
    for mode in ("centre", "outer"):
        small, big = mask(g, mode, lo, shape), mask(g, mode, hi, shape)
        assert small.shape == (h, w * sides)
        assert set(small.unique().tolist()) <= {0.0, 1.0}
        assert (small <= big).all()  # a larger mask hides everything a smaller one hides
    if sides == 2 and w * 2 == g.width:
        left, right = mask(g, "centre", hi, shape).split(w, dim=1)
        assert torch.equal(left, right)  # each side is masked on its own centre
    if shape == "disk":
        # a centre disk of radius s and the outer ring of width 1 - s never overlap, and together
        # they cover the object's disk
        c, o = mask(g, "centre", lo), mask(g, "outer", 1 - lo)
        assert (c * o).sum() <= 2 * sides * (h + w)  # at most the boundary pixels are shared
