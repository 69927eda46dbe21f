import json

from typer.testing import CliRunner

from camscope.cli import app
from tests.helpers import COIN_OPTS, cli_train, synthetic_prepared

runner = CliRunner()


def test_audit_prepare_split_end_to_end(messy, tmp_path):
    manifest, _ = messy
    opts = COIN_OPTS
    r = runner.invoke(app, ["audit", str(manifest), "--out", str(tmp_path / "run"), *opts])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "audit.json").exists() and "near-duplicate groups" in r.output
    r = runner.invoke(
        app,
        [
            "prepare",
            str(manifest),
            "--out",
            str(tmp_path / "run" / "p.safetensors"),
            "--size",
            "32",
            "--audit",
            str(tmp_path / "run" / "audit.json"),
            *opts,
        ],
    )
    assert r.exit_code == 0, r.output
    assert "left out" in r.output
    r = runner.invoke(
        app,
        [
            "split",
            str(tmp_path / "run" / "p.safetensors"),
            "--out",
            str(tmp_path / "run"),
            "--audit",
            str(tmp_path / "run" / "audit.json"),
            "--top-k",
            "3",
        ],
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "split.csv").exists() and "duplicate groups kept together" in r.output
    r = runner.invoke(app, ["info", str(tmp_path / "run" / "p.safetensors")])
    assert r.exit_code == 0 and "dataset hash" in r.output


def test_clear_errors_exit_2(tmp_path, messy):
    manifest, _ = messy
    r = runner.invoke(
        app, ["audit", str(manifest), "--out", str(tmp_path), "--image-col", "file", "--label-col", "Obverse"]
    )
    assert r.exit_code == 2 and "available columns" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["split", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    assert r.exit_code == 2 and "camscope prepare" in r.output


def test_synth_and_synthetic_source(tmp_path):
    r = runner.invoke(app, ["synth", str(tmp_path / "coins"), "--n", "70", "--messy"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["audit", "synthetic:n=40,seed=2", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output


def test_train_command_makes_a_split_and_a_run(tmp_path):
    _, prepared = synthetic_prepared(tmp_path / "p.safetensors", seed=2, channels=1)
    run = tmp_path / "run"
    args = [
        "train",
        str(prepared),
        "--out",
        str(run),
        "--model",
        "gray_cnn",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--flip",
        "none",
        "--max-minutes",
        "5",
        "--resize",
        "0.5:16",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "no split given" in r.output and (run / "split.csv").is_file()
    assert json.loads((run / "best.json").read_text())["config"]["resize_schedule"] == [[0.5, 16]]
    assert (run / "best.safetensors").is_file() and (run / "learning_curve.png").is_file()
    r = runner.invoke(app, [*args, "--resume"])  # already finished: nothing left to do
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*args[:-4], "--lr", "-1"])
    assert r.exit_code == 2 and "lr" in r.output
    for bad, says in (("0.5", "FRACTION:SIDE"), ("1.5:16", "fractions must rise"), ("0.5:2", "too small")):
        r = runner.invoke(app, [*args[:-2], "--resize", bad])
        assert r.exit_code == 2 and says in r.output, r.output
    r = runner.invoke(app, [*args, "--model", "nonet"])
    assert r.exit_code == 2 and "unknown model" in r.output
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0 and "fastnet" in r.output


def test_explain_command_writes_galleries(trained_run, tmp_path):
    run, prepared = trained_run.copy(tmp_path / "run"), trained_run.prepared
    r = runner.invoke(
        app, ["explain", str(run), "--data", str(prepared), "--method", "gradcam++", "--per-class", "2"]
    )
    assert r.exit_code == 0, r.output
    pngs = sorted((run / "explain").glob("gradcam++_*.png"))
    assert pngs and (run / "explain" / "gradcam++_maps.safetensors").is_file()
    _, other = synthetic_prepared(tmp_path / "other.safetensors", seed=5)
    for m in ("occlusion", "guided_gradcam"):
        r = runner.invoke(
            app, ["explain", str(run), "--data", str(prepared), "--method", m, "--per-class", "1"]
        )
        assert r.exit_code == 0, r.output
        assert list((run / "explain").glob(f"{m}_*.png"))
    r = runner.invoke(app, ["explain", str(run), "--data", str(other)])
    assert r.exit_code == 2 and "not the prepared dataset" in r.output


def test_run_commands_find_the_prepared_dataset_the_run_records(tmp_path):
    import shutil

    _, prepared = synthetic_prepared(tmp_path / "p.safetensors", seed=4)
    run = tmp_path / "run"
    cli_train(prepared, run, "gray_cnn")
    r = runner.invoke(app, ["explain", str(run), "--per-class", "1"])  # no --data
    assert r.exit_code == 0, r.output
    moved = tmp_path / "moved"  # the project moved as a whole: found from the run folder
    moved.mkdir()
    shutil.move(run, moved / "run")
    for f in tmp_path.glob("p.*"):
        shutil.move(f, moved / f.name)
    r = runner.invoke(app, ["evaluate", str(moved / "run"), "--bootstrap", "0"])
    assert r.exit_code == 0, r.output
    (moved / prepared.name).unlink()
    r = runner.invoke(app, ["mask", str(moved / "run")])
    assert r.exit_code == 2 and "no longer there" in r.output and "--data" in r.output
    r = runner.invoke(app, ["features", "--backbone", "resnet18"])
    assert r.exit_code == 2 and "or --data PREPARED" in r.output
