"""The Beam conversion of a discovered dataset into sharded tf.Example TFRecords (no TFX needed).

Input and output may be local paths or URLs of any TensorFlow file system (``gs://``, ``ram://``, ...):
inputs are read through :mod:`hrnet_tfx.data.storage`, everything written goes through ``tf.io.gfile``,
in the launching process and in the Beam workers alike.

Four stages:

1. **Plan** (launching process, cheap): every input gets a sort key, a keyed hash of ``seed``, split and
   relative path; inputs sorted by it are cut into ``num_shards`` equal contiguous blocks, so shard
   sizes differ by at most one and the same input always gives the same shards. Imported TFRecords
   (already shuffled by the tool that wrote them) are first counted from their length headers (a Beam
   pipeline with one file per element), then cut into contiguous blocks of their records in file order
   and shuffled by key within each shard, so each block is a sequential read instead of a random access
   per record. A file
   that is cut short or corrupt is counted up to the damage and the records lost after it are estimated
   (:func:`hrnet_tfx.data.records.lost_records_estimate`) and count as bad inputs. Each pending shard
   task is written to its own small JSON file in the staging area.
2. **Run** (Beam): ``Create(task files) | ParDo(WriteShard)`` (``Create`` ends in a ``Reshuffle`` that
   spreads the tasks over the workers, unless one in-process worker runs them all). Each task (one Beam
   element per shard, so Beam costs nothing per image) reads its inputs
   (:class:`hrnet_tfx.data.storage.ReadAhead`: as they are used when local, ahead in threads from a
   bucket), checks and fixes them (:mod:`hrnet_tfx.data.images`), builds the records in key order and
   writes them to the shard (:class:`hrnet_tfx.data.records.RecordWriter`; from a writer thread when the
   output is a bucket), renames the shard into place, then writes a small
   result file (counts, skipped and fixed inputs). Only file names cross the shuffle, never image bytes,
   so the DirectRunner's memory stays flat even for ImageNet; a worker holds at most the read-ahead budget
   of input bytes per shard in flight.
3. **Collect** (launching process): the reports (``bad_files.tsv``, ``fixed_files.tsv``) are written to the
   staging area and the bad fraction is checked.
4. **Publish** (launching process): only now is anything outside the staging area touched; see
   :func:`convert` for the order and for what a reader may see meanwhile.

Restartable: everything is written under ``OUTPUT/.incomplete/`` first. A crashed or killed run leaves no
manifest, so readers (:func:`hrnet_tfx.data.layout.load_manifest`) refuse the output; running the same
conversion again keeps every shard that was finished (same input fingerprint and options), redoes the
rest, and publishes. An output that is already complete is left as it is.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from typing import Callable, Iterable, Sequence

import apache_beam as beam

from hrnet_tfx.data import layout as L
from hrnet_tfx.data import progress as progress_lib
from hrnet_tfx.data import storage
from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.data.images import BadImageError, prepare_image
from hrnet_tfx.data.labels import Box, ClassInfo, DataError, write_label_map
from hrnet_tfx.data.options import ConvertOptions
from hrnet_tfx.data.records import (BadRecordError, ExampleBuilder, RecordScan, RecordWriter, lost_records_estimate,
                                    read_records, relabel_record, scan_records)
from hrnet_tfx.data.sources import Dataset
from hrnet_tfx.fs import unreadable_scheme

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "hrnet_tfx.convert"
_TASKS = "tasks"
_CONFIG = "config.json"
_RESULTS = "results"
_PROGRESS = "progress"
_COUNTS = "counts"
_COUNT_PROGRESS = "counting"  # no name here may be a prefix of another: ram:// matches by prefix
_OWN_NAMES = {L.MANIFEST_FILENAME, L.BAD_FILES_FILENAME, L.FIXED_FILES_FILENAME, LABEL_MAP_FILENAME,
              L.STAGING_DIRNAME} | {L.split_dirname(s) for s in L.SPLITS}


class BadFractionError(DataError):
    """More inputs of a split were unusable than ``max_bad_fraction`` allows."""


@dataclasses.dataclass
class ConvertResult:
    """What :func:`convert` produced: the manifest, and whether an already complete output was reused."""

    output_dir: str
    manifest: dict
    reused: bool = False


def sort_key(seed: str, split: str, name: str) -> str:
    """The deterministic shuffle key of one input (hex of a SHA-256 of seed, split and name)."""
    return hashlib.sha256(f"{seed}\0{split}\0{name}".encode("utf-8", "surrogateescape")).hexdigest()


def _blocks(n: int, num_shards: int) -> list[tuple[int, int]]:
    return [(s * n // num_shards, (s + 1) * n // num_shards) for s in range(num_shards)]


def _box_list(boxes: Sequence[Box]) -> list:
    return [[b.class_id, b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes]


def _plan_images(split: str, source, options: ConvertOptions) -> list[dict]:
    items = sorted(source.items, key=lambda it: (sort_key(options.seed, split, it.relpath), it.relpath))
    n = options.num_shards(split)
    return [{"split": split, "shard": s, "kind": "images", "size": b - a,
             "items": [[it.relpath, it.label, _box_list(it.boxes)] for it in items[a:b]]}
            for s, (a, b) in enumerate(_blocks(len(items), n))]


class CountRecords(beam.DoFn):
    """Counts the records of one TFRecord input file (:func:`hrnet_tfx.data.records.scan_records`) and writes
    the result to the staging area, so a rerun counts only the files not counted yet."""

    def __init__(self, staging: str, max_record_bytes: int):
        self._staging, self._max = staging, max_record_bytes

    def setup(self):
        self._progress = progress_lib.ProgressWriter(os.path.join(self._staging, _COUNT_PROGRESS))

    def process(self, item: str):
        split, index, path = json.loads(item)
        scan = scan_records(path, self._max)
        _write_json(_count_path(self._staging, split, index), dict(dataclasses.asdict(scan), path=path))
        self._progress.add(force=True)
        yield split, index, scan.count


def _count_path(staging: str, split: str, index: int) -> str:
    return os.path.join(staging, _COUNTS, f"{split}-{index:05d}.json")


def _count_records(dataset: Dataset, staging: str, options: ConvertOptions,
                   pipeline_factory: Callable[[], beam.Pipeline]) -> dict[str, list[RecordScan]]:
    """{split: scan of each of its files in sorted name order}. The files not counted by an earlier
    attempt are counted by a Beam pipeline, one file per element: reading the length headers of every
    file is a full read on an object store, which the workers share instead of the launching process."""
    files = {split: [storage.join(s.root, name) for name in sorted(s.files)]
             for split, s in dataset.splits.items() if s.kind == "tfrecords"}
    counted = _names(os.path.join(staging, _COUNTS))
    todo = [json.dumps([split, i, path]) for split, paths in files.items() for i, path in enumerate(paths)
            if os.path.basename(_count_path(staging, split, i)) not in counted]
    if todo:
        log.info("counting the records of %d TFRecord files with Beam", len(todo))
        pipeline = pipeline_factory()
        _ = (pipeline
             | "Files" >> beam.Create(todo, reshuffle=_redistributes(pipeline))
             | "CountRecords" >> beam.ParDo(CountRecords(staging, options.max_image_bytes)))
        with progress_lib.ProgressMonitor(os.path.join(staging, _COUNT_PROGRESS), len(todo), desc="counting",
                                          unit="file"):
            pipeline.run().wait_until_finish()
    scans = {}
    for split, paths in files.items():
        scans[split] = []
        for i, path in enumerate(paths):
            found = _read_json(_count_path(staging, split, i))
            if found.pop("path") != path:
                raise RuntimeError(f"{_count_path(staging, split, i)} counts another file than {path}; remove "
                                   f"{staging} and run again")
            scans[split].append(RecordScan(**found))
    return scans


def _plan_records(split: str, source, scans: list[RecordScan], options: ConvertOptions,
                  bad: list) -> list[dict]:
    """Tasks over the records of ``source``'s files; damaged files go to ``bad`` with the estimated number
    of records they lost as the row's weight (its 5th element)."""
    names = sorted(source.files)
    complete = [sc.count for sc in scans if not sc.problem]
    for name, sc in zip(names, scans):
        if sc.problem:
            lost, why = lost_records_estimate(sc, complete)
            bad.append([split, name, "lost_records", f"TFRecord file {sc.problem}; {sc.count} records read, about "
                        f"{lost} lost after them (estimated from {why})", lost])
    counts = [(name, sc.count) for name, sc in zip(names, scans)]
    total = sum(c for _, c in counts)
    tasks = []
    for s, (a, b) in enumerate(_blocks(total, options.num_shards(split))):
        segments, pos = [], 0
        for name, count in counts:
            lo, hi = max(a, pos), min(b, pos + count)
            if lo < hi:
                segments.append([name, lo - pos, hi - pos])
            pos += count
        tasks.append({"split": split, "shard": s, "kind": "tfrecords", "size": b - a, "segments": segments})
    return tasks


def _weight(row: Sequence) -> int:
    """How many inputs a bad-input row stands for: 1, or the estimated records lost in a damaged file."""
    return row[4] if len(row) > 4 else 1


class WriteShard(beam.DoFn):
    """Writes one planned shard (the path of its task file): reads, checks and fixes its inputs, writes the
    records in key order to a temporary name, renames it into place, then writes the shard's result
    file."""

    def __init__(self, staging: str, roots: dict[str, str], classes: Sequence[ClassInfo],
                 options: ConvertOptions):
        self._staging, self._roots, self._options = staging, roots, options
        self._classes = [(c.index, c.id, c.name) for c in classes]
        ns = METRICS_NAMESPACE
        self._kept = beam.metrics.Metrics.counter(ns, "images_kept")
        self._fixed = beam.metrics.Metrics.counter(ns, "images_fixed")
        self._bad = beam.metrics.Metrics.counter(ns, "inputs_bad")
        self._written = beam.metrics.Metrics.counter(ns, "examples_written")
        self._bytes = beam.metrics.Metrics.counter(ns, "bytes_written")
        self._shards = beam.metrics.Metrics.counter(ns, "shards_written")

    def setup(self):
        self._class_list = [ClassInfo(*c) for c in self._classes]
        self._class_index = {c.id: c.index for c in self._class_list}
        self._progress = progress_lib.ProgressWriter(os.path.join(self._staging, _PROGRESS))

    def _bad_input(self, result: dict, name: str, reason: str, detail: str) -> None:
        self._bad.inc()
        beam.metrics.Metrics.counter(METRICS_NAMESPACE, f"bad_{reason}").inc()
        result["bad"].append([result["split"], name, reason, detail])

    def _images(self, task: dict, result: dict, writer: "_ShardWriter") -> None:
        root, verify = self._roots[task["split"]], self._options.verify
        build = ExampleBuilder().build
        items = task["items"]
        paths = [storage.join(root, relpath) for relpath, _, _ in items]
        with storage.ReadAhead(paths, self._options.max_image_bytes) as reads:
            for (relpath, label, boxes), (data, error, nbytes) in zip(items, reads):
                self._progress.add()
                if error is not None:
                    self._bad_input(result, relpath, error.reason, error.detail)
                    continue
                try:
                    image = prepare_image(data, verify)
                except BadImageError as e:
                    reads.release(nbytes)
                    self._bad_input(result, relpath, e.reason, e.detail)
                    continue
                if image.fixed:
                    result["fixed"].append([result["split"], relpath, image.fixed])
                parts = build(image, self._class_list[label], relpath, [Box(*b) for b in boxes] if boxes else (),
                              self._class_index)
                writer.write(parts, functools.partial(reads.release, nbytes))

    def _records(self, task: dict, result: dict, writer: "_ShardWriter") -> None:
        root, split, seed = self._roots[task["split"]], task["split"], self._options.seed
        keyed, seen = [], {}
        for name, start, stop in task["segments"]:
            path = storage.join(root, name)
            for index, record, error in read_records(path, start, stop, self._options.max_image_bytes):
                self._progress.add()
                where = f"{name}#{index}"
                if record is None:
                    self._bad_input(result, where, "bad_record", error)
                    continue
                try:
                    record, label, synset, text, fixed = relabel_record(record, self._options.label_offset,
                                                                        self._options.verify)
                except BadRecordError as e:
                    self._bad_input(result, where, e.reason, e.detail)
                    continue
                if fixed:
                    result["fixed"].append([split, where, fixed])
                seen.setdefault(label, [synset, text])
                keyed.append((sort_key(seed, split, where), record))
        result["classes"] = [[label, *v] for label, v in sorted(seen.items())]
        keyed.sort()
        for _, record in keyed:
            writer.write((record,))

    def process(self, task_path: str):
        import tensorflow as tf

        task = _read_json(task_path)
        split, shard = task["split"], task["shard"]
        result = {"split": split, "shard": shard, "bad": [], "fixed": [], "examples": 0, "bytes": 0}
        path = _staged_shard(self._staging, split, shard, self._options)
        tmp = f"{path}.inprogress-{uuid.uuid4().hex}"
        with _ShardWriter(tmp, self._options.compression) as writer:
            (self._images if task["kind"] == "images" else self._records)(task, result, writer)
        result["examples"], result["bytes"] = writer.examples, writer.bytes
        tf.io.gfile.rename(tmp, path, overwrite=True)
        _write_json(_result_path(self._staging, split, shard), result)
        self._kept.inc(result["examples"] - len(result["fixed"]))
        self._fixed.inc(len(result["fixed"]))
        self._written.inc(result["examples"])
        self._bytes.inc(result["bytes"])
        self._shards.inc()
        self._progress.add(0, force=True)
        yield split, shard, result["examples"]


class _ShardWriter:
    """Writes a shard's records in order: a local shard in the calling thread (handing each record to a
    writing thread cost more CPU than the write itself, see :data:`storage.READ_AHEAD_THREADS`), a bucket's
    from a background thread, so its uploads overlap the next images. Each record's ``done`` callback runs
    once it is written (it returns the input's bytes to the read-ahead budget). A write error stops the
    writing and is raised by the next :meth:`write` or on leaving the context."""

    _QUEUE = 16  # records waiting: enough to smooth the two threads, few enough that memory is reused

    def __init__(self, path: str, compression: str):
        self._writer = RecordWriter(path, compression)
        self._queue: queue.Queue = queue.Queue(self._QUEUE)
        self._error: BaseException | None = None
        self.examples = self.bytes = 0
        self._thread = None
        if not storage.is_local(path):
            self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
            self._thread.start()

    def write(self, parts: tuple[bytes, ...], done: Callable[[], None] | None = None) -> None:
        """Writes one record, the concatenation of ``parts``."""
        if self._error is not None:
            raise self._error
        if self._thread is None:
            self._write(parts, done)
        else:
            self._queue.put((parts, done))

    def _write(self, parts: tuple[bytes, ...], done: Callable[[], None] | None) -> None:
        if self._error is None:
            try:
                self.bytes += self._writer.write(*parts)
                self.examples += 1
            except BaseException as e:  # raised by the next write() or on leaving
                self._error = e
        if done:
            done()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._write(*item)

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
        try:
            self._writer.close()
        except Exception:
            if exc_type is None and self._error is None:
                raise
        if exc_type is None and self._error is not None:
            raise self._error


def _staged_shard(staging: str, split: str, shard: int, options: ConvertOptions) -> str:
    return os.path.join(staging, L.split_dirname(split),
                        L.shard_filename(split, shard, options.num_shards(split), options.compression))


def _result_path(staging: str, split: str, shard: int) -> str:
    return os.path.join(staging, _RESULTS, f"{split}-{shard:05d}.json")


def _task_path(staging: str, split: str, shard: int) -> str:
    return os.path.join(staging, _TASKS, f"{split}-{shard:05d}.json")


def _write_json(path: str, obj, readable: bool = False) -> None:
    """Writes JSON atomically (temporary name, then rename); indented if ``readable`` (files meant for
    people; the staging files the workers exchange are compact: Python indents JSON with its pure-Python
    encoder, ~2 ms per 210-image shard task, measured)."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    text = json.dumps(obj, indent=1, sort_keys=True) if readable else json.dumps(obj, separators=(",", ":"))
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)  # one write call; json.dump makes one per token
    tf.io.gfile.rename(tmp, path, overwrite=True)


def _read_json(path: str):
    import tensorflow as tf

    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _remove(path: str) -> None:
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    elif tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)


def _config(dataset: Dataset, options: ConvertOptions) -> dict:
    config = {"format": L.MANIFEST_FORMAT, "input_dir": dataset.input_dir, "layout": dataset.layout,
              "input_fingerprint": dataset.fingerprint, "options": options.content_dict()}
    config["config_hash"] = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
    return config


def check_output_dir(output_dir: str) -> None:
    """Raises :class:`DataError` when no file system here can write ``output_dir`` (e.g. ``s3://`` without
    tensorflow-io): checked before the input is scanned, which takes minutes on ImageNet."""
    problem = unreadable_scheme(output_dir)
    if problem:
        raise DataError(f"output directory {output_dir}: {problem}")


def _prepare_output(output_dir: str, config: dict, overwrite: bool) -> dict | None:
    """Makes ``output_dir`` ready; returns the manifest if it already holds this very conversion. A
    complete conversion of other input or options is left in place (publishing replaces it)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    names = {n.rstrip("/") for n in tf.io.gfile.listdir(output_dir)}
    foreign = sorted(names - _OWN_NAMES)
    if foreign:
        raise DataError(f"output directory {output_dir} holds files that are not from a conversion, e.g. "
                        f"{foreign[:3]}; choose an empty or new directory")
    complete = False
    if L.MANIFEST_FILENAME in names:
        manifest = _read_json(os.path.join(output_dir, L.MANIFEST_FILENAME))
        complete = bool(manifest.get("complete"))
        if complete and manifest.get("config_hash") == config["config_hash"]:
            return manifest
        if complete and not overwrite:
            raise DataError(f"{output_dir} already holds a complete conversion of other input or options "
                            "(see its manifest.json); pass overwrite (--overwrite) or use another directory")
    if not complete:
        for name in sorted(names - {L.STAGING_DIRNAME}):  # unpublished leftovers: never trusted
            _remove(os.path.join(output_dir, name))
    staging = os.path.join(output_dir, L.STAGING_DIRNAME)
    config_path = os.path.join(staging, _CONFIG)
    if tf.io.gfile.exists(config_path) and _read_json(config_path).get("config_hash") == config["config_hash"]:
        log.info("resuming the unfinished conversion in %s", staging)
    else:
        _remove(staging)
    for sub in [_PROGRESS, _COUNT_PROGRESS, _TASKS]:  # progress and tasks of an earlier attempt
        _remove(os.path.join(staging, sub))
    for sub in [_RESULTS, _PROGRESS, _COUNTS, _COUNT_PROGRESS, _TASKS] + [L.split_dirname(s) for s in L.SPLITS]:
        tf.io.gfile.makedirs(os.path.join(staging, sub))
    _write_json(config_path, config, readable=True)
    return None


@dataclasses.dataclass
class _Plan:
    """The shard tasks of every split, how many inputs each split has (bad ones included, lost records
    estimated), and the inputs found bad while planning (rows of ``bad_files.tsv`` + weight)."""

    tasks: list[dict]
    inputs: dict[str, int]
    bad: list[list]


def _plan(dataset: Dataset, options: ConvertOptions, staging: str,
          pipeline_factory: Callable[[], beam.Pipeline]) -> _Plan:
    bad: list = []
    tasks, inputs = [], {}
    scans = _count_records(dataset, staging, options, pipeline_factory)
    for split, source in dataset.splits.items():
        split_tasks = (_plan_images(split, source, options) if source.kind == "images"
                       else _plan_records(split, source, scans[split], options, bad))
        inputs[split] = sum(t["size"] for t in split_tasks) + sum(_weight(b) for b in bad if b[0] == split)
        tasks += split_tasks
    return _Plan(tasks, inputs, bad)


def _pending(tasks: list[dict], staging: str, options: ConvertOptions) -> list[dict]:
    """The tasks whose shard or result file is missing (one listing per directory, not a stat per file)."""
    results = _names(os.path.join(staging, _RESULTS))
    shards = {split: _names(os.path.join(staging, L.split_dirname(split))) for split in L.SPLITS}

    def done(t: dict) -> bool:
        split, shard = t["split"], t["shard"]
        return (os.path.basename(_result_path(staging, split, shard)) in results
                and os.path.basename(_staged_shard(staging, split, shard, options)) in shards[split])

    return [t for t in tasks if not done(t)]


def _names(directory: str) -> set[str]:
    """The names in a directory of the staging area or output (empty if it does not exist)."""
    import tensorflow as tf

    return {n.rstrip("/") for n in tf.io.gfile.listdir(directory)} if tf.io.gfile.isdir(directory) else set()


_IO_THREADS = 16  # small files on an object store: one request each, so many at once


def _parallel(fn: Callable, items: Sequence) -> list:
    """``[fn(x) for x in items]`` in threads (I/O bound: TensorFlow's file system calls release the GIL)."""
    if len(items) < 2:
        return [fn(x) for x in items]
    with concurrent.futures.ThreadPoolExecutor(min(_IO_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


def _log_metrics(result) -> None:
    try:
        from apache_beam.metrics.metric import MetricsFilter

        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
        summary = {c.key.metric.name: c.committed if c.committed is not None else c.attempted
                   for c in counters}
        log.info("Beam metrics: %s", ", ".join(f"{k}={v}" for k, v in sorted(summary.items())))
    except Exception as e:  # not every runner reports metrics
        log.debug("no Beam metrics: %s", e)


def _run_beam(pending: list[dict], staging: str, dataset: Dataset, options: ConvertOptions,
              pipeline_factory: Callable[[], beam.Pipeline]) -> None:
    """Writes each pending task to its own file and runs the pipeline over their paths (task contents
    stay out of the pipeline graph: a Dataflow job's graph has a size limit, and the plan of ImageNet is
    ~100 MB)."""
    task_paths = [_task_path(staging, t["split"], t["shard"]) for t in pending]
    _parallel(lambda pt: _write_json(*pt), list(zip(task_paths, pending)))
    roots = {name: s.root for name, s in dataset.splits.items()}
    total = sum(t["size"] for t in pending)
    unit = "img" if dataset.layout != "tfrecords" else "rec"
    log.info("converting %d inputs into %d shards with Beam", total, len(pending))
    pipeline = pipeline_factory()
    _ = (pipeline
         | "Tasks" >> beam.Create(task_paths, reshuffle=_redistributes(pipeline))
         | "WriteShard" >> beam.ParDo(WriteShard(staging, roots, dataset.classes, options)))
    start = time.monotonic()
    with progress_lib.ProgressMonitor(os.path.join(staging, _PROGRESS), total, unit=unit):
        result = pipeline.run()
        result.wait_until_finish()
    elapsed = time.monotonic() - start
    log.info("Beam done: %s", progress_lib.format_progress(total, None, elapsed, unit))
    _log_metrics(result)


def _redistributes(pipeline: beam.Pipeline) -> bool:
    """Whether ``Create`` should end in a Reshuffle (its default), which spreads the tasks over the workers
    of a distributed runner or of several local ones. One in-process worker (the local runners with
    ``direct_num_workers=1``, the default) runs every task itself, and there the Reshuffle only adds
    pipeline start-up time (~0.1-0.2 s)."""
    from apache_beam.options.pipeline_options import DirectOptions

    local = type(pipeline.runner).__name__ in ("FnApiRunner", "DirectRunner", "SwitchingDirectRunner")
    return not (local and pipeline.options.view_as(DirectOptions).direct_num_workers == 1)


def _classes_from_records(results: list[dict]) -> list[ClassInfo]:
    seen: dict[int, tuple[str, str]] = {}
    for r in results:
        for label, synset, text in r.get("classes", []):
            if seen.setdefault(label, (synset, text))[0] != synset:
                raise DataError(f"imported records give label {label} to both {seen[label][0]!r} and "
                                f"{synset!r}; the labels are inconsistent")
    classes = [ClassInfo(label, synset, text or synset) for label, (synset, text) in sorted(seen.items())]
    if classes and [c.index for c in classes] != list(range(len(classes))):
        log.warning("imported labels are not contiguous from 0 (%d distinct, max %d); the label map lists "
                    "only the labels seen", len(classes), classes[-1].index)
    if [c.id for c in classes] != sorted(c.id for c in classes):
        log.warning("imported labels are not in sorted class-id order; they are kept as given")
    return classes


def _write_tsv(path: str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """One row per line; cells escaped by :func:`hrnet_tfx.data.layout.tsv_cell` (file names may hold tabs,
    newlines or bytes that are not UTF-8)."""
    import tensorflow as tf

    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(L.tsv_cell(v) for v in row[:len(header)]) + "\n")


def pipeline_options(beam_args: Sequence[str] | None) -> beam.options.pipeline_options.PipelineOptions:
    """Beam options from command-line style ``beam_args``. Without ``--runner`` they select Beam's
    FnApiRunner, the local engine behind the DirectRunner, which honours ``--direct_num_workers`` and
    ``--direct_running_mode``; Beam 2.7x's DirectRunner would first try to download and start Prism."""
    args = list(beam_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, "--runner=FnApiRunner")
    return beam.options.pipeline_options.PipelineOptions(args)


def _collect(plan: _Plan, output_dir: str, dataset: Dataset, options: ConvertOptions) -> tuple[dict, list]:
    """Reads the shards' results, writes the reports into the staging area and checks the bad fraction.
    Returns (per-split manifest entries, class table)."""
    staging = os.path.join(output_dir, L.STAGING_DIRNAME)
    missing = _pending(plan.tasks, staging, options)
    if missing:
        t = missing[0]
        raise RuntimeError(f"the Beam pipeline finished but shard {t['split']}/{t['shard']} has no result "
                           f"({_result_path(staging, t['split'], t['shard'])}); run the conversion again to "
                           "redo it")
    results = _parallel(_read_json, [_result_path(staging, t["split"], t["shard"]) for t in plan.tasks])
    bad = plan.bad + [b for r in results for b in r["bad"]]
    fixed = [f for r in results for f in r["fixed"]]
    bad_path = os.path.join(staging, L.BAD_FILES_FILENAME)
    _write_tsv(bad_path, ["split", "path", "reason", "detail"], bad)
    _write_tsv(os.path.join(staging, L.FIXED_FILES_FILENAME), ["split", "path", "was"], fixed)
    splits = {}
    for split in dataset.splits:
        n_bad = sum(_weight(b) for b in bad if b[0] == split)
        total = max(plan.inputs[split], 1)
        if n_bad / total > options.max_bad_fraction:
            raise BadFractionError(
                f"{split}: {n_bad} of {plan.inputs[split]} inputs ({100.0 * n_bad / total:.2f}%) are unusable, "
                f"more than max_bad_fraction={options.max_bad_fraction} allows; they are listed in {bad_path}. "
                "Fix or remove them, or raise the limit (--max-bad-fraction), and run again: finished "
                "shards are kept")
        split_results = [r for r in results if r["split"] == split]
        splits[split] = {
            "num_shards": options.num_shards(split),
            "num_examples": sum(r["examples"] for r in split_results),
            "num_bytes": sum(r["bytes"] for r in split_results),
            "num_inputs": plan.inputs[split],
            "num_bad": n_bad,
            "num_fixed": sum(1 for f in fixed if f[0] == split),
            "file_pattern": os.path.relpath(L.split_file_pattern(output_dir, split), output_dir),
            "compression": options.compression,
        }
    return splits, dataset.classes or _classes_from_records(results)


def _publish(output_dir: str, staging: str, options: ConvertOptions, manifest: dict) -> None:
    """Moves the staged conversion into place; the order is what :func:`convert` documents."""
    import tensorflow as tf

    _remove(os.path.join(output_dir, L.MANIFEST_FILENAME))  # from here on readers refuse the output
    for split in manifest["splits"]:
        src, dst = os.path.join(staging, L.split_dirname(split)), L.split_dir(output_dir, split)
        _remove(dst)
        tf.io.gfile.makedirs(dst)
        names = [L.shard_filename(split, s, options.num_shards(split), options.compression)
                 for s in range(options.num_shards(split))]
        _parallel(lambda n: tf.io.gfile.rename(os.path.join(src, n), os.path.join(dst, n), overwrite=True), names)
    for name in (L.BAD_FILES_FILENAME, L.FIXED_FILES_FILENAME, LABEL_MAP_FILENAME):
        tf.io.gfile.rename(os.path.join(staging, name), os.path.join(output_dir, name), overwrite=True)
    _write_json(os.path.join(output_dir, L.MANIFEST_FILENAME), manifest, readable=True)
    _remove(staging)


def convert(dataset: Dataset, output_dir: str, options: ConvertOptions = ConvertOptions(), *,
            beam_args: Sequence[str] | None = None,
            pipeline_factory: Callable[[], beam.Pipeline] | None = None,
            overwrite: bool = False) -> ConvertResult:
    """Converts ``dataset`` (from :func:`hrnet_tfx.data.sources.discover`) into ``output_dir``.

    Publishing, the last step, touches the final names in this order: the old ``manifest.json`` (if any)
    is deleted, each split directory is replaced by the new shards (moved one file at a time out of the
    staging area), the reports and ``labels.tsv`` are moved, and the new ``manifest.json`` is written last.
    So with ``overwrite`` the old conversion stays complete and readable until the new one is complete
    (also when the new one fails, e.g. on too many bad inputs). A reader that checks the manifest
    (:func:`hrnet_tfx.data.layout.load_manifest`, ``hrnet-tfx train``) sees the old conversion, then
    "incomplete", then the new one, never a mix. On a local disk each move is an atomic rename; object
    stores have no rename (TensorFlow copies and deletes each object), so there a reader that lists the
    shards without checking the manifest may see a split half replaced while publishing runs. A run killed
    while publishing leaves no manifest; running it again finishes it.

    Args:
      dataset: the discovered input.
      output_dir: where the splits, label map, reports and manifest go (see :mod:`hrnet_tfx.data.layout`);
        a local path or a URL (``gs://...``); created if missing; must be empty or hold an earlier
        conversion.
      options: shard counts, compression, bad-input tolerance, ...
      beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, ...).
      pipeline_factory: makes the Beam pipeline instead (the TFX executor passes its own).
      overwrite: replace a complete conversion of other input or options (kept until the new one is
        complete).

    Returns:
      The result; ``reused`` is True if ``output_dir`` already held exactly this conversion.

    Raises:
      DataError: unusable output directory or inconsistent imported labels.
      BadFractionError: too many unusable inputs (nothing is published; the report in the staging area
        names them).
    """
    output_dir = os.fspath(output_dir)
    check_output_dir(output_dir)
    config = _config(dataset, options)
    existing = _prepare_output(output_dir, config, overwrite)
    if existing is not None:
        log.info("%s already holds this conversion; nothing to do", output_dir)
        return ConvertResult(output_dir, existing, reused=True)
    staging = os.path.join(output_dir, L.STAGING_DIRNAME)

    factory = pipeline_factory or (lambda: beam.Pipeline(options=pipeline_options(beam_args)))
    plan = _plan(dataset, options, staging, factory)
    pending = _pending(plan.tasks, staging, options)
    if len(pending) < len(plan.tasks):
        log.info("%d of %d shards were finished by an earlier run and are kept",
                 len(plan.tasks) - len(pending), len(plan.tasks))
    if pending:
        _run_beam(pending, staging, dataset, options, factory)

    splits, classes = _collect(plan, output_dir, dataset, options)
    write_label_map(os.path.join(staging, LABEL_MAP_FILENAME), classes)
    manifest = dict(config, complete=True, num_classes=len(classes), label_map=LABEL_MAP_FILENAME,
                    bad_files=L.BAD_FILES_FILENAME, fixed_files=L.FIXED_FILES_FILENAME, splits=splits)
    _publish(output_dir, staging, options, manifest)
    for split, info in splits.items():
        log.info("%s: %d examples in %d shards (%d re-encoded, %d skipped)", split, info["num_examples"],
                 info["num_shards"], info["num_fixed"], info["num_bad"])
    return ConvertResult(output_dir, manifest)
