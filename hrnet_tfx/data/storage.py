"""Reading a dataset's inputs wherever they are: a local path or a URL of any TensorFlow file system
(``gs://``; ``s3://`` and ``hdfs://`` with tensorflow-io; the in-process ``ram://`` used by the tests).

URLs (anything with ``://``) go through ``tf.io.gfile``, also inside Beam workers (Beam's own FileSystems
does not know TensorFlow's file systems such as ``ram://``). Local paths go through ``os``, for three reasons
that only exist on local file systems: TensorFlow's file API cannot name a file whose name is not valid
UTF-8 (it takes ``str``, and ``os`` gives such names as surrogate escapes); ``os.scandir`` tells files from
directories without a stat per file; and only a local file can be a FIFO, a device or a symlink loop, which
:func:`read_input` refuses before reading (a FIFO would block a worker forever, ``/dev/zero`` never ends).

Inputs are read ahead of their use by threads (:class:`ReadAhead`), within a byte budget: a local read
releases the GIL while the kernel copies, and an object store's latency is paid by many requests at once.

Listing is the expensive call on object stores, so discovery lists each directory once and never stats
its files: Google Cloud Storage marks sub-"directories" in a listing with a trailing ``/``. Other remote
file systems (and ``ram://``) do not, so there each listed name costs one ``isdir`` call.
"""

from __future__ import annotations

import errno
import os
import stat as stat_lib
import threading
from typing import IO, Iterator, Sequence

from hrnet_tfx.data.labels import DataError
from hrnet_tfx.fs import is_uri

_MARKS_DIRECTORIES = ("gs",)
"""URL schemes whose directory listings end every sub-directory name with '/' (TF's GCS file system)."""


class InputFileError(ValueError):
    """An input file that must not or cannot be read. ``reason`` is a short code for the report:
    ``not_a_file`` (FIFO, device, socket, directory), ``symlink_loop``, ``too_large``, ``unreadable``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def is_local(path: str) -> bool:
    """True for a local path, False for a URL of another file system (``gs://...``, ``ram://...``)."""
    return not is_uri(path)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def _scheme(path: str) -> str:
    return path.split("://", 1)[0].lower()


def list_dir(path: str) -> tuple[list[str], list[str]]:
    """Sorted (sub-directory names, other names) of one directory, with one listing call. Raises
    :class:`DataError` naming the path if it cannot be listed.

    Local: a symlink counts as what it points to; a link that cannot be followed (dangling, a loop) counts
    as a file, so the converter reports it instead of dropping it.
    """
    if is_local(path):
        return _list_local(path)
    try:
        names = _gfile().listdir(path)
    except _tf_error() as e:
        raise DataError(f"cannot list directory {path}: {_message(e)}") from None
    dirs = [n.rstrip("/") for n in names if n.endswith("/")]
    others = [n for n in names if not n.endswith("/")]
    if _scheme(path) in _MARKS_DIRECTORIES:
        files = others
    else:
        found = [n for n in others if _gfile().isdir(join(path, n))]
        dirs += found
        files = sorted(set(others) - set(found))
    return sorted(dirs), files


def _list_local(path: str) -> tuple[list[str], list[str]]:
    dirs, files = [], []
    try:
        with os.scandir(path) as entries:
            for e in entries:
                try:
                    is_dir = e.is_dir()
                except OSError:  # a symlink loop (ELOOP): reported when it is read
                    is_dir = False
                (dirs if is_dir else files).append(e.name)
    except OSError as e:
        raise DataError(f"cannot list directory {path}: {e.strerror}") from None
    return sorted(dirs), sorted(files)


def _tf_error():
    import tensorflow as tf

    return tf.errors.OpError


def _message(e: Exception) -> str:
    return getattr(e, "message", None) or str(e)


def join(path: str, *names: str) -> str:
    """``path/name/...`` for local paths and URLs alike."""
    return os.path.join(path, *names)


def is_dir(path: str) -> bool:
    """True if ``path`` is a directory (local: following symlinks)."""
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def exists(path: str) -> bool:
    """True if ``path`` names a file or directory (local: following symlinks)."""
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def write_file(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` (a local path or a URL) through ``tf.io.gfile``, making its directory
    first. For output, not inputs: only reading has local-only hazards that need ``os``."""
    gfile = _gfile()
    gfile.makedirs(os.path.dirname(path))
    with gfile.GFile(path, "wb") as f:
        f.write(data)


def stat(path: str) -> tuple[int, int]:
    """(size in bytes, modification time in ns) of a file; ``OSError`` or TF's ``OpError`` if missing."""
    if is_local(path):
        st = os.stat(path)
        return st.st_size, st.st_mtime_ns
    st = _gfile().stat(path)
    return st.length, st.mtime_nsec


def read_bounded(path: str, max_bytes: int, what: str = "file") -> bytes:
    """The whole of a small file (label files and the like); :class:`DataError` if it is not a regular
    file or is larger than ``max_bytes``."""
    try:
        return read_input(path, max_bytes)
    except InputFileError as e:
        raise DataError(f"cannot read {what} {path}: {e.detail}") from None


def read_input(path: str, max_bytes: int) -> bytes:
    """The bytes of one input file, refusing what must not be read whole.

    The file is opened by :func:`open_input` (FIFOs, devices, sockets, directories and symlink loops are
    refused without blocking). A file larger than ``max_bytes`` is refused before it is read
    (``too_large``), and at most ``max_bytes + 1`` bytes are ever read, so a file that grows while it is
    read cannot exhaust memory either.

    Raises:
      InputFileError: with the reason code and the details.
    """
    f, size = _open_whole(path)
    try:
        _check_size(size, max_bytes)
        return _read_open(f, size, max_bytes)
    finally:
        _close(f)


def _open_whole(path: str) -> tuple[IO | int, int]:
    """:func:`open_input` for reading a file whole: a local file as its bare descriptor (read with
    ``os.read``, no file object: 24 -> 21 us per 110 KB file, measured), a bucket's as a GFile."""
    return _open_local(path) if is_local(path) else open_input(path)


def _close(f: IO | int) -> None:
    if isinstance(f, int):
        os.close(f)
    else:
        f.close()


def _read_open(f: IO | int, size: int, max_bytes: int) -> bytes:
    """The rest of an open file measured at ``size`` bytes, reading at most ``max_bytes + 1``."""
    try:
        data = _read_upto(f, size + 1, size)
        if len(data) > size:  # it grew since it was measured
            data += _read_upto(f, max_bytes + 1 - len(data))
    except (OSError, _tf_error()) as e:
        raise InputFileError("unreadable", f"{type(e).__name__}: {_message(e)}") from None
    _check_size(len(data), max_bytes)
    return data


def _read_upto(f: IO | int, n: int, size: int = -1) -> bytes:
    """``n`` bytes, or fewer at the end of the file. A GFile's read does that itself; a local file's
    descriptor gives what one system call gave, so it is read again until ``n`` bytes or the end, or until
    ``size`` bytes (the size the file was measured at: a local file's read returns fewer bytes than asked
    for only at its end, so a file read whole in one call needs no second call to find the end; one that
    grew since it was measured returns more in the same call)."""
    if not isinstance(f, int):
        return f.read(n)
    parts, total = [], 0
    while total < n:
        data = os.read(f, n - total)
        if not data:
            break
        parts.append(data)
        total += len(data)
        if total == size:
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


READ_AHEAD_BYTES = 32 * 2**20
"""How many bytes of input files :class:`ReadAhead` holds at most beyond the one being used (~300 ImageNet
JPEGs): memory stays bounded whatever the files' sizes."""
READ_AHEAD_FILES_PER_THREAD = 4
"""How many files :class:`ReadAhead` reads ahead per thread at most (at least 8): enough to keep a local
disk or an object store busy, and few enough that the memory of files just used is reused for the next
ones (reading hundreds ahead costs ~15 fresh-page faults per 110 KB file, measured)."""
READ_AHEAD_THREADS = {"local": 0, "remote": 16}
"""Reading threads (0: each file is read when it is used, in the consumer's thread). A local read from the
page cache takes ~30 us and holds the CPU anyway, and handing each file and the GIL between threads cost
more than it overlapped: the converter with one reading and one writing thread beside it used 314-379 us
of CPU per image, in one thread 212-217 us, and ran 1.5-1.7x faster (``benchmarks/bench_convert.py``). An
object store answers each request after tens of milliseconds, so there many requests are kept open."""


class ReadAhead:
    """Reads input files (:func:`read_input`'s checks and bounds) in threads ahead of their use, in order,
    or with ``threads=0`` (local files, :data:`READ_AHEAD_THREADS`) each in the consumer's thread as it is
    used.

    Iterating yields ``(data, error, nbytes)`` per path: the bytes, or None and the
    :class:`InputFileError`. The ``nbytes`` of each file stay counted against ``budget`` until the consumer
    calls :meth:`release` with them (after it has written what it made of them): a read waits while the
    budget is spent, except the read of the file the consumer needs next, so at most ``budget`` bytes plus
    one file are held beyond what the consumer holds, whatever the files' sizes, and a file larger than the
    budget never blocks the pipeline. On an object store many requests wait at once. Threads and consumer
    share one lock and wake each other only when one of them waits. Use it as a context manager: leaving it (also by an
    exception) stops the reads.
    """

    def __init__(self, paths: Sequence[str], max_bytes: int, budget: int = READ_AHEAD_BYTES,
                 threads: int | None = None):
        self._paths, self._max, self._limit = list(paths), max_bytes, budget
        self._cond = threading.Condition()
        self._results: dict[int, tuple] = {}
        self._next_read = self._next_use = self._used = self._sleepers = 0
        self._consumer_waits = self._closed = False
        if threads is None:
            threads = READ_AHEAD_THREADS["local" if all(is_local(p) for p in self._paths[:1]) else "remote"]
        threads = min(threads, len(self._paths))
        self._ahead = max(8, READ_AHEAD_FILES_PER_THREAD * threads)
        self._threads = [threading.Thread(target=self._run, name="read-ahead", daemon=True)
                         for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _wait(self) -> None:
        """Waits (holding the lock) for the consumer or another thread to change something."""
        self._sleepers += 1
        self._cond.wait()
        self._sleepers -= 1

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._next_read - self._next_use >= self._ahead:
                    self._wait()
                if self._closed or self._next_read >= len(self._paths):
                    return
                index = self._next_read
                self._next_read += 1
            try:
                result = self._read(index, self._paths[index])
            except _Closed:
                return
            except BaseException as e:  # raised to the consumer
                result = (None, e, 0)
            with self._cond:
                self._results[index] = result
                if self._consumer_waits and index == self._next_use:
                    self._cond.notify_all()

    def _take(self, index: int, n: int) -> None:
        with self._cond:
            while not self._closed and index != self._next_use and self._used + n > self._limit:
                self._wait()
            if self._closed:
                raise _Closed()
            self._used += n

    def _read(self, index: int, path: str) -> tuple[bytes | None, BaseException | None, int]:
        try:
            f, size = _open_whole(path)
        except InputFileError as e:
            return None, e, 0
        try:
            try:
                _check_size(size, self._max)
            except InputFileError as e:
                return None, e, 0
            self._take(index, size)
            try:
                data = _read_open(f, size, self._max)
            except BaseException as e:
                self.release(size)
                if isinstance(e, InputFileError):
                    return None, e, 0
                raise
            if len(data) != size:  # it changed size since it was measured: count what is held
                with self._cond:
                    self._used += len(data) - size
            return data, None, len(data)
        finally:
            _close(f)

    def __iter__(self) -> Iterator[tuple[bytes | None, InputFileError | None, int]]:
        for index in range(len(self._paths)):
            if not self._threads:  # read now, in this thread
                self._next_use = index
                data, error, nbytes = self._read(index, self._paths[index])
                yield data, error, nbytes
                continue
            with self._cond:
                self._next_use = index
                if self._sleepers:
                    self._cond.notify_all()
                while index not in self._results:
                    self._consumer_waits = True
                    self._cond.wait()
                self._consumer_waits = False
                data, error, nbytes = self._results.pop(index)
            if error is not None and not isinstance(error, InputFileError):
                raise error
            yield data, error, nbytes

    def release(self, nbytes: int) -> None:
        """Returns the bytes of a file the consumer is done with to the budget."""
        if nbytes:
            with self._cond:
                self._used -= nbytes
                if self._sleepers:
                    self._cond.notify_all()

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for t in self._threads:
            t.join()


class _Closed(Exception):
    """The read-ahead was closed while a read waited for budget."""


def open_input(path: str) -> tuple[IO, int]:
    """Opens an input file for reading in binary mode; returns (file, size in bytes).

    Local: the file is opened without blocking and checked on the open descriptor (no race between check
    and read): FIFOs, devices, sockets and directories are refused (``not_a_file``), symlink loops too
    (``symlink_loop``). Remote: directories are refused.

    Raises:
      InputFileError: with the reason code and the details.
    """
    if not is_local(path):
        try:
            st = _gfile().stat(path)
            if st.is_directory:
                raise InputFileError("not_a_file", "a directory")
            return _gfile().GFile(path, "rb"), st.length
        except _tf_error() as e:
            raise InputFileError("unreadable", f"{type(e).__name__}: {_message(e)}") from None
    fd, size = _open_local(path)
    return os.fdopen(fd, "rb"), size


def _open_local(path: str) -> tuple[int, int]:
    """(descriptor, size in bytes) of a local regular file, opened without blocking and checked on the open
    descriptor; :class:`InputFileError` otherwise (see :func:`open_input`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise InputFileError("symlink_loop", "too many levels of symbolic links") from None
        if e.errno == errno.ENXIO and stat_lib.S_ISSOCK(mode := _mode(path)):  # open() of a UNIX socket
            raise InputFileError("not_a_file", _kind(mode)) from None
        raise InputFileError("unreadable", f"{type(e).__name__}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat_lib.S_ISREG(st.st_mode):
            raise InputFileError("not_a_file", _kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise InputFileError("too_large", f"{size} bytes or more, above the limit of {max_bytes} bytes")


def _mode(path: str) -> int:
    """The file type and mode bits of local ``path`` (following links); 0 if it cannot be stat'ed."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return 0


def _kind(mode: int) -> str:
    for test, name in [(stat_lib.S_ISFIFO, "a FIFO (named pipe)"), (stat_lib.S_ISCHR, "a character device"),
                       (stat_lib.S_ISBLK, "a block device"), (stat_lib.S_ISSOCK, "a socket"),
                       (stat_lib.S_ISDIR, "a directory")]:
        if test(mode):
            return name
    return "not a regular file"
