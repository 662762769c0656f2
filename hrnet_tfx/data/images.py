"""Per-image checks: keep a valid RGB JPEG's original bytes, re-encode the odd ones, reject the broken ones.

ImageNet has a known handful of odd files (22 CMYK JPEGs, one PNG named .JPEG, grayscale JPEGs); they are
FIXED here (re-encoded as RGB JPEG), never skipped. Files that cannot be used at all (empty, not an image,
truncated, undecodable) raise :class:`BadImageError` with a short reason code; the converter skips and
reports them.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

from PIL import Image, UnidentifiedImageError

from hrnet_tfx.data.options import VERIFY_MODES

REENCODE_QUALITY = 95
JPEG_FORMATS = ("JPEG", "MPO")  # MPO: camera JPEG with extra frames; the first frame is a plain JPEG

_EOI = b"\xff\xd9"  # end of image; 0xFF in entropy-coded data is always followed by 0x00 or a RST marker


class BadImageError(ValueError):
    """An unusable input file. ``reason`` is a short code (``empty``, ``not_an_image``, ``truncated``,
    ``corrupt``, ``too_large``) used for metrics and the report; the message has the details."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """A JPEG ready to store: ``encoded`` bytes, size, and ``fixed`` = why it was re-encoded ('' if the
    original bytes were kept)."""

    encoded: bytes
    height: int
    width: int
    fixed: str = ""


def _scan_offset(data: bytes) -> int:
    """Offset of the first start-of-scan marker, found by walking the header's marker segments (so an
    EXIF thumbnail's markers, inside an APP1 segment, are skipped); -1 if the header ends first."""
    pos, n = 2, len(data)  # after SOI
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return -1
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return pos
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return -1


_SOF_PLAIN = frozenset((0xC0, 0xC1, 0xC2))  # baseline, extended sequential, progressive (Huffman DCT)
_SKIPPED = frozenset((0xC4, 0xCC, 0xDC, 0xDD, 0xDF, 0xFE))  # DHT, DAC, DNL, DRI, EXP, COM: not parsed by PIL
_PIL_PARSED_APPS = {0xE1: (b"Exif\0\0",), 0xE2: (b"ICC_PROFILE\0", b"MPF\0"), 0xED: (b"Photoshop 3.0\0",)}
_VERSIONED_APPS = {0xE0: b"JFIF", 0xEE: b"Adobe"}  # PIL reads a version number at bytes 5-6 of these


def _app_ok(data: bytes, marker: int, start: int, end: int) -> bool:
    """True if PIL stores this APPn segment (at ``data[start:end]``) without parsing it further or failing."""
    if any(data.startswith(sig, start, end) for sig in _PIL_PARSED_APPS.get(marker, ())):
        return False  # EXIF, ICC profiles, MPO frames, Photoshop blocks: left to PIL
    sig = _VERSIONED_APPS.get(marker)
    return sig is None or not data.startswith(sig, start, end) or end - start >= 7


def _dqt_ok(data: bytes, start: int, end: int) -> bool:
    """True if every quantization table in a DQT segment is complete (PIL rejects the file otherwise)."""
    while start < end:
        start += 65 if data[start] < 16 else 129
    return start == end


def plain_rgb_jpeg(data: bytes) -> tuple[int, int, int] | None:
    """(height, width, offset of the first scan) if ``data`` is a JPEG that PIL opens as a plain
    ``JPEG``/``RGB`` image without error, told from its header alone in a few microseconds (a full
    ``Image.open`` costs ~45 us); None if it is anything else or anything about it is unusual.

    Accepted: SOI, then a clean chain of length-prefixed segments (APPn, COM, DQT with complete tables,
    DHT/DAC/DRI/DNL/EXP) with exactly one baseline, extended or progressive 8-bit frame header of three
    components and a non-zero size, up to a complete start-of-scan header. Everything else (fill bytes or
    junk between segments, EXIF, ICC, MPO or Photoshop segments, which PIL parses further, other frame
    types, one or four components, a segment that overruns the file) returns None, and the caller opens the
    file with PIL as before; so the decisions and sizes are PIL's in every case
    (tests/test_data_images.py compares them on mutated headers).
    """
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    pos, frame = 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        start, end = pos + 4, pos + 2 + (data[pos + 2] << 8 | data[pos + 3])
        if end < start or end > n:
            return None
        if marker == 0xDA:
            return None if frame is None else (frame[0], frame[1], pos)
        if marker in _SKIPPED:
            pass
        elif marker == 0xDB:
            if not _dqt_ok(data, start, end):
                return None
        elif marker in _SOF_PLAIN:
            if frame is not None or end - start != 6 + 3 * 3 or data[start] != 8 or data[start + 5] != 3:
                return None
            frame = (data[start + 1] << 8 | data[start + 2], data[start + 3] << 8 | data[start + 4])
            if not frame[0] or not frame[1]:
                return None
        elif not (0xE0 <= marker <= 0xEF and _app_ok(data, marker, start, end)):
            return None
        pos = end
    return None


def _truncated(data: bytes) -> bool:
    """True if no end-of-image marker follows the first scan (the file was cut short). Searching from the
    end finds the marker within a few bytes, so this costs microseconds."""
    scan = _scan_offset(data)
    return scan < 0 or data.rfind(_EOI) < scan


def _check_pixels(img: Image.Image) -> None:
    """Bounds the pixels a file declares before anything is decoded (here or by training's decoder):
    PIL's decompression-bomb limit, ``Image.MAX_IMAGE_PIXELS`` (89.5 M by default, ~268 MB as RGB). PIL
    checks it in ``Image.open`` too, but only as a warning below twice the limit, and warning filters are
    process-wide state that threads running other conversions change; so it is checked here explicitly."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and img.width * img.height > limit:
        raise BadImageError("too_large", f"{img.width}x{img.height} = {img.width * img.height} pixels "
                                         f"exceeds the limit of {limit} pixels")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits first
        img = img.point(lambda v: v / 256).convert("L")
    return img.convert("RGB")


def _reencode(img: Image.Image, why: str) -> PreparedImage:
    img.load()
    rgb = _to_rgb(img)
    out = io.BytesIO()
    rgb.save(out, format="JPEG", quality=REENCODE_QUALITY)
    return PreparedImage(out.getvalue(), rgb.height, rgb.width, why)


def prepare_image(data: bytes, verify: str = "markers") -> PreparedImage:
    """Checks one input file and returns the JPEG to store.

    A baseline or progressive JPEG in RGB (YCbCr) is kept byte for byte, with its size from the header.
    CMYK and grayscale JPEGs, and any other format PIL reads (a PNG named .JPEG, GIF, BMP, TIFF, WebP), are
    decoded and re-encoded as RGB JPEG (quality 95).

    Args:
      data: the file's bytes.
      verify: for kept JPEGs, ``markers`` (default) parses the header (:func:`plain_rgb_jpeg`, or PIL when
        the header is anything but plain) and checks that the last scan ends with an end-of-image marker,
        which catches empty, non-image, cut-short and header-corrupt files without decoding pixels (the
        failures that also make ``tf.io.decode_jpeg`` fail); ``decode`` decodes every image fully with PIL
        (about 20-40x slower), which also catches what libjpeg treats as an error, such as a corrupt
        Huffman or quantization table. Neither mode catches damage inside the entropy-coded data: libjpeg
        (in PIL and in TensorFlow alike) only warns about it and decodes wrong pixels.

    Every image's declared size is bounded before it is decoded (:func:`_check_pixels`): a small file
    whose header claims 60000x60000 pixels is ``too_large``, not a 10 GB allocation.

    Raises:
      BadImageError: the file is unusable.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not data:
        raise BadImageError("empty", "empty file")
    if verify == "markers":
        header = plain_rgb_jpeg(data)
        limit = Image.MAX_IMAGE_PIXELS
        if header is not None and not (limit and header[0] * header[1] > limit):
            if data.rfind(_EOI) < header[2]:
                raise BadImageError("truncated", "JPEG ends before its end-of-image marker")
            return PreparedImage(data, header[0], header[1])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            _check_pixels(img)
            if img.format in JPEG_FORMATS and img.mode == "RGB":
                if verify == "decode":
                    img.load()
                elif _truncated(data):
                    raise BadImageError("truncated", "JPEG ends before its end-of-image marker")
                return PreparedImage(data, img.height, img.width)
            return _reencode(img, f"{img.format} {img.mode}")
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError("not_an_image", "not an image PIL can read") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError("too_large", str(e)) from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        message = f"{type(e).__name__}: {e}"
        raise BadImageError("truncated" if "truncated" in str(e).lower() else "corrupt", message) from None
