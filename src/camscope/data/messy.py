"""Write synthetic coins to disk the way a scraper would leave real ones, optionally with planted
problems of every kind the audit looks for. Tests, the demo and `camscope synth` use it.

Layout (like the Roman coins): ``coins.csv`` with a text column ``Obverse`` ("Coin of <class>,
...") and images ``images/heads{row:05d}.jpg`` / ``images/tails{row:05d}.jpg``.
"""

from __future__ import annotations

import csv
import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from camscope.data.synthetic import CoinSpec, generate

HEADS = "images/heads{row:05d}.jpg"
TAILS = "images/tails{row:05d}.jpg"
LABEL_REGEX = r"Coin of (\w+)"


def _jpeg(arr: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def giant_png_header(width: int = 40000, height: int = 40000) -> bytes:
    """A valid PNG header claiming a huge size, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + chunk(b"IEND", b"")
    )


def write_coin_dataset(
    out: str | Path,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    messy: bool = False,
    class_weights: list[float] | None = None,
) -> Path:
    return write_messy_coins(out, n, size, seed, messy, class_weights)[0]


def write_messy_coins(
    out: str | Path,
    n: int = 200,
    size: int = 64,
    seed: int = 0,
    messy: bool = True,
    class_weights: list[float] | None = None,
    remove_stale: bool = False,
) -> tuple[Path, dict[str, list[str]]]:
    """Write the coins; return the manifest path and, per planted problem kind, the affected row ids.

    ``remove_stale`` (a study rewriting its own source folder) removes the images of an earlier
    write that this one does not make, by their exact names: a planted missing file must be missing.
    """
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    if messy and class_weights is None:
        class_weights = [0.45, 0.3, 0.15, 0.1]
    coins = generate(CoinSpec(n=n, size=size, seed=seed, class_weights=class_weights))
    rng = np.random.default_rng(seed + 1)
    rows = []
    files: dict[str, bytes] = {}
    for i in range(n):
        row = i + 1
        label = coins.class_names[coins.labels[i]]
        rows.append(
            {
                "Date": f"{int(rng.integers(1, 300))} AD",
                "Denomination": ["Denarius", "As"][i % 2],
                "Obverse": f"Coin of {label}, struck, right",
                "Reverse": "pattern",
            }
        )
        files[HEADS.format(row=row)] = _jpeg(coins.images[i, 0])
        files[TAILS.format(row=row)] = _jpeg(coins.images[i, 1])

    planted = _plant(files, rows, coins, size) if messy else {}
    for rel, data in files.items():
        (out / rel).write_bytes(data)
    if remove_stale:
        for f in (out / "images").iterdir():
            if re.fullmatch(r"(heads|tails)\d{5}\.jpg", f.name) and f"images/{f.name}" not in files:
                f.unlink()
    manifest = out / "coins.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["Date", "Denomination", "Obverse", "Reverse"])
        w.writeheader()
        w.writerows(rows)
    return manifest, planted


def _rid(row: int) -> str:
    return f"row{row:05d}"


def _plant(files: dict[str, bytes], rows: list[dict], coins, size: int) -> dict[str, list[str]]:
    """Plant one problem of every kind the audit looks for; per kind, the affected row ids."""
    n = len(rows)
    if n < 60:
        raise ValueError("a messy dataset needs at least 60 coins")
    planted: dict[str, list[str]] = {}
    by_class = {c: [i + 1 for i in range(n) if coins.labels[i] == c] for c in range(len(coins.class_names))}
    files[HEADS.format(row=3)] = b""
    planted["zero_byte"] = [_rid(3)]
    files[HEADS.format(row=4)] = files[HEADS.format(row=4)][: len(files[HEADS.format(row=4)]) // 2]
    planted["truncated"] = [_rid(4)]
    files[TAILS.format(row=5)] = b"this is not an image, just text with a .jpg name\n"
    planted["not_an_image"] = [_rid(5)]
    del files[TAILS.format(row=6)]
    planted["missing_file"] = [_rid(6)]
    planted["missing_side"] = [_rid(3), _rid(4), _rid(5), _rid(6), _rid(7)]
    files[HEADS.format(row=7)] = giant_png_header()
    planted["too_large"] = [_rid(7)]
    rows[7]["Obverse"] = ""
    planted["missing_label"] = [_rid(8)]
    rows[8]["Obverse"] = "Illegible legend, worn"
    planted["unparsed_label"] = [_rid(9)]
    # exact duplicate, same label: row 11 becomes a byte copy of row 10's coin (same class)
    c10 = coins.labels[9]
    same = [r for r in by_class[int(c10)] if r > 20][0]
    for pat in (HEADS, TAILS):
        files[pat.format(row=same)] = files[pat.format(row=10)]
    planted["exact_duplicate"] = [_rid(10), _rid(same)]
    # exact duplicate with a conflicting label: a coin of another class gets row 12's pictures
    other = [r for c, rs in by_class.items() if c != coins.labels[11] for r in rs if r > 20][1]
    for pat in (HEADS, TAILS):
        files[pat.format(row=other)] = files[pat.format(row=12)]
    planted["conflicting_labels"] = [_rid(12), _rid(other)]
    planted["near_duplicate"] = _plant_near_duplicates(files, rows, coins, size, (same, other))
    # a composite picture (both sides in one image): odd aspect and size
    both = np.concatenate([coins.images[18, 0], coins.images[18, 1]], axis=1)
    files[HEADS.format(row=19)] = _jpeg(np.asarray(Image.fromarray(both).resize((size * 8, size * 4))))
    planted["odd_aspect"] = [_rid(19)]
    planted["odd_size"] = [_rid(19)]
    gray = coins.images[19, 0].mean(2).astype(np.uint8)
    files[HEADS.format(row=20)] = _jpeg(np.stack([gray] * 3, 2))
    planted["grayscale_in_color"] = [_rid(20)]
    planted["class_imbalance"] = []
    planted.update(_plant_quality(files, coins, n))
    return planted


def _plant_quality(files: dict[str, bytes], coins, n: int) -> dict[str, list[str]]:
    """The heads of the last four coins: underexposed, washed out, out of focus, a blank placeholder."""

    def heads(row: int) -> np.ndarray:
        return coins.images[row - 1, 0].astype(np.float32)

    pictures = {
        "dark": (n, heads(n) * 0.1),
        "light": (n - 1, heads(n - 1) * 0.1 + 230),
        "blurry": (
            n - 2,
            np.asarray(Image.fromarray(heads(n - 2).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2.5))),
        ),
        "blank": (n - 3, np.full_like(heads(n - 3), 255)),
    }
    for row, arr in pictures.values():
        files[HEADS.format(row=row)] = _jpeg(np.clip(arr, 0, 255).astype(np.uint8))
    return {kind: [_rid(row)] for kind, (row, _) in pictures.items()}


def _plant_near_duplicates(files, rows, coins, size: int, taken: tuple[int, int]) -> list[str]:
    """Rows 13..17 copied onto later rows (label included), re-encoded, shifted, cropped,
    recoloured and rescaled; the rows of the exact duplicates (``taken``) are left alone."""
    n = len(rows)
    same, other = taken
    targets = [r for r in range(30, n) if coins.labels[r - 1] == coins.labels[12]][:1] + [
        r for r in range(30, n) if r not in (same, other)
    ][1:5]
    near = []
    for k, (src_row, dst_row) in enumerate(zip(range(13, 18), targets, strict=False)):
        for s, pat in enumerate((HEADS, TAILS)):
            img = coins.images[src_row - 1, s]
            if k == 0:
                data = _jpeg(img, quality=40)
            elif k == 1:
                data = _jpeg(
                    np.asarray(
                        Image.fromarray(img).transform(
                            (size, size), Image.AFFINE, (1, 0, 3, 0, 1, 2), Image.BILINEAR
                        )
                    )
                )
            elif k == 2:
                c = size // 10
                data = _jpeg(
                    np.asarray(
                        Image.fromarray(img)
                        .crop((c, c, size - c, size - c))
                        .resize((size, size), Image.BICUBIC)
                    )
                )
            elif k == 3:
                data = _jpeg(np.clip(img[..., [2, 1, 0]].astype(int) * 0.9 + 20, 0, 255).astype(np.uint8))
            else:
                data = _jpeg(np.asarray(Image.fromarray(img).resize((size * 2, size * 2), Image.BICUBIC)))
            files[pat.format(row=dst_row)] = data
        rows[dst_row - 1]["Obverse"] = rows[src_row - 1]["Obverse"]
        near.append([_rid(src_row), _rid(dst_row)])
    return [x for pair in near for x in pair]
