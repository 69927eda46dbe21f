"""Faithfulness metrics on hand-computed cases."""

from __future__ import annotations

import torch
from torch import nn

from camscope.explain.faithfulness import (
    average_drop_increase,
    deletion_insertion,
    energy_inside,
    pointing_game,
)


class QuadrantModel(nn.Module):
    """Logit 0 = 4 x mean of the top-left quadrant, logit 1 = 0: evidence sits in one known place."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        s = 4 * x[:, :, :4, :4].mean((1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1) + self.dummy


def test_pointing_and_energy_by_hand():
    maps = torch.zeros(2, 4, 4)
    maps[0, 1, 1] = 1.0  # inside
    maps[1, 3, 3] = 1.0  # outside, one pixel from the region's corner
    maps[1, 0, 0] = 0.5
    region = torch.zeros(2, 4, 4, dtype=torch.bool)
    region[:, :3, :3] = True
    assert pointing_game(maps, region).tolist() == [True, False]
    assert pointing_game(maps, region, tolerance=1).tolist() == [True, True]
    assert torch.allclose(energy_inside(maps, region), torch.tensor([1.0, 0.5 / 1.5]))


def test_deletion_falls_faster_for_the_right_map():
    x = torch.zeros(3, 1, 8, 8)
    x[:, :, :4, :4] = 1.0  # the evidence; blurring spreads it out, so insertion has work to do
    good = torch.zeros(3, 8, 8)
    good[:, :4, :4] = 1.0
    good += torch.rand(3, 8, 8) * 0.01
    bad = 1 - good
    model = QuadrantModel()
    t = torch.zeros(3, dtype=torch.long)
    right = deletion_insertion(model, x, good, t, steps=8)
    wrong = deletion_insertion(model, x, bad, t, steps=8)
    assert right.deletion.shape == (3, 9) and torch.allclose(right.fractions, torch.linspace(0, 1, 9))
    # after a quarter of the pixels (the quadrant) are gone, the right map has removed all evidence
    p_full = torch.sigmoid(torch.tensor(4.0))
    assert torch.allclose(right.deletion[:, 0], p_full.expand(3)) and torch.allclose(
        right.deletion[:, 2], torch.tensor(0.5)
    )
    assert torch.allclose(wrong.deletion[:, 2], p_full.expand(3))
    assert (right.deletion_auc < wrong.deletion_auc).all() and (
        right.insertion_auc > wrong.insertion_auc
    ).all()


def test_average_drop_and_increase():
    model = QuadrantModel()
    x = torch.ones(2, 1, 8, 8)
    keep = torch.zeros(2, 8, 8)
    keep[0, :4, :4] = 1.0  # keeps all the evidence: no drop
    keep[1, 4:, 4:] = 1.0  # keeps none: drops to 0.5
    out = average_drop_increase(model, x, keep, torch.zeros(2, dtype=torch.long))
    p = torch.sigmoid(torch.tensor(4.0)).item()
    assert abs(out["average_drop_pct"] - 50 * (p - 0.5) / p) < 1e-3
    assert out["increase_pct"] == 0.0
