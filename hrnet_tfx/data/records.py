"""tf.Example records: build one from a prepared image, and import existing inception/TF-slim records.

Keys are those of :mod:`hrnet_tfx.data.features`. Records are serialized deterministically, so the same
input gives byte-identical shards.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator, Sequence

from hrnet_tfx.data import features as F
from hrnet_tfx.data.images import PreparedImage
from hrnet_tfx.data.labels import Box, ClassInfo

INCEPTION_LABEL_OFFSET = 1
"""Inception/TF-slim ImageNet records number classes 1..1000 (0 = background, 1001 outputs): subtract 1."""


class BadRecordError(ValueError):
    """An imported record that cannot be used (``reason``: ``bad_record`` or ``bad_label``)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def _example_pb2():
    from tensorflow.core.example import example_pb2

    return example_pb2


def _clip(v: float) -> float:
    return min(max(v, 0.0), 1.0)


def make_example(image: PreparedImage, cls: ClassInfo, filename: str, boxes: Sequence[Box] = (),
                 class_index: dict[str, int] | None = None) -> bytes:
    """A serialized tf.Example for one image. Boxes (pixels) are normalised to [0, 1] by the image size
    and clipped; their labels come from ``class_index`` (class id -> index)."""
    example = _example_pb2().Example()
    feature = example.features.feature
    feature[F.IMAGE_ENCODED].bytes_list.value.append(image.encoded)
    feature[F.IMAGE_FORMAT].bytes_list.value.append(b"JPEG")
    feature[F.LABEL].int64_list.value.append(cls.index)
    feature[F.SYNSET].bytes_list.value.append(os.fsencode(cls.id))
    feature[F.CLASS_TEXT].bytes_list.value.append(os.fsencode(cls.name))
    feature[F.HEIGHT].int64_list.value.append(image.height)
    feature[F.WIDTH].int64_list.value.append(image.width)
    feature[F.CHANNELS].int64_list.value.append(3)
    feature[F.COLORSPACE].bytes_list.value.append(b"RGB")
    feature[F.FILENAME].bytes_list.value.append(os.fsencode(filename))  # undecodable names survive
    if boxes:
        w, h = float(image.width), float(image.height)
        feature[F.BBOX_XMIN].float_list.value.extend(_clip(b.xmin / w) for b in boxes)
        feature[F.BBOX_YMIN].float_list.value.extend(_clip(b.ymin / h) for b in boxes)
        feature[F.BBOX_XMAX].float_list.value.extend(_clip(b.xmax / w) for b in boxes)
        feature[F.BBOX_YMAX].float_list.value.extend(_clip(b.ymax / h) for b in boxes)
        feature[F.BBOX_LABEL].int64_list.value.extend(
            (class_index or {}).get(b.class_id, cls.index) for b in boxes)
    return example.SerializeToString(deterministic=True)


def relabel_record(record: bytes, label_offset: int) -> tuple[bytes, int, str, str]:
    """Shifts an imported record's class and box labels by ``-label_offset`` (images untouched).

    Returns (serialized record, new label, synset, class text). Raises :class:`BadRecordError` for a
    record that does not parse, has no label, or whose label falls below 0 after the shift.
    """
    example = _example_pb2().Example()
    try:
        example.ParseFromString(record)
    except Exception as e:  # protobuf's DecodeError
        raise BadRecordError("bad_record", f"not a tf.Example: {e}") from None
    feats = example.features.feature
    if F.IMAGE_ENCODED not in feats or not feats[F.IMAGE_ENCODED].bytes_list.value:
        raise BadRecordError("bad_record", f"no {F.IMAGE_ENCODED}")
    values = feats[F.LABEL].int64_list.value if F.LABEL in feats else []
    if len(values) != 1:
        raise BadRecordError("bad_label", f"expected one {F.LABEL}, found {len(values)}")
    label = values[0] - label_offset
    if label < 0:
        raise BadRecordError("bad_label", f"label {values[0]} minus label offset {label_offset} is negative "
                                          "(wrong --label-offset?)")
    feats[F.LABEL].int64_list.value[0] = label
    if F.BBOX_LABEL in feats:
        box_labels = feats[F.BBOX_LABEL].int64_list.value
        for i, v in enumerate(box_labels):
            box_labels[i] = v - label_offset

    def text(key: str) -> str:
        v = feats[key].bytes_list.value if key in feats else []
        return v[0].decode("utf-8", "replace") if v else ""

    return example.SerializeToString(deterministic=True), label, text(F.SYNSET), text(F.CLASS_TEXT)


def count_records(path: str) -> tuple[int, str]:
    """Number of records in a TFRecord file, and '' or why the count stopped early (a cut-short file).

    Uncompressed files are counted from the length headers alone (a seek per record, no data read);
    GZIP files (``.gz``) are read through.
    """
    if path.endswith(".gz"):
        import tensorflow as tf

        n = 0
        try:
            for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
                n += 1
        except tf.errors.DataLossError as e:
            return n, f"corrupt after record {n}: {e.message}"
        return n, ""
    n, size = 0, os.path.getsize(path)
    with open(path, "rb") as f:
        pos = 0
        while pos < size:
            header = f.read(12)
            if len(header) < 12:
                return n, f"cut short after record {n} (partial header)"
            (length,) = struct.unpack("<Q", header[:8])
            pos += 12 + length + 4
            if pos > size:
                return n, f"cut short after record {n} (record {n} needs {pos - size} more bytes)"
            f.seek(pos)
            n += 1
    return n, ""


def read_records(path: str, start: int, stop: int) -> Iterator[tuple[int, bytes | None, str]]:
    """Yields (index, record, '') for records ``start <= index < stop`` of a TFRecord file (CRC-checked
    by TensorFlow), or (index, None, error) for each record lost after a corrupt one."""
    import tensorflow as tf

    compression = "GZIP" if path.endswith(".gz") else ""
    it = iter(tf.data.TFRecordDataset(path, compression_type=compression).skip(start).take(stop - start))
    index = start
    while index < stop:
        try:
            record = next(it)
        except StopIteration:
            error = "file has fewer records than counted"
            break
        except tf.errors.DataLossError as e:
            error = f"corrupt TFRecord data: {e.message}"
            break
        yield index, record.numpy(), ""
        index += 1
    else:
        return
    for i in range(index, stop):
        yield i, None, error
