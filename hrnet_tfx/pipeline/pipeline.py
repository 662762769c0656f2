"""``create_pipeline(config)``: the DAG and nothing else.

ImageExampleGen (convert raw images, or import inception TFRecords) -> HorovodTrainer -> Resolver
(latest blessed model) -> Evaluator (TFMA, top-1/top-5 blessing) -> Pusher (TF Serving model base).
Optional stages are switched by config flags (``evaluate``, ``push``), never by editing code.
"""

from __future__ import annotations

import dataclasses
import os

from tfx import v1 as tfx

from hrnet_tfx.components.image_example_gen import ImageExampleGen
from hrnet_tfx.components.trainer import HorovodTrainer
from hrnet_tfx.pipeline.config import PipelineConfig, resolve_path


def create_pipeline(config: PipelineConfig, local: bool = True) -> tfx.dsl.Pipeline:
    """The hrnet-tfx pipeline for ``config`` (see :mod:`hrnet_tfx.pipeline.config`).

    ``local`` (LocalDagRunner): ML Metadata in sqlite at ``config.metadata``, and Beam gets this
    checkout's setup.py. ``local=False`` (Kubeflow): the orchestrator keeps the metadata, and every
    step runs in the container image, which has the package installed.
    """
    example_gen = ImageExampleGen(resolve_path(config.input_base), layout=config.layout,
                                  fingerprint=config.fingerprint, **dataclasses.asdict(config.convert))
    trainer = HorovodTrainer(example_gen.outputs["examples"], train_config=config.to_dict()["train"],
                             num_workers=config.num_workers or None)
    components = [example_gen, trainer]
    examples, model = example_gen.outputs["examples"], trainer.outputs["model"]
    blessing = None
    if config.evaluate:
        from hrnet_tfx.components.evaluator import eval_config, make_evaluator
        from hrnet_tfx.components.report import EvaluationReport

        resolver, evaluator = make_evaluator(examples, model, eval_config(
            top1_lower_bound=config.top1_lower_bound, top5_lower_bound=config.top5_lower_bound,
            max_top1_drop=config.max_top1_drop))
        blessing = evaluator.outputs["blessing"]
        report = EvaluationReport(evaluator.outputs["evaluation"], model_blessing=blessing, examples=examples,
                                  model=model)
        components += [c for c in (resolver, evaluator, report) if c is not None]
    if config.push:
        from hrnet_tfx.components.pusher import HRNetPusher

        components.append(HRNetPusher(model, resolve_path(config.serving_base), config.model_name,
                                      model_blessing=blessing, examples=examples))
    return tfx.dsl.Pipeline(
        pipeline_name=config.name,
        pipeline_root=resolve_path(config.root),
        components=components,
        enable_cache=config.enable_cache,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            resolve_path(config.metadata)) if local else None,
        beam_pipeline_args=config.beam_pipeline_args(_setup_file(config, local)),
    )


IMAGE_SETUP_FILE = "/opt/hrnet-tfx/setup.py"
"""Where the container image (``Dockerfile``: ``WORKDIR /opt/hrnet-tfx``, ``COPY setup.py``) has setup.py."""


def _setup_file(config: PipelineConfig, local: bool) -> str:
    """The ``--setup_file`` Beam gets: this checkout's locally; on Kubeflow the image's one, for runners whose
    workers must install the package (the steps themselves run in the image, which has it installed)."""
    if local:
        return source_setup_file()
    return IMAGE_SETUP_FILE if config.runner_has_own_workers else ""


def source_setup_file() -> str:
    """This checkout's setup.py ('' for an installed package): given to Beam so that TFX does not build
    an sdist of the package for every Beam component."""
    setup = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "setup.py")
    return setup if os.path.exists(setup) else ""
