"""The pipeline configuration: one frozen object from named presets -> a YAML file -> overrides.

``preset`` names a starting point (the official recipe per variant on ImageNet, or the tiny ``demo``);
a YAML file overrides any field (nested ``train:`` holds :class:`~hrnet_tfx.training.TrainConfig`
fields); ``key=value`` overrides come last (``train.epochs=2``, ``push=false``). Unknown keys are errors
naming them. The resolved config is saved beside the pipeline outputs (``pipeline_config.json``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

from hrnet_tfx.models.config import ConfigError, read_config_file
from hrnet_tfx.models.registry import list_models
from hrnet_tfx.training.config import TrainConfig, parse_overrides


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything ``create_pipeline`` needs.

    Data: ``input_base`` and ``layout`` feed ImageExampleGen (raw ImageNet, image folders, or inception
    TFRecords imported without re-encoding). Training: ``train`` (TrainConfig fields) and
    ``num_workers`` (Horovod processes; 0 = one per visible GPU). Evaluation: lower bounds on top-1/top-5
    and the largest top-1 drop allowed against the latest blessed model. Push: ``serving_base`` is TF
    Serving's model base path, versions appear under ``serving_base/model_name/``.
    """

    name: str = "hrnet-tfx"
    root: str = "outputs/pipeline"
    metadata_path: str = ""
    input_base: str = ""
    layout: str = "auto"
    train_shards: int = 1024
    eval_shards: int = 128
    compression: str = "none"
    max_bad_fraction: float = 0.001
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    num_workers: int = 0
    evaluate: bool = True
    top1_lower_bound: float = 0.0
    top5_lower_bound: float = 0.0
    max_top1_drop: float = 0.0
    push: bool = True
    serving_base: str = "outputs/serving"
    model_name: str = "hrnet"
    beam_args: tuple[str, ...] = ()
    enable_cache: bool = True

    def __post_init__(self):
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        object.__setattr__(self, "train", dict(self.train))
        self.train_config()  # unknown or bad training keys fail now
        if not self.input_base:
            raise ConfigError("pipeline config: input_base (the dataset directory) is not set")
        for key in ("name", "root", "model_name"):
            if not getattr(self, key):
                raise ConfigError(f"pipeline config: {key} must not be empty")

    def train_config(self) -> TrainConfig:
        try:
            return TrainConfig.from_dict(self.train)
        except ConfigError as e:
            raise ConfigError(f"pipeline config, train: {e}") from None

    @property
    def metadata(self) -> str:
        return self.metadata_path or os.path.join(self.root, "metadata.sqlite")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["beam_args"] = list(self.beam_args)
        return data

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)


_OFFICIAL_TRAIN = {"image_size": 224, "global_batch_size": 128, "epochs": 100}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "name": "hrnet-tfx-demo",
        "input_base": "outputs/sample",
        "train_shards": 4,
        "eval_shards": 2,
        "train": {"model": "tiny.yaml", "image_size": 64, "global_batch_size": 8, "train_steps": 60,
                  "base_lr": 1.6, "lr_decay_epochs": [4.0], "log_every_steps": 10,
                  "checkpoint_every_steps": 20},
        "num_workers": 1,
        "top1_lower_bound": 0.5,
        "max_top1_drop": 0.05,
    },
}
for _name in list_models():
    PRESETS[f"imagenet_{_name}"] = {
        "name": f"{_name}-imagenet",
        "input_base": "/data/ILSVRC2012",
        "train": {"model": _name, **_OFFICIAL_TRAIN},
        "top1_lower_bound": 0.70,
        "top5_lower_bound": 0.89,
        "max_top1_drop": 0.002,
    }
del _name


def _merge(base: dict, update: Mapping[str, Any]) -> dict:
    out = dict(base)
    for key, value in update.items():
        if key == "train" and isinstance(value, Mapping):
            out["train"] = {**out.get("train", {}), **value}
        else:
            out[key] = value
    return out


def load_config(preset: str = "", path: str = "", overrides: Sequence[str] = ()) -> PipelineConfig:
    """Preset (or the file's ``preset:`` key) <- the YAML file at ``path`` <- ``key=value`` overrides."""
    data = read_config_file(path, "pipeline config") if path else {}
    preset = preset or data.pop("preset", "")
    data.pop("preset", None)
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    merged = _merge(PRESETS.get(preset, {}), data)
    for key, value in parse_overrides(overrides).items():
        if key.startswith("train."):
            merged = _merge(merged, {"train": {key[len("train."):]: value}})
        else:
            merged[key] = value
    fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = sorted(set(merged) - fields)
    if unknown:
        raise ConfigError(f"pipeline config: unknown key(s) {unknown}")
    return PipelineConfig(**merged)
