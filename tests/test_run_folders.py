"""Run folders: camscope never deletes or overwrites what it did not write, one process writes a
run folder at a time, and output names never collide."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from camscope.cli import app
from camscope.errors import CamscopeError
from camscope.folders import LOCK, MARKER, FolderBusy, claim, hold, run_kind
from camscope.utils import atomic_write_text, sweep_orphan_temps, unique_stems
from tests.helpers import CLI, ENV, cli_train, dead_pid, synthetic_prepared, write_study

runner = CliRunner()

# a study that runs in seconds: messy coins on disk (so it has a source/ folder), one short training
QUICK = {
    "name": "quick",
    "seed": 0,
    "source": {"kind": "synthetic", "n": 60, "size": 16, "messy": True},
    "audit": {"near_duplicates": False},
    "prepare": {"size": 16},
    "experiments": [
        {
            "name": "e",
            "classes": {"top_k": 3},
            "train": {"model": "gray_cnn", "epochs": 1, "batch_size": 32, "flip": "none"},
            "analyses": [],
        }
    ],
    "report": False,
}


def test_run_refuses_a_folder_it_did_not_write_and_deletes_nothing(tmp_path):
    # the reproduction from the hardening issue: both files used to be deleted
    v = tmp_path / "v"
    (v / "source").mkdir(parents=True)
    (v / "p" / "sub").mkdir(parents=True)
    (v / "source" / "main.py").write_text("x\n")
    (v / "p" / "sub" / ".draft.tmp").write_text("k\n")
    study = write_study(tmp_path, QUICK)
    r = runner.invoke(app, ["run", str(study), "--out", str(v)])
    assert r.exit_code == 2, r.output
    assert "not a camscope run folder" in r.output and "'p', 'source'" in r.output
    assert "Traceback" not in r.output
    assert (v / "source" / "main.py").read_text() == "x\n"
    assert (v / "p" / "sub" / ".draft.tmp").read_text() == "k\n"
    assert sorted(p.name for p in v.iterdir()) == ["p", "source"]  # not even a lock file was left


def test_a_run_folder_keeps_the_users_files_and_sweeps_only_its_own_orphans(tmp_path):
    study = write_study(tmp_path, QUICK)
    out = tmp_path / "out"
    r = runner.invoke(app, ["run", str(study), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert run_kind(out) == "study" and (out / MARKER).is_file()
    # a user's files inside the run folder, camscope temp files of a live and of a dead process
    (out / "source" / "main.py").write_text("x\n")
    (out / "notes").mkdir()
    (out / "notes" / ".draft.tmp").write_text("k\n")
    (out / "prepared" / ".data.safetensors.draft.tmp").write_text("k\n")
    from camscope.utils import _HOST

    orphan = out / "audit" / f".audit.json.camscope-{_HOST}-{dead_pid()}-abc123.tmp"
    live = out / "audit" / f".audit.json.camscope-{_HOST}-{os.getpid()}-abc123.tmp"
    orphan.write_text("half")
    live.write_text("half")
    r = runner.invoke(app, ["run", str(study), "--out", str(out), "--set", "seed=1"])  # every stage reruns
    assert r.exit_code == 0, r.output
    assert (out / "source" / "main.py").read_text() == "x\n"
    assert (out / "notes" / ".draft.tmp").read_text() == "k\n"
    assert (out / "prepared" / ".data.safetensors.draft.tmp").read_text() == "k\n"
    assert not orphan.exists() and live.exists()


def test_sweep_and_unique_stems_units(tmp_path):
    from camscope.utils import _HOST

    names = [
        f".a.camscope-{_HOST}-{dead_pid()}-x1.tmp",  # ours, writer gone: swept
        f".a.camscope-{_HOST}-{os.getpid()}-x2.tmp",  # ours, writer alive: kept
        f".a.camscope-ffffff-{dead_pid()}-x3.tmp" if _HOST != "ffffff" else ".a.camscope-000000-1-x3.tmp",
        ".a.1234.tmp",  # the old naming, or a user's: kept
    ]
    for n in names:
        (tmp_path / n).write_text("t")
    assert sweep_orphan_temps(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    atomic_write_text(tmp_path / "a", "done")  # a write sweeps only its own orphans, too
    assert (tmp_path / "a").read_text() == "done" and len(list(tmp_path.iterdir())) == 4

    stems = unique_stems(["a/b", "a_b", "a b", "a\nb", "cat", "Cat", "dog"])
    assert len(set(map(str.casefold, stems.values()))) == 7
    assert stems["dog"] == "dog" and all(s.startswith("a_b-") for k, s in stems.items() if "a" in k[:1])
    assert unique_stems(["a/b", "a_b"]) == unique_stems(["a_b", "a/b"])  # not order-dependent
    assert unique_stems(["x/img.jpg", "y/img.jpg"], stem_of=lambda n: Path(n).stem)["x/img.jpg"] != "img"


def test_claim_rules(tmp_path):
    claim(tmp_path / "new", "train")
    assert run_kind(tmp_path / "new") == "train"
    with pytest.raises(CamscopeError, match="camscope train folder, not a study folder"):
        claim(tmp_path / "new", "study")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(CamscopeError, match="is a file"):
        claim(f, "train")
    legacy = tmp_path / "legacy"  # written before the marker existed: recognised by its files
    legacy.mkdir()
    (legacy / "stages.json").write_text("{}")
    claim(legacy, "study")
    assert json.loads((legacy / MARKER).read_text())["kind"] == "study"
    (tmp_path / "own" / "x").mkdir(parents=True)
    with pytest.raises(CamscopeError, match="not empty"):
        claim(tmp_path / "own", "train")


HOLDER = """
import sys, time
from camscope.folders import hold
with hold(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def start_holder(folder: Path) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_held_folder_is_refused_with_the_holders_pid_and_freed_when_it_dies(tmp_path):
    _, prepared = synthetic_prepared(tmp_path / "p.safetensors", seed=1)
    run = tmp_path / "run"
    claim(run, "train")
    p = start_holder(run)
    try:
        with pytest.raises(FolderBusy, match=f"process {p.pid}"), hold(run):
            pass
        args = ["train", str(prepared), "--out", str(run), "--model", "gray_cnn", "--epochs", "1"]
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and f"process {p.pid}" in r.output and "Traceback" not in r.output
        assert not (run / "metrics.jsonl").exists()
        study = write_study(tmp_path, QUICK)
        claim(tmp_path / "srun", "study")
        q = start_holder(tmp_path / "srun")
        try:
            r = runner.invoke(app, ["run", str(study), "--out", str(tmp_path / "srun")])
            assert r.exit_code == 2 and f"process {q.pid}" in r.output
        finally:
            q.kill()
    finally:
        p.kill()  # SIGKILL: the kernel drops the lock with the process
        p.wait()
    with hold(run), hold(run):  # re-entrant within one process
        pass
    assert (run / LOCK).is_file()
    cli_train(prepared, run)


def test_two_runs_started_together_on_one_folder(tmp_path):
    # the reproduction from the hardening issue: a run failing on a swept temp file, a traceback,
    # or both succeeding with epoch 1 logged twice. Now exactly one runs, the other is refused.
    study = write_study(tmp_path, {**QUICK, "source": {"kind": "synthetic", "n": 120, "size": 16}})
    out = tmp_path / "conc"
    first = subprocess.Popen(
        [*CLI, "run", str(study), "--out", str(out)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(0.3)
    second = subprocess.run(
        [*CLI, "run", str(study), "--out", str(out)], env=ENV, capture_output=True, text=True, timeout=300
    )
    out1, _ = first.communicate(timeout=300)
    codes = sorted([first.returncode, second.returncode])
    refused = out1 if first.returncode else second.stdout + second.stderr
    assert codes == [0, 2], (out1, second.stdout, second.stderr)
    assert "is being written by process" in refused and "Traceback" not in refused
    metrics = (out / "e" / "candidates").glob("*/metrics.jsonl")
    lines = [ln for m in metrics for ln in m.read_text().splitlines()]
    assert [json.loads(ln)["epoch"] for ln in lines] == [1]


def test_gallery_and_predict_names_never_collide(tmp_path):
    from camscope.data.prepare import load_prepared, save_prepared
    from camscope.explain.gallery import explain_run
    from camscope.runs import open_run

    ds, _ = synthetic_prepared(tmp_path / "p0.safetensors", n=80, seed=3)
    names = ["a/b", "a_b", "a b", "a\nb"]
    ds.classes = names + ds.classes[len(names) :]
    prepared = save_prepared(ds, tmp_path / "p.safetensors")
    assert load_prepared(prepared).classes[:4] == names
    run = tmp_path / "run"
    cli_train(prepared, run, "gray_cnn", 1)
    res = explain_run(open_run(run, prepared), method="gradcam", per_class=2)
    files = list((run / "explain").glob("gradcam_*.png"))
    assert len(res["files"]) == len(set(res["files"])) == len(files)
    index = json.loads((run / "explain" / "galleries.json").read_text())
    assert sorted(Path(f).name for f in res["files"]) == sorted(e["file"] for e in index)
    assert len({e["class"] for e in index} & set(names)) >= 2  # they used to share one file name

    # predict --cam on x/img.jpg and y/img.jpg: two overlays, each named in the CSV
    rng = np.random.default_rng(0)
    for sub in ("x", "y"):
        (tmp_path / "imgs" / sub).mkdir(parents=True)
        arr = rng.integers(0, 255, (16, 32, 3), dtype=np.uint8)
        Image.fromarray(arr).save(tmp_path / "imgs" / sub / "img.jpg")
    csv_out = tmp_path / "pred.csv"
    # the run is two-sided: a CSV names both sides of each coin
    (tmp_path / "imgs" / "list.csv").write_text("a,b\nx/img.jpg,x/img.jpg\ny/img.jpg,y/img.jpg\n")
    r = runner.invoke(
        app,
        [
            "predict",
            str(run),
            str(tmp_path / "imgs" / "list.csv"),
            "--image-col",
            "a",
            "--image-col",
            "b",
            "--out",
            str(csv_out),
            "--cam",
            "gradcam",
        ],
    )
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(csv_out.open()))
    cams = [row["cam_file"] for row in rows]
    assert len(rows) == 2 and len(set(cams)) == 2 and all(Path(c).is_file() for c in cams)
    assert len(list((tmp_path / "cams").glob("*.png"))) == 2
