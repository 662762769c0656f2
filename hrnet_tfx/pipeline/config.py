"""The pipeline configuration: one frozen :class:`PipelineConfig` from a named preset <- a YAML file <- ``key=value``
overrides (``train.epochs=2``, ``convert.verify=decode``, ``push=false``); saved as ``ROOT/pipeline_config.json``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from hrnet_tfx import config_io
from hrnet_tfx.config_io import ConfigError
from hrnet_tfx.data.options import DEFAULT_FINGERPRINT, DEFAULT_LAYOUT, FINGERPRINTS, LAYOUTS, ConvertOptions
from hrnet_tfx.fs import is_uri, unreadable_scheme
from hrnet_tfx.models.registry import get_config, list_models
from hrnet_tfx.training.config import ARTIFACT_FIELDS, FROM_DATA, TrainConfig

_TRAIN_FROM_DATA = dict.fromkeys(FROM_DATA, 0)  # what train: leaves out, the Trainer takes from the data
_TOLERATION_KEYS = ("key", "operator", "value", "effect", "tolerationSeconds")


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """How the pipeline runs on Kubeflow Pipelines (:mod:`hrnet_tfx.pipeline.kubeflow_runner`): the ``image``
    every step runs in, and the Trainer step's resources (0: not set) and placement (Kubernetes tolerations)."""

    image: str = ""
    trainer_gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    trainer_cpu: float = 0.0
    trainer_memory_gb: float = 0.0
    trainer_node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trainer_tolerations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        if self.trainer_gpus < 0 or self.trainer_cpu < 0 or self.trainer_memory_gb < 0:
            raise ValueError("trainer_gpus, trainer_cpu and trainer_memory_gb must be >= 0")
        if self.trainer_gpus and not self.gpu_type:
            raise ValueError("gpu_type must be set when trainer_gpus > 0")
        if not isinstance(self.trainer_node_selector, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.trainer_node_selector.items()):
            raise ValueError(f"trainer_node_selector must map label names to string values, "
                             f"got {self.trainer_node_selector!r}")
        tolerations = self.trainer_tolerations
        if isinstance(tolerations, Mapping) or not all(isinstance(t, Mapping) for t in tolerations):
            raise ValueError(f"trainer_tolerations must be a list of mappings, got {tolerations!r}")
        for t in tolerations:
            config_io.check_keys(t, _TOLERATION_KEYS, f"toleration {dict(t)}")
        object.__setattr__(self, "trainer_node_selector", dict(self.trainer_node_selector))
        object.__setattr__(self, "trainer_tolerations", tuple(dict(t) for t in tolerations))


def resolve_path(path: str) -> str:
    """An absolute local path, or a URI (``gs://``, ``ram://`` ...) as it is."""
    return path if is_uri(path) else os.path.abspath(path)


def _require(path: str, key: str, *, directory: bool, hint: str) -> None:
    import tensorflow as tf

    problem = unreadable_scheme(path)
    if problem:
        raise ConfigError(f"pipeline config: {key} {path}: {problem}")
    try:
        found = tf.io.gfile.isdir(path) if directory else (
            tf.io.gfile.exists(path) or bool(tf.io.gfile.glob(path + ".index")))
    except tf.errors.OpError as e:  # e.g. a bucket without credentials
        raise ConfigError(f"pipeline config: cannot read {key} {path}: {e.message}") from None
    if not found:
        what = "directory" if directory else "path"
        raise ConfigError(f"pipeline config: {key} {path} does not exist or is not a {what} ({hint})")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Everything ``create_pipeline`` needs; the README's configuration reference describes each field.

    ``convert`` (:class:`~hrnet_tfx.data.options.ConvertOptions`) and ``input_base``/``layout``/``fingerprint`` go
    to ImageExampleGen; ``train`` (a :class:`~hrnet_tfx.training.TrainConfig` without the paths the Trainer takes
    from its artifacts; ``num_classes``/``num_train_examples`` 0: from the converted data) to the HorovodTrainer;
    ``kubeflow`` (:class:`KubeflowConfig`) to Kubeflow Pipelines runs.
    """

    name: str = "hrnet-tfx"
    root: str = "outputs/pipeline"
    metadata_path: str = ""
    input_base: str = ""
    layout: str = DEFAULT_LAYOUT
    fingerprint: str = DEFAULT_FINGERPRINT
    convert: ConvertOptions = dataclasses.field(default_factory=ConvertOptions)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(**_TRAIN_FROM_DATA))
    num_workers: int = 0
    evaluate: bool = True
    top1_lower_bound: float = 0.0
    top5_lower_bound: float = 0.0
    max_top1_drop: float = 0.0
    push: bool = True
    serving_base: str = "outputs/serving"
    model_name: str = "hrnet"
    beam_runner: str = ""
    beam_workers: int = 0
    beam_args: tuple[str, ...] = ()
    enable_cache: bool = True
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)

    def __post_init__(self):
        if isinstance(self.beam_args, str) or not all(isinstance(a, str) for a in self.beam_args):
            raise ValueError(f"beam_args must be a list of strings, got {self.beam_args!r}")
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        filled = [key for key in ARTIFACT_FIELDS if getattr(self.train, key)]
        if filled:
            raise ValueError(f"train.{filled[0]} is set by the pipeline from ImageExampleGen's output and the "
                             f"Trainer's artifacts (so are {', '.join(ARTIFACT_FIELDS)}); remove it")
        if self.train.label_offset:
            raise ValueError(f"train.label_offset={self.train.label_offset} but ImageExampleGen writes 0-based labels "
                             "(it shifts inception's 1-based ones itself); remove it")
        try:
            get_config(self.train.model)
        except ConfigError as e:
            raise ValueError(f"train.model: {e}") from None
        for key, allowed in (("layout", LAYOUTS), ("fingerprint", FINGERPRINTS)):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} must be one of {allowed}, got {getattr(self, key)!r}")
        if self.beam_workers < 0:
            raise ValueError("beam_workers must be >= 0")
        self.beam_pipeline_args()  # an unsupported runner/workers combination fails now
        if not self.input_base:
            raise ValueError("input_base (the dataset directory) is not set")
        for key in ("name", "root", "model_name"):
            if not getattr(self, key):
                raise ValueError(f"{key} must not be empty")

    def local_paths(self) -> "PipelineConfig":
        """This config as a local run uses it: local paths (``root``, ``input_base``, ``serving_base``,
        ``metadata_path`` with its default, a network config file in ``train.model``, ``train.init_from``) made
        absolute; bucket URIs as they are."""
        model, init_from = self.train.model, self.train.init_from
        if not is_uri(model) and os.path.isfile(model):  # else packaged or registered
            model = os.path.abspath(model)
        train = self.train.replace(model=model, init_from=resolve_path(init_from) if init_from else "")
        return dataclasses.replace(self, root=resolve_path(self.root), input_base=resolve_path(self.input_base),
                                   serving_base=resolve_path(self.serving_base),
                                   metadata_path=resolve_path(self.metadata), train=train)

    def for_local_run(self) -> "PipelineConfig":
        """:meth:`local_paths`, after :meth:`check_inputs`: a missing input is a :class:`ConfigError` before any
        work starts."""
        local = self.local_paths()
        local.check_inputs()
        return local

    def check_inputs(self) -> None:
        """Raises :class:`ConfigError` unless ``input_base`` is a directory and ``train.init_from`` (when set)
        exists, and unless TensorFlow has a file system for ``root`` and ``serving_base`` (no ``s3://`` without
        tensorflow-io); bucket paths are checked with ``tf.io.gfile``."""
        for key in ("root",) + (("serving_base",) if self.push else ()):
            problem = unreadable_scheme(getattr(self, key))
            if problem:
                raise ConfigError(f"pipeline config: {key} {getattr(self, key)}: {problem}")
        _require(self.input_base, "input_base", directory=True,
                 hint="the dataset: ImageNet as extracted, train/ and val/ image folders, or inception TFRecords; "
                      "'hrnet-tfx data make-sample DIR' makes a small one")
        if self.train.init_from:
            _require(self.train.init_from, "train.init_from", directory=False,
                     hint="PyTorch weights (.pth/.safetensors), a SavedModel directory or a TF checkpoint")

    def beam_pipeline_args(self, setup_file: str = "") -> list[str]:
        """Beam options for ExampleGen and Evaluator: the runner (none given: Beam's in-process FnApiRunner), the
        worker count, ``beam_args``, then ``--setup_file`` when given and ``beam_args`` has none."""
        args = [f"--runner={self.beam_runner}"] if self.beam_runner else []
        runner = self.runner
        if self.beam_workers:
            flags = _BEAM_WORKER_FLAGS.get(runner)
            if flags is None:
                raise ValueError(
                    f"beam_workers is not mapped for runner {runner!r} (known: "
                    f"{', '.join(_BEAM_WORKER_FLAGS)}); pass that runner's own option in beam_args")
            args += [flag.format(n=self.beam_workers) for flag in flags]
        args += list(self.beam_args)
        if not any(a.startswith("--runner=") for a in args):
            args.insert(0, "--runner=FnApiRunner")
        if setup_file and not any(a.startswith("--setup_file=") for a in args):
            args.append(f"--setup_file={setup_file}")
        return args

    @property
    def runner(self) -> str:
        """The Beam runner ExampleGen and Evaluator use (``beam_runner``, else ``--runner`` in ``beam_args``)."""
        return self.beam_runner or next(
            (a.split("=", 1)[1] for a in self.beam_args if a.startswith("--runner=")), "FnApiRunner")

    @property
    def runner_has_own_workers(self) -> bool:
        """Whether Beam runs on workers of its own (Dataflow, Flink, Spark), which must install the package
        (``--setup_file``), rather than in the component's process."""
        return self.runner not in ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")

    @property
    def metadata(self) -> str:
        """The local pipeline's ML Metadata sqlite file (a local path): ``metadata_path``, else
        ``ROOT/metadata.sqlite``."""
        path = self.metadata_path or os.path.join(self.root, "metadata.sqlite")
        if is_uri(path):
            raise ConfigError(f"pipeline config: metadata_path {path!r} is not a local path (ML Metadata's sqlite "
                              "file must be local); with root on a bucket, set metadata_path to a local file")
        return path

    def to_dict(self) -> dict[str, Any]:
        """Every setting as plain data (what ``--dry-run`` prints and :meth:`save` writes), ``train`` without the
        fields the Trainer fills from its artifacts; :meth:`from_dict` builds an equal config from it."""
        data = config_io.to_dict(self)
        data["train"] = {k: v for k, v in data["train"].items() if k not in ARTIFACT_FIELDS}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineConfig":
        """Builds the config from a mapping (``train``, ``convert`` and ``kubeflow`` nested; ``train`` without
        ``num_classes``/``num_train_examples`` leaves them to the data); unknown keys and values of the wrong type
        raise :class:`ConfigError` naming them."""
        if isinstance(data, Mapping) and isinstance(data.get("train", {}), Mapping):
            data = {**data, "train": {**_TRAIN_FROM_DATA, **data.get("train", {})}}
        return config_io.from_dict(cls, data, "pipeline config")

    def save(self, path: str) -> None:
        """Writes :meth:`to_dict` as JSON to ``path`` (local or a bucket), whole or not at all."""
        config_io.write_json(path, self.to_dict())


_BEAM_WORKER_FLAGS = {
    "FnApiRunner": ("--direct_num_workers={n}", "--direct_running_mode=multi_processing"),
    "DirectRunner": ("--direct_num_workers={n}", "--direct_running_mode=multi_processing"),
    "DataflowRunner": ("--max_num_workers={n}",),
    "FlinkRunner": ("--parallelism={n}",),
}

_OFFICIAL_TRAIN = {"image_size": 224, "per_worker_batch_size": 32, "epochs": 100}  # 32 per GPU, lr scaled

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "name": "hrnet-tfx-demo",
        "input_base": "outputs/sample",
        "convert": {"train_shards": 4, "eval_shards": 2},
        "train": {"model": "tiny.yaml", "image_size": 64, "per_worker_batch_size": 8, "train_steps": 60,
                  "base_lr": 1.6, "lr_decay_epochs": [4.0], "log_every_steps": 10, "checkpoint_every_steps": 20},
        "num_workers": 1,
        "top1_lower_bound": 0.5,
        "max_top1_drop": 0.05,
    },
}
for _name in list_models():
    PRESETS[f"imagenet_{_name}"] = {
        "name": f"{_name.replace('_', '-')}-imagenet",  # KFP names: [a-z0-9][a-z0-9-]*
        "input_base": "/data/ILSVRC2012",
        "train": {"model": _name, **_OFFICIAL_TRAIN},
        "top1_lower_bound": 0.70,
        "top5_lower_bound": 0.89,
        "max_top1_drop": 0.002,
    }
del _name


def load_config(preset: str = "", path: str = "", overrides: Sequence[str] = ()) -> PipelineConfig:
    """Preset (or the file's ``preset:`` key) <- the YAML file at ``path`` <- ``key=value`` overrides."""
    data = config_io.read_config_file(path, "pipeline config") if path else {}
    preset = preset or data.pop("preset", "")
    data.pop("preset", None)
    if preset and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    sections = config_io.sections(PipelineConfig)
    merged = config_io.merge(PRESETS.get(preset, {}), data, sections)
    return PipelineConfig.from_dict(
        config_io.merge(merged, config_io.nest_dotted(config_io.parse_overrides(overrides), sections), sections))
