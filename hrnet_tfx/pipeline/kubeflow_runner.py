"""Compiles the same pipeline for Kubeflow Pipelines (KFP v2) with TFX's KubeflowV2DagRunner::

    hrnet-tfx pipeline compile-kubeflow --preset imagenet_hrnet_w18 --config kfp.yaml -o hrnet_w18.yaml
    HRNET_TFX_PRESET=... HRNET_TFX_CONFIG=kfp.yaml python -m hrnet_tfx.pipeline.kubeflow_runner out.yaml

The output is a KFP v2 PipelineSpec YAML to upload to a KFP cluster (UI or ``kfp.Client``). Every step
runs in ``kubeflow.image`` (built from the repository's Dockerfile). The Trainer step carries its GPU,
CPU and memory request (TFX's ResourceSpec) and, when a node selector or tolerations are configured, a
second YAML document with the Kubernetes platform spec (what kfp-kubernetes writes) that places it.

Paths (``root``, ``input_base``, ``serving_base``) must be visible from the pods: bucket URIs
(``gs://``; see :data:`hrnet_tfx.fs.SHARED_SCHEMES`) or absolute paths on volumes mounted
into the image.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Any

import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

from hrnet_tfx.fs import is_uri, shared_uri_problem
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.pipeline.config import PipelineConfig
from hrnet_tfx.pipeline.pipeline import create_pipeline
from hrnet_tfx.yaml_io import write_yaml_documents

TRAINER_ID = "HorovodTrainer"

log = logging.getLogger(__name__)


def _check_paths(config: PipelineConfig) -> None:
    fields = ["root", "input_base"] + (["serving_base"] if config.push else [])
    for key in fields:
        value = getattr(config, key)
        problem = shared_uri_problem(value)
        if problem:
            raise ConfigError(f"kubeflow: {key}={value!r}: {problem}; use a gs:// URI or an absolute path on a "
                              "mounted volume")
        if not is_uri(value) and not os.path.isabs(value):
            raise ConfigError(
                f"kubeflow: {key}={value!r} is a relative local path, which the pipeline's pods cannot see; "
                "use a gs:// URI or an absolute path on a mounted volume")


def _trainer_resources(config: PipelineConfig):
    from kfp.pipeline_spec import pipeline_spec_pb2

    kfp = config.kubeflow
    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec
    resources = spec(cpu_limit=kfp.trainer_cpu, memory_limit=kfp.trainer_memory_gb)
    if kfp.trainer_gpus:
        resources.accelerator.type = kfp.gpu_type
        resources.accelerator.count = kfp.trainer_gpus
    return resources


def platform_spec(config: PipelineConfig, executor_label: str) -> dict[str, Any] | None:
    """The Kubernetes platform spec placing the Trainer (node selector, tolerations), or None."""
    kfp = config.kubeflow
    executor: dict[str, Any] = {}
    if kfp.trainer_node_selector:
        executor["nodeSelector"] = {"labels": dict(kfp.trainer_node_selector)}
    if kfp.trainer_tolerations:
        executor["tolerations"] = [dict(t) for t in kfp.trainer_tolerations]
    if not executor:
        return None
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {executor_label: executor}}}}}


def compile_pipeline(config: PipelineConfig, output: str) -> dict[str, Any]:
    """Writes the KFP v2 pipeline spec of ``create_pipeline(config)`` to ``output`` (YAML) and the
    resolved config beside it (``<output stem>.config.json``); returns the spec.

    The Trainer gets ``kubeflow.trainer_gpus`` GPUs (and CPU/memory) and, when ``num_workers`` is 0,
    starts one Horovod process per GPU it sees.
    """
    from tfx import v1 as tfx

    kfp = config.kubeflow
    if not kfp.image:
        raise ConfigError("kubeflow: image is not set (the container image built from the Dockerfile, "
                          "e.g. -s kubeflow.image=us-docker.pkg.dev/PROJECT/REPO/hrnet-tfx:0.1.0)")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,127}", config.name):
        raise ConfigError(f"kubeflow: name {config.name!r} must match [a-z0-9][a-z0-9-]{{0,127}} (KFP pipeline names)")
    _check_paths(config)
    if not output.endswith((".yaml", ".yml")):
        raise ConfigError(f"kubeflow: output {output!r} must end in .yaml (a KFP v2 PipelineSpec)")
    pipeline = create_pipeline(config, local=False)
    trainer = next(c for c in pipeline.components if c.id == TRAINER_ID)
    trainer.with_platform_config(_trainer_resources(config))
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=kfp.image),
        output_dir=os.path.dirname(os.path.abspath(output)), output_filename=os.path.basename(output))
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = config.root  # runs write under it unless given another root
    executor_label = spec["components"][TRAINER_ID]["executorLabel"]
    documents = [spec]
    platform = platform_spec(config, executor_label)
    if platform:
        documents.append(platform)
    write_yaml_documents(documents, output, header=f"# KFP v2 pipeline spec of {config.name}, compiled by "
                                                   f"hrnet-tfx with {spec.get('sdkVersion')}\n")
    config.save(os.path.splitext(output)[0] + ".config.json")  # the resolved config, beside the spec
    log.info("wrote %s (image %s, trainer: %d x %s)", output, kfp.image, kfp.trainer_gpus, kfp.gpu_type)
    return {"pipeline_spec": spec, "platform_spec": platform}


if __name__ == "__main__":
    from hrnet_tfx.pipeline.local_runner import config_from_env

    logging.basicConfig(level=logging.INFO)
    compile_pipeline(config_from_env(), sys.argv[1] if len(sys.argv) > 1 else "pipeline.yaml")
