"""SIGKILL at random points: rerunning the same command finishes the work, nothing is left
half-written, and the results equal those of a run that was never interrupted."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import CLI, COIN_OPTS, ENV, TINY, dead_pid, run_cli


def kill_after(args: list[str], seconds: float) -> int:
    """Start the command, SIGKILL it after ``seconds`` (if still running); its return code."""
    p = subprocess.Popen([*CLI, *args], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return p.returncode


def kill_at_shares(args: list[str], took: float, shares: list[float], out: Path, check=None) -> int:
    """Run the command once per share, SIGKILLed after that share of ``took`` (an uninterrupted
    run's time), calling ``check`` after each; the number of runs killed. A busy machine can slow
    the reference run until every run outlives its kill: then ``out`` is removed and it all starts
    again with the shares halved, up to three rounds."""
    kills = 0
    for attempt in range(3):
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()
        for share in shares:
            kills += kill_after(args, share * took * 0.5**attempt) == -signal.SIGKILL
            if check is not None:
                check()
        if kills:
            break
    return kills


def temp_files(root: Path) -> list[Path]:
    return list(root.rglob("*.tmp"))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def comparable(results: dict) -> dict:
    """The numbers of a study's results that must not depend on an interruption."""
    out = {}
    for e in results["experiments"]:
        run = e["run"]
        out[e["name"]] = {
            "selected": e["selection"]["selected"],
            "history": [{k: r[k] for k in ("train_loss", "val_acc")} for r in run["history"]],
            "evaluation": run["evaluation"]["all"]["accuracy"],
            "per_class": run["evaluation"]["all"]["per_class"],
            "masking": run["masking"]["overall"],
            "unseen": run["unseen"]["separation"],
            "features": run["features"]["probes"],
        }
    return out


@pytest.fixture(scope="module")
def study_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("crash")
    raw = json.loads(json.dumps(TINY))
    raw["experiments"][0]["train"]["epochs"] = 4
    raw["experiments"][0]["analyses"] = ["evaluate", "explain", "mask", "unseen", "features"]
    p = tmp / "study.yaml"
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def test_study_killed_at_random_points_resumes_to_the_same_results(study_file, tmp_path):
    ref = tmp_path / "ref"
    t = time.perf_counter()
    done = run_cli(["run", str(study_file), "--out", str(ref)])
    took = time.perf_counter() - t
    assert done.returncode == 0, done.stderr + done.stdout
    expected = comparable(json.loads((ref / "results.json").read_text()))

    rng = random.Random(20261122)
    out = tmp_path / "killed"
    # three kills at random moments (each rerun resumes, so later ones may find less work left),
    # then let it finish
    shares = [rng.uniform(lo, hi) for lo, hi in ((0.3, 0.7), (0.2, 0.6), (0.2, 0.6))]
    kills = kill_at_shares(["run", str(study_file), "--out", str(out)], took, shares, out)
    assert kills >= 1, "the study always finished before the kill: make it longer"
    finished = run_cli(["run", str(study_file), "--out", str(out)])
    assert finished.returncode == 0, finished.stderr + finished.stdout
    assert comparable(json.loads((out / "results.json").read_text())) == expected
    assert not temp_files(out)
    stages = json.loads((out / "stages.json").read_text())
    assert all(s["status"] == "done" for s in stages.values())


def test_prepare_killed_leaves_nothing_half_written(tmp_path):
    from camscope.data.messy import write_messy_coins

    manifest, _ = write_messy_coins(tmp_path / "coins", n=1200, seed=1, messy=False)
    args = [
        "prepare",
        str(manifest),
        *COIN_OPTS,
        "--size",
        "32",
        "--workers",
        "1",
    ]
    out = tmp_path / "p.safetensors"
    ref = tmp_path / "ref.safetensors"
    t = time.perf_counter()
    assert run_cli([*args, "--out", str(ref)]).returncode == 0
    took = time.perf_counter() - t
    from camscope.data.prepare import load_prepared

    def same_as_ref(path: Path) -> bool:
        a, b = load_prepared(path), load_prepared(ref)
        return a.ids == b.ids and bool((a.images == b.images).all()) and bool((a.labels == b.labels).all())

    def whole_or_absent() -> None:
        assert not out.exists() or same_as_ref(out)  # never partial

    # at shares of an uninterrupted run's time (start-up included)
    killed = kill_at_shares([*args, "--out", str(out)], took, [0.5, 0.8], out, whole_or_absent)
    assert killed, "prepare always finished before the kill"
    assert run_cli([*args, "--out", str(out)]).returncode == 0
    assert same_as_ref(out)
    assert not temp_files(tmp_path)  # a killed write's temp file is swept by the next write


def test_explain_killed_then_rerun_gives_the_same_maps(tmp_path):
    from safetensors.torch import load_file

    from tests.helpers import cli_train, synthetic_prepared

    _, prepared = synthetic_prepared(tmp_path / "p.safetensors", n=120, seed=7)
    run = tmp_path / "run"
    cli_train(prepared, run)
    args = ["explain", str(run), "--data", str(prepared), "--method", "scorecam", "--per-class", "8"]
    t = time.perf_counter()
    ref = run_cli([*args, "--out", str(tmp_path / "ref")])
    took = time.perf_counter() - t
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "out"
    assert kill_at_shares([*args, "--out", str(out)], took, [0.7], out) == 1
    assert run_cli([*args, "--out", str(out)]).returncode == 0
    assert not temp_files(tmp_path)
    a = load_file(tmp_path / "ref" / "scorecam_maps.safetensors")
    b = load_file(out / "scorecam_maps.safetensors")
    assert (a["rows"] == b["rows"]).all() and (a["maps"] - b["maps"]).abs().max() < 1e-6
    names = sorted(p.name for p in (tmp_path / "ref").glob("*.png"))
    assert names == sorted(p.name for p in out.glob("*.png"))


def test_an_orphaned_temp_file_is_swept_by_the_next_write(tmp_path):
    from camscope.utils import _HOST, atomic_write_text

    gone_pid = dead_pid()
    # what a SIGKILL during a write leaves: the writer's host and (now dead) process in the name
    orphan = tmp_path / f".a.json.camscope-{_HOST}-{gone_pid}-k1ll3d.tmp"
    orphan.write_text("{half", encoding="utf-8")
    other = tmp_path / f".b.json.camscope-{_HOST}-{gone_pid}-x.tmp"  # another artifact's: not this write's
    other.write_text("", encoding="utf-8")
    users = tmp_path / ".a.json.k1ll3d.tmp"  # not camscope's naming: never touched
    users.write_text("", encoding="utf-8")
    atomic_write_text(tmp_path / "a.json", "{}")
    assert not orphan.exists() and other.exists() and users.exists()
    assert (tmp_path / "a.json").read_text() == "{}"
