"""Reading the encoded images a request carries: the one reader for the client and the warm-up writer.

A path may be local or a bucket URI (read through ``tf.io.gfile``). Each image is read to at most
:data:`MAX_IMAGE_BYTES` plus one byte, so a huge or endless file is refused without being loaded.
"""

from __future__ import annotations

import os
from typing import Sequence

MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""Largest image file (or in-memory image) accepted; a file is read no further."""


class ImageFileError(ValueError):
    """An image file that cannot be read or is over :data:`MAX_IMAGE_BYTES`; the message names it."""


def read_image(image: bytes | bytearray | memoryview | str | os.PathLike, *, what: str = "image") -> bytes:
    """The encoded bytes of ``image``: given bytes as they are, or a file's contents (local or a bucket URI).

    Raises:
      ImageFileError: the file cannot be read, or the image is over :data:`MAX_IMAGE_BYTES` (``what``
        names it in the message, e.g. ``"warm-up image"``).
    """
    import tensorflow as tf

    if isinstance(image, (bytes, bytearray, memoryview)):
        data, name = bytes(image), "(bytes)"
    else:
        name = os.fspath(image)
        try:
            with tf.io.gfile.GFile(name, "rb") as f:
                data = f.read(MAX_IMAGE_BYTES + 1)
        except tf.errors.OpError as e:
            raise ImageFileError(f"cannot read {what} {name}: {_reason(e, name)}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageFileError(f"{what} {name} is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def _reason(error, name: str) -> str:
    """What went wrong, on one line, without the path TF's message repeats (``ram://`` gives none)."""
    import tensorflow as tf

    text = " ".join(error.message.removeprefix(f"{name}; ").split())
    if text:
        return text
    return "no such file" if isinstance(error, tf.errors.NotFoundError) else type(error).__name__


def read_images(images: Sequence[bytes | bytearray | memoryview | str | os.PathLike], *,
                what: str = "image") -> list[bytes]:
    """:func:`read_image` of each item, in order."""
    return [read_image(image, what=what) for image in images]
