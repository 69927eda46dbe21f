import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from camscope.data import cifar
from camscope.data.sources import CsvSource, FolderSource
from camscope.data.spec import open_source, parse_source_arg
from camscope.data.synthetic import CoinSpec, SyntheticSource, generate
from camscope.errors import CamscopeError
from tests.conftest import jpeg_bytes, random_image


def test_folder_source(class_tree: Path):
    (class_tree / "ant" / "notes.txt").write_text("not an image")
    (class_tree / "empty").mkdir()
    (class_tree / "empty" / ".hidden").write_text("")
    (class_tree / "README.md").write_text("stray")
    src = FolderSource(class_tree)
    assert len(src) == 30 and src.class_names() == ["ant", "bee", "cat"]
    kinds = {p.kind for p in src.problems}
    assert {"not_an_image_file", "stray_file"} <= kinds
    sample = next(iter(src))
    assert sample.image.size == (48, 48) and sample.label == "ant"


def test_folder_with_split_folders_and_zip(tmp_path: Path):
    rng = np.random.default_rng(1)
    root = tmp_path / "ds"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(3):
                (root / split / c / f"{i}.png").write_bytes(jpeg_bytes(random_image(rng)))
    src = FolderSource(root)
    assert {it.split for it in src.items} == {"train", "test"}
    assert src.class_names() == ["a", "b"]
    # the same tree zipped inside a wrapper folder
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in root.rglob("*.png"):
            zf.write(f, "wrapper/" + f.relative_to(root).as_posix())
    zsrc = FolderSource(zpath)
    assert len(zsrc) == 12 and {it.split for it in zsrc.items} == {"train", "test"}
    assert next(iter(zsrc)).image is not None


def test_folder_empty_class_and_non_utf8_name(tmp_path: Path):
    root = tmp_path / "t"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "b" / "x.txt").write_text("")
    rng = np.random.default_rng(2)
    (root / "a" / "ok.jpg").write_bytes(jpeg_bytes(random_image(rng)))
    bad = os.fsencode(str(root / "a")) + b"/caf\xe9.jpg"
    with open(bad, "wb") as f:
        f.write(jpeg_bytes(random_image(rng)))
    src = FolderSource(root)
    kinds = {p.kind for p in src.problems}
    assert "empty_class" in kinds and "non_utf8_name" in kinds
    ids = [it.id for it in src.items]
    assert any("\\xe9" in i for i in ids)
    assert all(s.image is not None for s in src)  # the escaped file still decodes


def test_csv_label_column_two_path_columns(tmp_path: Path):
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    lines = ["id;front;back;kind"]
    for i in range(6):
        for side in ("f", "b"):
            (tmp_path / "img" / f"{i}{side}.jpg").write_bytes(jpeg_bytes(random_image(rng)))
        lines.append(f"c{i};img/{i}f.jpg;img/{i}b.jpg;{'x' if i % 2 else 'y'}")
    lines.append("c6;img/6f.jpg;;x")  # missing back path and file
    lines.append("c7;../../etc/passwd;img/0b.jpg;y")  # escapes the root
    lines.append("c1;img/1f.jpg;img/1b.jpg;x")  # duplicate id
    lines.append("c8;img/0f.jpg;img/0b.jpg;")  # empty label
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    src = CsvSource(tmp_path / "m.csv", image_cols=["front", "back"], label_col="kind", id_col="id")
    assert src.two_sided and len(src) == 9
    kinds = [p.kind for p in src.problems]
    assert "missing_file" in kinds and "path_outside_root" in kinds
    assert "duplicate_id" in kinds and "missing_label" in kinds
    sample = next(iter(src))
    assert isinstance(sample.image, tuple) and len(sample.image) == 2


def test_csv_wrong_column_lists_available(tmp_path: Path):
    (tmp_path / "m.csv").write_text("path,label\na.jpg,x\n")
    with pytest.raises(CamscopeError) as e:
        CsvSource(tmp_path / "m.csv", image_cols=["file"], label_col="label")
    assert "'path'" in e.value.hint and "'label'" in e.value.hint


def test_csv_label_rule(tmp_path: Path):
    rng = np.random.default_rng(4)
    (tmp_path / "images").mkdir()
    rows = ["Obverse", '"Head of Vespasian, laureate, right"', '"Bust of Nero, right"', "Illegible", '""']
    for row in range(1, len(rows)):
        for side in ("heads", "tails"):
            (tmp_path / "images" / f"{side}{row:05d}.jpg").write_bytes(jpeg_bytes(random_image(rng)))
    (tmp_path / "c.csv").write_text("\n".join(rows) + "\n")
    src = CsvSource(
        tmp_path / "c.csv",
        patterns=["images/heads{row:05d}.jpg", "images/tails{row:05d}.jpg"],
        label_from="Obverse",
        label_regex=r"(?:Head|Bust) of (\w+)",
    )
    assert [it.label for it in src.items] == ["Vespasian", "Nero", None, None]
    kinds = sorted(p.kind for p in src.problems)
    assert kinds == ["missing_label", "unparsed_label"]
    with pytest.raises(CamscopeError):
        CsvSource(
            tmp_path / "c.csv",
            patterns=["images/heads{row:05d}.jpg"],
            label_from="Obverse",
            label_regex=r"(Head) of (\w+)",
        )


def test_csv_inside_zip(tmp_path: Path, messy):
    manifest, _ = messy
    zpath = tmp_path / "coins.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in manifest.parent.rglob("*"):
            if f.is_file():
                zf.write(f, "coins/" + f.relative_to(manifest.parent).as_posix())
    spec = parse_source_arg(
        f"{zpath}!/coins/coins.csv",
        patterns=["images/heads{row:05d}.jpg", "images/tails{row:05d}.jpg"],
        label_from="Obverse",
        label_regex=r"Coin of (\w+)",
    )
    src = open_source(spec)
    assert len(src) == 200 and src.two_sided


def _write_cifar(path: Path, n_train: int = 10, n_test: int = 5) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(0)
    tar = tarfile.open(path, "w:gz")  # noqa: SIM115 - closed at the end of the function

    def add(name: str, obj) -> None:
        data = pickle.dumps(obj, protocol=2)
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    first = None
    for b in range(1, 6):
        data = rng.integers(0, 256, (n_train, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, n_train)]
        first = first or (data, labels)
        add(
            f"data_batch_{b}",
            {b"batch_label": b"x", b"labels": labels, b"data": data, b"filenames": [b"f.png"] * n_train},
        )
    add(
        "test_batch",
        {
            b"batch_label": b"t",
            b"labels": [int(x) for x in rng.integers(0, 10, n_test)],
            b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
        },
    )
    add(
        "batches.meta",
        {
            b"label_names": [
                c.encode()
                for c in [
                    "airplane",
                    "automobile",
                    "bird",
                    "cat",
                    "deer",
                    "dog",
                    "frog",
                    "horse",
                    "ship",
                    "truck",
                ]
            ]
        },
    )
    tar.close()
    return first


def test_cifar_archive_in_official_format(tmp_path: Path):
    path = tmp_path / "cifar-small.tar.gz"
    data, labels = _write_cifar(path)
    src = cifar.Cifar10Source(path)
    assert len(src) == 55
    assert [it.split for it in src.items].count("test") == 5
    img = src.fetch("train/00000")
    assert img.shape == (32, 32, 3)
    assert np.array_equal(img, data[0].reshape(3, 32, 32).transpose(1, 2, 0))
    assert (
        src.items[0].label == src.items[0].label
        and src.items[3].label == cifar.Cifar10Source(path).items[3].label
    )


def test_cifar_refuses_code_in_pickles(tmp_path: Path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(CamscopeError):
        cifar.safe_load_batch(pickle.dumps({b"data": Evil()}))


def test_cifar_download_verifies_and_renames(tmp_path: Path):
    archive = tmp_path / "served.tar.gz"
    _write_cifar(archive)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "cache" / "c.tar.gz"
    cifar.download(archive.as_uri(), dest, md5)
    assert dest.read_bytes() == archive.read_bytes()
    bad = tmp_path / "cache" / "bad.tar.gz"
    with pytest.raises(CamscopeError, match="checksum"):
        cifar.download(archive.as_uri(), bad, "0" * 32)
    assert not bad.exists() and not list(bad.parent.glob("*.part"))
    with pytest.raises(CamscopeError, match="could not download"):
        cifar.download((tmp_path / "nope").as_uri(), tmp_path / "x", None)


def test_cifar_missing_gives_hint(tmp_path: Path):
    with pytest.raises(CamscopeError) as e:
        cifar.Cifar10Source(None, cache_dir=tmp_path)
    assert "--download" in e.value.hint


def test_synthetic_deterministic_masks_and_speed():
    import time

    t = time.perf_counter()
    a = generate(CoinSpec(n=1000, seed=3))
    assert time.perf_counter() - t < 10
    b = generate(CoinSpec(n=1000, seed=3))
    assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert a.images.shape == (1000, 2, 64, 64, 3)
    # centre classes: evidence inside a disk around the middle; rim classes: an annulus
    centre = a.masks[a.labels == 0, 0].mean(0)
    rim = a.masks[a.labels == 2, 0].mean(0)
    assert centre[32, 32] > 0.99 and centre[32, 2] == 0
    assert rim[32, 32] == 0 and rim[32, 8] > 0.9
    src = SyntheticSource(CoinSpec(n=50))
    assert len(src) == 50 and src.two_sided and src.masks[src.items[0].sides[0].key].dtype == bool
