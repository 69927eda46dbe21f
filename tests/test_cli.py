from typer.testing import CliRunner

from camscope.cli import app

runner = CliRunner()


def test_audit_prepare_split_end_to_end(messy, tmp_path):
    manifest, _ = messy
    opts = [
        "--pattern",
        "images/heads{row:05d}.jpg",
        "--pattern",
        "images/tails{row:05d}.jpg",
        "--label-from",
        "Obverse",
        "--label-regex",
        r"Coin of (\w+)",
    ]
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
