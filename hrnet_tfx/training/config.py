"""The training configuration (:class:`TrainConfig`): the official HRNet ImageNet recipe by default; defaults
<- a YAML/JSON file <- ``key=value`` overrides, saved beside the outputs as ``train_config.json``."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, Mapping, Sequence

from hrnet_tfx import config_io
from hrnet_tfx.config_io import ConfigError
from hrnet_tfx.models.config import INFERENCE_DTYPES

SCHEDULES = ("step", "cosine")
BACKENDS = ("auto", "horovod", "tf_distribute")
FROM_DATA = ("num_classes", "num_train_examples")
"""Fields whose 0 means "from the data": the HorovodTrainer takes them from its examples' manifest (without one,
the launcher counts ``num_train_examples``; ``hrnet-tfx train --data`` fills both unless set)."""
ARTIFACT_FIELDS = ("train_files", "eval_files", "label_map", "model_dir", "export_dir")
"""Fields the HorovodTrainer fills from its artifacts (a pipeline's ``train:`` may not set them)."""


def split_paths(value: str) -> list[str]:
    """The entries of a comma-separated path field (``train_files``, ``eval_files``...), stripped, empty ones
    dropped."""
    return [p.strip() for p in value.split(",") if p.strip()]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training or evaluation run needs; the defaults are the official recipe (the official
    HRNet-Image-Classification ``experiments/cls_hrnet_*.yaml`` and ``tools/train.py``; Wang et al., TPAMI 2020).

    ``model`` is a registered variant or a network config file; ``train_files``/``eval_files`` are TFRecord
    glob patterns (comma-separated for several); ``label_offset`` 1 reads inception's 1-based labels; 0 in a
    :data:`FROM_DATA` field: from the data. Exports compute in ``serving_dtype``, whatever ``dtype_policy`` trained.
    The global batch is ``per_worker_batch_size`` x workers unless ``global_batch_size`` fixes it
    (:meth:`for_workers` resolves both); the lr is ``base_lr`` per ``base_batch`` images, scaled linearly;
    ``warmup_epochs`` -1: 5 above a global batch of 256, else 0.
    """

    model: str = "hrnet_w18"
    num_classes: int = 1000
    image_size: int = 224
    train_files: str = ""
    eval_files: str = ""
    label_map: str = ""
    label_offset: int = 0
    model_dir: str = ""
    export_dir: str = ""
    init_from: str = ""
    per_worker_batch_size: int = 32
    global_batch_size: int = 0
    eval_batch_size: int = 0
    epochs: float = 100.0
    train_steps: int = 0
    num_train_examples: int = 0
    base_lr: float = 0.05
    base_batch: int = 128
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    schedule: str = "step"
    lr_decay_epochs: tuple[float, ...] = (30.0, 60.0, 90.0)
    lr_decay_rate: float = 0.1
    warmup_epochs: float = -1.0
    label_smoothing: float = 0.0
    dtype_policy: str = "float32"
    serving_dtype: str = "float32"
    jit_compile: bool = False
    fp16_allreduce: bool = False
    backend: str = "auto"
    checkpoint_every_steps: int = 1000
    keep_checkpoints: int = 3
    log_every_steps: int = 50
    eval_every_epochs: float = 0.0
    shuffle_buffer: int = 10_000
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        object.__setattr__(self, "lr_decay_epochs", tuple(float(e) for e in self.lr_decay_epochs))
        checks = [
            (self.num_classes >= 0, "num_classes must be >= 1 (or 0: from the data)"),
            (self.image_size > 0 and self.image_size % 32 == 0, "image_size must be a positive multiple of 32"),
            (self.per_worker_batch_size >= 1, "per_worker_batch_size must be >= 1"),
            (self.global_batch_size >= 0, "global_batch_size must be >= 0 (0: per_worker_batch_size x workers)"),
            (self.epochs > 0 or self.train_steps > 0, "set epochs > 0 or train_steps > 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}"),
            (self.serving_dtype in INFERENCE_DTYPES,
             f"serving_dtype must be one of {INFERENCE_DTYPES}, got {self.serving_dtype!r}"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.base_lr > 0 and self.base_batch > 0, "base_lr and base_batch must be > 0"),
            (self.checkpoint_every_steps >= 1 and self.log_every_steps >= 1, "checkpoint/log intervals must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    # -- derived values --------------------------------------------------------------------------
    def for_workers(self, workers: int) -> "TrainConfig":
        """This config with both batch numbers set for ``workers`` data-parallel workers: an explicit
        ``global_batch_size`` wins (it must divide by ``workers``), else the global batch is
        ``per_worker_batch_size * workers``. Idempotent for the same worker count."""
        if self.global_batch_size:
            if self.global_batch_size % workers:
                raise ConfigError(f"global_batch_size {self.global_batch_size} is not divisible by {workers} workers "
                                  "(or drop it: the global batch is then per_worker_batch_size x workers)")
            return self.replace(per_worker_batch_size=self.global_batch_size // workers)
        return self.replace(global_batch_size=self.per_worker_batch_size * workers)

    @property
    def batch(self) -> int:
        """The global batch; needs :meth:`for_workers` (or an explicit ``global_batch_size``)."""
        if not self.global_batch_size:
            raise ConfigError("training config: the global batch is not resolved yet (TrainConfig.for_workers)")
        return self.global_batch_size

    @property
    def peak_lr(self) -> float:
        """``base_lr`` scaled linearly with the global batch (Goyal et al.)."""
        return self.base_lr * self.batch / self.base_batch

    @property
    def resolved_warmup_epochs(self) -> float:
        if self.warmup_epochs >= 0:
            return self.warmup_epochs
        return 5.0 if self.batch > 256 else 0.0

    def steps_per_epoch(self, num_train_examples: int) -> int:
        return max(1, num_train_examples // self.batch)

    def total_steps(self, num_train_examples: int) -> int:
        if self.train_steps > 0:
            return self.train_steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch(num_train_examples)))

    # -- layers: dict / file / overrides ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return config_io.to_dict(self)

    def replace(self, **changes) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "training config") -> "TrainConfig":
        """Builds the config from a mapping of its fields; unknown keys and values of the wrong type raise
        :class:`ConfigError` naming them (``where`` starts the message)."""
        return config_io.from_dict(cls, data, where)

    @classmethod
    def from_file(cls, path: str, overrides: Sequence[str] = ()) -> "TrainConfig":
        """Defaults <- the YAML/JSON file at ``path`` (may be empty) <- ``key=value`` overrides."""
        data = config_io.read_config_file(path, "training config") if path else {}
        return cls.from_dict({**data, **config_io.parse_overrides(overrides)})

    def save(self, path: str) -> None:
        """Writes the config as JSON to ``path`` (any ``tf.io.gfile`` file system, atomically)."""
        config_io.write_json(path, self.to_dict())

    def changes_from(self, saved: Mapping[str, Any], keys: Iterable[str]) -> list[str]:
        """``"key: old -> new"`` for each of ``keys`` whose value in ``saved`` (a saved config's dict)
        differs from this config's; keys ``saved`` does not hold are skipped."""
        types = config_io.field_types(type(self))
        changes = []
        for key in keys:
            if key not in saved:
                continue
            try:
                old = config_io.coerce(key, saved[key], types[key], "training config")
            except ConfigError:
                old = saved[key]
            if old != getattr(self, key):
                changes.append(f"{key}: {_show(old)} -> {_show(getattr(self, key))}")
        return changes


# What a resumed run must share with the run that wrote its checkpoints (the rest may change freely:
# logging, checkpoint and eval intervals, where exports go, speed options and the data order).
MODEL_FIELDS = ("model", "num_classes", "image_size", "dtype_policy")
RESUME_FIELDS = MODEL_FIELDS + (
    "train_files", "eval_files", "label_map", "label_offset", "num_train_examples",  # data
    "per_worker_batch_size", "global_batch_size",  # batch
    "epochs", "train_steps", "base_lr", "base_batch", "momentum", "nesterov", "weight_decay", "schedule",
    "lr_decay_epochs", "lr_decay_rate", "warmup_epochs", "label_smoothing",  # schedule and loss
)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value) if isinstance(value, str) else json.dumps(value)
