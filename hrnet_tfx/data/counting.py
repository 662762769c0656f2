"""Counting the records of TFRecord files without reading the records, for the trainer.

The framing is read by :mod:`hrnet_tfx.data.records` (its one reader, shared with the converter's
import): each record's 12-byte length header is read, its CRC checked and the length bounded by what is
left of the file, and the data is seeked over, never parsed or CRC-checked. ``tf.io.gfile`` reads through
a 512 KiB buffer: a seek beyond it skips the data unread (a file of 2 GiB records costs one buffer per
record), while records smaller than the buffer are read along with the headers, which on a bucket is
cheaper than one request per record. Damage inside a record's data is found by the reader (tf.data's
``DataLossError``), not here. The trainer counts once, in the launcher (or on rank 0), and only when no
manifest gives the number.

GZIP-compressed files cannot be seeked: they are decompressed and read through once (the counter says so
in a warning; pass the count, e.g. ``num_train_examples``, to skip it).

Buckets (``gs://``, ``ram://``) are read through ``tf.io.gfile``; local files
through ``os``, refusing FIFOs and devices (:func:`hrnet_tfx.data.storage.open_input`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import NamedTuple, Sequence

from hrnet_tfx.data import records, storage

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1 << 40
"""Sanity bound on one record's declared length (1 TiB); anything larger is a corrupt header."""
_LOG_EVERY_SECONDS = 10.0


class RecordCountError(ValueError):
    """A TFRecord file is truncated or corrupt (or cannot be read); the message names the file."""


class FileScan(NamedTuple):
    """What :func:`scan_file` found: ``count`` whole records, and ``problem`` ('' when the file is sound)."""

    count: int
    problem: str


def scan_file(path: str, compression: str = "none") -> FileScan:
    """Counts the records of one TFRecord file (``compression`` ``"none"`` or ``"gzip"``) from their headers.

    Returns the number of whole records before the first problem, and the problem ('' if none): a cut
    header, a record longer than what is left of the file, a header whose CRC does not match (not a
    TFRecord file, or damaged), a broken GZIP stream. Raises :class:`RecordCountError` when the file cannot
    be opened.
    """
    try:
        scan = records.scan_open(path, MAX_RECORD_BYTES, compression)
    except storage.InputFileError as e:
        raise RecordCountError(f"{path}: cannot read: {e.detail}") from None
    except OSError as e:  # closing a file whose last read failed
        raise RecordCountError(f"{path}: cannot read: {type(e).__name__}: {e}") from None
    return FileScan(scan.count, scan.problem)


def count_file(path: str, compression: str = "none") -> int:
    """Records in one TFRecord file (``compression`` ``"none"`` or ``"gzip"``); raises
    :class:`RecordCountError` naming the file and the problem if it is truncated or corrupt."""
    count, problem = scan_file(path, compression)
    if problem:
        raise RecordCountError(f"{path}: {problem} ({count} whole record(s) before it)")
    return count


def count_records(files: Sequence[str], compression: str = "auto", threads: int = 16) -> int:
    """Total records in ``files`` (TFRecord shards), counted in parallel, with a progress line every
    10 s on large sets. ``compression`` as in :func:`hrnet_tfx.data.input.resolve_compression`.

    Raises:
      RecordCountError: a file is truncated, corrupt or unreadable (the message names it).
    """
    from hrnet_tfx.data.input import resolve_compression
    from hrnet_tfx.data.progress import format_progress

    files = list(files)
    if not files:
        return 0
    compression = resolve_compression(files, compression)
    if compression == "gzip":
        log.warning("%d GZIP-compressed TFRecord file(s): compressed files cannot be seeked, so counting their "
                    "records reads them through once (give the count to skip this)", len(files))
    start = last_log = time.monotonic()
    total = 0
    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(files)))) as pool:
        for done, n in enumerate(pool.map(lambda p: count_file(p, compression), files), 1):
            total += n
            now = time.monotonic()
            if now - last_log >= _LOG_EVERY_SECONDS:
                last_log = now
                log.info("counting records: %s", format_progress(done, len(files), now - start, "files"))
    return total
