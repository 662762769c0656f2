"""HorovodTrainer: a TFX component that trains HRNet with Horovod workers and exports for serving.

Inputs: ``examples`` (an Examples artifact with ``train`` and ``eval`` splits, e.g. from
:class:`~hrnet_tfx.components.image_example_gen.ImageExampleGen`) and optionally ``base_model`` (a
Model to start from). Outputs: ``model`` (``Format-Serving/``: the SavedModel of
:mod:`hrnet_tfx.serving.export`, which TFMA and TF Serving load) and ``model_run`` (TensorBoard logs,
the resolved training config and the final metrics).

The executor calls the same library as ``hrnet-tfx train`` (:func:`hrnet_tfx.training.launch`): it
starts ``num_workers`` Horovod processes on the machine it runs on (default: one per visible GPU).
Checkpoints live in a directory keyed by the inputs and the config under the component's pipeline
directory, so re-running a failed execution resumes from its latest checkpoint instead of restarting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional

import hrnet_tfx  # noqa: F401
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, path_utils

from hrnet_tfx.data.training_data import training_data_settings
from hrnet_tfx.training import TrainConfig, launch
from hrnet_tfx.training.config import ARTIFACT_FIELDS, FROM_DATA
from hrnet_tfx.training.loop import CONFIG_FILE, METRICS_FILE, TENSORBOARD_SUBDIR

log = logging.getLogger(__name__)


class HorovodTrainerSpec(ComponentSpec):
    PARAMETERS = {
        "train_config": ExecutionParameter(type=str),
        "num_workers": ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        "examples": ChannelParameter(type=standard_artifacts.Examples),
        "base_model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_run": ChannelParameter(type=standard_artifacts.ModelRun),
    }


def resolve_config(train_config: Dict[str, Any], examples_uri: str, model_run_uri: str, model_uri: str,
                   base_model_uri: Optional[str] = None) -> TrainConfig:
    """The run's TrainConfig: the user's settings plus the data and output paths of this execution; a
    :data:`~hrnet_tfx.training.config.FROM_DATA` count left out or 0 comes from the examples' manifest."""
    clash = sorted(set(train_config) & set(ARTIFACT_FIELDS))
    if clash:
        raise ValueError(f"train_config must not set {clash}: the component takes them from its artifacts")
    # Checkpoints outlive a failed execution: same inputs and config -> same directory -> resume.
    key = hashlib.sha256(json.dumps([examples_uri, base_model_uri, train_config], sort_keys=True).encode())
    component_dir = os.path.dirname(os.path.dirname(model_run_uri.rstrip("/")))
    # Examples from another ExampleGen have no manifest: their records are counted by the launcher.
    data = training_data_settings(examples_uri, require_manifest=False)
    settings = {"label_map": "", **data, **{k: v for k, v in train_config.items() if v or k not in FROM_DATA}}
    settings["export_dir"] = path_utils.serving_model_dir(model_uri)
    if base_model_uri and "init_from" not in settings:
        settings["init_from"] = path_utils.serving_model_path(base_model_uri)
    settings["model_dir"] = os.path.join(component_dir, "checkpoints", key.hexdigest()[:16])
    return TrainConfig.from_dict(settings)


class Executor(base_executor.BaseExecutor):
    """Runs :func:`hrnet_tfx.training.launch` and publishes the model and the run's logs."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict["examples"])
        base = input_dict.get("base_model") or []
        model = artifact_utils.get_single_instance(output_dict["model"])
        model_run = artifact_utils.get_single_instance(output_dict["model_run"])
        config = resolve_config(json.loads(exec_properties["train_config"]), examples.uri, model_run.uri,
                                model.uri, base[0].uri if base else None)
        if tf.io.gfile.exists(config.export_dir):  # a retried execution re-exports
            tf.io.gfile.rmtree(config.export_dir)
        metrics = launch(config, num_workers=exec_properties.get("num_workers") or None)
        for name in (CONFIG_FILE, METRICS_FILE):
            tf.io.gfile.copy(os.path.join(config.model_dir, name), os.path.join(model_run.uri, name), overwrite=True)
        io_utils.copy_dir(os.path.join(config.model_dir, TENSORBOARD_SUBDIR), os.path.join(model_run.uri, TENSORBOARD_SUBDIR))
        with tf.io.gfile.GFile(os.path.join(model_run.uri, "checkpoint_dir.txt"), "w") as f:
            f.write(config.model_dir)
        for key in ("top1", "top5", "loss"):
            model.set_float_custom_property(f"eval_{key}", float(metrics[key]))
        log.info("trained %s: eval top1 %.4f top5 %.4f", config.model, metrics["top1"], metrics["top5"])


class HorovodTrainer(base_component.BaseComponent):
    """Trains an HRNet with Horovod on the machine it runs on (see the module docstring)."""

    SPEC_CLASS = HorovodTrainerSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, examples: types.BaseChannel, train_config: Dict[str, Any] | TrainConfig,
                 num_workers: Optional[int] = None, base_model: Optional[types.BaseChannel] = None):
        """Args:
          examples: Examples with ``train`` and ``eval`` splits.
          train_config: :class:`~hrnet_tfx.training.TrainConfig` fields (a dict or a TrainConfig) without
            the paths, which come from the artifacts; checked now, at pipeline definition.
          num_workers: Horovod processes on this machine; default one per visible GPU (1 without GPUs).
          base_model: a Model whose ``Format-Serving`` SavedModel initialises the weights.
        """
        if isinstance(train_config, TrainConfig):  # keep what differs from the defaults
            defaults = TrainConfig().to_dict()
            settings = {k: v for k, v in train_config.to_dict().items() if v != defaults[k]}
        else:
            settings = dict(train_config)
        TrainConfig.from_dict(settings)  # unknown keys and bad values fail here, at definition
        clash = sorted(set(settings) & set(ARTIFACT_FIELDS))
        if clash:
            raise ValueError(f"train_config must not set {clash}: the component takes them from its artifacts")
        spec = HorovodTrainerSpec(
            train_config=json.dumps(settings, sort_keys=True),
            num_workers=num_workers,
            examples=examples,
            base_model=base_model,
            model=types.Channel(type=standard_artifacts.Model),
            model_run=types.Channel(type=standard_artifacts.ModelRun),
        )
        super().__init__(spec=spec)
