import io

import numpy as np
import pytest
from PIL import Image

from camscope.data.imageio import ImageProblem, decode, fit, open_header, to_standard
from camscope.data.messy import giant_png_header
from tests.helpers import icon_bytes, jpeg_bytes


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_giant_header_refused_before_decoding():
    data = giant_png_header(40000, 40000)
    with pytest.raises(ImageProblem) as e:
        open_header(data)
    assert e.value.kind == "too_large" and "refused before decoding" in e.value.detail


@pytest.mark.parametrize(
    "data,kind",
    [
        (b"", "zero_byte"),
        (b"hello, I am text pretending to be a JPEG", "not_an_image"),
    ],
)
def test_bad_bytes(data, kind):
    with pytest.raises(ImageProblem) as e:
        decode(data)
    assert e.value.kind == kind


def test_truncated_jpeg_and_png():
    arr = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for data in (jpeg_bytes(arr), _png(Image.fromarray(arr))):
        with pytest.raises(ImageProblem) as e:
            decode(data[: len(data) // 2])
        assert e.value.kind in ("truncated", "unreadable")


def test_modes_are_standardised():
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # red in CMYK
    assert decode(_tiff(cmyk)).mode == "RGB"
    assert decode(_tiff(cmyk)).getpixel((0, 0))[0] > 200
    sixteen = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    out = to_standard(sixteen)
    assert out.mode == "L" and out.getpixel((0, 0)) == 255
    pal = Image.new("P", (8, 8), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    got = decode(_png(pal))
    assert got.mode == "RGB" and got.getpixel((0, 0)) == (255, 255, 255)  # transparent -> white
    assert decode(_png(Image.new("1", (4, 4), 1))).mode == "L"


def _tiff(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "TIFF")
    return buf.getvalue()


def test_exif_orientation_honoured():
    arr = np.zeros((20, 40, 3), np.uint8)  # wide image
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    assert decode(buf.getvalue()).size == (20, 40)


def test_fit_policies():
    img = Image.fromarray(np.full((20, 40, 3), 200, np.uint8))
    for policy in ("pad", "crop", "stretch"):
        assert fit(img, 16, policy).size == (16, 16)
    padded = np.asarray(fit(img, 16, "pad"))
    assert (padded == 200).all()  # padded with the border colour, not black
    with pytest.raises(ValueError):
        fit(img, 16, "squash")


def test_an_icon_hiding_a_giant_png_is_refused_before_decoding():
    # the bomb: Pillow decodes an icon's largest frame inside Image.open (690 MB for this one)
    small = _png(Image.new("RGBA", (16, 16), (200, 0, 0, 255)))
    for inner in (giant_png_header(13000, 13000), giant_png_header(20000, 4000)):
        with pytest.raises(ImageProblem) as e:
            open_header(icon_bytes([small, inner]), max_pixels=40_000_000)
        assert e.value.kind == "too_large" and "icon holds a" in e.value.detail
    bmp_header = (40).to_bytes(4, "little") + (30000).to_bytes(4, "little") + (60000).to_bytes(4, "little")
    with pytest.raises(ImageProblem, match="30000x30000"):
        open_header(icon_bytes([bmp_header + b"\x00" * 32]))
    # an ordinary icon still loads
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (0, 90, 200)).save(buf, "ICO", sizes=[(32, 32), (16, 16)])
    assert decode(buf.getvalue()).size == (32, 32)


def test_only_the_first_page_of_a_tiff_is_decoded():
    pages = [Image.new("L", (8, 8), 10), Image.new("L", (3000, 3000), 200)]
    buf = io.BytesIO()
    pages[0].save(buf, "TIFF", save_all=True, append_images=pages[1:], compression="tiff_deflate")
    assert decode(buf.getvalue(), max_pixels=100).size == (8, 8)  # the 9 MP second page never counts
