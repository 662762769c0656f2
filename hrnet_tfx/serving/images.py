"""Reading the encoded images a request carries: the one reader for the client and the warm-up writer.

A path may be local or a bucket URI. Files are read by :func:`hrnet_tfx.data.storage.read_input`: the size is
bounded before reading (at most :data:`MAX_IMAGE_BYTES` plus one byte is ever read), and FIFOs, devices and
symlink loops are refused without blocking.
"""

from __future__ import annotations

import os
from typing import Sequence

from hrnet_tfx.data.storage import InputFileError, read_input

MAX_IMAGE_BYTES = 16 * 1024 * 1024
"""Largest image file (or in-memory image) accepted; a file is read no further."""


class ImageFileError(ValueError):
    """An image file that cannot be read or is over :data:`MAX_IMAGE_BYTES`; the message names it."""


def read_image(image: bytes | bytearray | memoryview | str | os.PathLike, *, what: str = "image") -> bytes:
    """The encoded bytes of ``image``: given bytes as they are, or a file's contents (local or a bucket URI).

    Raises:
      ImageFileError: the file cannot be read, is not a regular file, or the image is over
        :data:`MAX_IMAGE_BYTES` (``what`` names it in the message, e.g. ``"warm-up image"``).
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        data, name = bytes(image), "(bytes)"
        too_large = len(data) > MAX_IMAGE_BYTES
    else:
        name = os.fspath(image)
        try:
            data, too_large = read_input(name, MAX_IMAGE_BYTES), False
        except InputFileError as e:
            if e.reason != "too_large":
                raise ImageFileError(f"cannot read {what} {name}: {_reason(e, name)}") from None
            too_large = True
    if too_large:
        raise ImageFileError(f"{what} {name} is larger than {MAX_IMAGE_BYTES} bytes")
    return data


def _reason(error: InputFileError, name: str) -> str:
    """What went wrong, on one line, worded like the system's errors ("Is a directory", "No such file or
    directory"), without the error's type or the path TF's message repeats (``ram://`` gives no message)."""
    if error.reason == "not_a_file":
        return f"Is {error.detail}"  # "Is a directory", "Is a FIFO (named pipe)"
    kind, sep, text = error.detail.partition(": ")
    if not sep:
        kind, text = "", error.detail
    text = " ".join(text.removeprefix(f"{name}; ").split())
    if not text:
        return "no such file" if kind == "NotFoundError" else kind
    return text[0].upper() + text[1:]


def read_images(images: Sequence[bytes | bytearray | memoryview | str | os.PathLike], *,
                what: str = "image") -> list[bytes]:
    """:func:`read_image` of each item, in order."""
    return [read_image(image, what=what) for image in images]
