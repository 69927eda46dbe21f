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


def test_a_run_keeps_its_split_and_refuses_another(trained_run, tmp_path):
    from camscope.cli import app
    from tests.helpers import cli_train, runner

    # train on a split made elsewhere: the run keeps a copy, evaluate finds it
    s = tmp_path / "s"
    assert runner.invoke(app, ["split", str(trained_run.prepared), "--out", str(s)]).exit_code == 0
    run = tmp_path / "r"
    cli_train(trained_run.prepared, run, "gray_cnn", 1, "--split", str(s / "split.csv"))
    assert (run / "split.csv").read_bytes() == (s / "split.csv").read_bytes()
    r = runner.invoke(app, ["evaluate", str(run), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    # re-splitting a trained run is refused; a split changed behind its back is refused when read
    r = runner.invoke(app, ["split", str(trained_run.prepared), "--out", str(run), "--seed", "7"])
    assert r.exit_code == 2 and "holds a trained run" in r.output
    lines = (run / "split.csv").read_text().splitlines()
    flipped = [lines[0]] + [ln.replace(",train,", ",test,") if ",train," in ln else ln for ln in lines[1:]]
    (run / "split.csv").write_text("\n".join(flipped) + "\n")
    for cmd in (["evaluate", str(run)], ["explain", str(run)], ["mask", str(run)]):
        r = runner.invoke(app, cmd)
        assert r.exit_code == 2 and "not the split the run was trained on" in r.output, cmd
