import time

import numpy as np
import pytest
import torch

from camscope.data.audit import audit
from camscope.data.messy import HEADS, LABEL_REGEX, TAILS
from camscope.data.prepare import PrepareConfig, load_prepared, prepare, save_prepared
from camscope.data.sources import CsvSource, FolderSource
from camscope.data.synthetic import CoinSpec, SyntheticSource
from camscope.errors import CamscopeError


def test_round_trip_and_metadata(class_tree, tmp_path):
    ds = prepare(FolderSource(class_tree), PrepareConfig(size=24))
    assert ds.images.shape == (30, 3, 24, 24) and ds.images.dtype == torch.uint8
    path = save_prepared(ds, tmp_path / "p.safetensors")
    back = load_prepared(path)
    assert torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)
    assert back.ids == ds.ids and back.classes == ["ant", "bee", "cat"]
    assert back.info["dataset_hash"] == ds.info["dataset_hash"]
    assert len(back.info["file_hashes"][0][0]) == 32
    assert back.info["preprocessing"]["size"] == 24


def test_two_sides_side_by_side_and_channels_and_gray(messy):
    manifest, _ = messy
    src = CsvSource(manifest, patterns=[HEADS, TAILS], label_from="Obverse", label_regex=LABEL_REGEX)
    ds = prepare(src, PrepareConfig(size=32))
    assert ds.images.shape[1:] == (3, 32, 64)
    reasons = {e["id"]: e["reason"] for e in ds.info["excluded"]}
    # every broken or unlabelled coin is left out with its reason, the rest kept
    assert reasons["row00003"].startswith("zero_byte") and reasons["row00004"].startswith("truncated")
    assert reasons["row00005"].startswith("not_an_image") and reasons["row00006"].startswith("missing_side")
    assert reasons["row00007"].startswith("too_large") and reasons["row00008"].startswith("missing_label")
    assert len(ds) == 200 - len(reasons)
    stacked = prepare(src, PrepareConfig(size=32, combine="channels", channels=1))
    assert stacked.images.shape[1:] == (2, 32, 32)


def test_exclusion_from_audit_and_masks_carried():
    src = SyntheticSource(CoinSpec(n=40, size=48))
    ds = prepare(src, PrepareConfig(size=32), exclude={"coin00001": "near_duplicate: test"})
    assert len(ds) == 39 and ds.info["excluded"][0]["id"] == "coin00001"
    assert ds.masks is not None and ds.masks.shape == (39, 1, 32, 64)
    # the evidence mask of a centre-class coin covers the middle of each side
    centre = [i for i, c in enumerate(ds.labels.tolist()) if ds.classes[c].startswith("centre")][0]
    assert ds.masks[centre, 0, 16, 16] == 1 and ds.masks[centre, 0, 16, 48] == 1


def test_corrupt_file_in_a_folder_does_not_stop_prepare(class_tree):
    (class_tree / "cat" / "zzz.jpg").write_bytes(b"")
    ds = prepare(FolderSource(class_tree), PrepareConfig(size=16, workers=2, chunk=4))
    assert len(ds) == 30 and ds.info["excluded"][0]["reason"].startswith("zero_byte")


def test_bad_config_and_unreadable_file(tmp_path):
    with pytest.raises(CamscopeError):
        PrepareConfig(policy="squash").validate()
    (tmp_path / "x.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CamscopeError, match="not a readable prepared dataset"):
        load_prepared(tmp_path / "x.safetensors")


def test_prepared_load_is_fast(tmp_path):
    # 60k CIFAR-sized images: loading must take well under a second once the file is cached
    from camscope.data.prepare import PreparedDataset

    n = 60000
    ds = PreparedDataset(
        torch.zeros(n, 3, 32, 32, dtype=torch.uint8),
        torch.zeros(n, dtype=torch.long),
        ["a"],
        [f"train/{i:05d}" for i in range(n)],
        {"schema": "camscope.prepared/1", "side_keys": [[f"k{i}"] for i in range(n)]},
    )
    path = save_prepared(ds, tmp_path / "big.safetensors")
    load_prepared(path)
    t = time.perf_counter()
    back = load_prepared(path)
    assert time.perf_counter() - t < 1.0
    assert back.images.shape == (n, 3, 32, 32)


def test_audit_then_prepare_on_array_source():
    src = SyntheticSource(CoinSpec(n=30))
    report = audit(src)
    assert report["n_items"] == 30 and report["n_images"] == 60
    assert np.isclose(sum(report["class_counts"].values()), 30)
