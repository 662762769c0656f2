"""The training configuration: the official HRNet ImageNet recipe by default, every field overridable.

Layers: defaults (the official recipe) -> a YAML/JSON file -> ``key=value`` overrides; unknown keys are
an error that names them, and the resolved config is written beside the outputs (``train_config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping, Sequence

from hrnet_tfx.models.config import ConfigError, read_config_file

SCHEDULES = ("step", "cosine")
BACKENDS = ("auto", "horovod", "tf_distribute")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training or evaluation run needs (HRNET.md: the official recipe).

    Model: ``model`` is a registered variant or a network config file; ``init_from`` starts from
    official PyTorch weights (.pth/.safetensors; the classifier is skipped when the class count differs),
    a SavedModel directory or a TF checkpoint.

    Data: ``train_files``/``eval_files`` are glob patterns (comma-separated for several) of TFRecord shards
    written by ``hrnet-tfx data convert`` or in the inception/TF-slim layout; ``label_map`` is the
    ``labels.tsv`` written beside them (label strings for the exported model); ``label_offset`` 1 reads
    inception records (1-based labels) as they are.

    Budget: ``epochs`` of ``num_train_examples`` (0: counted from the files), or ``train_steps`` when > 0.

    Optimisation (official): SGD, Nesterov momentum 0.9, lr ``base_lr`` per ``base_batch`` images scaled
    linearly with ``global_batch_size``, weight decay 1e-4 on every parameter (added to each gradient, as
    PyTorch's SGD does), lr x``lr_decay_rate`` at ``lr_decay_epochs``. ``warmup_epochs`` (linear warm-up,
    Goyal et al. 2017) defaults to 5 when the global batch exceeds 256, else 0.
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
    global_batch_size: int = 128
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
            (self.num_classes >= 1, "num_classes must be >= 1"),
            (self.image_size > 0 and self.image_size % 32 == 0, "image_size must be a positive multiple of 32"),
            (self.global_batch_size >= 1, "global_batch_size must be >= 1"),
            (self.epochs > 0 or self.train_steps > 0, "set epochs > 0 or train_steps > 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}"),
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}"),
            (0.0 <= self.label_smoothing < 1.0, "label_smoothing must be in [0, 1)"),
            (self.base_lr > 0 and self.base_batch > 0, "base_lr and base_batch must be > 0"),
            (self.checkpoint_every_steps >= 1 and self.log_every_steps >= 1, "checkpoint/log intervals must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"training config: {message}")

    # -- derived values --------------------------------------------------------------------------
    @property
    def peak_lr(self) -> float:
        """``base_lr`` scaled linearly with the global batch (Goyal et al.)."""
        return self.base_lr * self.global_batch_size / self.base_batch

    @property
    def resolved_warmup_epochs(self) -> float:
        if self.warmup_epochs >= 0:
            return self.warmup_epochs
        return 5.0 if self.global_batch_size > 256 else 0.0

    def steps_per_epoch(self, num_train_examples: int) -> int:
        return max(1, num_train_examples // self.global_batch_size)

    def total_steps(self, num_train_examples: int) -> int:
        if self.train_steps > 0:
            return self.train_steps
        return max(1, math.ceil(self.epochs * self.steps_per_epoch(num_train_examples)))

    # -- layers: dict / file / overrides ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["lr_decay_epochs"] = list(self.lr_decay_epochs)
        return data

    def replace(self, **changes) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(f"training config: unknown key(s) {unknown}")
        converted = {}
        for key, value in data.items():
            converted[key] = coerce_field(key, value, fields[key].type)
        return cls(**converted)

    @classmethod
    def from_file(cls, path: str, overrides: Sequence[str] = ()) -> "TrainConfig":
        """Defaults <- the YAML/JSON file at ``path`` (may be empty) <- ``key=value`` overrides."""
        data = read_config_file(path, "training config") if path else {}
        return cls.from_dict({**data, **parse_overrides(overrides)})

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["epochs=2", "model=hrnet_w32"]`` -> dict; values are parsed as YAML scalars/lists."""
    import yaml

    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value")
        out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return out


def coerce_field(key: str, value: Any, annotation: str, where: str = "training config") -> Any:
    """Checks/converts one value against the field's annotation (a string under postponed evaluation);
    other annotations pass through. ``where`` starts the error message."""
    kind = str(annotation)
    try:
        if kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind == "int":
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind == "float":
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind == "str":
            return "" if value is None else str(value)
        if kind.startswith("tuple"):
            if isinstance(value, (int, float)):
                value = [value]
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a valid {kind}") from None
    return value
