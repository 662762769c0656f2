"""The record counter: exact counts from TFRecord length headers on local disk and ram://, clear errors on
truncated or corrupt files, GZIP files read through, and only headers read (a 32 GiB sparse file)."""

import os
import re
import struct
import uuid

import google_crc32c
import pytest

import hrnet_tfx  # noqa: F401
import tensorflow as tf

from hrnet_tfx.data.counting import RecordCountError, count_file, count_records, scan_file


def _write(path: str, sizes, gzip: bool = False) -> str:
    options = tf.io.TFRecordOptions(compression_type="GZIP") if gzip else None
    with tf.io.TFRecordWriter(path, options) as writer:
        for i, size in enumerate(sizes):
            writer.write(bytes([i % 251]) * size)
    return path


def _ram(name: str) -> str:
    return f"ram://counting-{uuid.uuid4().hex}/{name}"


def _rewrite(path: str, data: bytes) -> None:
    tf.io.gfile.remove(path)  # ram:// writers append to an existing file
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(data)


def _cut(path: str, keep: int) -> None:
    with tf.io.gfile.GFile(path, "rb") as f:
        _rewrite(path, f.read()[:keep])


@pytest.mark.parametrize("where", ["local", "ram"])
def test_counts_records_exactly(tmp_path, where):
    root = str(tmp_path) if where == "local" else _ram("")
    tf.io.gfile.makedirs(root)
    files = [_write(os.path.join(root, f"train-{i}-of-3"), sizes) for i, sizes in
             enumerate([[10, 0, 300], [70_000] * 9, []])]
    assert [count_file(f) for f in files] == [3, 9, 0]
    assert count_records(files) == 12
    assert count_records(files) == sum(1 for _ in tf.data.TFRecordDataset(files))


@pytest.mark.parametrize("where", ["local", "ram"])
def test_truncated_and_corrupt_files_are_named(tmp_path, where):
    root = str(tmp_path) if where == "local" else _ram("")
    tf.io.gfile.makedirs(root)
    sizes = [100, 200, 300]
    whole = 3 * 16 + sum(sizes)

    cut_data = _write(os.path.join(root, "cut-data"), sizes)
    _cut(cut_data, whole - 10)  # the last record's data is cut
    assert scan_file(cut_data) == (2, "truncated: record 2 at byte 332 declares 300 data bytes, but the file "
                                      "ends 10 byte(s) short of it")
    with pytest.raises(RecordCountError, match=re.escape(cut_data) + r": truncated: record 2 .*2 whole record"):
        count_records([_write(os.path.join(root, "good"), [5]), cut_data])

    cut_header = _write(os.path.join(root, "cut-header"), sizes)
    _cut(cut_header, 116 + 5)  # 5 bytes of the second header
    assert scan_file(cut_header) == (1, "truncated: the header of record 1 at byte 116 is cut short (5 of 12 "
                                        "bytes)")

    corrupt = _write(os.path.join(root, "corrupt"), sizes)
    with tf.io.gfile.GFile(corrupt, "rb") as f:
        data = bytearray(f.read())
    data[116 + 1] ^= 0x01  # the second record's length: 200 -> 456, caught by the length's CRC
    _rewrite(corrupt, bytes(data))
    with pytest.raises(RecordCountError, match=re.escape(corrupt) + ": corrupt: the length header of record 1"):
        count_file(corrupt)

    text = os.path.join(root, "labels.tsv")
    with tf.io.gfile.GFile(text, "w") as f:
        f.write("0\tn01440764\ttench\n" * 3)
    with pytest.raises(RecordCountError, match="not a TFRecord file"):
        count_file(text)
    with pytest.raises(RecordCountError, match=re.escape(os.path.join(root, "missing")) + ": cannot read"):
        count_file(os.path.join(root, "missing"))


def test_gzip_files_are_read_through(tmp_path, caplog):
    files = [_write(str(tmp_path / f"train-{i}.gz"), [1000] * (i + 2), gzip=True) for i in range(2)]
    with caplog.at_level("WARNING", logger="hrnet_tfx.data.counting"):
        assert count_records(files) == 5
    assert "cannot be seeked" in caplog.text
    _cut(files[1], os.path.getsize(files[1]) - 20)
    with pytest.raises(RecordCountError, match=re.escape(files[1]) + ": corrupt or truncated GZIP"):
        count_records(files)


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_reads_only_the_headers_of_a_huge_file(tmp_path):
    """16 records of 2 GiB each in a sparse file: reading it through would read 32 GiB."""
    path = tmp_path / "huge.tfrecord"
    records, length = 16, 2 << 30
    with open(path, "wb") as f:
        for _ in range(records):
            size = struct.pack("<Q", length)
            f.write(size + struct.pack("<I", _masked_crc(size)))
            f.seek(length, os.SEEK_CUR)  # a hole: the data is never written
            f.write(b"\0\0\0\0")  # the data CRC (never checked by the counter)
    if os.stat(path).st_blocks * 512 > 64 << 20:
        pytest.skip("this file system does not make sparse files")
    before = _rchar()
    assert count_file(str(path)) == records
    read = _rchar() - before
    assert os.path.getsize(path) == records * (length + 16)
    assert read < records * (1 << 20), f"read {read} bytes of a {os.path.getsize(path)}-byte file"


def test_a_fifo_named_like_a_shard_is_refused_not_counted_as_empty(tmp_path):
    """A FIFO is not opened for reading (it would block the launcher) and not counted as 0 records."""
    good = _write(str(tmp_path / "train-0-of-2"), [10, 20])
    fifo = tmp_path / "train-1-of-2"
    os.mkfifo(fifo)
    with pytest.raises(RecordCountError, match=re.escape(str(fifo)) + ": cannot read: a FIFO"):
        count_records([good, str(fifo)], compression="none")
