"""The Beam conversion of a discovered dataset into sharded tf.Example TFRecords (no TFX needed).

How it works:

1. **Plan** (launching process, cheap): every input gets a sort key, a keyed hash of ``seed``, split and
   relative path; inputs sorted by it are cut into ``num_shards`` equal contiguous blocks, so shard
   sizes differ by at most one and the same input always gives the same shards. Imported TFRecords
   (already shuffled by the tool that wrote them) are cut into contiguous blocks of their records in file
   order and shuffled by key within each shard, so each block is a sequential read instead of a random
   access per record. The plan is one JSON line per shard task, written to the staging area.
2. **Beam**: ``ReadFromText(plan) | Reshuffle | ParDo(WriteShard)``. Each task reads its inputs, checks and
   fixes them (:mod:`hrnet_tfx.data.images`), writes its shard itself in key order and renames it into
   place, then writes a small result file (counts, skipped and fixed inputs). Only file names cross the
   shuffle, never image bytes, so the DirectRunner's memory stays flat even for ImageNet.
3. **Finish** (launching process): the skipped-input report is written, the bad fraction checked, and the
   splits published (moved out of staging), ``labels.tsv`` written, and ``manifest.json`` written last.

Restartable: everything is written under ``OUTPUT/.incomplete/`` first. A crashed or killed run leaves no
manifest, so readers (:func:`hrnet_tfx.data.layout.load_manifest`) refuse the output; running the same
conversion again keeps every shard that was finished (same input fingerprint and options), redoes the
rest, and publishes. An output that is already complete is left as it is.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from typing import Callable, Iterable, Sequence

import apache_beam as beam

from hrnet_tfx.data import layout as L
from hrnet_tfx.data import progress as progress_lib
from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.data.images import VERIFY_MODES, BadImageError, prepare_image
from hrnet_tfx.data.labels import Box, ClassInfo, DataError, write_label_map
from hrnet_tfx.data.records import (INCEPTION_LABEL_OFFSET, BadRecordError, count_records, make_example,
                                    read_records, relabel_record)
from hrnet_tfx.data.sources import Dataset

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "hrnet_tfx.convert"
_PLAN = "plan.jsonl"
_CONFIG = "config.json"
_RESULTS = "results"
_PROGRESS = "progress"
_OWN_NAMES = {L.MANIFEST_FILENAME, L.BAD_FILES_FILENAME, L.FIXED_FILES_FILENAME, LABEL_MAP_FILENAME,
              L.STAGING_DIRNAME} | {L.split_dirname(s) for s in L.SPLITS}


class BadFractionError(DataError):
    """More inputs of a split were unusable than ``max_bad_fraction`` allows."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Conversion settings.

    Attributes:
      train_shards / eval_shards: fixed shard counts (inception's 1024 / 128 by default).
      compression: ``none`` (default) or ``gzip``. JPEG bytes are already entropy-coded: GZIP shrinks
        the shards by well under 1% (0.3% on benchmarks/bench_convert.py's photo-like JPEGs) while
        costing CPU on every write and on every read of every epoch, and a GZIP file can only be read
        sequentially; so uncompressed is the default.
      max_bad_fraction: fail when a split has more unusable inputs than this fraction (ImageNet's odd
        files are fixed, not counted).
      verify: how kept JPEGs are checked, see :func:`hrnet_tfx.data.images.prepare_image`.
      label_offset: subtracted from imported TFRecords' labels (1 for inception/TF-slim's 1-based
        labels); unused for image inputs.
      seed: the shuffle key; the same seed and input give byte-identical shards.
    """

    train_shards: int = 1024
    eval_shards: int = 128
    compression: str = "none"
    max_bad_fraction: float = 0.001
    verify: str = "markers"
    label_offset: int = INCEPTION_LABEL_OFFSET
    seed: str = "hrnet-tfx"

    def __post_init__(self):
        if self.train_shards < 1 or self.eval_shards < 1:
            raise ValueError(f"shard counts must be >= 1, got {self.train_shards}/{self.eval_shards}")
        if self.compression not in L.COMPRESSIONS:
            raise ValueError(f"compression must be one of {L.COMPRESSIONS}, got {self.compression!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {self.verify!r}")

    def num_shards(self, split: str) -> int:
        """The shard count of ``split``."""
        return self.train_shards if split == L.TRAIN else self.eval_shards

    def content_dict(self) -> dict:
        """The settings that change the shards' bytes (max_bad_fraction does not)."""
        d = dataclasses.asdict(self)
        del d["max_bad_fraction"]
        return d


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


def _plan_records(split: str, source, options: ConvertOptions, bad: list) -> list[dict]:
    counts = []
    for name in sorted(source.files):
        count, problem = count_records(os.path.join(source.root, name))
        if problem:
            bad.append([split, name, "bad_record", f"TFRecord file {problem}; the rest is lost"])
        counts.append((name, count))
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


class WriteShard(beam.DoFn):
    """Writes one planned shard (a JSON line of the plan): reads, checks and fixes its inputs, writes the
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

    def _images(self, task: dict, result: dict) -> Iterable[bytes]:
        root, verify = self._roots[task["split"]], self._options.verify
        for relpath, label, boxes in task["items"]:
            self._progress.add()
            try:
                with open(os.path.join(root, relpath), "rb") as f:
                    data = f.read()
            except OSError as e:
                self._bad_input(result, relpath, "unreadable", f"{type(e).__name__}: {e}")
                continue
            try:
                image = prepare_image(data, verify)
            except BadImageError as e:
                self._bad_input(result, relpath, e.reason, e.detail)
                continue
            if image.fixed:
                self._fixed.inc()
                result["fixed"].append([result["split"], relpath, image.fixed])
            else:
                self._kept.inc()
            yield make_example(image, self._class_list[label], relpath, [Box(*b) for b in boxes],
                               self._class_index)

    def _records(self, task: dict, result: dict) -> Iterable[bytes]:
        root, split, seed = self._roots[task["split"]], task["split"], self._options.seed
        keyed, seen = [], {}
        for name, start, stop in task["segments"]:
            for index, record, error in read_records(os.path.join(root, name), start, stop):
                self._progress.add()
                where = f"{name}#{index}"
                if record is None:
                    self._bad_input(result, where, "bad_record", error)
                    continue
                try:
                    record, label, synset, text = relabel_record(record, self._options.label_offset)
                except BadRecordError as e:
                    self._bad_input(result, where, e.reason, e.detail)
                    continue
                seen.setdefault(label, [synset, text])
                keyed.append((sort_key(seed, split, where), record))
        result["classes"] = [[label, *v] for label, v in sorted(seen.items())]
        keyed.sort()
        return (record for _, record in keyed)

    def process(self, line: str):
        import tensorflow as tf

        task = json.loads(line)
        split, shard = task["split"], task["shard"]
        result = {"split": split, "shard": shard, "bad": [], "fixed": [], "examples": 0, "bytes": 0}
        out_dir = os.path.join(self._staging, L.split_dirname(split))
        name = L.shard_filename(split, shard, self._options.num_shards(split), self._options.compression)
        path = os.path.join(out_dir, name)
        tmp = f"{path}.inprogress-{uuid.uuid4().hex}"
        compression = "GZIP" if self._options.compression == "gzip" else ""
        examples = self._images(task, result) if task["kind"] == "images" else self._records(task, result)
        with tf.io.TFRecordWriter(tmp, tf.io.TFRecordOptions(compression_type=compression)) as writer:
            for example in examples:
                writer.write(example)
                result["examples"] += 1
                result["bytes"] += len(example)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        _write_json(_result_path(self._staging, split, shard), result)
        self._written.inc(result["examples"])
        self._bytes.inc(result["bytes"])
        self._shards.inc()
        self._progress.add(0, force=True)
        yield split, shard, result["examples"]


def _result_path(staging: str, split: str, shard: int) -> str:
    return os.path.join(staging, _RESULTS, f"{split}-{shard:05d}.json")


def _write_json(path: str, obj) -> None:
    """Writes JSON atomically (temporary name, then rename)."""
    import tensorflow as tf

    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
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


def _prepare_output(output_dir: str, config: dict, overwrite: bool) -> dict | None:
    """Makes ``output_dir`` ready; returns the manifest if it already holds this very conversion."""
    import tensorflow as tf

    tf.io.gfile.makedirs(output_dir)
    names = {n.rstrip("/") for n in tf.io.gfile.listdir(output_dir)}
    foreign = sorted(names - _OWN_NAMES)
    if foreign:
        raise DataError(f"output directory {output_dir} holds files that are not from a conversion, e.g. "
                        f"{foreign[:3]}; choose an empty or new directory")
    manifest_path = os.path.join(output_dir, L.MANIFEST_FILENAME)
    if L.MANIFEST_FILENAME in names:
        manifest = _read_json(manifest_path)
        if manifest.get("complete") and manifest.get("config_hash") == config["config_hash"]:
            return manifest
        if manifest.get("complete") and not overwrite:
            raise DataError(f"{output_dir} already holds a complete conversion of other input or options "
                            "(see its manifest.json); pass overwrite (--overwrite) or use another directory")
    for name in sorted(names - {L.STAGING_DIRNAME}):  # unpublished leftovers: never trusted
        _remove(os.path.join(output_dir, name))
    staging = os.path.join(output_dir, L.STAGING_DIRNAME)
    config_path = os.path.join(staging, _CONFIG)
    if tf.io.gfile.exists(config_path) and _read_json(config_path).get("config_hash") == config["config_hash"]:
        log.info("resuming the unfinished conversion in %s", staging)
    else:
        _remove(staging)
    _remove(os.path.join(staging, _PROGRESS))  # counts of an earlier attempt
    for sub in [_RESULTS, _PROGRESS] + [L.split_dirname(s) for s in L.SPLITS]:
        tf.io.gfile.makedirs(os.path.join(staging, sub))
    _write_json(config_path, config)
    return None


def _pending(tasks: list[dict], staging: str, options: ConvertOptions) -> list[dict]:
    import tensorflow as tf

    pending = []
    for t in tasks:
        shard_path = os.path.join(staging, L.split_dirname(t["split"]), L.shard_filename(
            t["split"], t["shard"], options.num_shards(t["split"]), options.compression))
        if not (tf.io.gfile.exists(_result_path(staging, t["split"], t["shard"]))
                and tf.io.gfile.exists(shard_path)):
            pending.append(t)
    return pending


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
    import tensorflow as tf

    plan_path = os.path.join(staging, _PLAN)
    with tf.io.gfile.GFile(plan_path, "w") as f:
        for t in pending:
            f.write(json.dumps(t, separators=(",", ":")) + "\n")
    roots = {name: s.root for name, s in dataset.splits.items()}
    total = sum(t["size"] for t in pending)
    unit = "img" if dataset.layout != "tfrecords" else "rec"
    log.info("converting %d inputs into %d shards with Beam", total, len(pending))
    pipeline = pipeline_factory()
    _ = (pipeline
         | "ReadPlan" >> beam.io.ReadFromText(plan_path)
         | "Distribute" >> beam.Reshuffle()  # tasks stay JSON text: Beam's coders reject undecodable names
         | "WriteShard" >> beam.ParDo(WriteShard(staging, roots, dataset.classes, options)))
    start = time.monotonic()
    with progress_lib.ProgressMonitor(os.path.join(staging, _PROGRESS), total, unit=unit):
        result = pipeline.run()
        result.wait_until_finish()
    elapsed = time.monotonic() - start
    log.info("Beam done: %s", progress_lib.format_progress(total, None, elapsed, unit))
    _log_metrics(result)


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
    import tensorflow as tf

    def cell(v) -> str:  # one line, and file names that are not valid UTF-8 shown escaped
        return " ".join(str(v).split()).encode("utf-8", "backslashreplace").decode("utf-8")

    with tf.io.gfile.GFile(path, "w") as f:
        f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(cell(v) for v in row) + "\n")


def pipeline_options(beam_args: Sequence[str] | None) -> beam.options.pipeline_options.PipelineOptions:
    """Beam options from command-line style ``beam_args``. Without ``--runner`` they select Beam's
    FnApiRunner, the local engine behind the DirectRunner, which honours ``--direct_num_workers`` and
    ``--direct_running_mode``; Beam 2.7x's DirectRunner would first try to download and start Prism."""
    args = list(beam_args or [])
    if not any(a == "--runner" or a.startswith("--runner=") for a in args):
        args.insert(0, "--runner=FnApiRunner")
    return beam.options.pipeline_options.PipelineOptions(args)


def convert(dataset: Dataset, output_dir: str, options: ConvertOptions = ConvertOptions(), *,
            beam_args: Sequence[str] | None = None,
            pipeline_factory: Callable[[], beam.Pipeline] | None = None,
            overwrite: bool = False) -> ConvertResult:
    """Converts ``dataset`` (from :func:`hrnet_tfx.data.sources.discover`) into ``output_dir``.

    Args:
      dataset: the discovered input.
      output_dir: where the splits, label map, reports and manifest go (see :mod:`hrnet_tfx.data.layout`);
        created if missing; must be empty or hold an earlier conversion.
      options: shard counts, compression, bad-input tolerance, ...
      beam_args: Beam pipeline options (``--runner``, ``--direct_num_workers``, ...).
      pipeline_factory: makes the Beam pipeline instead (the TFX executor passes its own).
      overwrite: replace a complete conversion of other input or options.

    Returns:
      The result; ``reused`` is True if ``output_dir`` already held exactly this conversion.

    Raises:
      DataError: unusable output directory or inconsistent imported labels.
      BadFractionError: too many unusable inputs (nothing is published; the report names them).
    """
    import tensorflow as tf

    output_dir = os.fspath(output_dir)
    config = _config(dataset, options)
    existing = _prepare_output(output_dir, config, overwrite)
    if existing is not None:
        log.info("%s already holds this conversion; nothing to do", output_dir)
        return ConvertResult(output_dir, existing, reused=True)
    staging = os.path.join(output_dir, L.STAGING_DIRNAME)

    plan_bad: list = []
    tasks, inputs = [], {}
    for split, source in dataset.splits.items():
        split_tasks = (_plan_images(split, source, options) if source.kind == "images"
                       else _plan_records(split, source, options, plan_bad))
        inputs[split] = sum(t["size"] for t in split_tasks) + sum(1 for b in plan_bad if b[0] == split)
        tasks += split_tasks
    pending = _pending(tasks, staging, options)
    if len(pending) < len(tasks):
        log.info("%d of %d shards were finished by an earlier run and are kept", len(tasks) - len(pending),
                 len(tasks))
    if pending:
        factory = pipeline_factory or (lambda: beam.Pipeline(options=pipeline_options(beam_args)))
        _run_beam(pending, staging, dataset, options, factory)

    results = []
    for t in tasks:
        path = _result_path(staging, t["split"], t["shard"])
        if not tf.io.gfile.exists(path):
            raise RuntimeError(f"the Beam pipeline finished but shard {t['split']}/{t['shard']} has no result "
                               f"({path}); run the conversion again to redo it")
        results.append(_read_json(path))
    bad = plan_bad + [b for r in results for b in r["bad"]]
    fixed = [f for r in results for f in r["fixed"]]
    bad_path = os.path.join(output_dir, L.BAD_FILES_FILENAME)
    _write_tsv(bad_path, ["split", "path", "reason", "detail"], bad)
    _write_tsv(os.path.join(output_dir, L.FIXED_FILES_FILENAME), ["split", "path", "was"], fixed)

    splits = {}
    for split in dataset.splits:
        n_bad = sum(1 for b in bad if b[0] == split)
        total = max(inputs[split], 1)
        if n_bad / total > options.max_bad_fraction:
            raise BadFractionError(
                f"{split}: {n_bad} of {inputs[split]} inputs ({100.0 * n_bad / total:.2f}%) are unusable, more "
                f"than max_bad_fraction={options.max_bad_fraction} allows; they are listed in {bad_path}. "
                "Fix or remove them, or raise the limit (--max-bad-fraction), and run again: finished "
                "shards are kept")
        split_results = [r for r in results if r["split"] == split]
        splits[split] = {
            "num_shards": options.num_shards(split),
            "num_examples": sum(r["examples"] for r in split_results),
            "num_bytes": sum(r["bytes"] for r in split_results),
            "num_inputs": inputs[split],
            "num_bad": n_bad,
            "num_fixed": sum(1 for f in fixed if f[0] == split),
            "file_pattern": os.path.relpath(L.split_file_pattern(output_dir, split), output_dir),
            "compression": options.compression,
        }
    classes = dataset.classes or _classes_from_records(results)

    for split in dataset.splits:  # publish: the only step that touches the final names
        src, dst = os.path.join(staging, L.split_dirname(split)), L.split_dir(output_dir, split)
        expected = {L.shard_filename(split, s, options.num_shards(split), options.compression)
                    for s in range(options.num_shards(split))}
        for name in tf.io.gfile.listdir(src):
            if name not in expected:  # a temporary file of a killed attempt
                tf.io.gfile.remove(os.path.join(src, name))
        _remove(dst)
        tf.io.gfile.rename(src, dst)
    write_label_map(os.path.join(output_dir, LABEL_MAP_FILENAME), classes)
    manifest = dict(config, complete=True, num_classes=len(classes), label_map=LABEL_MAP_FILENAME,
                    bad_files=L.BAD_FILES_FILENAME, fixed_files=L.FIXED_FILES_FILENAME, splits=splits)
    _write_json(os.path.join(output_dir, L.MANIFEST_FILENAME), manifest)
    _remove(staging)
    for split, info in splits.items():
        log.info("%s: %d examples in %d shards (%d re-encoded, %d skipped)", split, info["num_examples"],
                 info["num_shards"], info["num_fixed"], info["num_bad"])
    return ConvertResult(output_dir, manifest)
