"""tf.Example building and TFRecord writing: the fast paths give exactly the bytes of the plain ones."""

import os

import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
from tensorflow.core.example import example_pb2  # noqa: E402

from hrnet_tfx.data import features as F  # noqa: E402
from hrnet_tfx.data.images import PreparedImage  # noqa: E402
from hrnet_tfx.data.labels import Box, ClassInfo  # noqa: E402
from hrnet_tfx.data.records import ExampleBuilder, RecordWriter, make_example  # noqa: E402


def _fresh(image, cls, filename, boxes, class_index) -> bytes:
    """The record as a new message built feature by feature, written out independently of records.py."""
    example = example_pb2.Example()
    f = example.features.feature
    f[F.IMAGE_ENCODED].bytes_list.value.append(image.encoded)
    f[F.IMAGE_FORMAT].bytes_list.value.append(b"JPEG")
    f[F.LABEL].int64_list.value.append(cls.index)
    f[F.SYNSET].bytes_list.value.append(os.fsencode(cls.id))
    f[F.CLASS_TEXT].bytes_list.value.append(os.fsencode(cls.name))
    f[F.HEIGHT].int64_list.value.append(image.height)
    f[F.WIDTH].int64_list.value.append(image.width)
    f[F.CHANNELS].int64_list.value.append(3)
    f[F.COLORSPACE].bytes_list.value.append(b"RGB")
    f[F.FILENAME].bytes_list.value.append(os.fsencode(filename))
    if boxes:
        w, h = float(image.width), float(image.height)
        clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
        f[F.BBOX_XMIN].float_list.value.extend(clip(b.xmin / w) for b in boxes)
        f[F.BBOX_YMIN].float_list.value.extend(clip(b.ymin / h) for b in boxes)
        f[F.BBOX_XMAX].float_list.value.extend(clip(b.xmax / w) for b in boxes)
        f[F.BBOX_YMAX].float_list.value.extend(clip(b.ymax / h) for b in boxes)
        f[F.BBOX_LABEL].int64_list.value.extend(class_index.get(b.class_id, cls.index) for b in boxes)
    return example.SerializeToString(deterministic=True)


def test_reused_builder_gives_the_bytes_of_fresh_messages():
    """One builder over a sequence that changes class, size, name and boxes (and drops them again): every
    record equals a freshly built one, so nothing of an earlier image leaks into a later one."""
    classes = [ClassInfo(0, "n01", "tench"), ClassInfo(1, "n02", "goldfish, Carassius"), ClassInfo(2, "x\udcff", "y")]
    index = {c.id: c.index for c in classes}
    boxes = [Box("n02", 1.0, 2.0, 30.0, 40.0), Box("n01", -5.0, 0.0, 90.0, 10.0)]
    sequence = [(PreparedImage(b"\xff\xd8" + bytes([i]) * (100 * (5 - i)), 40 + i, 30 + 2 * i), classes[i % 3],
                 f"dir/img{i}\udcfe.JPEG", boxes[:i % 3]) for i in range(7)]
    builder = ExampleBuilder()
    for image, cls, name, bxs in sequence:
        assert builder.build(image, cls, name, bxs, index) == _fresh(image, cls, name, bxs, index)
        assert make_example(image, cls, name, bxs, index) == _fresh(image, cls, name, bxs, index)


@pytest.mark.parametrize("count", [0, 1, 5])
def test_record_writer_writes_the_bytes_of_tensorflows_writer(tmp_path, count):
    records = [bytes([i]) * (1000 * i + 7) for i in range(count)]
    ours, theirs = str(tmp_path / "ours"), str(tmp_path / "theirs")
    with RecordWriter(ours) as w:
        for r in records:
            w.write(r)
    with tf.io.TFRecordWriter(theirs) as w:
        for r in records:
            w.write(r)
    assert open(ours, "rb").read() == open(theirs, "rb").read()
    assert [r.numpy() for r in tf.data.TFRecordDataset(ours)] == records


def test_record_writer_on_ram_and_gzip(tmp_path):
    records = [b"a" * 10, b"b" * 2000]
    for path, compression in [("ram://records/x", "none"), (str(tmp_path / "x.gz"), "gzip")]:
        with RecordWriter(path, compression) as w:
            for r in records:
                w.write(r)
        kind = "GZIP" if compression == "gzip" else ""
        assert [r.numpy() for r in tf.data.TFRecordDataset(path, kind)] == records
    with tf.io.TFRecordWriter("ram://records/y") as w:
        for r in records:
            w.write(r)
    with tf.io.gfile.GFile("ram://records/x", "rb") as ours, tf.io.gfile.GFile("ram://records/y", "rb") as theirs:
        assert ours.read() == theirs.read()


def test_record_writer_finishes_short_writes(tmp_path, monkeypatch):
    """A write that stops short (a signal, a slow file system) is continued, not lost."""
    from hrnet_tfx.data import records

    real = records.os.writev
    monkeypatch.setattr(records.os, "writev", lambda fd, parts: real(fd, [bytes(parts[0][:7])]))
    records_ = [b"x" * 30, b"", b"y" * 5]
    with RecordWriter(str(tmp_path / "short")) as w:
        for r in records_:
            w.write(r)
    monkeypatch.undo()
    with tf.io.TFRecordWriter(str(tmp_path / "tf")) as w:
        for r in records_:
            w.write(r)
    assert (tmp_path / "short").read_bytes() == (tmp_path / "tf").read_bytes()
