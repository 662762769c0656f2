"""Names and places of converted data: one layout for the standalone converter and the TFX Examples artifact.

::

    OUTPUT/
      Split-train/train-00000-of-01024[.gz] ...        (TFX's Split-<name>/ directories; inception-style
      Split-eval/validation-00000-of-00128[.gz] ...     shard names inside, so old 'validation-*' globs work)
      labels.tsv        index<TAB>class id<TAB>name (features.LABEL_MAP_FILENAME)
      bad_files.tsv     skipped inputs and why; fixed_files.tsv: inputs re-encoded as RGB JPEG (cells
                        escaped by tsv_cell, so every row is one line whatever the file names hold)
      manifest.json     written last: its presence with "complete": true marks the output as complete
      .incomplete/      staging area of an unfinished run (removed when the run completes)

Nothing but shards lives inside ``Split-*/``: TFX's readers read every file there (``Split-x/*``).
"""

from __future__ import annotations

import json
import os
import re

TRAIN = "train"
EVAL = "eval"
SPLITS = (TRAIN, EVAL)
"""Split names: TFX's conventional names, used for the ``Split-<name>`` directories and the artifact."""

FILE_PREFIX = {TRAIN: "train", EVAL: "validation"}
"""Shard file prefixes: the inception/TF-slim names (``train-00000-of-01024``, ``validation-...``)."""

MANIFEST_FILENAME = "manifest.json"
BAD_FILES_FILENAME = "bad_files.tsv"
FIXED_FILES_FILENAME = "fixed_files.tsv"
STAGING_DIRNAME = ".incomplete"
MANIFEST_FORMAT = "hrnet-tfx-examples/1"


def tsv_cell(value) -> str:
    """One cell of the reports: a backslash and every character that is not printable (tab, newline, ...)
    is written as a Python escape (``\\\\``, ``\\t``, ``\\n``, ``\\x0b``), and each byte of a file name that is
    not UTF-8 (a surrogate escape from ``os``) as ``\\xNN``, so every row stays one line of tab-separated
    columns and no name is lost or confused with another."""
    text = str(value)
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte of a file name
            out.append(f"\\x{ord(ch) - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


_ESCAPE = re.compile(r"\\(\\|[tnr]|x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
_SIMPLE_ESCAPES = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}


def tsv_uncell(cell: str) -> str:
    """The inverse of :func:`tsv_cell` for text: each escape it writes becomes its character again (``\\xNN``
    becomes U+00NN, so a file name's undecodable byte comes back as that code point, not as the byte)."""
    if "\\" not in cell:
        return cell
    return _ESCAPE.sub(lambda m: _SIMPLE_ESCAPES.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), cell)


class IncompleteOutputError(RuntimeError):
    """A converted-data directory has no complete manifest (a run is unfinished or failed)."""


def split_dirname(split: str) -> str:
    """``Split-<split>``: the directory name TFX uses for a split of an Examples artifact."""
    return f"Split-{split}"


def split_dir(output_dir: str, split: str) -> str:
    """The directory holding the shards of ``split`` under ``output_dir``."""
    return os.path.join(output_dir, split_dirname(split))


def shard_filename(split: str, shard: int, num_shards: int, compression: str = "none") -> str:
    """``train-00007-of-01024`` (``.gz`` appended for GZIP: TFX's readers pick compression by suffix)."""
    suffix = ".gz" if compression == "gzip" else ""
    return f"{FILE_PREFIX[split]}-{shard:05d}-of-{num_shards:05d}{suffix}"


def split_file_pattern(output_dir: str, split: str) -> str:
    """Glob of the shards of ``split`` (for tf.data / ``tf.io.gfile.glob``)."""
    return os.path.join(split_dir(output_dir, split), f"{FILE_PREFIX[split]}-*-of-*")


def load_manifest(output_dir: str) -> dict:
    """The manifest of a completed conversion. Raises :class:`IncompleteOutputError` if the output is
    missing or unfinished, so readers never train on half-written data."""
    import tensorflow as tf

    path = os.path.join(output_dir, MANIFEST_FILENAME)
    if not tf.io.gfile.exists(path):
        raise IncompleteOutputError(
            f"{output_dir} holds no completed conversion ({MANIFEST_FILENAME} is missing): the run was "
            "interrupted, failed or never started; run 'hrnet-tfx data convert' again to finish it")
    with tf.io.gfile.GFile(path) as f:
        manifest = json.load(f)
    if manifest.get("format") != MANIFEST_FORMAT or not manifest.get("complete"):
        raise IncompleteOutputError(f"{path} does not describe a complete conversion")
    return manifest
