"""Safe image decoding: sizes are checked from the header before any pixel is decoded.

Every failure becomes an ``ImageProblem`` with a ``kind`` the audit and prepare report, so a
bad file is listed with its reason instead of crashing a long run.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# A header claiming more pixels than this is refused before decoding (64 megapixels).
DEFAULT_MAX_PIXELS = 64_000_000


class ImageProblem(Exception):
    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _icon_frames(data: bytes) -> list[tuple[int, int]]:
    """The sizes of the images inside an ICO/CUR file, read from the images themselves.

    Pillow decodes an icon's largest frame inside ``Image.open``, and the directory's one-byte sizes
    say nothing of an embedded PNG's real size, so a 500 KB icon can hold a 13000x13000 image.
    """
    count = int.from_bytes(data[4:6], "little")
    sizes = []
    for i in range(count):
        entry = data[6 + 16 * i : 22 + 16 * i]
        if len(entry) < 16:
            raise ImageProblem("truncated", f"the icon directory lists {count} images but ends after {i}")
        offset = int.from_bytes(entry[12:16], "little")
        frame = data[offset : offset + 26]
        if frame[:8] == b"\x89PNG\r\n\x1a\n" and len(frame) >= 24:
            sizes.append((int.from_bytes(frame[16:20], "big"), int.from_bytes(frame[20:24], "big")))
        elif len(frame) >= 12:  # a BMP info header: width, then twice the height (image and mask)
            w = abs(int.from_bytes(frame[4:8], "little", signed=True))
            sizes.append((w, abs(int.from_bytes(frame[8:12], "little", signed=True)) // 2))
    return sizes


def _check_frames(data: bytes, max_pixels: int) -> None:
    """Refuse container formats whose inner images break the pixel limit, before Pillow sees them."""
    if data[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"):  # ICO, CUR
        for w, h in _icon_frames(data):
            if w * h > max_pixels:
                raise ImageProblem(
                    "too_large",
                    f"the icon holds a {w}x{h} image = {w * h / 1e6:.0f} MP, above the "
                    f"{max_pixels / 1e6:.0f} MP limit; refused before decoding",
                )


def open_header(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and refuse empty, non-image and oversized files.

    Only the first frame of a multi-frame file (TIFF pages, animations) is ever decoded, and its
    size is the one checked here; icons are checked frame by frame first (Pillow decodes them on
    open).
    """
    if len(data) == 0:
        raise ImageProblem("zero_byte", "the file is empty (0 bytes)")
    _check_frames(data, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:12]
        raise ImageProblem("not_an_image", f"not a recognised image format (starts with {head!r})") from None
    except Image.DecompressionBombError as e:
        raise ImageProblem("too_large", f"refused before decoding: {e}") from None
    except Exception as e:  # noqa: BLE001 - any parser failure is a bad file, not a crash
        raise ImageProblem("unreadable", f"header could not be parsed: {e}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise ImageProblem(
            "too_large",
            f"header claims {w}x{h} = {w * h / 1e6:.0f} MP, above the {max_pixels / 1e6:.0f} MP limit; "
            "refused before decoding",
        )
    if w < 1 or h < 1:
        raise ImageProblem("unreadable", f"header claims an empty size {w}x{h}")
    return img


def _jpeg_lacks_eoi(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]


def decode(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: tuple[int, int] | None = None,
    header: Image.Image | None = None,
) -> Image.Image:
    """Decode to an upright RGB or L image.

    ``draft`` lets JPEG decode at a reduced scale (DCT scaling) when the caller only needs about
    that many pixels: a large photo then costs a fraction of a full decode. ``header``: what
    ``open_header(data, max_pixels)`` returned, when the caller already has it (not decoded yet).
    """
    img = open_header(data, max_pixels) if header is None else header
    fmt = img.format
    if draft is not None and fmt == "JPEG":
        img.draft("RGB" if img.mode not in ("L", "1") else "L", draft)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img.load()
            img = ImageOps.exif_transpose(img)
    except OSError as e:
        msg = str(e)
        if "truncated" in msg or "premature" in msg.lower() or "broken data stream" in msg:
            raise ImageProblem("truncated", f"the file ends before the image does ({msg})") from None
        raise ImageProblem("unreadable", f"decoding failed: {msg}") from None
    except Exception as e:  # noqa: BLE001
        raise ImageProblem("unreadable", f"decoding failed: {e}") from None
    if fmt == "JPEG" and _jpeg_lacks_eoi(data):
        raise ImageProblem("truncated", "JPEG has no end-of-image marker; the file was cut short")
    return to_standard(img)


def to_standard(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB or L. Transparency is composited on white."""
    mode = img.mode
    if mode in ("RGB", "L"):
        return img
    if mode == "1":
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("L" if mode in ("LA", "La") else "RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...


def fit(img: Image.Image, size: int, policy: str = "pad") -> Image.Image:
    """Resize to ``size`` x ``size``.

    ``pad`` keeps the whole image and pads the short side with the colour of the image's border
    (a black band on a white-background photo would be a feature the model could learn);
    ``crop`` fills the square and cuts the centre out; ``stretch`` ignores the aspect ratio.
    """
    w, h = img.size
    if policy == "stretch" or w == h:
        return img.resize((size, size), Image.BICUBIC, reducing_gap=3.0) if (w, h) != (size, size) else img
    if policy == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))
    if policy == "pad":
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        img = img.resize((nw, nh), Image.BICUBIC, reducing_gap=3.0)
        canvas = Image.new(img.mode, (size, size), border_colour(img))
        canvas.paste(img, ((size - nw) // 2, (size - nh) // 2))
        return canvas
    raise ValueError(f"unknown resize policy {policy!r}; use 'pad', 'crop' or 'stretch'")


def border_colour(img: Image.Image) -> int | tuple[int, ...]:
    arr = np.asarray(img)
    edge = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    med = np.median(edge, axis=0)
    return int(med) if arr.ndim == 2 else tuple(int(v) for v in med)
