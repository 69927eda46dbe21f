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
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from camscope.cli import app
from camscope.data.messy import giant_png_header
from camscope.data.quality import QUALITY_KINDS
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
            # odd files that load: at most a size, colour or quality finding (a uniform picture is blank)
            assert kinds.get(name) in (
                None,
                "odd_size",
                "odd_aspect",
                "grayscale_in_color",
                *QUALITY_KINDS,
            ), (
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


def _edit_header(run: Path, edit) -> None:
    """Rewrite best/last with ``edit(meta)`` applied to the header (tensors untouched)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for tag in ("best", "last"):
        with safe_open(str(run / f"{tag}.safetensors"), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = json.loads(f.metadata()["camscope"])
        edit(meta)
        save_file(tensors, run / f"{tag}.safetensors", metadata={"camscope": json.dumps(meta)})
        (run / f"{tag}.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, words",
    [
        # each of these made camscope allocate hundreds of GB before comparing the weights
        (lambda m: m["model"].update(num_classes=10**9), "classes but names"),
        (
            lambda m: (m["model"].update(num_classes=10**9), m.update(classes=["c"] * 10**6)),
            "classes but names",
        ),
        (
            lambda m: m["model"]["kwargs"].update(widths=[300000] * 3),
            "in the file but the header's model needs",
        ),
        (lambda m: m.pop("preprocess"), "does not record its input normalisation"),
        (
            lambda m: m["preprocess"].update(std=[0.0] * len(m["preprocess"]["std"])),
            "unusable input normalisation",
        ),
    ],
    ids=["num_classes", "num_classes_and_classes", "widths", "no_preprocess", "zero_std"],
)
def test_a_doctored_checkpoint_header_is_refused_before_building(trained_run, tmp_path, edit, words):
    import resource

    run = trained_run.copy(tmp_path / "run")
    _edit_header(run, edit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)])
    one_line_error(res, words)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 500, f"peak memory grew by {grown_mb:.0f} MB"


def test_nan_outputs_are_an_error_never_a_score(trained_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    run = trained_run.copy(tmp_path / "run")
    for tag in ("best", "last"):
        with safe_open(str(run / f"{tag}.safetensors"), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            header = f.metadata()
        bias = next(k for k in tensors if k.startswith("model.") and k.endswith("bias"))
        tensors[bias] = torch.full_like(tensors[bias], float("nan"))
        save_file(tensors, run / f"{tag}.safetensors", metadata=header)
    res = runner.invoke(app, ["evaluate", str(run), "--data", str(trained_run.prepared)])
    one_line_error(res, "NaN or infinite outputs")
    assert not (run / "evaluation" / "metrics.json").exists()


# -- links, archives and bombs in a source ----------------------------------------------------


def _two_class_tree(root: Path) -> Path:
    rng = np.random.default_rng(3)
    for c in ("ant", "bee"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            (root / c / f"{i}.jpg").write_bytes(jpeg_bytes(random_image(rng, 24)))
    return root


def _findings(out: Path) -> dict[str, str]:
    report = json.loads((out / "audit.json").read_text())
    return {p: pr["kind"] for pr in report["problems"] for p in pr["paths"]}


def test_links_out_of_the_folder_and_link_loops_are_findings_not_crashes(tmp_path):
    root = _two_class_tree(tmp_path / "tree")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(jpeg_bytes(random_image(np.random.default_rng(9), 24)))
    (root / "ant" / "out.jpg").symlink_to(secret)
    (root / "ant" / "loop.jpg").symlink_to(root / "ant" / "loop.jpg")
    (root / "bee" / "gone.jpg").symlink_to(root / "bee" / "nothing.jpg")
    (root / "bee" / "inside.jpg").symlink_to(root / "bee" / "0.jpg")  # a link within the folder is fine
    res = runner.invoke(app, ["audit", str(root), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    found = _findings(tmp_path / "a")
    assert found["ant/out.jpg"] == "path_outside_root"
    assert found["ant/loop.jpg"] == "unreadable" and found["bee/gone.jpg"] == "missing_file"
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert report["n_items"] == 9  # the eight files and the link inside the folder
    res = runner.invoke(app, ["prepare", str(root), "--out", str(tmp_path / "p.safetensors"), "--size", "16"])
    assert res.exit_code == 0, res.output


def test_archive_members_with_absolute_or_parent_names_are_left_out(tmp_path):
    import zipfile

    rng = np.random.default_rng(4)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for c in ("ant", "bee"):
            for i in range(3):
                z.writestr(f"{c}/{i}.jpg", jpeg_bytes(random_image(rng, 24)))
        # zipfile.write() strips a leading slash; writestr with a ZipInfo keeps it, as other tools do
        z.writestr(zipfile.ZipInfo("/etc/ant/abs.jpg"), jpeg_bytes(random_image(rng, 24)))
        z.writestr(zipfile.ZipInfo("../evil/bee/up.jpg"), jpeg_bytes(random_image(rng, 24)))
    res = runner.invoke(app, ["audit", str(archive), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    found = _findings(tmp_path / "a")
    assert found["/etc/ant/abs.jpg"] == found["../evil/bee/up.jpg"] == "path_outside_root"
    assert json.loads((tmp_path / "a" / "audit.json").read_text())["n_items"] == 6


def test_a_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    import zipfile

    from camscope.data import store

    rng = np.random.default_rng(5)
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for c in ("ant", "bee"):
            for i in range(3):
                z.writestr(f"{c}/{i}.jpg", jpeg_bytes(random_image(rng, 24)))
        z.writestr("ant/bomb.jpg", b"\0" * (40 * 2**20))  # 40 MB of zeros in about 40 KB
        z.writestr("bee/big.jpg", rng.integers(0, 255, 3 * 2**20, dtype=np.uint8).tobytes())
    monkeypatch.setattr(store, "MAX_FILE_BYTES", 2 * 2**20)  # so a 3-MB member stands for a huge one
    res = runner.invoke(app, ["audit", str(archive), "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "a" / "audit.json").read_text())
    details = {p: pr["detail"] for pr in report["problems"] for p in pr["paths"]}
    kinds = _findings(tmp_path / "a")
    assert kinds["ant/bomb.jpg"] == kinds["bee/big.jpg"] == "too_large"
    assert "zip bomb" in details["ant/bomb.jpg"] and "refused before reading" in details["bee/big.jpg"]


def test_data_root_escaping_an_archive_is_one_line(tmp_path):
    import zipfile

    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("d/m.csv", "file,label\n0.jpg,a\n")
    res = runner.invoke(
        app,
        [
            "audit",
            f"{archive}!/d/m.csv",
            "--data-root",
            "../..",
            "--image-col",
            "file",
            "--label-col",
            "label",
        ]
        + ["--out", str(tmp_path / "a")],
    )
    one_line_error(res, "--data-root", "never ../")


@pytest.mark.parametrize(
    "pattern", ["img/{id.__class__}.jpg", "img/{row[0]}.jpg", "img/{row!r}.jpg", "img/{0}.jpg"]
)
def test_patterns_allow_only_their_fields(tmp_path, pattern):
    p = _csv_root(tmp_path, "label\na\nb\n")
    res = runner.invoke(
        app, ["audit", str(p), "--pattern", pattern, "--label-col", "label", "--out", str(tmp_path / "a")]
    )
    one_line_error(res, "pattern", "{row}")


def test_predict_csv_with_short_rows_and_latin1(trained_run, tmp_path):
    rng = np.random.default_rng(6)
    for name in ("h.jpg", "t.jpg", "été.jpg"):
        (tmp_path / name).write_bytes(jpeg_bytes(random_image(rng, 24)))
    (tmp_path / "short.csv").write_text("a,b\nh.jpg,t.jpg\nh.jpg\n,\n", encoding="utf-8")
    (tmp_path / "latin.csv").write_bytes("a,b\nh.jpg,t.jpg\nété.jpg,t.jpg\n".encode("latin-1"))
    said = {}
    for name, n in (("short.csv", 1), ("latin.csv", 2)):
        out = tmp_path / f"{name}.out.csv"
        args = ["predict", str(trained_run.run), str(tmp_path / name), "--image-col", "a", "--image-col", "b"]
        res = runner.invoke(app, [*args, "--out", str(out)])
        assert res.exit_code == 0 and "Traceback" not in res.output, res.output
        rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"))))
        assert len(rows) == n, rows
        said[name] = " ".join(res.output.split())
    assert "row 2 has no value in column(s) b" in said["short.csv"]
    assert "not valid UTF-8" in said["latin.csv"]


@pytest.mark.parametrize("k", ["0", "-1"])
def test_predict_top_k_below_one_is_refused(trained_run, tmp_path, k):
    (tmp_path / "h.jpg").write_bytes(jpeg_bytes(random_image(np.random.default_rng(7), 24)))
    (tmp_path / "m.csv").write_text("a,b\nh.jpg,h.jpg\n", encoding="utf-8")
    args = ["predict", str(trained_run.run), str(tmp_path / "m.csv"), "--image-col", "a", "--image-col", "b"]
    res = runner.invoke(app, [*args, "--top-k", k, "--out", str(tmp_path / "o.csv")])
    one_line_error(res, "--top-k must be at least 1")
    assert not (tmp_path / "o.csv").exists()


# -- study files and --set --------------------------------------------------------------------

ALIAS_BOMB = "\n".join(
    ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi", strict=True)]
    + ["name: bomb"]
)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    import time

    study = tmp_path / "bomb.yaml"
    study.write_text(ALIAS_BOMB, encoding="utf-8")
    assert len(study.read_bytes()) < 1000  # 9 levels of 9 aliases: 387 million values once built
    t = time.perf_counter()
    res = runner.invoke(app, ["run", str(study), "--out", str(tmp_path / "out")])
    one_line_error(res, "aliases")
    assert time.perf_counter() - t < 10 and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "setting, words",
    [
        ("name.x=1", "is a value"),
        ("seed=!!python/object/apply:os.system [touch PWNED]", "not valid YAML"),
        ("experiments.x=1", "list of experiments"),
        ("a..b=1", "empty part"),
    ],
)
def test_bad_set_is_one_line(tmp_path, setting, words):
    study = tmp_path / "s.yaml"
    study.write_text(
        "name: s\nsource: {kind: synthetic, n: 40, size: 16}\nexperiments:\n  - name: e\n", encoding="utf-8"
    )
    res = runner.invoke(app, ["run", str(study), "--out", str(tmp_path / "out"), "--set", setting])
    one_line_error(res, words)
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()
