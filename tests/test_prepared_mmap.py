"""A prepared set larger than RAM: prepare streams into its file, loading maps it, and a large
selection for training or an analysis goes to a mapped scratch file.

Memory is measured as the process's anonymous resident memory (RssAnon): what it holds that the
kernel cannot drop. Pages of a mapped file count as RssFile, and the kernel evicts them under
pressure, which is what lets a file larger than RAM be read.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from camscope.cli import app
from camscope.data import rows as rows_mod
from camscope.data.prepare import (
    PrepareConfig,
    dataset_hash,
    load_prepared,
    prepare,
    save_prepared,
)
from camscope.data.sources import Item, Side, Source
from camscope.data.tensorfile import read_header
from tests.helpers import cli_train, runner

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")

SIDE = 128
N = 1500  # 1500 x 3 x 128 x 128 = 74 MB of rows


class NoiseSource(Source):
    """Random images made on demand from their key: the source itself holds nothing."""

    kind = "noise"
    description = "noise"
    in_memory = True  # prepared in this process, so this process's memory is what is measured

    def __init__(self, n: int, side: int = SIDE):
        super().__init__()
        self.side = side
        self.items = [Item(f"i{k:05d}", f"c{k % 3}", (Side("image", str(k)),)) for k in range(n)]

    def fetch(self, key: str) -> np.ndarray:
        rng = np.random.default_rng(int(key))
        return rng.integers(0, 256, (self.side, self.side, 3), dtype=np.uint8)


def rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


class PeakAnon:
    """The highest RssAnon seen while the block runs, above the level when it started."""

    def __enter__(self):
        self.base = self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())
        self.growth = self.peak - self.base


# Memory is measured in a fresh process: a long test session holds freed heap pages that a new
# allocation reuses without growing RssAnon, which would hide a copy.
MEASURE = """
import json, sys
from tests.test_prepared_mmap import N, SIDE, NoiseSource, PeakAnon
from camscope.data.prepare import PrepareConfig, dataset_hash, load_prepared, prepare

config = PrepareConfig(size=SIDE, workers=1, chunk=32)  # two chunks in flight: 3 MB
prepare(NoiseSource(8), config)  # warm-up: imports, first allocations
with PeakAnon() as streamed:
    prepare(NoiseSource(N), config, out=sys.argv[1])
with PeakAnon() as mapped:
    dataset_hash(load_prepared(sys.argv[1]))  # reads every row through the map
with PeakAnon() as loaded:
    held = load_prepared(sys.argv[1], mmap=False)
del held
import torch
from camscope.data import rows
ds, index = load_prepared(sys.argv[1]), torch.arange(N - 1, -1, -3)  # 500 rows, reversed
rows.IN_MEMORY_BYTES = rows.BLOCK_BYTES = 2**20
with PeakAnon() as scratch:
    x = ds.rows(index)
rows.IN_MEMORY_BYTES = 2**40
with PeakAnon() as gathered:
    y = ds.rows(index)
with PeakAnon() as in_memory:
    kept = prepare(NoiseSource(N), config)  # no file: the rows come back in memory
print(json.dumps({k: v.growth for k, v in
                  dict(streamed=streamed, mapped=mapped, loaded=loaded, scratch=scratch,
                       gathered=gathered, in_memory=in_memory).items()}))
"""


@pytest.fixture(scope="module")
def noise_file(tmp_path_factory):
    """The prepared noise file, and what preparing and loading it cost in memory (a fresh process)."""
    path = tmp_path_factory.mktemp("mmap") / "noise.safetensors"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "CAMSCOPE_PROGRESS": "0", "PYTHONPATH": str(root)},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return path, json.loads(r.stdout.strip().splitlines()[-1])


DATA = N * 3 * SIDE * SIDE


def test_prepare_streams_into_its_file(noise_file):
    path, growth = noise_file
    # holding the rows (as prepare did before) costs at least DATA; a chunk of 32 rows is 1.5 MB
    assert growth["streamed"] < 0.25 * DATA, f"prepare grew by {growth['streamed'] / 2**20:.1f} MB"
    assert growth["in_memory"] > 0.9 * DATA  # the measure sees the rows when they are held
    ds = load_prepared(path)
    assert ds.path == path.resolve() and ds.images.shape == (N, 3, SIDE, SIDE)
    src = NoiseSource(N)
    for k in (0, 777, N - 1):
        assert torch.equal(ds.images[k], torch.from_numpy(src.fetch(str(k))).permute(2, 0, 1))
    assert ds.labels.tolist()[:4] == [0, 1, 2, 0] and ds.ids[-1] == f"i{N - 1:05d}"
    # the hash fed while streaming is the hash of what was written
    assert ds.info["dataset_hash"] == dataset_hash(ds) == dataset_hash(load_prepared(path, mmap=False))
    assert not [p for p in path.parent.iterdir() if p.name != path.name], "a spool or temp file was left"


def test_load_maps_the_images_instead_of_reading_them(noise_file):
    path, growth = noise_file
    assert growth["mapped"] < 0.1 * DATA, f"{growth['mapped'] / 2**20:.1f} MB"
    assert growth["loaded"] > 0.9 * DATA  # the measure sees a copy in memory when there is one
    back, held = load_prepared(path), load_prepared(path, mmap=False)
    assert torch.equal(held.images, back.images) and held.path is None
    back.images[0, 0, 0, 0] = 255 - int(back.images[0, 0, 0, 0])  # copy-on-write: the file is unchanged
    assert torch.equal(load_prepared(path).images[0], held.images[0])


def test_the_file_is_safetensors_both_ways(tmp_path, noise_file):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path, _ = noise_file
    ds = load_prepared(path)
    with safe_open(path, framework="pt") as f:
        assert torch.equal(f.get_tensor("images")[100:110], ds.images[100:110])
        assert torch.equal(f.get_tensor("labels"), ds.labels)
        assert json.loads(f.metadata()["camscope"])["ids"] == ds.ids
    header, start = read_header(path)
    assert start % 8 == 0 and header["images"]["dtype"] == "U8"
    # a file written by the safetensors library (as camscope did before) still loads, mapped
    small = ds.subset(list(range(20)))
    meta = {"camscope": json.dumps({"classes": small.classes, "ids": small.ids, **small.info})}
    save_file({"images": small.images, "labels": small.labels}, tmp_path / "lib.safetensors", metadata=meta)
    back = load_prepared(tmp_path / "lib.safetensors")
    assert torch.equal(back.images, small.images) and back.ids == small.ids and back.path is not None
    # and what save_prepared writes reads back the same
    again = load_prepared(save_prepared(small, tmp_path / "again.safetensors"))
    assert dataset_hash(again) == dataset_hash(small) and again.masks is None


def test_a_truncated_file_is_refused(tmp_path, noise_file):
    from camscope.errors import CamscopeError

    path, _ = noise_file
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: 10 * 2**20])
    with pytest.raises(CamscopeError, match="truncated"):
        load_prepared(cut)


def test_a_large_selection_goes_to_a_mapped_scratch_file(noise_file, monkeypatch):
    path, growth = noise_file
    size = (N + 2) // 3 * 3 * SIDE * SIDE  # the 500 rows selected in the fresh process
    assert growth["scratch"] < 0.3 * size, f"{growth['scratch'] / 2**20:.1f} MB for {size / 2**20:.0f} MB"
    assert growth["gathered"] > 0.9 * size  # below the limit the same selection is held in memory
    ds = load_prepared(path)
    index = torch.arange(N - 1, -1, -3)  # 500 rows, reversed
    want3, want1 = ds.images[index], rows_mod.to_channels(ds.images[index], 1)
    monkeypatch.setattr(rows_mod, "IN_MEMORY_BYTES", 2**20)
    monkeypatch.setattr(rows_mod, "BLOCK_BYTES", 2**20)
    assert torch.equal(ds.rows(index), want3)
    assert torch.equal(ds.rows(index, 1), want1)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".camscope-rows")]
    # an in-memory dataset has no folder to spill to: its selection stays in memory, same values
    assert torch.equal(load_prepared(path, mmap=False).rows(index), want3)


def test_training_and_evaluation_run_on_mapped_scratch_rows(tmp_path, monkeypatch):
    from camscope.data.synthetic import CoinSpec, SyntheticSource

    prepared = tmp_path / "p.safetensors"
    prepare(SyntheticSource(CoinSpec(n=80, size=16, seed=2)), PrepareConfig(size=16), out=prepared)
    monkeypatch.setattr(rows_mod, "IN_MEMORY_BYTES", 1024)  # every selection through a scratch file
    monkeypatch.setattr(rows_mod, "BLOCK_BYTES", 4096)
    run = tmp_path / "run"
    r = runner.invoke(app, ["split", str(prepared), "--out", str(run)])
    assert r.exit_code == 0, r.output
    cli_train(prepared, run, "gray_cnn", 1)
    r = runner.invoke(app, ["evaluate", str(run)])
    assert r.exit_code == 0, r.output
    assert json.loads((run / "eval" / "metrics.json").read_text())["all"]["n"] > 0
    scratch = (run / "eval" / "predictions.csv").read_text()
    monkeypatch.undo()  # the same run evaluated on rows held in memory predicts the same
    r = runner.invoke(app, ["evaluate", str(run)])
    assert r.exit_code == 0, r.output
    assert (run / "eval" / "predictions.csv").read_text() == scratch


def test_a_read_only_dataset_folder_spills_to_the_temporary_folder(noise_file, monkeypatch, tmp_path):
    import tempfile

    path, _ = noise_file
    ds = load_prepared(path)
    index = torch.arange(0, 300)
    monkeypatch.setattr(rows_mod, "IN_MEMORY_BYTES", 2**20)
    real = tempfile.TemporaryFile
    places = []

    def refuse_dataset_folder(*args, dir=None, **kw):
        places.append(dir)
        if dir is not None:
            raise PermissionError(13, "Permission denied", str(dir))
        return real(*args, dir=tmp_path, **kw)

    monkeypatch.setattr(rows_mod.tempfile, "TemporaryFile", refuse_dataset_folder)
    assert torch.equal(ds.rows(index), ds.images[index])
    assert places == [path.parent, None]
    from camscope.errors import CamscopeError

    def refuse_all(*args, dir=None, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rows_mod.tempfile, "TemporaryFile", refuse_all)
    with pytest.raises(CamscopeError, match="no folder to write"):
        ds.rows(index)
