"""Studies: validation, stage caching, --from, failures that keep finished work, selection on
validation only, the report and results.json, and the notebook API."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from camscope.cli import app
from camscope.errors import CamscopeError
from camscope.study.config import Study
from tests.helpers import TINY, write_study


def test_validation_messages_name_the_key(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["experiments"][0]["trian"] = {}
    with pytest.raises(CamscopeError, match=r"experiments\.0\.trian: unknown key"):
        Study.from_yaml(write_study(tmp_path, bad))
    bad = json.loads(json.dumps(TINY))
    bad["prepare"]["size"] = "big"
    with pytest.raises(CamscopeError, match=r"prepare\.size"):
        Study.from_yaml(write_study(tmp_path, bad))
    bad = json.loads(json.dumps(TINY))
    bad["experiments"][0]["train"]["learning_rate"] = 1
    with pytest.raises(CamscopeError, match="unknown training option.*learning_rate"):
        Study.from_yaml(write_study(tmp_path, bad))
    bad = json.loads(json.dumps(TINY))
    bad["experiments"][0]["search"]["params"] = {"prepare.colour": [1]}
    with pytest.raises(CamscopeError, match="unknown preparation option 'colour'"):
        Study.from_yaml(write_study(tmp_path, bad))
    bad = json.loads(json.dumps(TINY))
    bad["source"] = {"path": "no/such/coins.csv", "image_cols": ["a"]}
    with pytest.raises(CamscopeError, match="source.path: .*no/such/coins.csv not found"):
        Study.from_yaml(write_study(tmp_path, bad))
    with pytest.raises(CamscopeError, match="not found"):
        Study.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("name: [unclosed", encoding="utf-8")
    with pytest.raises(CamscopeError, match="not valid YAML"):
        Study.from_yaml(tmp_path / "broken.yaml")


def test_cli_reports_a_bad_study_in_one_line(tmp_path):
    bad = json.loads(json.dumps(TINY))
    bad["colour"] = True
    res = CliRunner().invoke(app, ["run", str(write_study(tmp_path, bad)), "--out", str(tmp_path / "r")])
    assert res.exit_code == 2
    assert "colour: unknown key" in res.output
    assert "Traceback" not in res.output


def test_set_overrides_reach_experiments(tmp_path):
    s = Study.from_yaml(write_study(tmp_path, TINY), {"experiments.top3.train.epochs": 5, "prepare.size": 28})
    assert s.experiments[0].train["epochs"] == 5
    assert s.prepare.size == 28


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    study = Study.from_yaml(write_study(tmp, TINY))
    res = study.run(tmp / "run")
    return tmp, study, res


def test_every_stage_runs_once_then_is_cached(tiny_run):
    tmp, study, res = tiny_run
    root = Path(res["root"])
    stages = json.loads((root / "stages.json").read_text())
    assert all(s["status"] == "done" for s in stages.values()), stages
    expected = {"source", "audit", "prepare", "split:top3", "train:top3", "evaluate:top3", "explain:top3"}
    assert expected <= set(stages)
    again = study.run(root)
    assert again["ran"] == ["report"]
    assert "train:top3" in again["skipped"]


def test_selection_uses_validation_and_scores_test_once(tiny_run):
    tmp, _, res = tiny_run
    root = Path(res["root"])
    sel = json.loads((root / "top3" / "selection.json").read_text())
    assert len(sel["candidates"]) == 2
    best = max(sel["candidates"], key=lambda c: c["value"])
    assert sel["selected"] == best["name"]
    assert "validation" in sel["rule"]
    for c in sel["candidates"]:
        evaluated = (Path(c["run_dir"]) / "eval" / "metrics.json").is_file()
        assert evaluated == (c["name"] == sel["selected"])  # the test split is scored for the chosen one only


def test_report_is_self_contained_and_results_hold_the_numbers(tiny_run):
    _, _, res = tiny_run
    root = Path(res["root"])
    html = (root / "report.html").read_text(encoding="utf-8")
    srcs = re.findall(r'<img src="([^"]*)"', html)
    assert len(srcs) >= 8
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in html and "https://" not in html
    for anchor in ("answers", "data", "exp-top3", "eval-top3", "mask-top3", "unseen-top3", "provenance"):
        assert f'id="{anchor}"' in html
    results = json.loads((root / "results.json").read_text())
    run = results["experiments"][0]["run"]
    ev = json.loads((root / run["run_dir"] / "eval" / "metrics.json").read_text())
    assert run["evaluation"]["all"]["accuracy"] == ev["all"]["accuracy"]
    assert f"{100 * ev['all']['accuracy']:.1f}%" in html
    assert run["unseen"]["unseen_classes"] and run["masking"]["overall"]
    assert results["provenance"]["versions"]["torch"]
    assert results["data"]["prepared"]["dataset_hash"] == run["dataset_hash"]


def test_from_stage_reruns_that_stage_and_later(tiny_run):
    _, study, res = tiny_run
    again = study.run(res["root"], from_stage="mask")
    assert again["ran"][:1] == ["mask:top3"]
    assert "train:top3" in again["skipped"] and "evaluate:top3" in again["skipped"]
    with pytest.raises(CamscopeError, match="no stage 'polish'"):
        study.run(res["root"], from_stage="polish")


def test_a_changed_analysis_reruns_only_itself(tiny_run, tmp_path):
    tmp, _, res = tiny_run
    raw = json.loads(json.dumps(TINY))
    raw["experiments"][0]["mask"]["fill"] = "mean"
    again = Study.from_yaml(write_study(tmp, raw, "changed.yaml")).run(res["root"])
    assert again["ran"] == ["mask:top3", "report"]
    assert (
        json.loads((Path(res["root"]) / "results.json").read_text())["experiments"][0]["run"]["masking"][
            "fill"
        ]
        == "mean"
    )


def test_a_failed_stage_keeps_the_finished_ones(tmp_path):
    raw = json.loads(json.dumps(TINY))
    exp = raw["experiments"][0]
    exp["search"] = None
    exp["analyses"] = ["evaluate", "unseen"]
    exp["unseen"] = {"names": ["no_such_class"]}
    study = Study.from_yaml(write_study(tmp_path, raw))
    with pytest.raises(CamscopeError, match="no class no_such_class"):
        study.run(tmp_path / "run")
    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert stages["unseen:top3"]["status"] == "failed"
    assert stages["evaluate:top3"]["status"] == "done"
    exp["unseen"] = {"ranks": [4]}
    again = Study.from_yaml(write_study(tmp_path, raw)).run(tmp_path / "run")
    assert again["ran"] == ["unseen:top3", "report"]


def test_optuna_search(tmp_path):
    import optuna  # noqa: F401 - a test dependency: missing, the suite fails

    raw = json.loads(json.dumps(TINY))
    exp = raw["experiments"][0]
    exp["search"] = {
        "method": "optuna",
        "trials": 2,
        "params": {"lr": {"low": 0.0003, "high": 0.003, "log": True}},
    }
    exp["analyses"] = ["evaluate"]
    res = Study.from_yaml(write_study(tmp_path, raw)).run(tmp_path / "run")
    sel = json.loads((Path(res["root"]) / "top3" / "selection.json").read_text())
    assert [c["name"] for c in sel["candidates"]] == ["trial000", "trial001"]
    assert all(0.0003 <= c["overrides"]["lr"] <= 0.003 for c in sel["candidates"])


def test_list_search_compares_whole_train_sections_and_reuses_a_twin(tmp_path):
    raw = json.loads(json.dumps(TINY))
    base = raw["experiments"][0]
    base.pop("search")
    base["analyses"] = ["evaluate"]
    listed = {
        **base,
        "name": "side",
        "search": {
            "method": "list",
            "candidates": [
                {"name": "scratch", **base["train"]},  # the same as experiment top3: copied, not trained
                {"name": "shorter", "model": "gray_cnn", "epochs": 1, "batch_size": 32, "flip": "none"},
            ],
        },
    }
    raw["experiments"].append(listed)
    res = Study.from_yaml(write_study(tmp_path, raw)).run(tmp_path / "run")
    root = Path(res["root"])
    sel = json.loads((root / "side" / "selection.json").read_text())
    assert [c["name"] for c in sel["candidates"]] == ["c00-scratch", "c01-shorter"]
    first = json.loads((root / "top3" / "selection.json").read_text())["candidates"][0]
    assert sel["candidates"][0]["value"] == first["value"]
    assert sel["candidates"][0]["train_seconds"] == first["train_seconds"]  # copied: the same run
    a = (root / "top3" / "candidates" / first["name"] / "best.safetensors").read_bytes()
    assert a == (root / "side" / "candidates" / "c00-scratch" / "best.safetensors").read_bytes()
    assert (
        json.loads((root / "side" / "candidates" / "c01-shorter" / "best.json").read_text())["config"][
            "epochs"
        ]
        == 1
    )
    bad = json.loads(json.dumps(raw))
    bad["experiments"][1]["search"]["params"] = {"lr": [0.1]}
    with pytest.raises(CamscopeError, match="method list takes candidates"):
        Study.from_yaml(write_study(tmp_path, bad, "bad.yaml"))
    bad["experiments"][1]["search"] = {"method": "list", "candidates": [{"lrr": 1}]}
    with pytest.raises(CamscopeError, match="candidate 0: unknown training option 'lrr'"):
        Study.from_yaml(write_study(tmp_path, bad, "bad.yaml"))


def test_notebook_api(tiny_run):
    import camscope

    _, _, res = tiny_run
    run = camscope.load_run(res["root"])
    assert run.experiments == ["top3"]
    summary = run.summary()
    assert 0 <= summary.loc["top3", "accuracy"] <= 1
    pc = run.per_class()
    assert list(pc.columns[:3]) == ["precision", "recall", "f1"] and len(pc) == 3
    assert run.confusion().values.sum() == summary.loc["top3", "test_n"]
    assert len(run.predictions()) == summary.loc["top3", "test_n"]
    assert len(run.history()) == 2
    cams = run.cams("gradcam")
    assert cams["maps"].ndim == 3 and len(cams["ids"]) == len(cams["maps"])
    fig = run.figure("confusion")
    assert fig.axes
    with pytest.raises(CamscopeError, match="no figure 'nope'"):
        run.figure("nope")
    assert not run.masking().empty


def test_source_fingerprint_follows_content_not_copy_times(tmp_path):
    import os
    import shutil

    from camscope.study.runner import _fingerprint

    a = tmp_path / "a.zip"
    a.write_bytes(b"x" * 5000)
    b = tmp_path / "b.zip"
    shutil.copyfile(a, b)
    os.utime(b, (1, 1))  # a re-provisioned copy: same bytes, another modification time
    assert _fingerprint(str(a)) == _fingerprint(f"{b}!/inner/") != _fingerprint(None)
    b.write_bytes(b"x" * 4999 + b"y")
    assert _fingerprint(str(b)) != _fingerprint(str(a))
    folder = tmp_path / "imgs"
    (folder / "cls").mkdir(parents=True)
    (folder / "cls" / "1.png").write_bytes(b"1")
    before = _fingerprint(str(folder))
    (folder / "cls" / "2.png").write_bytes(b"22")  # a file added inside the folder
    added = _fingerprint(str(folder))
    (folder / "cls" / "1.png").write_bytes(b"11")  # a file edited inside the folder
    assert len({before, added, _fingerprint(str(folder))}) == 3
    assert _fingerprint(str(tmp_path / "missing")) is None


def test_csv_source_fingerprint_covers_its_images_but_not_the_run(tmp_path):
    from camscope.data.spec import SourceSpec
    from camscope.study.runner import _fingerprint, _source_fingerprint

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"1")
    (tmp_path / "coins.csv").write_text("file,label\nimages/a.png,x\n")
    spec = SourceSpec(path=str(tmp_path / "coins.csv"), image_cols=["file"], label_col="label")
    run = tmp_path / "run"
    before = _source_fingerprint(spec, run)
    run.mkdir()
    (run / "report.html").write_text("the run's own outputs")
    assert _source_fingerprint(spec, run) == before
    (tmp_path / "images" / "a.png").write_bytes(b"22")  # an image edited in place, CSV untouched
    assert _source_fingerprint(spec, run) != before
    archive = tmp_path / "c.zip"
    archive.write_bytes(b"an archive")
    in_zip = SourceSpec(path=f"{archive}!/coins.csv", image_cols=["file"], label_col="label")
    assert _source_fingerprint(in_zip) == _fingerprint(str(archive))  # the archive covers its images
