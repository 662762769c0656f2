"""tf.Example building and TFRecord writing: the fast paths give the messages and bytes of the plain ones."""

import os
import random

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


def _parsed(record: bytes) -> example_pb2.Example:
    example = example_pb2.Example()
    example.ParseFromString(record)
    return example


def test_reused_builder_gives_the_messages_of_fresh_ones():
    """One builder over a sequence that changes class, size, name and boxes (and drops them again): every
    record parses into the message of a freshly built one, so nothing of an earlier image leaks into a
    later one, and the same input gives the same bytes."""
    classes = [ClassInfo(0, "n01", "tench"), ClassInfo(1, "n02", "goldfish, Carassius"), ClassInfo(2, "x\udcff", "y")]
    index = {c.id: c.index for c in classes}
    boxes = [Box("n02", 1.0, 2.0, 30.0, 40.0), Box("n01", -5.0, 0.0, 90.0, 10.0)]
    sequence = [(PreparedImage(b"\xff\xd8" + bytes([i]) * (100 * (5 - i)), 40 + i, 30 + 2 * i), classes[i % 3],
                 f"dir/img{i}\udcfe.JPEG", boxes[:i % 3]) for i in range(7)]
    builder, first = ExampleBuilder(), []
    for image, cls, name, bxs in sequence:
        *pieces, encoded = builder.build(image, cls, name, bxs, index)
        assert encoded is image.encoded  # written beside the rest, never copied into the message
        record = b"".join(pieces) + encoded
        assert _parsed(record) == _parsed(_fresh(image, cls, name, bxs, index))
        assert make_example(image, cls, name, bxs, index) == record
        first.append(record)
    again = ExampleBuilder()
    assert [b"".join(again.build(image, cls, name, bxs, index)) for image, cls, name, bxs in sequence] == first
    fresh = [_fresh(image, cls, name, bxs, index) for image, cls, name, bxs in sequence]
    assert _parsed_by_tensorflow(first) == _parsed_by_tensorflow(fresh)  # TensorFlow's own parser too


def _parsed_by_tensorflow(records: list[bytes]) -> dict:
    """Every feature of ``records`` as ``tf.io.parse_example`` reads them (its fast C++ parser, not
    protobuf's): scalars as lists, the box lists as lists per record."""
    scalars = {F.IMAGE_ENCODED: tf.string, F.IMAGE_FORMAT: tf.string, F.LABEL: tf.int64, F.SYNSET: tf.string,
               F.CLASS_TEXT: tf.string, F.HEIGHT: tf.int64, F.WIDTH: tf.int64, F.CHANNELS: tf.int64,
               F.COLORSPACE: tf.string, F.FILENAME: tf.string}
    lists = {F.BBOX_XMIN: tf.float32, F.BBOX_YMIN: tf.float32, F.BBOX_XMAX: tf.float32, F.BBOX_YMAX: tf.float32,
             F.BBOX_LABEL: tf.int64}
    spec = {k: tf.io.FixedLenFeature([], t) for k, t in scalars.items()}
    spec.update({k: tf.io.VarLenFeature(t) for k, t in lists.items()})
    parsed = tf.io.parse_example(tf.constant(records), spec)
    out = {k: parsed[k].numpy().tolist() for k in scalars}
    out.update({k: tf.sparse.to_dense(parsed[k]).numpy().tolist() for k in lists})
    return out


def _lengths_across_varint_boundaries() -> list[int]:
    """Image sizes at which the image's own length or one of the four lengths enclosing it (16-30 bytes
    more) steps from 1 to 2, 2 to 3 or 3 to 4 varint bytes, and a few on either side."""
    return sorted({n for edge in (2**7, 2**14, 2**21) for n in range(edge - 34, edge + 2)} | {0, 1, 5})


def test_record_in_parts_parses_as_one_message_at_every_length():
    """The image's enclosing keys and lengths are written by hand: at every size where one of them changes
    width, protobuf and TensorFlow's own Example parser read back exactly the fresh message."""
    rng = random.Random(0)
    cls, builder = ClassInfo(7, "n07", "seven"), ExampleBuilder()
    records, images = [], []
    for n in _lengths_across_varint_boundaries():
        image = PreparedImage(rng.randbytes(n), 3 + n % 5, 4)
        record = b"".join(builder.build(image, cls, "a/b.JPEG"))
        assert _parsed(record) == _parsed(_fresh(image, cls, "a/b.JPEG", (), {})), n
        records.append(record)
        images.append(image.encoded)
    parsed = tf.io.parse_example(tf.constant(records), {
        F.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string), F.LABEL: tf.io.FixedLenFeature([], tf.int64),
        F.HEIGHT: tf.io.FixedLenFeature([], tf.int64), F.FILENAME: tf.io.FixedLenFeature([], tf.string)})
    assert parsed[F.IMAGE_ENCODED].numpy().tolist() == images
    assert set(parsed[F.LABEL].numpy().tolist()) == {7}
    assert parsed[F.HEIGHT].numpy().tolist() == [3 + len(i) % 5 for i in images]
    assert set(parsed[F.FILENAME].numpy().tolist()) == {b"a/b.JPEG"}


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


@pytest.mark.parametrize("where", ["local", "ram", "gzip"])
def test_record_writer_joins_a_record_given_in_parts(tmp_path, where):
    """A record given as parts is one record, checksum and length over all of them, on every file kind."""
    parts = [(b"head", b"x" * 70000), (b"", b"y"), (b"a", b"", b"bc")]
    ram = f"ram://{tmp_path.name}"  # a name no other test writes
    path = {"local": str(tmp_path / "p"), "ram": f"{ram}/parts", "gzip": str(tmp_path / "p.gz")}[where]
    compression = "gzip" if where == "gzip" else "none"
    with RecordWriter(path, compression) as w:
        for p in parts:
            w.write(*p)
    kind = "GZIP" if compression == "gzip" else ""
    assert [r.numpy() for r in tf.data.TFRecordDataset(path, kind)] == [b"".join(p) for p in parts]
    if where != "gzip":
        theirs = f"{ram}/joined"
        with tf.io.TFRecordWriter(theirs) as w:
            for p in parts:
                w.write(b"".join(p))
        with tf.io.gfile.GFile(path, "rb") as a, tf.io.gfile.GFile(theirs, "rb") as b:
            assert a.read() == b.read()


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
