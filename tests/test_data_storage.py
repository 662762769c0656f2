"""storage.ReadAhead: files read ahead in threads come back in order, with their errors in place, within
the byte budget, on local disk and on ram://."""

import os
import threading
import time

import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.data import storage  # noqa: E402

MB = 2**20
pytestmark = pytest.mark.timeout(60)  # a deadlocked read-ahead fails instead of hanging the run


def _files(tmp_path, sizes) -> list[str]:
    paths = []
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i:03d}"
        path.write_bytes(bytes([i % 256]) * size)
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("threads", [0, 3])
def test_order_and_errors_in_place(tmp_path, threads):
    paths = _files(tmp_path, [10, 2000, 5, 300])
    os.mkfifo(tmp_path / "fifo")
    paths[2:2] = [str(tmp_path / "missing"), str(tmp_path / "fifo"), str(tmp_path / "big")]
    (tmp_path / "big").write_bytes(b"x" * 5000)
    with storage.ReadAhead(paths, max_bytes=4000, threads=threads) as reads:
        got = list(reads)
    assert [len(d) if d is not None else e.reason for d, e, _ in got] == [
        10, 2000, "unreadable", "not_a_file", "too_large", 5, 300]
    assert [n for _, _, n in got] == [10, 2000, 0, 0, 0, 5, 300]


def test_local_files_are_read_in_the_consumers_thread_as_they_are_used(tmp_path):
    """Local reads start no thread (handing files and the GIL between threads cost the converter more CPU
    than it overlapped); a bucket's files are read ahead in threads."""
    paths = _files(tmp_path, [100] * 20)
    before = threading.active_count()
    with storage.ReadAhead(paths, max_bytes=1000) as reads:
        for i, (data, _, n) in enumerate(reads):
            assert threading.active_count() == before and reads._next_read == 0
            assert data == bytes([i]) * 100
            reads.release(n)
    assert reads._used == 0
    remote = [f"ram://local_or_not/{i}" for i in range(3)]
    for path in remote:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(b"x")
    with storage.ReadAhead(remote, max_bytes=1000) as reads:
        assert len(reads._threads) == 3 and len(list(reads)) == 3


def test_reads_go_ahead_up_to_the_budget_and_no_further(tmp_path):
    """Budget 3 MB, 1 MB files, a slow consumer releasing each file when done: the threads read ahead until
    the budget is spent (3 MB held), never beyond one more file."""
    paths = _files(tmp_path, [MB] * 12)
    peak = 0
    with storage.ReadAhead(paths, max_bytes=2 * MB, budget=3 * MB, threads=4) as reads:
        for data, error, n in reads:
            time.sleep(0.02)  # the threads read as far ahead as they may meanwhile
            peak = max(peak, reads._used)
            reads.release(n)
    assert 3 * MB <= peak <= 4 * MB
    assert reads._used == 0


def test_the_next_file_is_read_even_when_the_consumer_holds_the_whole_budget(tmp_path):
    paths = _files(tmp_path, [MB] * 6)
    with storage.ReadAhead(paths, max_bytes=2 * MB, budget=2 * MB, threads=3) as reads:
        held = [n for _, _, n in reads]  # nothing released: each next file exceeds the budget alone
    assert held == [MB] * 6


def test_leaving_early_stops_the_waiting_reads(tmp_path):
    paths = _files(tmp_path, [MB] * 40)
    before = threading.active_count()
    start = time.monotonic()
    with storage.ReadAhead(paths, max_bytes=2 * MB, budget=2 * MB, threads=8) as reads:
        for i, _ in enumerate(reads):
            if i == 2:
                break
    assert time.monotonic() - start < 10 and threading.active_count() == before


def test_ram_files(tmp_path):
    paths = []
    for i in range(5):
        paths.append(f"ram://readahead/{i}")
        with tf.io.gfile.GFile(paths[-1], "wb") as f:
            f.write(bytes([i]) * (100 + i))
    with storage.ReadAhead(paths + ["ram://readahead/missing"], max_bytes=1000) as reads:
        got = list(reads)
    assert [d for d, _, _ in got[:5]] == [bytes([i]) * (100 + i) for i in range(5)]
    assert got[5][0] is None and got[5][1].reason == "unreadable"


@pytest.mark.parametrize("size", [0, 1, 70000])
def test_read_input_reads_whole_local_files(tmp_path, size):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(size))
    assert storage.read_input(str(path), 10**6) == path.read_bytes()


@pytest.mark.parametrize("limit", [10**6, 800])
def test_a_file_that_grew_after_it_was_measured_is_read_whole_or_refused(tmp_path, monkeypatch, limit):
    """The size is measured before the read; bytes appended since then are read too (and count against
    the limit), never cut off at the measured size."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(1000))
    real = storage.os.fstat

    def measured_early(fd):  # the file as it was when it held 600 bytes
        st = real(fd)
        return os.stat_result((st.st_mode, *st[1:6], 600, *st[7:]))

    monkeypatch.setattr(storage.os, "fstat", measured_early)
    if limit > 1000:
        assert storage.read_input(str(path), limit) == path.read_bytes()
    else:
        with pytest.raises(storage.InputFileError, match="too_large"):
            storage.read_input(str(path), limit)


def test_short_reads_are_continued(tmp_path, monkeypatch):
    """A read may return fewer bytes than asked for before the end (a network file system, a signal):
    the file is still read whole."""
    path = tmp_path / "f"
    path.write_bytes(os.urandom(70000))
    real = storage.os.read
    monkeypatch.setattr(storage.os, "read", lambda fd, n: real(fd, min(n, 999)))
    assert storage.read_input(str(path), 10**6) == path.read_bytes()
