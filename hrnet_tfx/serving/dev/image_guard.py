"""Rejects bytes that are not an image, and images too costly to decode, before the model graph runs.

What the graph allocates is set by an image's *header*, not its size in bytes (a few kilobytes can declare
gigapixels), so each image's header is read with Pillow first (no pixel is decoded); the README's Serving
table lists what is refused. Two facts behind the rules: ``tf.io.decode_image`` (TF 2.16) sniffs JPEG, PNG,
GIF and BMP by their first bytes, so the guard sniffs the same way and requires Pillow to read the same
format; and TensorFlow decodes *every* frame of a GIF at the size of the largest while Pillow's size is the
first frame's (a 1x1 first frame can hide an 8000x8000 second one), whereas of an animated PNG it decodes
only the default image. Images are the ``images`` input and the ``image/encoded`` feature of the
``inputs``/``examples`` tf.Examples.
"""

from __future__ import annotations

import io
import warnings
from typing import Iterable

from hrnet_tfx.data import features
from hrnet_tfx.serving.errors import invalid

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Default cap on width x height per image: a 24-megapixel camera photo passes, a decompression bomb not."""
DEFAULT_MAX_ASPECT_RATIO = 50.0
"""Default cap on long side / short side: a 20:1 panorama passes, a 1,000,000 x 1 strip not."""

# TensorFlow's sniffing (tf.io.is_jpeg, then decode_image's checks) and the Pillow formats each may be.
_TF_FORMATS = ((b"\xff\xd8\xff", "JPEG", {"JPEG", "MPO"}), (b"\x89PN", "PNG", {"PNG"}),
               (b"GIF", "GIF", {"GIF"}), (b"BM", "BMP", {"BMP"}))
SUPPORTED = "JPEG, PNG, GIF or BMP"


class ImageGuard:
    """Header checks on the images of a request.

    Args:
      max_pixels: the largest ``width * height`` accepted per image; None or 0 disables the check.
      max_aspect_ratio: the largest ``long side / short side``; None or 0 disables the check.
    """

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO):
        if max_pixels is not None and max_pixels < 0:
            raise ValueError(f"max_pixels must be >= 0, got {max_pixels}")
        if max_aspect_ratio is not None and (max_aspect_ratio < 0 or 0 < max_aspect_ratio < 1):
            raise ValueError(f"max_aspect_ratio must be 0 (off) or >= 1, got {max_aspect_ratio}")
        self.max_pixels = max_pixels or None
        self.max_aspect_ratio = max_aspect_ratio or None

    def check_image(self, data: bytes, where: str) -> None:
        """Raises INVALID_ARGUMENT unless ``data`` is an image TensorFlow can decode within the limits."""
        if not isinstance(data, (bytes, bytearray)):
            raise invalid(f"{where}: expected encoded image bytes, got {type(data).__name__}")
        if not data:
            raise invalid(f"{where}: empty string, expected encoded image bytes ({SUPPORTED})")
        data = bytes(data)
        expected, allowed = next(((name, pil) for magic, name, pil in _TF_FORMATS if data.startswith(magic)),
                                 (None, ()))
        if expected is None:
            raise invalid(f"{where}: not a decodable image: {len(data)} bytes starting {data[:8]!r} are not "
                          f"{SUPPORTED} (the formats TensorFlow decodes)")
        fmt, width, height, animated = _read_header(data, where)
        if fmt not in allowed:
            raise invalid(f"{where}: not a decodable image: it starts like {expected} but reads as {fmt}")
        if expected == "GIF" and animated:
            raise invalid(f"{where}: animated GIF refused (more than one frame): TensorFlow decodes every frame at "
                          "the size of the largest; send a single frame")
        if width < 1 or height < 1:
            raise invalid(f"{where}: image is {width}x{height}: no pixels")
        if self.max_pixels and width * height > self.max_pixels:
            raise invalid(f"{where}: image is {width}x{height} = {width * height:,} pixels, more than this "
                          f"server's limit of {self.max_pixels:,} pixels per image (--max-image-pixels)")
        ratio = max(width, height) / min(width, height)
        if self.max_aspect_ratio and ratio > self.max_aspect_ratio:
            raise invalid(f"{where}: image is {width}x{height}, an aspect ratio of {ratio:,.1f}, more than this "
                          f"server's limit of {self.max_aspect_ratio:g} (--max-aspect-ratio)")

    def check_examples(self, serialized: Iterable[bytes], name: str) -> None:
        """Checks the ``image/encoded`` of each serialized tf.Example (malformed ones are left to the graph)."""
        from tensorflow.core.example import example_pb2

        for i, data in enumerate(serialized):
            example = example_pb2.Example()
            try:
                example.ParseFromString(data)
            except Exception:
                raise invalid(f"{name}[{i}]: not a serialized tf.Example") from None
            feature = example.features.feature.get(features.IMAGE_ENCODED)
            if feature is None or feature.WhichOneof("kind") != "bytes_list":
                continue  # the graph reports the missing feature in its own words
            for value in feature.bytes_list.value:
                self.check_image(value, f"{name}[{i}] {features.IMAGE_ENCODED}")

    def check_inputs(self, inputs: dict) -> None:
        """Checks the image-bearing string inputs of a Predict call (``{name: object ndarray of bytes}``)."""
        from hrnet_tfx.serving.export import INPUT_CLASSIFY, INPUT_EXAMPLES, INPUT_IMAGES  # imports TensorFlow

        for name, values in inputs.items():
            if getattr(values, "dtype", None) is None or values.dtype != object:
                continue
            flat = values.ravel()
            if name == INPUT_IMAGES:
                for i, data in enumerate(flat):
                    self.check_image(data, f"{name}[{i}]")
            elif name in (INPUT_CLASSIFY, INPUT_EXAMPLES):
                self.check_examples(flat, name)


def _read_header(data: bytes, where: str) -> tuple[str, int, int, bool]:
    """``(Pillow format, width, height, animated)`` from the header; ``animated`` is looked up for GIFs only
    (Pillow skips the first frame's pixel data to find a second one, without decoding it)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                animated = image.format == "GIF" and image.is_animated
                return image.format, image.size[0], image.size[1], animated
    except Image.DecompressionBombError as e:
        raise invalid(f"{where}: image too large to decode ({e})") from None
    except Exception as e:  # unidentified, truncated or corrupt headers
        raise invalid(f"{where}: not a decodable image: {len(data)} bytes starting {data[:8]!r} "
                      f"({type(e).__name__}: {e})") from None
