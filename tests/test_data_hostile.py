"""Hostile inputs for the converter, run in subprocesses under a memory limit (RLIMIT_AS) and a timeout, so a
regression (a FIFO read that blocks, /dev/zero read whole, a huge allocation) fails the test instead of
hanging or swapping: FIFOs, devices, huge files, symlink loops, file names with newlines and tabs, images
declaring huge dimensions, TFRecords whose length headers claim huge records, label files with absurd lines.
Every bad file must end up in bad_files.tsv with its reason (or be a clear error), none silently dropped."""

import gzip
import io
import os
import re
import resource
import socket
import struct
import subprocess
import sys

import pytest
from PIL import Image

from hrnet_tfx.data import layout as L

from conftest import jpeg_claiming

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVERT_LIMIT = 3 * 2**30  # a conversion of a few images peaks at ~1.9 GB of address space (TF + Beam)
DISCOVER_LIMIT = 2**30  # discovery imports neither TF nor Beam
HUGE = 4 * 2**30  # sparse files of this size: more than either limit, so reading one whole must fail


def run_limited(code: str, limit: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs ``python -c code`` with this checkout first on the path, its address space limited to
    ``limit`` bytes."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
               MALLOC_ARENA_MAX="2", TF_CPP_MIN_LOG_LEVEL="2", TF_USE_LEGACY_KERAS="1")

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return subprocess.run([sys.executable, "-c", code], env=env, preexec_fn=limit_memory, timeout=timeout,
                          capture_output=True, text=True)


def _jpeg(size=(16, 16), color=(200, 30, 30)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def _sparse(path, size):
    with open(path, "wb") as f:
        f.truncate(size)


NEWLINE_NAME = "new\nline\tname.jpg"
HOSTILE = {  # file in train/cats -> (reason in bad_files.tsv, words in the detail)
    "fifo.jpg": ("not_a_file", "FIFO"),
    "fifo_link.jpg": ("not_a_file", "FIFO"),
    "socket.jpg": ("not_a_file", "a socket"),
    "socket_link.jpg": ("not_a_file", "a socket"),
    "zero.jpg": ("not_a_file", "character device"),
    "huge.jpg": ("too_large", f"{HUGE} bytes"),
    "loop.jpg": ("symlink_loop", "symbolic links"),
    NEWLINE_NAME: ("not_an_image", "not an image"),
    "bomb.jpg": ("too_large", "3600000000 pixels) exceeds"),
    "bomb_100mp.jpg": ("too_large", "(100000000 pixels) exceeds limit of 89478485 pixels"),  # PIL's warning level
}


@pytest.fixture(scope="module")
def hostile_conversion(tmp_path_factory):
    """An image-folder dataset with every hostile file in train/cats, converted by the real CLI in a
    memory-limited subprocess."""
    root = tmp_path_factory.mktemp("hostile")
    src = root / "in"
    for split, names in [("train", ["0.jpg", "1.jpg", "2.jpg"]), ("val", ["0.jpg"])]:
        for k, cls in enumerate(["cats", "dogs"]):
            (src / split / cls).mkdir(parents=True)
            for name in names:
                (src / split / cls / name).write_bytes(_jpeg(color=(200 - 150 * k, 30, 30 + 150 * k)))
    cats = src / "train" / "cats"
    os.mkfifo(cats / "fifo.jpg")
    os.mkfifo(root / "outside.fifo")
    (cats / "fifo_link.jpg").symlink_to(root / "outside.fifo")
    for name in ("socket.jpg", "outside.sock"):  # bound, then closed: the socket file stays
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str((cats if name == "socket.jpg" else root) / name))
    (cats / "socket_link.jpg").symlink_to(root / "outside.sock")
    (cats / "zero.jpg").symlink_to("/dev/zero")
    _sparse(cats / "huge.jpg", HUGE)
    (cats / "loop.jpg").symlink_to("loop.jpg")
    (cats / NEWLINE_NAME).write_bytes(b"this is not an image")
    (cats / "bomb.jpg").write_bytes(jpeg_claiming(60000, 60000))
    (cats / "bomb_100mp.jpg").write_bytes(jpeg_claiming(10000, 10000))
    out = root / "out"
    code = ("import sys; from hrnet_tfx.cli import main; "
            f"sys.argv = ['hrnet-tfx', 'data', 'convert', {str(src)!r}, {str(out)!r}, '--train-shards', '2', "
            "'--eval-shards', '1', '--max-bad-fraction', '0.9', '--', '--runner=FnApiRunner']; main()")
    proc = run_limited(code, CONVERT_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def _report(out) -> list[list[str]]:
    with open(os.path.join(out, L.BAD_FILES_FILENAME), encoding="utf-8") as f:
        return [line.split("\t") for line in f.read().split("\n")[1:-1]]


def test_hostile_conversion_keeps_the_good_images(hostile_conversion):
    out, proc = hostile_conversion
    manifest = L.load_manifest(str(out))
    assert manifest["splits"]["train"]["num_examples"] == 6
    assert manifest["splits"]["train"]["num_bad"] == len(HOSTILE)
    assert f"train: 6 examples in 2 shards (0 re-encoded, {len(HOSTILE)} skipped)" in proc.stdout


def test_report_stays_one_line_per_file_with_four_columns(hostile_conversion):
    rows = _report(hostile_conversion[0])
    assert len(rows) == len(HOSTILE) and all(len(r) == 4 for r in rows)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_each_hostile_file_is_reported_with_its_reason(hostile_conversion, name):
    reason, words = HOSTILE[name]
    escaped = "cats/" + name.replace("\n", "\\n").replace("\t", "\\t")
    rows = {r[1]: r for r in _report(hostile_conversion[0])}
    assert rows[escaped][0] == "train" and rows[escaped][2] == reason
    assert words in rows[escaped][3]


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum (written out here, independently of the reader under test)."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _tfrecord(records, huge_at=None) -> bytes:
    """TFRecord bytes; the record at ``huge_at`` gets a length header claiming 2**40 bytes with a valid
    CRC (so only a bound on the length, not the checksum, can refuse it)."""
    out = bytearray()
    for i, data in enumerate(records):
        length = struct.pack("<Q", 2**40 if i == huge_at else len(data))
        out += length + struct.pack("<I", masked_crc32c(length))
        out += data + struct.pack("<I", masked_crc32c(data))
    return bytes(out)


def _example(label: int) -> bytes:
    import hrnet_tfx  # noqa: F401
    import tensorflow as tf

    feature = {"image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[_jpeg()])),
               "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
               "image/class/synset": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"n%08d" % label]))}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_tfrecord_length_headers_claiming_huge_records_are_bounded(tmp_path):
    """A GZIP shard (whose decompressed size nobody knows in advance) and a plain one, each with a record
    claiming 1 TiB: counted up to it, the rest estimated lost, nothing allocated for the claim. And a FIFO
    named like a shard: not opened for reading (it would block), counted as lost."""
    src = tmp_path / "in"
    src.mkdir()
    records = [_example(1 + i % 2) for i in range(10)]
    (src / "train-00000-of-00003").write_bytes(_tfrecord(records))
    (src / "train-00001-of-00003.gz").write_bytes(gzip.compress(_tfrecord(records, huge_at=4)))
    (src / "train-00002-of-00003").write_bytes(_tfrecord(records, huge_at=6))
    os.mkfifo(src / "train-fifo-of-00003")
    (src / "validation-00000-of-00001").write_bytes(_tfrecord(records[:4]))
    out = tmp_path / "out"
    code = ("import sys; from hrnet_tfx.cli import main; "
            f"sys.argv = ['hrnet-tfx', 'data', 'convert', {str(src)!r}, {str(out)!r}, '--train-shards', '2', "
            "'--eval-shards', '1', '--max-bad-fraction', '0.6', '--', '--runner=FnApiRunner']; main()")
    proc = run_limited(code, CONVERT_LIMIT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = L.load_manifest(str(out))
    assert manifest["splits"]["train"]["num_examples"] == 10 + 4 + 6
    assert manifest["splits"]["train"]["num_bad"] == 6 + 4 + 10  # from the undamaged file's count of 10
    rows = {r[1]: r for r in _report(out)}
    assert rows["train-00001-of-00003.gz"][2] == "lost_records"
    claim = r"corrupt or too large: record {} at byte \d+ claims 1099511627776 bytes, above the limit of 67108864 bytes"
    assert re.search(claim.format(4), rows["train-00001-of-00003.gz"][3])
    assert re.search(claim.format(6), rows["train-00002-of-00003"][3])
    assert "not read: not_a_file: a FIFO" in rows["train-fifo-of-00003"][3]


def test_masked_crc32c_matches_tensorflow(tmp_path):
    import hrnet_tfx  # noqa: F401
    import tensorflow as tf

    path = str(tmp_path / "r")
    with tf.io.TFRecordWriter(path) as w:
        w.write(b"hello")
    assert open(path, "rb").read() == _tfrecord([b"hello"])


def _discover_error(root) -> str:
    code = ("from hrnet_tfx.data.sources import discover; from hrnet_tfx.data.labels import DataError\n"
            "try:\n"
            f"    discover({str(root)!r})\n"
            "except DataError as e:\n"
            "    print('DataError:', e)\n")
    proc = run_limited(code, DISCOVER_LIMIT, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _flat_imagenet(root, csv: bytes):
    for wnid in ["n01440764", "n01443537"]:
        (root / "train" / wnid).mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_0.JPEG").write_bytes(_jpeg())
    (root / "val").mkdir()
    (root / "val" / "ILSVRC2012_val_00000001.JPEG").write_bytes(_jpeg())
    (root / "LOC_val_solution.csv").write_bytes(csv)


def test_label_file_with_an_absurdly_long_line_is_a_clear_error(tmp_path):
    _flat_imagenet(tmp_path, b"ImageId,PredictionString\nILSVRC2012_val_00000001," + b"n01440764 " * 100_000
                   + b"\n")
    assert "DataError: " in _discover_error(tmp_path)
    assert "LOC_val_solution.csv:2: not a valid CSV line: field larger than field limit" in _discover_error(
        tmp_path)


def test_label_file_larger_than_the_limit_is_refused_before_reading(tmp_path):
    _flat_imagenet(tmp_path, b"")
    _sparse(tmp_path / "LOC_val_solution.csv", HUGE)  # one 4 GiB line of NUL bytes
    out = _discover_error(tmp_path)
    assert "DataError: cannot read label file" in out and f"{HUGE} bytes or more, above the limit" in out


def test_directory_symlink_loop_is_a_clear_error(tmp_path):
    for cls in ["a", "b"]:
        for split in ["train", "val"]:
            (tmp_path / split / cls).mkdir(parents=True)
            (tmp_path / split / cls / "0.jpg").write_bytes(_jpeg())
    (tmp_path / "train" / "a" / "again").symlink_to(tmp_path / "train")
    out = _discover_error(tmp_path)
    assert "DataError: symbolic link loop: " in out and "train/a/again/a is the folder" in out


def test_read_ahead_holds_its_budget_not_a_window_of_huge_files(tmp_path):
    """Sixteen 48 MiB files (each under the 64 MiB per-file limit) read ahead by 4 threads for a slow
    consumer, in a process limited to 400 MiB of address space: with the 32 MiB read-ahead budget it peaks
    at ~210 MiB (measured); reading as far ahead as the threads and the submitted window allow peaks at
    ~650 MiB and fails."""
    for i in range(16):
        _sparse(tmp_path / f"big{i:02d}", 48 * 2**20)
    code = ("import glob, time\nfrom hrnet_tfx.data import storage\n"
            f"paths = sorted(glob.glob({str(tmp_path / 'big*')!r}))\n"
            "with storage.ReadAhead(paths, 64 * 2**20, threads=4) as reads:\n"
            "    for data, error, n in reads:\n"
            "        assert error is None and len(data) == 48 * 2**20, error\n"
            "        time.sleep(0.1)\n"
            "        reads.release(n)\n"
            "print('read', len(paths))\n")
    proc = run_limited(code, 400 * 2**20, timeout=120)
    assert proc.returncode == 0 and "read 16" in proc.stdout, proc.stderr[-3000:]
