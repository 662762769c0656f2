"""Starts the training workers on this machine: N Horovod processes through ``horovodrun`` (Gloo; see
:mod:`hrnet_tfx.training.horovodrun`), or the loop in this process for one worker.

Multi-node jobs use the same entry point under any outside launcher (``mpirun``, ``horovodrun -H``, a
Kubeflow MPIJob): every process runs ``python -m hrnet_tfx.training.worker --config FILE``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import hrnet_tfx  # noqa: F401
from hrnet_tfx.training.config import TrainConfig

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """One worker per visible GPU; 1 on a machine without GPUs."""
    import tensorflow as tf

    return max(1, len(tf.config.list_physical_devices("GPU")))


def worker_command(config_path: str, eval_only: bool = False, allow_changed_config: bool = False) -> list[str]:
    """The per-process command an outside launcher (mpirun, an MPIJob) runs."""
    cmd = [sys.executable, "-m", "hrnet_tfx.training.worker", "--config", config_path]
    return cmd + (["--eval-only"] if eval_only else []) + (["--allow-changed-config"] if allow_changed_config else [])


class WorkersFailedError(RuntimeError):
    """The training worker processes exited with an error; each printed its own reason."""

    def __init__(self, returncode: int, command: list[str]):
        super().__init__(f"training workers failed with exit code {returncode} (their errors are in the output "
                         f"above; command: {' '.join(command)})")
        self.returncode = returncode


def prepare(config: TrainConfig, workers: int, eval_only: bool = False,
            allow_changed_config: bool = False) -> TrainConfig:
    """The config the workers get, checked before any of them starts: both batch numbers resolved for
    ``workers``, the training examples counted once (when ``num_train_examples`` is 0), the settings
    compared with a resumed run's, and ``init_from`` read once (:func:`~hrnet_tfx.training.loop.
    check_init_source`) when it would be read in other processes (more than one worker) or must be
    checked against ``num_classes`` (eval-only)."""
    from hrnet_tfx.data.counting import count_records
    from hrnet_tfx.training.loop import check_init_source, check_resume, data_files, validate

    validate(config, workers, eval_only)
    config = config.for_workers(workers)
    if not eval_only and not config.num_train_examples:
        files = data_files(config.train_files, "train_files")
        log.info("counting the training examples in %d file(s) (set num_train_examples to skip)", len(files))
        config = config.replace(num_train_examples=count_records(files))
    check_resume(config, eval_only, allow_changed_config)
    if eval_only or workers > 1:  # one in-process worker reads it anyway, with the same errors
        check_init_source(config, eval_only)
    return config


def launch(config: TrainConfig, num_workers: int | None = None, eval_only: bool = False,
           allow_changed_config: bool = False) -> dict:
    """Checks and resolves the config (:func:`prepare`), runs ``num_workers`` workers (default:
    :func:`default_num_workers`) and returns rank 0's final metrics (top1, top5, loss, count, ...).
    Raises :class:`WorkersFailedError` when Horovod workers fail.

    ``allow_changed_config``: resume although the model, data, batch or schedule differ from the run
    that wrote the checkpoints (otherwise a :class:`~hrnet_tfx.models.ConfigError` names each difference).
    """
    import tensorflow as tf

    from hrnet_tfx.training.distribute import horovod_available
    from hrnet_tfx.training.loop import EVAL_METRICS_FILE, METRICS_FILE, log_batch, run

    workers = num_workers or default_num_workers()
    config = prepare(config, workers, eval_only, allow_changed_config)  # fail before any worker starts
    if workers == 1:
        return run(config, eval_only, allow_changed_config)
    if not horovod_available():
        log.warning("Horovod is not installed: %d workers requested, training in one process with "
                    "tf.distribute.MirroredStrategy over this machine's devices instead", workers)
        return run(config.replace(backend="tf_distribute"), eval_only, allow_changed_config)
    if not eval_only:
        log_batch(config, workers)
    config_path = os.path.join(config.model_dir, "launch_config.json")
    config.save(config_path)
    cmd = [sys.executable, "-m", "hrnet_tfx.training.horovodrun", "-np", str(workers), "-H", f"localhost:{workers}",
           "--gloo"]
    cmd += worker_command(config_path, eval_only, allow_changed_config)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1"}
    log.info("launching: %s", " ".join(cmd))
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise WorkersFailedError(result.returncode, cmd)
    with tf.io.gfile.GFile(os.path.join(config.model_dir, EVAL_METRICS_FILE if eval_only else METRICS_FILE)) as f:
        return json.load(f)
