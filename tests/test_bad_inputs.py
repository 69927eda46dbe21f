"""A corpus of broken inputs, generated here, pushed through the command line: every one gets a
clear one-line error (exit 2, no traceback) or is skipped with its reason; finished output is
never lost."""

from __future__ import annotations

import csv
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from camscope.cli import app
from camscope.data.messy import giant_png_header
from tests.helpers import cli_train, jpeg_bytes, random_image, runner, synthetic_prepared


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def image_corpus() -> dict[str, tuple[bytes, str | None]]:
    """name -> (bytes, the audit's finding kind, or None for odd files that must still load)."""
    rng = np.random.default_rng(0)
    good = random_image(rng, 32)
    jpg, png = jpeg_bytes(good), _save(Image.fromarray(good), "PNG")
    pal = Image.new("P", (32, 32), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    exif_img = Image.fromarray(random_image(rng, 32)[:16])
    exif = exif_img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees
    return {
        "truncated.jpg": (jpg[: len(jpg) // 2], "truncated"),
        "truncated.png": (png[: len(png) // 2], "truncated"),
        "zero.jpg": (b"", "zero_byte"),
        "text.jpg": (b"hello, I am only text with an image's name\n", "not_an_image"),
        "bomb.png": (giant_png_header(40000, 40000), "too_large"),
        "cmyk.jpg": (_save(Image.fromarray(good).convert("CMYK"), "JPEG"), None),
        "sixteen.png": (_save(Image.fromarray(np.full((32, 32), 40000, np.uint16)), "PNG"), None),
        "palette.png": (_save(pal, "PNG"), None),
        "exif.jpg": (_save(exif_img, "JPEG", exif=exif), None),
        "tiny.png": (_save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), None),
    }


def one_line_error(res, *words: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert res.output.startswith("error: ")
    for w in words:
        assert w in res.output, res.output


@pytest.fixture(scope="module")
def corpus_tree(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "tree"
    rng = np.random.default_rng(1)
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            (root / c / f"ok{i}.jpg").write_bytes(jpeg_bytes(random_image(rng, 32)))
    for name, (data, _) in image_corpus().items():
        (root / "ant" / name).write_bytes(data)
    return root


def test_audit_names_every_broken_image(corpus_tree, tmp_path):
    res = runner.invoke(app, ["audit", str(corpus_tree), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "audit.json").read_text())
    kinds = {Path(p).name: pr["kind"] for pr in report["problems"] for p in pr["paths"]}
    for name, (_, kind) in image_corpus().items():
        if kind is None:
            assert kinds.get(name) in (None, "odd_size", "odd_aspect", "grayscale_in_color"), (
                name,
                kinds.get(name),
            )
        elif kind == "truncated":  # a PNG cut in half may fail before the decoder sees the end
            assert kinds.get(name) in ("truncated", "unreadable"), (name, kinds.get(name))
        else:
            assert kinds.get(name) == kind, (name, kinds.get(name))


def test_prepare_skips_broken_images_with_reasons_and_keeps_the_odd_ones(corpus_tree, tmp_path):
    res = runner.invoke(app, ["audit", str(corpus_tree), "--out", str(tmp_path)])
    res = runner.invoke(
        app,
        [
            "prepare",
            str(corpus_tree),
            "--out",
            str(tmp_path / "p.safetensors"),
            "--size",
            "16",
            "--audit",
            str(tmp_path / "audit.json"),
        ],
    )
    assert res.exit_code == 0, res.output
    from camscope.data.prepare import load_prepared

    ds = load_prepared(tmp_path / "p.safetensors")
    left_out = {e["id"].rsplit("/", 1)[-1]: e["reason"] for e in ds.info["excluded"]}
    broken = {n.split(".")[0] for n, (_, k) in image_corpus().items() if k is not None}
    odd = {n.split(".")[0] for n, (_, k) in image_corpus().items() if k is None}
    assert broken <= set(left_out), left_out
    assert not odd & set(left_out)
    assert len(ds) == 12 + len(odd)


def test_predict_reports_and_skips_bad_files(corpus_tree, tmp_path):
    # a run on one-image items, then predict over the corpus folder
    prep1 = tmp_path / "flat.safetensors"
    r = runner.invoke(app, ["prepare", str(corpus_tree), "--out", str(prep1), "--size", "16"])
    assert r.exit_code == 0, r.output
    run1 = tmp_path / "run1"
    cli_train(prep1, run1)
    res = runner.invoke(
        app, ["predict", str(run1), str(corpus_tree / "ant"), "--out", str(tmp_path / "pred.csv")]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(io.StringIO((tmp_path / "pred.csv").read_text(encoding="utf-8"))))
    names = {Path(r["path"]).name for r in rows}
    for name, (_, kind) in image_corpus().items():
        assert (name in names) == (kind is None), name
    assert "skipped" in res.output and "truncated" in res.output


# -- CSV manifests ----------------------------------------------------------------------------


def _csv_root(tmp_path: Path, text: str, name: str = "m.csv") -> Path:
    rng = np.random.default_rng(2)
    (tmp_path / "img").mkdir(exist_ok=True)
    for i in range(4):
        (tmp_path / "img" / f"{i}.jpg").write_bytes(jpeg_bytes(random_image(rng, 24)))
    (tmp_path / "img" / "ünï cödé #1.jpg").write_bytes(jpeg_bytes(random_image(rng, 24)))
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def audit_csv(p: Path, out: Path, *options: str):
    args = ["audit", str(p), "--image-col", "file", "--label-col", "label", *options, "--out", str(out)]
    return runner.invoke(app, args)


def test_csv_missing_column_is_one_line(tmp_path):
    p = _csv_root(tmp_path, "file,label\nimg/0.jpg,a\n")
    res = runner.invoke(
        app, ["audit", str(p), "--image-col", "path", "--label-col", "label", "--out", str(tmp_path)]
    )
    one_line_error(res, "path", "file")


def test_csv_wrong_delimiter_is_one_line(tmp_path):
    p = _csv_root(tmp_path, "file;label\nimg/0.jpg;a\nimg/1.jpg;b\n")
    one_line_error(audit_csv(p, tmp_path, "--delimiter", ","), "file")


def test_csv_findings_empty_nan_duplicates_unicode_outside(tmp_path):
    text = (
        "id,file,label\n"
        "1,img/0.jpg,a\n"
        "2,img/1.jpg,\n"
        "3,img/2.jpg,NaN\n"
        "3,img/3.jpg,b\n"
        "5,img/ünï cödé #1.jpg,b\n"
        "6,../../etc/passwd,a\n"
    )
    p = _csv_root(tmp_path, text)
    res = audit_csv(p, tmp_path / "a", "--id-col", "id")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    kinds = {pr["kind"] for pr in report["problems"]}
    assert {"missing_label", "duplicate_id", "path_outside_root"} <= kinds, kinds
    assert report["n_readable"] >= 4  # the unicode path was read
    from camscope.data.sources import CsvSource

    src = CsvSource(p, image_cols=["file"], label_col="label", id_col="id")
    escaping = [it for it in src.items if it.id == "6"]
    assert escaping and escaping[0].sides[0].key is None  # refused, so never opened


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(st.text(max_size=12), st.text(max_size=12)),
        min_size=0,
        max_size=6,
    ),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
)
def test_csv_parser_never_crashes(tmp_path, rows, delimiter):
    from camscope.data.sources import CsvSource
    from camscope.errors import CamscopeError

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter)
    w.writerow(["file", "label"])
    w.writerows(rows)
    p = tmp_path / "h.csv"
    p.write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    try:
        src = CsvSource(p, image_cols=["file"], label_col="label")
    except CamscopeError as e:
        assert e.message  # a clear refusal is fine
        return
    assert len(src.items) <= len(rows)
    for it in src.items:
        assert all(s.key is None or ".." not in Path(s.key).parts for s in it.sides)


# -- checkpoints ------------------------------------------------------------------------------


def test_truncated_checkpoint(trained_run, tmp_path):
    run = trained_run.copy(tmp_path / "run")
    for tag in ("best", "last"):
        data = (run / f"{tag}.safetensors").read_bytes()
        (run / f"{tag}.safetensors").write_bytes(data[: len(data) // 3])
    one_line_error(
        runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)]), "safetensors"
    )


def test_pickle_posing_as_a_checkpoint_is_never_unpickled(trained_run, tmp_path):
    run = trained_run.copy(tmp_path / "run")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    for tag in ("best", "last"):
        (run / f"{tag}.safetensors").write_bytes(pickle.dumps(Evil()))
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)])
    one_line_error(res)
    assert not marker.exists()


def test_sidecar_with_missing_keys(trained_run, tmp_path):
    run = trained_run.copy(tmp_path / "run")
    from safetensors.torch import load_file, save_file

    for tag in ("best", "last"):
        tensors = load_file(run / f"{tag}.safetensors")
        meta = json.loads((run / f"{tag}.json").read_text())
        meta.pop("model")
        save_file(tensors, run / f"{tag}.safetensors", metadata={"camscope": json.dumps(meta)})
        (run / f"{tag}.json").write_text(json.dumps(meta))
    one_line_error(runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)]))


def test_weights_for_another_architecture(trained_run, tmp_path):
    run = trained_run.copy(tmp_path / "run")
    for tag in ("best", "last"):
        meta = json.loads((run / f"{tag}.json").read_text())
        meta["model"]["name"] = "deep_cnn"
        (run / f"{tag}.json").write_text(json.dumps(meta))
        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(run / f"{tag}.safetensors"), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            header = f.metadata()
        header = {k: (json.dumps(meta) if k == "camscope" else v) for k, v in header.items()}
        save_file(tensors, run / f"{tag}.safetensors", metadata=header)
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)])
    one_line_error(res)


def test_evaluate_with_the_wrong_prepared_file(trained_run, tmp_path):
    _, other = synthetic_prepared(tmp_path / "other.safetensors", n=40, seed=9)
    res = runner.invoke(app, ["evaluate", str(trained_run.run), "--data", str(other)])
    one_line_error(res, "not the prepared dataset the run was trained on")
