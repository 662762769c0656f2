"""Class tables and the ImageNet label files: Kaggle's LOC_*.csv / LOC_synset_mapping.txt, the ILSVRC2012
devkit's meta.mat and validation ground truth, and our own label map (``labels.tsv``).

Every reader raises :class:`DataError` naming the file and the line when a file is malformed. Label files
are read through :mod:`hrnet_tfx.data.storage` (local paths or any TensorFlow file system such as
``gs://``) and are refused above :data:`MAX_LABEL_FILE_BYTES` before they are read.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
from typing import Iterable

from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.data.layout import tsv_cell, tsv_uncell


MAX_LABEL_FILE_BYTES = 256 * 2**20
"""Largest label file read (ImageNet's largest, LOC_train_solution.csv, is ~30 MB): a bigger one is refused
before it is read, which also bounds the memory an absurdly long line can take."""


class DataError(ValueError):
    """The input data is missing, malformed or inconsistent. Raised before any conversion work starts."""


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """One class: its 0-based ``index`` (position in sorted ``id`` order), ``id`` (a WordNet id such as
    ``n01440764`` for ImageNet, the folder name for image folders) and human-readable ``name``."""

    index: int
    id: str
    name: str


@dataclasses.dataclass(frozen=True)
class Box:
    """A bounding box in pixels of the original image, with the class id it belongs to."""

    class_id: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float


def make_classes(ids: Iterable[str], names: dict[str, str] | None = None) -> list[ClassInfo]:
    """The class table: ``ids`` sorted (Python string order) and numbered from 0; names from ``names``
    when given there, else the id itself."""
    names = names or {}
    return [ClassInfo(i, cid, names.get(cid, cid)) for i, cid in enumerate(sorted(set(ids)))]


def write_label_map(path: str, classes: list[ClassInfo]) -> None:
    """Writes ``index<TAB>id<TAB>name`` lines (no header) to ``path`` (a file or a directory, which gets
    :data:`~hrnet_tfx.data.features.LABEL_MAP_FILENAME`). Cells are escaped like the reports'
    (:func:`hrnet_tfx.data.layout.tsv_cell`), so every class is one line of three columns."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        path = os.path.join(path, LABEL_MAP_FILENAME)
    text = "".join(f"{c.index}\t{tsv_cell(c.id)}\t{tsv_cell(c.name)}\n" for c in classes)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(text)


def read_label_map(path: str) -> list[ClassInfo]:
    """Reads a label map written by :func:`write_label_map` (a file, or a directory holding one)."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        path = os.path.join(path, LABEL_MAP_FILENAME)
    if not tf.io.gfile.exists(path):
        raise DataError(f"label map not found: {path}")
    classes = []
    with tf.io.gfile.GFile(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or not parts[0].isdigit():
                raise DataError(f"{path}:{lineno}: expected 'index<TAB>id<TAB>name', got {line!r}")
            classes.append(ClassInfo(int(parts[0]), tsv_uncell(parts[1]), tsv_uncell(parts[2])))
    return classes


def read_synset_mapping(path: str) -> dict[str, str]:
    """Kaggle's ``LOC_synset_mapping.txt``: ``n01440764 tench, Tinca tinca`` per line -> {wnid: name}."""
    names = {}
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        wnid, _, name = line.partition(" ")
        if not name:
            raise DataError(f"{path}:{lineno}: expected '<wnid> <name>', got {_shorten(line)}")
        names[wnid] = name.strip()
    return names


def read_loc_solution(path: str) -> dict[str, list[Box]]:
    """Kaggle's ``LOC_val_solution.csv`` / ``LOC_train_solution.csv``: ``ImageId,PredictionString`` with
    ``wnid xmin ymin xmax ymax`` repeated per box -> {image id: boxes} (the first box's class is the
    image's label)."""
    import csv

    result: dict[str, list[Box]] = {}
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    try:
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise DataError(f"{path}: expected the header 'ImageId,PredictionString', got "
                            f"{_shorten(','.join(header or []))}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) != 2:
                raise DataError(f"{path}:{lineno}: expected 2 columns, got {len(row)}")
            fields = row[1].split()
            if not fields or len(fields) % 5:
                raise DataError(f"{path}:{lineno}: PredictionString must be groups of "
                                f"'wnid xmin ymin xmax ymax', got {_shorten(row[1])}")
            boxes = []
            for i in range(0, len(fields), 5):
                try:
                    coords = [float(v) for v in fields[i + 1:i + 5]]
                except ValueError:
                    raise DataError(f"{path}:{lineno}: non-numeric box {fields[i:i + 5]}") from None
                if not all(math.isfinite(c) for c in coords):
                    raise DataError(f"{path}:{lineno}: box coordinates must be finite, got {fields[i:i + 5]}")
                boxes.append(Box(fields[i], *coords))
            if row[0] in result:
                raise DataError(f"{path}:{lineno}: image {_shorten(row[0])} is listed twice")
            result[row[0]] = boxes
    except csv.Error as e:  # e.g. a field longer than csv's limit (128 KiB), a NUL byte
        raise DataError(f"{path}:{reader.line_num}: not a valid CSV line: {e}") from None
    return result


def read_devkit_meta(path: str) -> dict[int, tuple[str, str]]:
    """The ILSVRC2012 devkit's ``data/meta.mat`` -> {ILSVRC2012_ID: (wnid, words)} for the 1000 leaf
    classes (``num_children == 0``). The IDs are the devkit's own order, NOT sorted wnid order."""
    import numpy as np
    import scipy.io

    from hrnet_tfx.data import storage

    data = storage.read_bounded(path, MAX_LABEL_FILE_BYTES, "devkit meta file")
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True)
    except Exception as e:  # scipy raises several types for malformed files
        raise DataError(f"cannot read devkit meta file {path}: {e}") from None
    if "synsets" not in mat:
        raise DataError(f"{path}: no 'synsets' struct array (not an ILSVRC2012 devkit meta.mat)")
    synsets = np.ravel(mat["synsets"])
    fields = synsets.dtype.names or ()
    missing = {"ILSVRC2012_ID", "WNID", "words", "num_children"} - set(fields)
    if missing:
        raise DataError(f"{path}: synsets lack the fields {sorted(missing)}")
    result = {}
    for s in synsets:
        if int(np.asarray(s["num_children"]).item()) != 0:
            continue
        result[int(np.asarray(s["ILSVRC2012_ID"]).item())] = (
            str(np.asarray(s["WNID"]).item()), str(np.asarray(s["words"]).item()))
    return result


def read_devkit_ground_truth(path: str) -> list[int]:
    """``ILSVRC2012_validation_ground_truth.txt``: line i holds the ILSVRC2012_ID of
    ``ILSVRC2012_val_{i:08d}.JPEG`` (1-based)."""
    ids = []
    for lineno, line in enumerate(_read_lines(path), 1):
        line = line.strip()
        if not line:
            continue
        if not line.isdigit() or len(line) > 9:
            raise DataError(f"{path}:{lineno}: expected an ILSVRC2012_ID, got {_shorten(line)}")
        ids.append(int(line))
    return ids


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)")


def _read_text(path: str) -> str:
    """A label file's text (UTF-8), refused if larger than :data:`MAX_LABEL_FILE_BYTES`."""
    from hrnet_tfx.data import storage

    data = storage.read_bounded(path, MAX_LABEL_FILE_BYTES, "label file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_lines(path: str) -> list[str]:
    return _read_text(path).splitlines()
