"""Rejects bytes that are not an image, and images too large to decode, before the model graph runs.

The serving signatures decode images inside the graph (:mod:`hrnet_tfx.serving.export`). Decoding and
resizing a 100-megapixel image there costs gigabytes of memory per request, and undecodable bytes only fail
deep inside the graph. So the development server reads each image's *header* with Pillow first (cheap: no
pixel is decoded) and answers ``INVALID_ARGUMENT`` with a message naming the input and the problem.

Which inputs hold images follows the export contract: ``images`` (encoded image bytes) and
``inputs``/``examples`` (serialized ``tf.Example`` s whose ``image/encoded`` feature holds the image).
"""

from __future__ import annotations

import io
import warnings
from typing import Iterable

from hrnet_tfx.data import features
from hrnet_tfx.serving.errors import invalid

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""Default cap on width x height per image: a 24-megapixel camera photo passes, a decompression bomb not."""

IMAGE_INPUTS = frozenset({"images"})
"""Signature inputs that hold encoded images."""
EXAMPLE_INPUTS = frozenset({"inputs", "examples"})
"""Signature inputs that hold serialized tf.Examples with the image in ``image/encoded``."""
DECODABLE_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
"""Pillow format names the graph's decoder handles (MPO: the JPEG variant some cameras write)."""


class ImageGuard:
    """Header checks on the images of a request.

    Args:
      max_pixels: the largest ``width * height`` accepted per image; None or 0 disables the size check.
    """

    def __init__(self, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS):
        if max_pixels is not None and max_pixels < 0:
            raise ValueError(f"max_pixels must be >= 0, got {max_pixels}")
        self.max_pixels = max_pixels or None

    def check_image(self, data: bytes, where: str) -> None:
        """Raises INVALID_ARGUMENT if ``data`` is not a decodable image or is larger than the cap."""
        from PIL import Image

        if not isinstance(data, (bytes, bytearray)):
            raise invalid(f"{where}: expected encoded image bytes, got {type(data).__name__}")
        if not data:
            raise invalid(f"{where}: empty string, expected encoded image bytes (JPEG, PNG, GIF, BMP or WebP)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    fmt, (width, height) = image.format, image.size
        except Image.DecompressionBombError as e:
            raise invalid(f"{where}: image too large to decode ({e})") from None
        except Image.UnidentifiedImageError:
            raise invalid(f"{where}: not a decodable image: {len(data)} bytes starting {bytes(data[:8])!r} are "
                          "not in any image format (send JPEG, PNG, GIF, BMP or WebP)") from None
        except Exception as e:  # truncated or corrupt headers
            raise invalid(f"{where}: not a decodable image: {len(data)} bytes starting {bytes(data[:8])!r} "
                          f"({type(e).__name__}: {e})") from None
        if fmt not in DECODABLE_FORMATS:
            raise invalid(f"{where}: {fmt} images are not supported; send JPEG, PNG, GIF, BMP or WebP")
        if self.max_pixels and width * height > self.max_pixels:
            raise invalid(f"{where}: image is {width}x{height} = {width * height:,} pixels, more than this "
                          f"server's limit of {self.max_pixels:,} pixels per image (--max-image-pixels)")

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
        for name, values in inputs.items():
            if getattr(values, "dtype", None) is None or values.dtype != object:
                continue
            flat = values.ravel()
            if name in IMAGE_INPUTS:
                for i, data in enumerate(flat):
                    self.check_image(data, f"{name}[{i}]")
            elif name in EXAMPLE_INPUTS:
                self.check_examples(flat, name)
