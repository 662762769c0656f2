"""Data-parallel backends: Horovod (one process per GPU, any launcher) and tf.distribute (fallback).

The training loop talks to a backend only through this small interface, so the same step function
runs under ``horovodrun``/``mpirun``/a Kubeflow MPIJob (Horovod) or, when Horovod is not installed,
under ``tf.distribute.MirroredStrategy`` on one machine.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Callable

import hrnet_tfx  # noqa: F401
import tensorflow as tf

log = logging.getLogger(__name__)


def horovod_available() -> bool:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


class HorovodBackend:
    """One process per worker; gradients averaged with allreduce (Gloo on CPU, NCCL on GPU builds)."""

    name = "horovod"
    gradient_replicas = 1  # allreduce averages: each worker's loss is a mean over its own batch

    def __init__(self, fp16_allreduce: bool = False):
        import horovod.tensorflow as hvd

        hvd.init()
        self.hvd = hvd
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = gpus[hvd.local_rank() % len(gpus)]
            tf.config.experimental.set_memory_growth(gpu, True)
            tf.config.set_visible_devices(gpu, "GPU")
        self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
        self.compression = hvd.Compression.fp16 if fp16_allreduce else hvd.Compression.none

    def scope(self):
        return contextlib.nullcontext()

    def distribute(self, dataset: tf.data.Dataset):
        return dataset

    def wrap_tape(self, tape: tf.GradientTape):
        return self.hvd.DistributedGradientTape(tape, compression=self.compression)

    def broadcast(self, variables) -> None:
        """Rank 0's values (fresh init, restored checkpoint, BatchNorm statistics) to every worker."""
        self.hvd.broadcast_variables(variables, root_rank=0)

    def run(self, fn: Callable, *args):
        return fn(*args)

    def sum(self, values: dict) -> dict:
        """Sums a dict of scalars over workers (eager; same keys on every worker)."""
        keys = sorted(values)
        stacked = tf.stack([tf.cast(values[k], tf.float64) for k in keys])
        total = self.hvd.allreduce(stacked, op=self.hvd.Sum, name="metric_sum")
        return {k: float(v) for k, v in zip(keys, total.numpy())}

    def gather(self, values: list[float]) -> list[list[float]]:
        """Every worker's ``values`` (same length everywhere), in rank order."""
        rows = self.hvd.allgather(tf.constant([values], tf.float64), name="gather_values")
        return rows.numpy().tolist()

    @property
    def replicas(self) -> int:
        """Data-parallel workers (one per process): what the per-worker batch multiplies."""
        return self.size

    def describe(self) -> str:
        return f"Horovod {self.size} worker(s), rank {self.rank} (local {self.local_rank})"


class TFDistributeBackend:
    """Fallback without Horovod: MirroredStrategy over this machine's GPUs (or its CPU), one process."""

    name = "tf_distribute"
    rank, size, local_rank = 0, 1, 0

    def __init__(self):
        self.strategy = tf.distribute.MirroredStrategy()
        self.gradient_replicas = self.strategy.num_replicas_in_sync  # replica gradients are summed

    def scope(self):
        return self.strategy.scope()

    def distribute(self, dataset: tf.data.Dataset):
        return self.strategy.experimental_distribute_dataset(dataset)

    def wrap_tape(self, tape: tf.GradientTape):
        return tape

    def broadcast(self, variables) -> None:  # mirrored variables are already identical
        pass

    def run(self, fn: Callable, *args):
        per_replica = self.strategy.run(fn, args=args)
        return {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in per_replica.items()}

    def sum(self, values: dict) -> dict:
        return {k: float(v) for k, v in values.items()}

    def gather(self, values: list[float]) -> list[list[float]]:
        return [list(values)]

    @property
    def replicas(self) -> int:
        """Data-parallel workers (one per device): what the per-worker batch multiplies."""
        return self.gradient_replicas

    def describe(self) -> str:
        return f"tf.distribute.MirroredStrategy with {self.gradient_replicas} replica(s) (Horovod not used)"


def make_backend(kind: str = "auto", fp16_allreduce: bool = False):
    """``"horovod"``, ``"tf_distribute"`` or ``"auto"`` (Horovod when installed)."""
    if kind == "horovod" or (kind == "auto" and horovod_available()):
        if not horovod_available():
            raise RuntimeError("backend 'horovod' requested but horovod.tensorflow cannot be imported")
        return HorovodBackend(fp16_allreduce)
    if kind == "auto":
        log.warning("Horovod is not installed: training with tf.distribute.MirroredStrategy on this machine only")
    return TFDistributeBackend()
