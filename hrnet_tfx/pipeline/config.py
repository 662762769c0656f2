"""The pipeline configuration: one frozen object from named presets -> a YAML file -> overrides.

``preset`` names a starting point (the official recipe per variant on ImageNet, or the tiny ``demo``);
a YAML file overrides any field (nested ``train:`` holds :class:`~hrnet_tfx.training.TrainConfig`
fields, nested ``kubeflow:`` holds :class:`KubeflowConfig` fields); ``key=value`` overrides come last
(``train.epochs=2``, ``kubeflow.trainer_gpus=8``, ``push=false``). Unknown keys and values of the wrong
type are errors naming them. The resolved config is saved beside the pipeline outputs
(``pipeline_config.json``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from hrnet_tfx import config_io
from hrnet_tfx.config_io import ConfigError, did_you_mean, unknown_keys_error
from hrnet_tfx.data.options import DEFAULT_LAYOUT, ConvertOptions
from hrnet_tfx.fs import is_uri
from hrnet_tfx.models.registry import get_config, list_models
from hrnet_tfx.training.config import TrainConfig

_CONVERT = ConvertOptions()  # the conversion defaults, owned by hrnet_tfx.data.options
_SECTIONS = ("train", "kubeflow")  # nested mappings, overridden key by key


@dataclasses.dataclass(frozen=True)
class KubeflowConfig:
    """How the pipeline runs on Kubeflow Pipelines (see :mod:`hrnet_tfx.pipeline.kubeflow_runner`).

    ``image`` is the container image built from the repository's Dockerfile (every step runs in it).
    The Trainer step asks for ``trainer_gpus`` GPUs of resource ``gpu_type`` (Horovod starts one
    process per GPU), ``trainer_cpu`` cores and ``trainer_memory_gb`` GB (0: not set), and lands on nodes
    matching ``trainer_node_selector`` whose taints ``trainer_tolerations`` tolerate (Kubernetes
    toleration objects: key, operator, value, effect).
    """

    image: str = ""
    trainer_gpus: int = 0
    gpu_type: str = "nvidia.com/gpu"
    trainer_cpu: float = 0.0
    trainer_memory_gb: float = 0.0
    trainer_node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    trainer_tolerations: tuple[Mapping[str, Any], ...] = ()

    def __post_init__(self):
        if self.trainer_gpus < 0 or self.trainer_cpu < 0 or self.trainer_memory_gb < 0:
            raise ConfigError("kubeflow: trainer_gpus, trainer_cpu and trainer_memory_gb must be >= 0")
        if self.trainer_gpus and not self.gpu_type:
            raise ConfigError("kubeflow: gpu_type must be set when trainer_gpus > 0")
        if not isinstance(self.trainer_node_selector, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.trainer_node_selector.items()):
            raise ConfigError("kubeflow: trainer_node_selector must map label names to string values, "
                              f"got {self.trainer_node_selector!r}")
        tolerations = self.trainer_tolerations
        if isinstance(tolerations, Mapping) or not all(isinstance(t, Mapping) for t in tolerations):
            raise ConfigError(f"kubeflow: trainer_tolerations must be a list of mappings, got {tolerations!r}")
        for t in tolerations:
            unknown = sorted(set(t) - _TOLERATION_KEYS)
            if unknown:
                raise ConfigError(f"kubeflow: toleration {dict(t)} has unknown key(s) {unknown}; "
                                  f"known: {sorted(_TOLERATION_KEYS)}")
        object.__setattr__(self, "trainer_node_selector", dict(self.trainer_node_selector))
        object.__setattr__(self, "trainer_tolerations", tuple(dict(t) for t in tolerations))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "KubeflowConfig":
        return config_io.from_dict(cls, data, "kubeflow")


_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}


def _refuse_unknown_sections(data: Mapping[str, Any], fields: Sequence[str]) -> None:
    """A dotted override of a section that does not exist (``trian.epochs``) gets the section's suggestion
    besides the usual unknown-keys error."""
    for key in sorted(set(data) - set(fields)):
        section, dot, _ = key.partition(".")
        if dot and section not in _SECTIONS:
            error = unknown_keys_error("pipeline config", sorted(set(data) - set(fields)), fields)
            raise ConfigError(f"{error}. {key!r}: {section!r} is not a section{did_you_mean(section, _SECTIONS)}; "
                              f"sections: {', '.join(_SECTIONS)}")


TRAINER_FILLS = ("train_files", "eval_files", "label_map", "model_dir", "export_dir")
"""TrainConfig fields the HorovodTrainer takes from its artifacts (its ``_FROM_ARTIFACTS``): refused in ``train``."""

FROM_DATA = ("num_classes", "num_train_examples")
"""TrainConfig fields the HorovodTrainer counts from ImageExampleGen's manifest unless ``train`` sets them."""


def resolve_path(path: str) -> str:
    """An absolute local path, or a URI (``gs://``, ``s3://``, ``ram://`` ...) as it is."""
    return path if is_uri(path) else os.path.abspath(path)


def _require(path: str, key: str, *, directory: bool, hint: str) -> None:
    import tensorflow as tf

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
    """Everything ``create_pipeline`` needs.

    Data: ``input_base`` and ``layout`` feed ImageExampleGen (raw ImageNet, image folders, or inception
    TFRecords imported without re-encoding). Training: ``train`` (TrainConfig fields) and
    ``num_workers`` (Horovod processes; 0 = one per visible GPU). Evaluation: lower bounds on top-1/top-5
    and the largest top-1 drop allowed against the latest blessed model. Push: ``serving_base`` is TF
    Serving's model base path, versions appear under ``serving_base/model_name/``.

    Beam (ExampleGen and Evaluator): ``beam_runner`` (empty: Beam's in-process FnApiRunner;
    ``DataflowRunner``, ``FlinkRunner``, ``SparkRunner``, ...), ``beam_workers`` (0: the runner's
    default) and any further ``beam_args``. ``kubeflow`` (a :class:`KubeflowConfig`) configures Kubeflow
    Pipelines runs.

    ``train`` stays a mapping of TrainConfig fields (checked through :meth:`train_config`), not a
    TrainConfig: a key it leaves out (``num_classes``, ``num_train_examples``) is counted from the
    converted data, which a TrainConfig, holding a value for every field, could not say.
    """

    name: str = "hrnet-tfx"
    root: str = "outputs/pipeline"
    metadata_path: str = ""
    input_base: str = ""
    layout: str = DEFAULT_LAYOUT
    train_shards: int = _CONVERT.train_shards
    eval_shards: int = _CONVERT.eval_shards
    compression: str = _CONVERT.compression
    max_bad_fraction: float = _CONVERT.max_bad_fraction
    train: Mapping[str, Any] = dataclasses.field(default_factory=dict)
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
            raise ConfigError(f"pipeline config: beam_args must be a list of strings, got {self.beam_args!r}")
        object.__setattr__(self, "beam_args", tuple(self.beam_args))
        if not isinstance(self.train, Mapping):
            raise ConfigError(f"pipeline config: train must be a mapping, got {self.train!r}")
        object.__setattr__(self, "train", dict(self.train))
        if not isinstance(self.kubeflow, KubeflowConfig):
            object.__setattr__(self, "kubeflow", KubeflowConfig.from_dict(self.kubeflow))
        filled = sorted(set(self.train) & set(TRAINER_FILLS))
        if filled:
            raise ConfigError(f"pipeline config: train.{filled[0]} is set by the pipeline from ImageExampleGen's "
                              f"output and the Trainer's artifacts (so are {', '.join(TRAINER_FILLS)}); remove it")
        train = self.train_config()  # unknown or bad training keys fail here too
        if train.label_offset:
            raise ConfigError(
                f"pipeline config: train.label_offset={self.train['label_offset']} but ImageExampleGen writes "
                "0-based labels (it shifts inception's 1-based ones itself); remove it")
        try:
            get_config(train.model)
        except ConfigError as e:
            raise ConfigError(f"pipeline config, train.model: {e}") from None
        # Every setting spelled out (what is printed and saved is what runs), except what the data decides.
        object.__setattr__(self, "train", {k: v for k, v in train.to_dict().items()
                                           if k not in TRAINER_FILLS and (k not in FROM_DATA or k in self.train)})
        if self.beam_workers < 0:
            raise ConfigError("pipeline config: beam_workers must be >= 0")
        self.beam_pipeline_args()  # an unsupported runner/workers combination fails now
        if not self.input_base:
            raise ConfigError("pipeline config: input_base (the dataset directory) is not set")
        for key in ("name", "root", "model_name"):
            if not getattr(self, key):
                raise ConfigError(f"pipeline config: {key} must not be empty")

    def train_config(self) -> TrainConfig:
        """The Trainer's settings (without the paths and counts it takes from its input artifacts)."""
        fields = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in TRAINER_FILLS]
        unknown = sorted(set(self.train) - set(fields))
        if unknown:
            raise unknown_keys_error("pipeline config, train", unknown, fields)
        try:
            return TrainConfig.from_dict(self.train)
        except ConfigError as e:
            raise ConfigError(f"pipeline config, train: {e}") from None

    def local_paths(self) -> "PipelineConfig":
        """This config as a local run (LocalDagRunner) uses it: local paths made absolute (``root``,
        ``input_base``, ``serving_base``, ``metadata_path``, which gets its default ``ROOT/metadata.sqlite``,
        a network config file in ``train.model`` and ``train.init_from``). Bucket URIs stay as they are."""
        train = dict(self.train)
        if not is_uri(train["model"]) and os.path.isfile(train["model"]):  # else packaged or registered
            train["model"] = os.path.abspath(train["model"])
        if train["init_from"]:
            train["init_from"] = resolve_path(train["init_from"])
        return dataclasses.replace(self, root=resolve_path(self.root), input_base=resolve_path(self.input_base),
                                   serving_base=resolve_path(self.serving_base),
                                   metadata_path=resolve_path(self.metadata), train=train)

    def for_local_run(self) -> "PipelineConfig":
        """:meth:`local_paths`, after :meth:`check_inputs`: raises :class:`ConfigError` naming a missing input
        before any work starts."""
        local = self.local_paths()
        local.check_inputs()
        return local

    def check_inputs(self) -> None:
        """Raises :class:`ConfigError` unless ``input_base`` is a directory and ``train.init_from`` (when
        set) exists; bucket paths are checked with ``tf.io.gfile``."""
        _require(self.input_base, "input_base", directory=True,
                 hint="the dataset: ImageNet as extracted, train/ and val/ image folders, or inception TFRecords; "
                      "'hrnet-tfx data make-sample DIR' makes a small one")
        if self.train["init_from"]:
            _require(self.train["init_from"], "train.init_from", directory=False,
                     hint="PyTorch weights (.pth/.safetensors), a SavedModel directory or a TF checkpoint")

    def beam_pipeline_args(self, setup_file: str = "") -> list[str]:
        """Beam options for ExampleGen and Evaluator: runner, worker count, then ``beam_args``.

        Without a runner anywhere, Beam's in-process FnApiRunner (the DirectRunner's engine). A
        ``setup_file`` is added for runners that start their own workers (not needed when the package is
        installed where the components run, as in the container image).
        """
        args = [f"--runner={self.beam_runner}"] if self.beam_runner else []
        runner = self.runner
        if self.beam_workers:
            flags = _BEAM_WORKER_FLAGS.get(runner)
            if flags is None:
                raise ConfigError(
                    f"pipeline config: beam_workers is not mapped for runner {runner!r} (known: "
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
        """The local pipeline's ML Metadata sqlite file: ``metadata_path``, else ``ROOT/metadata.sqlite``.

        sqlite needs a local file: with ``root`` on a bucket, ``metadata_path`` must name a local path.
        """
        path = self.metadata_path or os.path.join(self.root, "metadata.sqlite")
        if is_uri(path):
            raise ConfigError(f"pipeline config: metadata_path {path!r} is not a local path (ML Metadata's sqlite "
                              "file must be local); with root on a bucket, set metadata_path to a local file")
        return path

    def to_dict(self) -> dict[str, Any]:
        return config_io.to_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "PipelineConfig":
        """Builds the config from a mapping (``train`` and ``kubeflow`` nested); unknown keys and values of the
        wrong type raise :class:`ConfigError` naming them."""
        if isinstance(data, Mapping):
            _refuse_unknown_sections(data, [f.name for f in dataclasses.fields(cls)])
        return config_io.from_dict(cls, data, "pipeline config")

    def save(self, path: str) -> None:
        """Writes the resolved config as JSON to ``path`` (local or a bucket URI such as ``ROOT/...``),
        whole or not at all: written beside it, then renamed over it."""
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
        "train_shards": 4,
        "eval_shards": 2,
        "train": {"model": "tiny.yaml", "image_size": 64, "per_worker_batch_size": 8, "train_steps": 60,
                  "base_lr": 1.6, "lr_decay_epochs": [4.0], "log_every_steps": 10,
                  "checkpoint_every_steps": 20},
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
    merged = config_io.merge(PRESETS.get(preset, {}), data, _SECTIONS)
    merged = config_io.merge(merged, config_io.nest_dotted(config_io.parse_overrides(overrides), _SECTIONS), _SECTIONS)
    return PipelineConfig.from_dict(merged)
