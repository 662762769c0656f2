"""Per-image checks: valid RGB JPEGs kept byte for byte, odd files re-encoded, broken files rejected."""

import io

import numpy as np
import pytest
from PIL import Image

from hrnet_tfx.data.images import BadImageError, prepare_image


def _image(mode="RGB", fmt="JPEG", size=(40, 30), **save) -> bytes:
    rng = np.random.RandomState(0)
    img = Image.fromarray(rng.randint(0, 255, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
    out = io.BytesIO()
    img.save(out, format=fmt, **save)
    return out.getvalue()


@pytest.mark.parametrize("save", [{}, {"progressive": True}], ids=["baseline", "progressive"])
@pytest.mark.parametrize("verify", ["markers", "decode"])
def test_rgb_jpeg_kept_as_is(save, verify):
    data = _image(**save)
    p = prepare_image(data, verify)
    assert p.encoded == data and p.fixed == ""
    assert (p.height, p.width) == (30, 40)


def test_jpeg_with_trailing_bytes_after_end_marker_is_kept():
    data = _image() + b"\x00" * 50
    assert prepare_image(data).encoded == data


@pytest.mark.parametrize("mode,fmt,was", [
    ("CMYK", "JPEG", "JPEG CMYK"),
    ("L", "JPEG", "JPEG L"),
    ("RGB", "PNG", "PNG RGB"),
    ("RGBA", "PNG", "PNG RGBA"),
    ("P", "GIF", "GIF P"),
    ("RGB", "BMP", "BMP RGB"),
])
def test_odd_images_reencoded_as_rgb_jpeg(mode, fmt, was):
    data = _image(mode, fmt)
    p = prepare_image(data)
    assert p.fixed == was
    out = Image.open(io.BytesIO(p.encoded))
    assert (out.format, out.mode, out.size) == ("JPEG", "RGB", (40, 30))
    assert (p.height, p.width) == (30, 40)


def test_cmyk_reencoding_keeps_the_colours():
    rgb = Image.new("RGB", (16, 16), (200, 40, 40))
    out = io.BytesIO()
    rgb.convert("CMYK").save(out, format="JPEG", quality=95)
    fixed = np.asarray(Image.open(io.BytesIO(prepare_image(out.getvalue()).encoded)), np.float32)
    assert np.abs(fixed.mean(axis=(0, 1)) - [200, 40, 40]).max() < 12


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"just some text, not an image\n", "not_an_image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 64, "not_an_image"),
])
def test_unusable_files_rejected_with_reason(data, reason):
    with pytest.raises(BadImageError) as e:
        prepare_image(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("verify", ["markers", "decode"])
@pytest.mark.parametrize("save", [{}, {"progressive": True}], ids=["baseline", "progressive"])
def test_truncated_jpeg_rejected(verify, save):
    data = _image(size=(64, 64), **save)
    with pytest.raises(BadImageError) as e:
        prepare_image(data[: len(data) * 2 // 3], verify)
    assert e.value.reason == "truncated"


def test_truncated_png_rejected():
    data = _image(fmt="PNG", size=(64, 64))
    with pytest.raises(BadImageError) as e:
        prepare_image(data[: len(data) // 2])
    assert e.value.reason in ("truncated", "corrupt")


def test_unknown_verify_mode_is_an_error():
    with pytest.raises(ValueError, match="verify"):
        prepare_image(_image(), "pixels")


def test_truncation_found_despite_a_complete_exif_thumbnail():
    """The thumbnail inside APP1 has its own scan and end marker; only the main image's count."""
    thumb = _image(size=(16, 12))
    app1 = b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00" + thumb
    data = _image(size=(64, 48), exif=app1)
    assert data.count(b"\xff\xd9") == 2
    assert prepare_image(data).encoded == data
    with pytest.raises(BadImageError) as e:
        prepare_image(data[: len(data) - 40])
    assert e.value.reason == "truncated"
