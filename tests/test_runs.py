"""The run layer: one way to open a trained run for every analysis."""

from __future__ import annotations

import pytest
import torch

from camscope.errors import CamscopeError
from camscope.runs import open_run
from tests.helpers import synthetic_prepared


def test_open_run_from_its_folder_or_a_checkpoint(trained_run, tmp_path):
    a = open_run(trained_run.run)
    b = open_run(trained_run.run / "last.safetensors")
    assert a.dir == b.dir == trained_run.run and a.prepared == trained_run.prepared
    assert a.classes == ["centre_cross", "centre_ring", "rim_dots"] and not a.model.training
    images, labels, ids = a.split_tensors("test")
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 16, 32)
    assert len(images) == len(labels) == len(ids) and set(labels.tolist()) <= {0, 1, 2}
    assert a.split()[ids[0]] == "test" and a.leak_flags(ids).dtype == torch.bool
    assert a.out("eval") == trained_run.run / "eval" and a.out("eval", tmp_path) == tmp_path
    assert a.prepared_spec()["channels"] == 3
    with pytest.raises(CamscopeError, match="no 'nope' items"):
        a.split_tensors("nope")
    _, other = synthetic_prepared(tmp_path / "other.safetensors", n=40, seed=9)
    with pytest.raises(CamscopeError, match="not the prepared dataset the run was trained on"):
        open_run(trained_run.run, other).split_tensors("test")
    moved = trained_run.copy(tmp_path / "run")
    for f in ("best", "last"):  # a folder without checkpoints is not a run
        (moved / f"{f}.safetensors").unlink()
    with pytest.raises(CamscopeError, match="no checkpoint"):
        open_run(moved)
