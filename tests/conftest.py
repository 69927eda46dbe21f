from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("CAMSCOPE_PROGRESS", "0")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def jpeg_bytes(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def random_image(rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """A smooth random colour image with structure (not white noise)."""
    small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.BICUBIC))


@pytest.fixture
def class_tree(tmp_path: Path) -> Path:
    """root/<class>/*.jpg with three classes of distinct random images."""
    rng = np.random.default_rng(0)
    root = tmp_path / "tree"
    for c, n in (("ant", 12), ("bee", 10), ("cat", 8)):
        (root / c).mkdir(parents=True)
        for i in range(n):
            (root / c / f"{i:03d}.jpg").write_bytes(jpeg_bytes(random_image(rng)))
    return root


@pytest.fixture(scope="session")
def messy(tmp_path_factory):
    from camscope.data.messy import write_messy_coins

    out = tmp_path_factory.mktemp("messy")
    manifest, planted = write_messy_coins(out, n=200, seed=0)
    return manifest, planted


def requires_shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/data on development machines)")
    return path
