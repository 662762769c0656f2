"""The tf.data training and evaluation input: TFRecord shards of tf.Examples -> (images, labels) batches.

Records use the keys of :mod:`hrnet_tfx.data.features`; images are transformed by
:mod:`hrnet_tfx.data.preprocessing` (the same code the serving signature uses).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from hrnet_tfx.data import features, preprocessing

TF_COMPRESSION_TYPE = {"none": "", "gzip": "GZIP"}
"""``compression`` values -> ``tf.data.TFRecordDataset(compression_type=...)``."""
GZIP_SUFFIXES = (".gz", ".gzip")
"""File name endings taken to mean GZIP-compressed TFRecords when ``compression="auto"``."""
DEFAULT_SHUFFLE_BUFFER = 10_000
"""Training record shuffle buffer (records, after interleaving ``cycle_length`` files)."""
DEFAULT_CYCLE_LENGTH = 16
"""Files read concurrently. Fixed rather than AUTOTUNE so the element order does not depend on the machine."""
_READ_BUFFER_BYTES = 8 << 20


def list_files(file_pattern: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Expands one glob pattern or file name, or a sequence of them, into a sorted list without repeats.

    Uses ``tf.io.gfile`` so ``gs://`` and other TF file systems work. Raises ``FileNotFoundError`` naming
    the first pattern that matches nothing.
    """
    patterns = [file_pattern] if isinstance(file_pattern, (str, os.PathLike)) else list(file_pattern)
    if not patterns:
        raise FileNotFoundError("no input files: the file pattern list is empty")
    files: set[str] = set()
    for pattern in patterns:
        matched = tf.io.gfile.glob(os.fspath(pattern))
        if not matched:
            raise FileNotFoundError(f"no TFRecord files match {os.fspath(pattern)!r}")
        files.update(matched)
    return sorted(files)


def _is_gzip_file(path: str) -> bool:
    with tf.io.gfile.GFile(path, "rb") as f:
        if f.read(3) != b"\x1f\x8b\x08":  # GZIP magic + deflate; a plain TFRecord starts with a length
            return False
    try:  # confirm: a plain record whose length happens to start with those bytes will not inflate
        with tf.io.gfile.GFile(path, "rb") as f, gzip.GzipFile(fileobj=f) as g:
            g.read(1)
        return True
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError
        return False


def resolve_compression(files: Sequence[str], compression: str = "auto") -> str:
    """Resolves ``compression`` (``"auto"``, ``"none"`` or ``"gzip"``) for ``files`` to ``"none"`` or ``"gzip"``.

    Auto: files all ending in ``.gz``/``.gzip`` are GZIP; files none of which do are inspected (the first
    non-empty one: GZIP header or not); a mix of endings is an error. All files of one dataset must share
    one compression. :data:`TF_COMPRESSION_TYPE` maps the result to ``tf.data.TFRecordDataset``'s argument.
    """
    mode = (compression or "none").lower()
    if mode in TF_COMPRESSION_TYPE:
        return mode
    if mode != "auto":
        raise ValueError(f"compression must be 'auto', 'none' or 'gzip', got {compression!r}")
    gz = [f.lower().endswith(GZIP_SUFFIXES) for f in files]
    if all(gz):
        return "gzip"
    if any(gz):
        raise ValueError(
            "compression='auto' cannot decide: some input files end in .gz and some do not "
            f"(e.g. {files[gz.index(True)]!r} and {files[gz.index(False)]!r}); pass compression explicitly"
        )
    for path in files:
        if tf.io.gfile.stat(path).length > 0:
            return "gzip" if _is_gzip_file(path) else "none"
    return "none"


def _derived_seeds(seed: int | None, shard_index: int) -> tuple[int, int, int]:
    """Independent 31-bit seeds for the file shuffle, the record shuffle and the augmentation of one rank."""
    entropy = None if seed is None else [seed, shard_index]
    a, b, c = np.random.SeedSequence(entropy).generate_state(3) >> 1
    return int(a), int(b), int(c)


def make_dataset(
    file_pattern: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    training: bool,
    batch_size: int,
    image_size: int = preprocessing.IMAGE_SIZE,
    num_shards: int = 1,
    shard_index: int = 0,
    shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
    seed: int | None = None,
    deterministic: bool | None = None,
    compression: str = "auto",
    drop_remainder: bool | None = None,
    repeat: bool | None = None,
    num_classes: int | None = None,
    label_offset: int = 0,
    cycle_length: int = DEFAULT_CYCLE_LENGTH,
    threadpool_size: int | None = None,
) -> tf.data.Dataset:
    """Batches of ``(images, labels)`` from TFRecord shards of hrnet-tfx tf.Examples.

    Pipeline: sorted file list -> this worker's files -> (training: shuffle files) -> (repeat) -> parallel
    interleave of TFRecord readers -> (training: shuffle records) -> parallel parse + transform -> batch ->
    prefetch. Training uses :func:`preprocessing.train_transform` with one stateless seed per element,
    evaluation :func:`preprocessing.eval_transform`.

    Args:
      file_pattern: glob pattern(s) or file name(s) of the shards (any ``tf.io.gfile`` file system).
      training: augment and shuffle (True) or evaluate (False).
      batch_size: per-worker batch size.
      image_size: square output side, a multiple of 32.
      num_shards, shard_index: this worker's share for data-parallel training (Horovod: ``hvd.size()``,
        ``hvd.rank()``). Files, not records, are split: worker ``i`` reads sorted files ``i, i + n, ...``;
        fewer files than workers is an error. With unequal file counts per worker, use ``repeat`` and a
        fixed number of steps (training) or accept unequal shares (evaluation).
      shuffle_buffer: records in the training shuffle buffer.
      seed: makes file order, record order and augmentation reproducible (together with
        ``deterministic=True``); ``None`` draws fresh randomness each call. Ranks get different seeds
        derived from ``(seed, shard_index)``.
      deterministic: keep element order fixed through the parallel interleave/map/batch. ``None`` means
        ``not training`` (speed first in training, stable order in evaluation).
      compression: ``"auto"``, ``"none"`` or ``"gzip"`` (see :func:`resolve_compression`).
      drop_remainder: drop a final partial batch; ``None`` means ``training`` (static batch shape).
      repeat: repeat indefinitely; ``None`` means ``training``.
      num_classes: if given, a label outside ``[0, num_classes)`` fails the pipeline with an error instead
        of training on garbage.
      label_offset: subtracted from every stored label (1 reads inception/TF-slim records, whose labels
        are 1-based, without converting them).
      cycle_length: files read concurrently by the interleave (at most this worker's file count).
      threadpool_size: private thread pool size for this pipeline (e.g. cores per Horovod rank); ``None``
        shares TF's inter-op pool.

    Returns:
      A dataset of ``(float32 [batch, image_size, image_size, 3] normalised RGB, int32 [batch] labels)``.

    Raises:
      FileNotFoundError: a pattern matches no file.
      ValueError: bad sharding (e.g. fewer files than workers), compression or sizes.
    """
    image_size = _check_arguments(image_size, batch_size, num_shards, shard_index, training, shuffle_buffer)
    deterministic = (not training) if deterministic is None else bool(deterministic)
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)
    repeat = training if repeat is None else bool(repeat)

    files = _files_for_workers(file_pattern, num_shards)
    compression_type = TF_COMPRESSION_TYPE[resolve_compression(files, compression)]
    file_seed, record_seed, augment_seed = _derived_seeds(seed, shard_index)
    ds = _read_records(files, num_shards, shard_index, training=training, repeat=repeat,
                       compression_type=compression_type, file_seed=file_seed, cycle_length=cycle_length,
                       deterministic=deterministic)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=record_seed, reshuffle_each_iteration=True)
    ds = _transform_records(ds, _parser(num_classes, label_offset), training=training, image_size=image_size,
                            augment_seed=augment_seed, deterministic=deterministic)
    return _batch(ds, batch_size, drop_remainder=drop_remainder, deterministic=deterministic,
                  threadpool_size=threadpool_size)


def _check_arguments(image_size, batch_size: int, num_shards: int, shard_index: int, training: bool,
                     shuffle_buffer: int) -> int:
    """Refuses bad sizes or sharding before any file is touched; returns the checked image size."""
    image_size = preprocessing.check_image_size(image_size)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards), got {shard_index} of {num_shards}")
    if training and shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be positive, got {shuffle_buffer}")
    return image_size


def _files_for_workers(file_pattern, num_shards: int) -> list[str]:
    """Every matched file (sorted), refused when there are fewer files than workers."""
    files = list_files(file_pattern)
    if len(files) < num_shards:
        raise ValueError(
            f"{len(files)} input file(s) cannot be split across {num_shards} workers: every worker needs at "
            f"least one file; write the data with at least {num_shards} shards (matched: {files[:3]}...)"
        )
    return files


def _read_records(files: list[str], num_shards: int, shard_index: int, *, training: bool, repeat: bool,
                  compression_type: str, file_seed: int, cycle_length: int, deterministic: bool) -> tf.data.Dataset:
    """Serialized records of this worker's files: its share of ``files`` (training: shuffled), repeated
    if asked, read by a parallel interleave of TFRecord readers."""
    n_local = len(files[shard_index::num_shards])
    ds = tf.data.Dataset.from_tensor_slices(files).shard(num_shards, shard_index)
    if training:
        ds = ds.shuffle(n_local, seed=file_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.interleave(
        lambda f: tf.data.TFRecordDataset(f, compression_type=compression_type, buffer_size=_READ_BUFFER_BYTES),
        # no more than one epoch's files open at once, so epochs of a small dataset do not blur together
        cycle_length=min(cycle_length, n_local),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=deterministic,
    )


def _transform_records(ds: tf.data.Dataset, parse, *, training: bool, image_size: int, augment_seed: int,
                       deterministic: bool) -> tf.data.Dataset:
    """Parses each record and transforms its image in parallel: training augments with one stateless seed
    per element (``(augment_seed, element index)``), evaluation resizes and crops."""
    # The transforms use explicit tf.cond, no Python control flow on tensors: skip AutoGraph's conversion.
    if training:

        @tf.autograph.experimental.do_not_convert
        def transform(index, record):
            image_bytes, label = parse(record)
            seed_pair = tf.stack([tf.constant(augment_seed, tf.int64), index])
            return preprocessing.train_transform(image_bytes, seed=seed_pair, image_size=image_size), label

        ds = ds.enumerate()
    else:

        @tf.autograph.experimental.do_not_convert
        def transform(record):
            image_bytes, label = parse(record)
            return preprocessing.eval_transform(image_bytes, image_size=image_size), label

    return ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)


def _batch(ds: tf.data.Dataset, batch_size: int, *, drop_remainder: bool, deterministic: bool,
           threadpool_size: int | None) -> tf.data.Dataset:
    """Batches and prefetches, with the pipeline's determinism and thread pool options."""
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = deterministic
    if threadpool_size is not None:
        options.threading.private_threadpool_size = int(threadpool_size)
    return ds.with_options(options)


def _parser(num_classes: int | None, label_offset: int = 0):
    """Returns ``record -> (encoded image, int32 label)`` using the :mod:`features` keys.

    A record without one of the keys fails with TensorFlow's ``Feature: <key> ... is required but could
    not be found`` error, which names the key.
    """
    spec = {
        features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        label = example[features.LABEL] - label_offset
        if num_classes is not None:
            tf.debugging.assert_non_negative(label, message=f"{features.LABEL} is negative")
            tf.debugging.assert_less(
                label,
                tf.constant(num_classes, tf.int64),
                message=f"{features.LABEL} out of range for num_classes={num_classes}",
            )
        return example[features.IMAGE_ENCODED], tf.cast(label, tf.int32)

    return parse
