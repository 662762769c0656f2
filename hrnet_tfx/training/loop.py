"""The training and evaluation loop (one process per worker; see :mod:`hrnet_tfx.training.launcher`).

A custom loop on ``horovod.tensorflow`` (DistributedGradientTape; rank 0's initial or restored variables
and optimizer state broadcast to every worker), or on tf.distribute when Horovod is absent. Only rank 0
writes: checkpoints, TensorBoard logs, the resolved config, ``metrics.json`` and the exported SavedModel.
Before every evaluation the workers take rank 0's BatchNorm statistics, so the metrics describe the
model that rank 0 checkpoints and exports.

A rerun with the same ``model_dir`` resumes from the newest readable checkpoint (see
:mod:`hrnet_tfx.training.checkpoints`): the step counter (the optimizer's ``iterations``), the
learning-rate schedule (a function of that step) and the momentum buffers continue. It must keep the
settings of ``train_config.json`` that shape the run (:func:`check_resume`).
"""

from __future__ import annotations

import json
import logging
import os
import time

from hrnet_tfx import WEIGHT_CACHE_ENV  # (also sets TF_USE_LEGACY_KERAS first)
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx.config_io import write_json
from hrnet_tfx.data import input as data_input
from hrnet_tfx.data.counting import count_records
from hrnet_tfx.data.labels import read_label_map
from hrnet_tfx.data.progress import format_duration
from hrnet_tfx.fs import unreadable_scheme
from hrnet_tfx.models import ConfigError, build_model, get_config, load_pytorch_weights, read_state_dict
from hrnet_tfx.training.checkpoints import PREFIX as CHECKPOINT_PREFIX
from hrnet_tfx.training.checkpoints import list_checkpoints, prepare_resume, restore_newest
from hrnet_tfx.training.config import ARTIFACT_FIELDS, MODEL_FIELDS, RESUME_FIELDS, TrainConfig, split_paths
from hrnet_tfx.training.distribute import make_backend
from hrnet_tfx.training.optimizer import MomentumSGD
from hrnet_tfx.training.schedule import WarmupSchedule

log = logging.getLogger(__name__)

CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tensorboard"
METRICS_FILE = "metrics.json"
"""The training run's final metrics (and its train history)."""
EVAL_METRICS_FILE = "eval_metrics.json"
"""An eval-only run's metrics (the training run's ``metrics.json`` stays as it was)."""
CONFIG_FILE = "train_config.json"
PYTORCH_SUFFIXES = (".pth", ".pt", ".pth.tar", ".bin", ".safetensors")


def data_files(pattern: str, what: str) -> list[str]:
    """The files of ``pattern`` (globs, comma-separated), sorted; ``what`` names the field in errors."""
    if not pattern:
        raise ConfigError(f"{what} is not set: give the data (hrnet-tfx train --data DIR, or -s "
                          "train_files=PATTERN -s eval_files=PATTERN with TFRecord shard globs)")
    files = []
    for part in split_paths(pattern):
        try:
            files += sorted(tf.io.gfile.glob(part))
        except tf.errors.OpError as e:  # e.g. a bucket without credentials, an unknown file system
            raise ConfigError(f"{what}: cannot list {part!r}: {_one_line(e)}") from None
    if not files:
        raise ConfigError(f"{what}: no files match {pattern!r}")
    return files


def _one_line(error: tf.errors.OpError) -> str:
    """TensorFlow's message (which names the path) on one line."""
    return " ".join(error.message.split())


def validate(config: TrainConfig, num_workers: int, eval_only: bool = False) -> None:
    """Checks everything that can be checked before a worker starts, with messages naming the problem."""
    try:
        _validate(config, num_workers, eval_only)
    except tf.errors.OpError as e:  # a path that cannot be read (no credentials, an unknown file system)
        raise ConfigError(f"cannot check the run's files: {_one_line(e)}") from None


def _validate(config: TrainConfig, num_workers: int, eval_only: bool) -> None:
    get_config(config.model)  # unknown network -> ConfigError naming the known ones
    if not config.num_classes:
        raise ConfigError("num_classes is 0 (from the data) and no manifest.json gave the class count: set "
                          "num_classes, or train on converted data (hrnet-tfx data convert, ImageExampleGen)")
    if not config.model_dir:
        raise ConfigError("model_dir is not set")
    for key in ARTIFACT_FIELDS + ("init_from",):
        for part in split_paths(getattr(config, key)):
            problem = unreadable_scheme(part)
            if problem:
                raise ConfigError(f"{key} {part}: {problem}")
    config.for_workers(num_workers)  # an explicit global batch must divide by the workers
    data_files(config.eval_files, "eval_files")
    if eval_only:
        if not list_checkpoints(checkpoint_dir(config)) and not config.init_from:
            raise ConfigError(
                f"eval-only needs a checkpoint: {checkpoint_dir(config)} has none and init_from is empty"
            )
    else:
        if os.environ.get(WEIGHT_CACHE_ENV, "0").strip().lower() not in ("", "0", "false"):
            raise ConfigError(f"{WEIGHT_CACHE_ENV}={os.environ[WEIGHT_CACHE_ENV]} is set: oneDNN would keep "
                              "computing with the first weights each convolution saw and the training would diverge; "
                              "it is for serving processes only, unset it to train")
        data_files(config.train_files, "train_files")
        if config.export_dir and tf.io.gfile.exists(config.export_dir):
            raise ConfigError(f"export_dir {config.export_dir} already exists: remove it or export elsewhere")
    if config.init_from and not tf.io.gfile.exists(config.init_from) and not tf.io.gfile.glob(config.init_from + ".index"):
        raise ConfigError(f"init_from not found: {config.init_from}")
    if config.label_map and not tf.io.gfile.exists(config.label_map):
        raise ConfigError(f"label_map not found: {config.label_map}")


def checkpoint_dir(config: TrainConfig) -> str:
    return os.path.join(config.model_dir, CHECKPOINT_SUBDIR)


def check_resume(config: TrainConfig, eval_only: bool = False, allow_changed_config: bool = False) -> list[str]:
    """Compares ``config`` (resolved: batch and example count) with the ``train_config.json`` of the run
    whose checkpoints it would resume or evaluate; returns the differences.

    Training must keep the model, data, batch and schedule (:data:`RESUME_FIELDS`); eval-only the model
    (:data:`MODEL_FIELDS`). Raises :class:`ConfigError` naming every difference unless
    ``allow_changed_config``.
    """
    path = os.path.join(config.model_dir, CONFIG_FILE)
    if not list_checkpoints(checkpoint_dir(config)) or not tf.io.gfile.exists(path):
        return []
    try:
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
    except ValueError as e:
        raise ConfigError(f"{path} (the settings of the run that wrote the checkpoints) is not valid JSON: {e}. "
                          "Restore it, or delete it to resume without comparing settings.") from None
    changes = config.changes_from(saved, MODEL_FIELDS if eval_only else RESUME_FIELDS)
    if changes and not allow_changed_config:
        what = "evaluating" if eval_only else "resuming"
        raise ConfigError(
            f"{config.model_dir} holds checkpoints of a run with other settings ({path}); {what} them with these "
            f"would change {'; '.join(changes)}. Use the saved settings, or pass --allow-changed-config "
            "(allow_changed_config=True) to go on with the new ones.")
    return changes


def check_init_source(config: TrainConfig, eval_only: bool = False) -> None:
    """Reads ``init_from`` once, as rank 0 will, so that a bad weights file fails before any worker starts.

    Nothing to do when ``model_dir`` has checkpoints (they win over ``init_from``). PyTorch weights go
    through :func:`~hrnet_tfx.models.read_state_dict` (a bad file raises
    :class:`~hrnet_tfx.models.WeightsFileError` naming it and the reason); eval-only also refuses them
    without a classifier of ``num_classes`` classes. A SavedModel's variables and a TF checkpoint are read
    tensor by tensor (every checksum verified); an unreadable one raises :class:`ConfigError` naming it.
    Nothing is placed on a device: the launcher leaves the GPUs to the workers.
    """
    if not config.init_from or list_checkpoints(checkpoint_dir(config)):
        return
    source = config.init_from
    if source.endswith(PYTORCH_SUFFIXES):
        state = read_state_dict(source)
        if eval_only:
            _head_fits(_pytorch_classes(state), config, eval_only=True)
        return
    path = _saved_model_variables(source) or _init_checkpoint(source)
    try:
        classes = _checkpoint_classes(path)
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)  # one tensor at a time
    except (tf.errors.OpError, IndexError, ValueError) as e:  # a cut data file raises IndexError
        message = _one_line(e) if isinstance(e, tf.errors.OpError) else str(e)
        raise ConfigError(f"init_from {source}: cannot read {path}: {message}") from None
    if eval_only:
        _head_fits(classes, config, eval_only=True)


def _saved_model_variables(source: str) -> str:
    """The training weights' checkpoint of the SavedModel ``source``, or "" when ``source`` is no SavedModel."""
    if not tf.io.gfile.exists(os.path.join(source, "saved_model.pb")):
        return ""
    from hrnet_tfx.serving.export import weights_checkpoint

    return weights_checkpoint(source)


def _init_checkpoint(source: str) -> str:
    """The checkpoint ``init_from`` names: a prefix, or the newest in a directory."""
    path = tf.train.latest_checkpoint(source) if tf.io.gfile.isdir(source) else source
    if not path:
        raise ConfigError(f"init_from {source}: no checkpoint found")
    return path


def _pytorch_classes(state: dict) -> int | None:
    """The class count of a PyTorch state dict's classifier, or None without one."""
    head = state.get("classifier.weight", None)
    return None if head is None else int(head.shape[0])


def _checkpoint_classes(path: str) -> int | None:
    """The class count of the classifier in the TF checkpoint at ``path`` (a training checkpoint, an
    export's training weights or an older export's variables), found by the classifier kernel's variable
    name (in the checkpoint's object graph, or the key itself in a name-based one); None when it holds no
    such variable."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    from hrnet_tfx.serving.export import CLASSIFIER_PREFIX

    reader = tf.train.load_checkpoint(path)
    shapes = reader.get_variable_to_shape_map()
    if "_CHECKPOINTABLE_OBJECT_GRAPH" not in shapes:  # name-based: an export's training weights, or TF1's
        kernel = shapes.get(CLASSIFIER_PREFIX + "kernel:0")
        return int(kernel[-1]) if kernel else None
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    for node in graph.nodes:
        for attribute in node.attributes:
            if attribute.full_name == CLASSIFIER_PREFIX + "kernel" and attribute.checkpoint_key in shapes:
                return int(shapes[attribute.checkpoint_key][-1])
    return None


def _head_fits(classes: int | None, config: TrainConfig, eval_only: bool) -> bool:
    """Whether a classifier of ``classes`` classes (None: no classifier) fits ``num_classes``; eval-only
    refuses a misfit (it would score a random classifier), training warns that the classifier starts anew."""
    if classes == config.num_classes:
        return True
    found = "no classifier" if classes is None else f"a classifier of {classes} classes"
    if eval_only:
        raise ConfigError(f"init_from {config.init_from} has {found}, num_classes is {config.num_classes}: eval-only "
                          "would evaluate a randomly initialised classifier. Set num_classes to match, or train "
                          "(fine-tune) first.")
    log.warning("init_from %s has %s, this run has %d classes: the classifier starts from random weights "
                "(fine-tuning)", config.init_from, found, config.num_classes)
    return False


def label_strings(config: TrainConfig) -> list[str]:
    """Class names for the exported model: the label map's names (or ids), else ``class_<i>``."""
    if not config.label_map:
        return [f"class_{i}" for i in range(config.num_classes)]
    classes = read_label_map(config.label_map)
    if len(classes) != config.num_classes:
        raise ConfigError(f"label_map {config.label_map} has {len(classes)} classes, num_classes is {config.num_classes}")
    return [c.name or c.id for c in sorted(classes, key=lambda c: c.index)]


def _init_weights(model, config: TrainConfig, eval_only: bool) -> None:
    """Initial weights from PyTorch weights, a SavedModel or a TF checkpoint (rank 0 only); with another
    class count the classifier starts from random weights when training and is refused in eval-only."""
    source = config.init_from
    if source.endswith(PYTORCH_SUFFIXES):
        state = read_state_dict(source)
        same_head = _head_fits(_pytorch_classes(state), config, eval_only)
        count = load_pytorch_weights(model, state, exclude=() if same_head else ("classifier",))
        log.info("initialised %d tensors from %s", count, source)
    elif _saved_model_variables(source):
        from hrnet_tfx.serving.export import load_weights_into

        if eval_only:
            _head_fits(_checkpoint_classes(_saved_model_variables(source)), config, eval_only)
        try:
            load_weights_into(model, source, new_classifier=not eval_only)  # it warns when it skips the classifier
        except ValueError as e:
            raise ConfigError(f"init_from: {e}") from None
        log.info("initialised from SavedModel %s", source)
    else:
        path = _init_checkpoint(source)
        _restore_checkpoint(model, config, path, eval_only)
        log.info("initialised from checkpoint %s", path)


def _restore_checkpoint(model, config: TrainConfig, path: str, eval_only: bool) -> None:
    """Restores ``model`` from the TF checkpoint ``path``. With another class count (fine-tuning) the
    checkpoint is restored whole into a model of its own class count, and every weight but the
    classifier's is copied over (the checkpoint's object graph decides what goes where)."""
    from hrnet_tfx.serving.export import CLASSIFIER_PREFIX

    classes = _checkpoint_classes(path)
    target = model
    if classes is not None and not _head_fits(classes, config, eval_only):
        target = build_model(config.model, num_classes=classes, image_size=config.image_size,
                             dtype_policy=config.dtype_policy)
    try:
        # read(), not restore(): a checkpoint written by write() has no save counter to match
        tf.train.Checkpoint(model=target).read(path).expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        message = _one_line(e) if isinstance(e, tf.errors.OpError) else " ".join(str(e).split())
        raise ConfigError(f"init_from {config.init_from}: checkpoint {path} does not fit model {config.model!r} "
                          f"({message[:500]})") from None
    if target is not model:
        restored = {v.name: v for v in target.variables}
        for variable in model.variables:
            if not variable.name.startswith(CLASSIFIER_PREFIX):
                variable.assign(restored[variable.name])


class ChiefFailedError(RuntimeError):
    """Raised on the other ranks when rank 0 failed in :func:`_on_chief` (rank 0 logs the reason)."""


def _on_chief(backend, fn, *args):
    """Runs ``fn`` on rank 0 only; if it raises, every rank raises (rank 0 its own error, the others
    :class:`ChiefFailedError`), so no rank is left waiting in a collective for a failed one."""
    result, error = None, None
    if backend.rank == 0:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = e
    if backend.size > 1 and backend.sum({"failed": float(error is not None)})["failed"]:
        raise error or ChiefFailedError(f"rank 0 failed (see its log); stopping rank {backend.rank} too")
    if error is not None:
        raise error
    return result


class _Progress:
    """Rank 0's progress line: step, epoch, metrics, learning rate, images/s (total and per worker), ETA."""

    def __init__(self, total_steps: int, start_step: int, steps_per_epoch: int, workers: int):
        self.total, self.start, self.spe, self.workers = total_steps, start_step, steps_per_epoch, workers
        self.t0 = self.t_last = time.monotonic()

    def line(self, step: int, metrics: dict, lr: float, images: float) -> tuple[str, float]:
        now = time.monotonic()
        rate = images / max(now - self.t_last, 1e-9)
        self.t_last = now
        done = step - self.start
        eta = (now - self.t0) / max(done, 1) * (self.total - step)
        text = (
            f"step {step}/{self.total} (epoch {step / self.spe:.2f}) loss {metrics['loss']:.4f} "
            f"top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f} lr {lr:.5f} "
            f"{rate:.1f} img/s ({rate / self.workers:.1f}/worker) ETA {format_duration(eta)}"
        )
        return text, rate


def _ratios(sums: dict) -> dict:
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss_sum"] / count, "top1": sums["top1"] / count, "top5": sums["top5"] / count,
            "count": int(sums["count"])}


def _sums(labels, logits, per_example_loss) -> dict:
    labels = tf.cast(labels, tf.int32)
    k = min(5, int(logits.shape[-1]))
    return {
        "loss_sum": tf.reduce_sum(per_example_loss),
        "top1": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
        "top5": tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32)),
        "count": tf.cast(tf.shape(labels)[0], tf.float32),
    }


def evaluate(model, config: TrainConfig, backend) -> dict:
    """Top-1/top-5/loss over the whole eval split; each worker reads its files, counts are summed."""
    files = data_files(config.eval_files, "eval_files")
    shards = min(backend.size, len(files))
    batch = config.eval_batch_size or config.per_worker_batch_size
    totals = {"loss_sum": 0.0, "top1": 0.0, "top5": 0.0, "count": 0.0}

    @tf.function(autograph=False)  # Keras layers need no conversion; autograph would make tracing 10x slower
    def eval_step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        return _sums(labels, logits, loss)

    if backend.rank < shards:
        dataset = data_input.make_dataset(
            files, training=False, batch_size=batch, image_size=config.image_size, num_shards=shards,
            shard_index=backend.rank, num_classes=config.num_classes, label_offset=config.label_offset,
        )
        for images, labels in dataset:
            for key, value in eval_step(images, labels).items():
                totals[key] += float(value)
    return _ratios(backend.sum(totals))


def _build(config: TrainConfig, backend, steps_per_epoch: int, total_steps: int):
    keras.utils.set_random_seed(config.seed)  # same initial weights for the same seed (rank 0's are broadcast)
    with backend.scope():
        model = build_model(config.model, num_classes=config.num_classes, image_size=config.image_size,
                            dtype_policy=config.dtype_policy)
        schedule = WarmupSchedule(
            config.peak_lr, steps_per_epoch, total_steps / steps_per_epoch, config.resolved_warmup_epochs,
            config.schedule, config.lr_decay_epochs, config.lr_decay_rate,
        )
        optimizer = MomentumSGD(learning_rate=schedule, momentum=config.momentum, nesterov=config.nesterov)
        if config.dtype_policy == "mixed_float16":
            optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    return model, optimizer, schedule


def _restore(config: TrainConfig, backend, checkpoint, eval_only: bool) -> None:
    """Rank 0 restores the newest readable checkpoint (or the initial weights); everyone gets rank 0's
    values."""

    def restore():
        ckpt_dir = checkpoint_dir(config)
        restored = restore_newest(checkpoint, ckpt_dir)
        if restored:
            if not eval_only:
                prepare_resume(ckpt_dir, restored)
            log.info("%s %s at step %d", "evaluating" if eval_only else "resumed from", restored,
                     int(checkpoint.optimizer.iterations.numpy()))
        elif config.init_from:
            _init_weights(checkpoint.model, config, eval_only)

    _on_chief(backend, restore)
    backend.broadcast(checkpoint.model.variables)
    backend.broadcast(checkpoint.optimizer.variables)


def _with_example_count(config: TrainConfig, backend) -> TrainConfig:
    """``config`` with ``num_train_examples`` set: given, or counted once (rank 0) and broadcast."""
    if config.num_train_examples:
        return config
    count = _on_chief(backend, lambda: count_records(data_files(config.train_files, "train_files")))
    if backend.size > 1:
        count = int(backend.sum({"n": float(count or 0)})["n"])
    return config.replace(num_train_examples=count)


def log_batch(config: TrainConfig, workers: int) -> None:
    """Logs the resolved batch: per worker, workers, global, and the learning rate scaled from it."""
    log.info("batch: %d per worker x %d worker(s) = global batch %d; peak lr %.4g (base_lr %g per %d images, "
             "scaled linearly)", config.per_worker_batch_size, workers, config.batch, config.peak_lr,
             config.base_lr, config.base_batch)


def run(config: TrainConfig, eval_only: bool = False, allow_changed_config: bool = False) -> dict:
    """Trains (or only evaluates) in this worker process; returns the final eval metrics on every rank.

    ``allow_changed_config``: resume (or evaluate) although the settings differ from the saved
    ``train_config.json`` (see :func:`check_resume`)."""
    backend = make_backend(config.backend, config.fp16_allreduce)
    chief = backend.rank == 0
    validate(config, backend.replicas, eval_only)
    config = config.for_workers(backend.replicas)
    if not eval_only:
        config = _with_example_count(config, backend)
    changes = check_resume(config, eval_only, allow_changed_config)
    if chief:
        log.info("%s", backend.describe())
        if changes:
            log.warning("going on with changed settings (allowed): %s", "; ".join(changes))

    if eval_only:
        steps_per_epoch, total_steps = 1, 1
    else:
        steps_per_epoch = config.steps_per_epoch(config.num_train_examples)
        total_steps = config.total_steps(config.num_train_examples)
    model, optimizer, schedule = _build(config, backend, steps_per_epoch, total_steps)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    _restore(config, backend, checkpoint, eval_only)

    if eval_only:
        metrics = {**evaluate(model, config, backend), "step": int(optimizer.iterations.numpy()), "eval_only": True}
        if chief:
            _write_metrics(config, metrics, EVAL_METRICS_FILE)
            log.info("eval: top1 %.4f top5 %.4f loss %.4f on %d images", metrics["top1"], metrics["top5"],
                     metrics["loss"], metrics["count"])
        return metrics

    manager = None
    if chief:
        manager = tf.train.CheckpointManager(checkpoint, checkpoint_dir(config), max_to_keep=config.keep_checkpoints,
                                             checkpoint_name=CHECKPOINT_PREFIX)
        config.save(os.path.join(config.model_dir, CONFIG_FILE))
    metrics = _train(config, backend, model, optimizer, schedule, manager, steps_per_epoch, total_steps)
    metrics["step"] = int(optimizer.iterations.numpy())
    metrics["eval_only"] = False
    metrics["learning_rate"] = float(schedule(optimizer.iterations))
    if chief:
        _write_metrics(config, metrics, METRICS_FILE)
        if config.export_dir:
            export(config, model)
    return metrics


def _train(config, backend, model, optimizer, schedule, manager, steps_per_epoch, total_steps) -> dict:
    """Trains from the optimizer's step to ``total_steps`` (rank 0 logs and checkpoints through ``manager``;
    every rank takes part in the evaluations every ``eval_every_epochs``); returns the final eval metrics
    with the run's histories."""
    start = int(optimizer.iterations.numpy())
    if backend.rank == 0:
        log_batch(config, backend.replicas)
        log.info(
            "training %s: %d examples, %d steps/epoch, steps %d -> %d, warm-up %.1f epochs", config.model,
            config.num_train_examples, steps_per_epoch, start, total_steps, config.resolved_warmup_epochs,
        )
    batches = iter(backend.distribute(_train_dataset(config, backend, start)))
    train_step = make_train_step(config, backend, model, optimizer)
    report = _TrainReport(config, backend, schedule, start, steps_per_epoch, total_steps)
    eval_every = int(config.eval_every_epochs * steps_per_epoch) if config.eval_every_epochs else 0
    for step in range(start + 1, total_steps + 1):
        report.add(train_step(*next(batches)))
        if step % config.log_every_steps == 0 or step == total_steps:
            report.log_train(step)
        if manager is not None and step % config.checkpoint_every_steps == 0:
            manager.save(checkpoint_number=step)
        if eval_every and step % eval_every == 0 and step != total_steps:
            report.log_eval(step, evaluate(_synced(model, backend), config, backend))
    return _finish(config, backend, model, manager, report, total_steps)


def _train_dataset(config: TrainConfig, backend, start: int) -> tf.data.Dataset:
    """This worker's shard of the training files, shuffled with a seed that moves on with the step."""
    return data_input.make_dataset(
        data_files(config.train_files, "train_files"), training=True,
        batch_size=config.per_worker_batch_size if backend.name == "horovod" else config.batch,
        image_size=config.image_size, num_shards=backend.size, shard_index=backend.rank,
        shuffle_buffer=config.shuffle_buffer, seed=config.seed + start, deterministic=config.deterministic,
        num_classes=config.num_classes, label_offset=config.label_offset,
    )


def make_train_step(config: TrainConfig, backend, model, optimizer):
    """The training step ``(images, labels) -> sums`` (loss sum, top-1/top-5 hits, count) as a tf.function:
    forward pass, label-smoothed cross-entropy averaged over the global batch, gradients averaged over the
    workers (``backend``), weight decay on every parameter, the optimizer update."""
    variables = model.trainable_variables
    scaled = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
    # autograph=False: nothing here branches on tensors, and converting every Keras layer's call makes
    # tracing an HRNet 10-15x slower. With jit_compile, XLA compiles the forward pass and its gradient;
    # the allreduce and the optimizer update stay outside (Horovod's ops are not XLA ops).
    forward = tf.function(lambda images: model(images, training=True), jit_compile=config.jit_compile,
                          autograph=False)

    def step_fn(images, labels):
        with tf.GradientTape() as tape:
            logits = tf.cast(forward(images), tf.float32)
            one_hot = tf.one_hot(tf.cast(labels, tf.int32), config.num_classes)
            per_example = keras.losses.categorical_crossentropy(
                one_hot, logits, from_logits=True, label_smoothing=config.label_smoothing
            )
            local = tf.cast(tf.shape(labels)[0], tf.float32)
            loss = tf.reduce_sum(per_example) / (local * backend.gradient_replicas)
            target = optimizer.get_scaled_loss(loss) if scaled else loss
        tape = backend.wrap_tape(tape)
        grads = tape.gradient(target, variables)
        if scaled:
            grads = optimizer.get_unscaled_gradients(grads)
        if config.weight_decay:
            decay = config.weight_decay / backend.gradient_replicas
            grads = [g + decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
        optimizer.apply_gradients(zip(grads, variables))
        return _sums(labels, logits, per_example)

    @tf.function(autograph=False)
    def train_step(images, labels):
        return backend.run(step_fn, images, labels)

    return train_step


class _TrainReport:
    """What a training run reports: the step sums added up between log steps, then (summed over the
    workers) the train history, and on rank 0 the progress line and TensorBoard's ``train/*`` scalars;
    the evaluations (``eval_history``, ``eval/*``)."""

    def __init__(self, config: TrainConfig, backend, schedule, start: int, steps_per_epoch: int, total_steps: int):
        self.backend, self.schedule = backend, schedule
        self.chief = backend.rank == 0
        self.writer = tf.summary.create_file_writer(os.path.join(config.model_dir, TENSORBOARD_SUBDIR)) \
            if self.chief else None
        self.progress = _Progress(total_steps, start, steps_per_epoch, backend.size)
        self.history: list[dict] = []
        self.evals: list[dict] = []
        self.sums = self._zeros()

    @staticmethod
    def _zeros() -> dict:
        return {k: 0.0 for k in ("loss_sum", "top1", "top5", "count")}

    def add(self, sums: dict) -> None:
        for key, value in sums.items():
            self.sums[key] += value

    def log_train(self, step: int) -> None:
        """Every worker takes part (the sums are all-reduced); rank 0 logs and writes the summaries."""
        sums = self.backend.sum(self.sums)
        self.sums = self._zeros()
        ratios = _ratios(sums)
        lr = float(self.schedule(step))
        self.history.append({"step": step, "loss": ratios["loss"], "top1": ratios["top1"], "learning_rate": lr})
        if not self.chief:
            return
        text, rate = self.progress.line(step, ratios, lr, sums["count"])
        log.info(text)
        with self.writer.as_default(step=step):
            for key in ("loss", "top1", "top5"):
                tf.summary.scalar(f"train/{key}", ratios[key])
            tf.summary.scalar("train/learning_rate", lr)
            tf.summary.scalar("train/images_per_second_per_worker", rate / self.backend.size)

    def log_eval(self, step: int, metrics: dict, periodic: bool = True) -> None:
        """Records a periodic evaluation in ``evals``; rank 0 logs it and writes ``eval/*``."""
        if periodic:
            self.evals.append({"step": step, **metrics})
        _log_eval(metrics, step, self.writer)


def _finish(config: TrainConfig, backend, model, manager, report: _TrainReport, total_steps: int) -> dict:
    """After the last step: the workers' weights compared, the final checkpoint, the final evaluation."""
    checksums = check_replicas_consistent(_synced(model, backend), backend)
    if manager is not None and manager.latest_checkpoint != os.path.join(
            manager.directory, f"{CHECKPOINT_PREFIX}-{total_steps}"):
        manager.save(checkpoint_number=total_steps)
    metrics = evaluate(model, config, backend)
    report.log_eval(total_steps, metrics, periodic=False)
    return {**metrics, "train_history": report.history, "eval_history": report.evals,
            "start_step": report.progress.start, "weight_checksums": checksums}


def _synced(model, backend):
    """``model`` after every worker took rank 0's non-trainable variables (BatchNorm moving statistics).

    Workers average gradients, so their trainable weights agree, but each one's moving statistics come
    from its own batches. Evaluating with rank 0's everywhere makes every eval (periodic and final) score
    the model that rank 0 checkpoints and exports.
    """
    backend.broadcast(model.non_trainable_variables)
    return model


def check_replicas_consistent(model, backend) -> list[list[float]]:
    """Every worker's (sum, sum of squares) of its trainable and of its non-trainable weights; raises if
    any worker differs.

    Data-parallel workers must hold bit-identical weights (the non-trainable ones once :func:`_synced`).
    A broken setup trains without error while the workers silently diverge: with Keras 3 objects (not
    tf_keras), Horovod 0.28.1's ``horovod.tensorflow.keras.DistributedOptimizer`` with ``model.fit``
    raises nothing and never averages the gradients (measured here, TF 2.16); this check turns that into
    a failure.
    """
    sums = []
    for variables in (model.trainable_variables, model.non_trainable_variables):
        sums += [float(sum(tf.reduce_sum(tf.cast(v, tf.float64)) for v in variables)),
                 float(sum(tf.reduce_sum(tf.square(tf.cast(v, tf.float64))) for v in variables))]
    rows = backend.gather(sums)
    if any(row != rows[0] for row in rows):
        raise RuntimeError(f"data-parallel workers hold different weights after training: {rows}")
    return rows


def _log_eval(metrics: dict, step: int, writer) -> None:
    if writer is None:
        return
    log.info("eval at step %d: top1 %.4f top5 %.4f loss %.4f (%d images)", step, metrics["top1"], metrics["top5"],
             metrics["loss"], metrics["count"])
    with writer.as_default(step=step):
        for key in ("loss", "top1", "top5"):
            tf.summary.scalar(f"eval/{key}", metrics[key])
    writer.flush()


def _write_metrics(config: TrainConfig, metrics: dict, name: str) -> None:
    write_json(os.path.join(config.model_dir, name), {**metrics, "model": config.model})


def export(config: TrainConfig, model) -> str:
    """Exports ``model`` with the serving signatures to ``config.export_dir``: served in
    ``config.serving_dtype``, its training weights kept in float32."""
    from hrnet_tfx.serving.export import export_saved_model

    if config.dtype_policy != "float32":  # float32 layers: the training weights are exported in float32
        clone = build_model(config.model, num_classes=config.num_classes, image_size=config.image_size)
        clone.set_weights(model.get_weights())
        model = clone
    path = export_saved_model(model, config.export_dir, label_strings(config), image_size=config.image_size,
                              label_map_path=config.label_map or None, serving_dtype=config.serving_dtype)
    log.info("exported SavedModel to %s", path)
    return path
