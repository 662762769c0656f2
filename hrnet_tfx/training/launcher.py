"""Starts the training workers on this machine: N Horovod processes through ``horovodrun`` (Gloo), or
the loop in this process for one worker.

Multi-node jobs use the same entry point under any outside launcher (``mpirun``, ``horovodrun -H``, a
Kubeflow MPIJob): every process runs ``python -m hrnet_tfx.training.worker --config FILE``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import hrnet_tfx  # noqa: F401
from hrnet_tfx.training.config import TrainConfig
from hrnet_tfx.training.distribute import horovod_available

log = logging.getLogger(__name__)


def default_num_workers() -> int:
    """One worker per visible GPU; 1 on a machine without GPUs."""
    import tensorflow as tf

    return max(1, len(tf.config.list_physical_devices("GPU")))


def worker_command(config_path: str, eval_only: bool = False) -> list[str]:
    """The per-process command an outside launcher (mpirun, an MPIJob) runs."""
    cmd = [sys.executable, "-m", "hrnet_tfx.training.worker", "--config", config_path]
    return cmd + (["--eval-only"] if eval_only else [])


def launch(config: TrainConfig, num_workers: int | None = None, eval_only: bool = False) -> dict:
    """Validates the config, runs ``num_workers`` workers (default: :func:`default_num_workers`) and
    returns rank 0's final metrics (top1, top5, loss, count)."""
    from hrnet_tfx.training.loop import METRICS_FILE, run, validate

    workers = num_workers or default_num_workers()
    validate(config, workers, eval_only)  # fail before any worker starts
    if workers == 1:
        return run(config, eval_only)
    if not horovod_available():
        log.warning("Horovod is not installed: %d workers requested, training in one process with "
                    "tf.distribute.MirroredStrategy over this machine's devices instead", workers)
        return run(config.replace(backend="tf_distribute"), eval_only)
    os.makedirs(config.model_dir, exist_ok=True)
    config_path = os.path.join(config.model_dir, "launch_config.json")
    config.save(config_path)
    horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    cmd = [horovodrun, "-np", str(workers), "-H", f"localhost:{workers}", "--gloo"] + worker_command(config_path, eval_only)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1"}
    log.info("launching: %s", " ".join(cmd))
    result = subprocess.run(cmd, env=env)
    if result.returncode:
        raise RuntimeError(f"training workers failed with exit code {result.returncode} (command: {' '.join(cmd)})")
    with open(os.path.join(config.model_dir, METRICS_FILE), encoding="utf-8") as f:
        return json.load(f)
