"""Per-image checks: valid RGB JPEGs kept byte for byte, odd files re-encoded, broken files rejected."""

import io

import numpy as np
import pytest
from PIL import Image, ImageCms

from hrnet_tfx.data.images import BadImageError, _scan_offset, plain_rgb_jpeg, prepare_image


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


def test_decode_mode_catches_a_corrupt_huffman_table_that_markers_mode_keeps():
    data = _image(size=(64, 64))
    bad = bytearray(data)
    bad[data.index(b"\xff\xc4") + 5 + 15] = 255  # the first Huffman table's last count: over 256 codes
    bad = bytes(bad)
    assert prepare_image(bad, "markers").encoded == bad  # the header still parses; its contents are not checked
    with pytest.raises(BadImageError) as e:
        prepare_image(bad, "decode")
    assert e.value.reason == "corrupt" and "broken data stream" in str(e.value)


def test_damaged_entropy_data_is_not_caught_by_either_mode():
    """What the README says neither mode does: libjpeg only warns about damage inside the scan, and the
    image decodes (to wrong pixels) in PIL as it does in TensorFlow."""
    data = _image(size=(64, 64))
    bad = bytearray(data)
    bad[len(data) // 2] ^= 0x55
    bad = bytes(bad)
    for verify in ("markers", "decode"):
        assert prepare_image(bad, verify).encoded == bad


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


def _variants() -> dict[str, bytes]:
    """JPEGs as cameras and tools write them: baseline, progressive, EXIF, ICC profile, comment, restart
    markers, 4:4:4, grayscale, CMYK (Adobe segment), optimised Huffman tables."""
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    return {
        "baseline": _image(size=(48, 32)),
        "progressive": _image(size=(48, 32), progressive=True),
        "exif": _image(size=(48, 32), exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\x00\x00"),
        "icc": _image(size=(48, 32), icc_profile=icc),
        "comment": _image(size=(48, 32), comment=b"made by a test"),
        "restart": _image(size=(48, 32), restart_marker_blocks=1),
        "444": _image(size=(48, 32), subsampling=0, optimize=True),
        "gray": _image("L", size=(48, 32)),
        "cmyk": _image("CMYK", size=(48, 32)),
    }


@pytest.mark.parametrize("name,accepted", [("baseline", True), ("progressive", True), ("comment", True),
                                           ("restart", True), ("444", True), ("exif", False), ("icc", False),
                                           ("gray", False), ("cmyk", False)])
def test_header_fast_path_takes_plain_rgb_jpegs_and_leaves_the_rest_to_pil(name, accepted):
    data = _variants()[name]
    header = plain_rgb_jpeg(data)
    assert (header is not None) == accepted
    if accepted:
        assert header == (32, 48, _scan_offset(data))
    p = prepare_image(data)
    assert (p.height, p.width, p.encoded == data) == (32, 48, name not in ("gray", "cmyk"))


def _pil_view(data: bytes):
    """What the PIL path decides for ``data``: (height, width) of a JPEG/RGB image, else None."""
    try:
        img = Image.open(io.BytesIO(data))
        return (img.height, img.width) if img.format == "JPEG" and img.mode == "RGB" else None
    except Exception:
        return None


def _crafted() -> list[bytes]:
    """Header edge cases random mutation rarely builds: segments PIL reads a version from, cut short; fill
    bytes and a stray marker between segments; a second frame header."""
    data = _variants()["baseline"]
    app0_end = 4 + int.from_bytes(data[4:6], "big")
    sof = data.index(b"\xff\xc0")
    sof_end = sof + 2 + int.from_bytes(data[sof + 2:sof + 4], "big")
    rest = data[app0_end:]
    return [data[:2] + b"\xff\xe0\x00\x06JFIF" + rest,
            data[:2] + b"\xff\xee\x00\x07Adobe" + rest,
            data[:2] + b"\xff\xee\x00\x09Adobe\x00\x64" + rest,
            data[:app0_end] + b"\xff\xff" + rest,
            data[:app0_end] + b"\xff\xd0" + rest,
            data[:sof_end] + data[sof:sof_end] + data[sof_end:]]


@pytest.mark.parametrize("case", range(6))
def test_header_fast_path_agrees_with_pil_on_crafted_headers(case):
    data = _crafted()[case]
    header = plain_rgb_jpeg(data)
    assert header is None or _pil_view(data) == header[:2]


def test_header_fast_path_never_accepts_what_pil_would_not():
    """Mutated headers (random bytes changed, cut short, bytes inserted): whenever the fast path accepts a
    file, PIL opens it as JPEG/RGB of the same size and the scan starts where the marker walk says, so the
    fast path changes speed only, never a decision."""
    rng = np.random.RandomState(1)
    accepted = 0
    for name, data in _variants().items():
        scan = _scan_offset(data)
        for trial in range(150):
            mutated = bytearray(data)
            kind = trial % 3
            if kind == 0:
                for _ in range(rng.randint(1, 4)):
                    mutated[rng.randint(2, scan + 12)] = rng.randint(0, 256)
            elif kind == 1:
                mutated = mutated[:rng.randint(2, scan + 12)]
            else:
                at = rng.randint(2, scan + 4)
                mutated[at:at] = bytes(rng.randint(0, 256, rng.randint(1, 4)).astype(np.uint8))
            mutated = bytes(mutated)
            header = plain_rgb_jpeg(mutated)
            if header is not None:
                accepted += 1
                assert _pil_view(mutated) == header[:2], (name, trial)
                assert _scan_offset(mutated) == header[2], (name, trial)
    assert accepted > 100  # the mutations do reach the accepting path
