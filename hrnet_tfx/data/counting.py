"""Counting the records of TFRecord files without reading the records: the package's one record counter.

A TFRecord file is a sequence of ``uint64 length | uint32 masked CRC-32C of the length | data[length] |
uint32 masked CRC-32C of the data``. :func:`scan_file` reads the 12-byte header of each record, checks
the length's CRC and that the record fits in the file, and seeks over the data. ``tf.io.gfile`` reads
through a 512 KiB buffer: a seek beyond it skips the data unread (a file of 2 GiB records costs one
buffer per record), while records smaller than the buffer are read along with the headers, which on
a bucket is cheaper than one request per record. The data is never parsed or CRC-checked: damage
inside a record's data is found by the reader (tf.data's ``DataLossError``), not here. The trainer
counts once, in the launcher (or on rank 0), and only when no manifest gives the number.

GZIP-compressed files cannot be seeked: they are decompressed and read through once with tf.data (the
counter says so in a warning; pass the count, e.g. ``num_train_examples``, to skip it).

Every path goes through ``tf.io.gfile``, so ``gs://``, ``s3://``, ``hdfs://`` and ``ram://`` work.
"""

from __future__ import annotations

import concurrent.futures
import logging
import struct
import time
from typing import NamedTuple, Sequence

log = logging.getLogger(__name__)

HEADER_BYTES = 12
"""Record header: the little-endian uint64 data length, then the masked CRC-32C of those 8 bytes."""
FOOTER_BYTES = 4
"""Record footer: the masked CRC-32C of the data."""
MAX_RECORD_BYTES = 1 << 40
"""Sanity bound on one record's declared length (1 TiB); anything larger is a corrupt header."""
_CRC_MASK_DELTA = 0xA282EAD8
_LOG_EVERY_SECONDS = 10.0


class RecordCountError(ValueError):
    """A TFRecord file is truncated or corrupt (or cannot be read); the message names the file."""


class FileScan(NamedTuple):
    """What :func:`scan_file` found: ``count`` whole records, and ``problem`` ('' when the file is sound)."""

    count: int
    problem: str


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C of ``data``."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def scan_file(path: str) -> FileScan:
    """Counts the records of one uncompressed TFRecord file from their headers alone.

    Returns the number of whole records before the first problem, and the problem ('' if none): a cut
    header, a record longer than what is left of the file, or a header whose CRC does not match (not a
    TFRecord file, or damaged). Raises :class:`RecordCountError` when the file cannot be opened or read.
    """
    import tensorflow as tf

    try:
        size = tf.io.gfile.stat(path).length
        count, pos = 0, 0
        with tf.io.gfile.GFile(path, "rb") as f:
            while pos < size:
                if size - pos < HEADER_BYTES:
                    return FileScan(count, f"truncated: {size - pos} byte(s) after record {count} at byte {pos} "
                                           f"are less than a {HEADER_BYTES}-byte record header")
                f.seek(pos)
                header = f.read(HEADER_BYTES)
                if len(header) != HEADER_BYTES:  # the file shrank while we read it
                    return FileScan(count, f"truncated: header of record {count} at byte {pos} cut short")
                length, crc = struct.unpack("<QI", header)
                if masked_crc32c(header[:8]) != crc:
                    return FileScan(count, f"corrupt: the length header of record {count} at byte {pos} fails "
                                           "its CRC (not a TFRecord file, or damaged)")
                end = pos + HEADER_BYTES + length + FOOTER_BYTES
                if length > MAX_RECORD_BYTES or end > size:
                    return FileScan(count, f"truncated: record {count} at byte {pos} declares {length} data "
                                           f"bytes, but the file ends {end - size} byte(s) short of it")
                pos, count = end, count + 1
    except tf.errors.OpError as e:
        raise RecordCountError(f"{path}: cannot read: {e.message}") from None
    return FileScan(count, "")


def count_file(path: str, compression: str = "none") -> int:
    """Records in one TFRecord file (``compression`` ``"none"`` or ``"gzip"``); raises
    :class:`RecordCountError` naming the file and the problem if it is truncated or corrupt."""
    if compression == "gzip":
        return _count_gzip(path)
    count, problem = scan_file(path)
    if problem:
        raise RecordCountError(f"{path}: {problem} ({count} whole record(s) before it)")
    return count


def _count_gzip(path: str) -> int:
    import tensorflow as tf

    count = 0
    try:
        for _ in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            count += 1
    except tf.errors.OpError as e:
        raise RecordCountError(f"{path}: corrupt or truncated GZIP TFRecord file after record {count}: "
                               f"{e.message}") from None
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
