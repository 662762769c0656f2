"""Runs the pipeline with TFX's LocalDagRunner; usable as-is by the tfx CLI::

    HRNET_TFX_PRESET=demo tfx pipeline create --engine local --pipeline_path hrnet_tfx/pipeline/local_runner.py
    tfx run create --engine local --pipeline_name hrnet-tfx-demo

The config comes from the environment: ``HRNET_TFX_PRESET`` (a preset name), ``HRNET_TFX_CONFIG`` (a YAML
file) and ``HRNET_TFX_OVERRIDES`` (space-separated ``key=value``); ``hrnet-tfx pipeline run`` takes the
same as options. Inputs are checked before anything runs, and a run ends with a summary of where its
outputs are (:mod:`hrnet_tfx.pipeline.summary`).
"""

import logging
import os
import sys

from hrnet_tfx import quiet

quiet.install()  # before TensorFlow loads (also in `tfx run create`'s process, which runs this file)

from tfx import v1 as tfx  # noqa: E402

from hrnet_tfx.models.config import ConfigError  # noqa: E402
from hrnet_tfx.pipeline.config import PipelineConfig, load_config  # noqa: E402
from hrnet_tfx.pipeline.pipeline import create_pipeline  # noqa: E402
from hrnet_tfx.pipeline.summary import summarize  # noqa: E402

CONFIG_FILENAME = "pipeline_config.json"
"""The resolved config of the latest run, saved under the pipeline root."""


def config_from_env() -> PipelineConfig:
    return load_config(os.environ.get("HRNET_TFX_PRESET", ""), os.environ.get("HRNET_TFX_CONFIG", ""),
                       os.environ.get("HRNET_TFX_OVERRIDES", "").split())


def _show_progress() -> None:
    """hrnet-tfx's INFO lines (conversion and training progress with rates and ETA) on stderr, also
    under the tfx CLI, whose absl logging shows warnings only."""
    log = logging.getLogger("hrnet_tfx")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def resolve(config: PipelineConfig) -> PipelineConfig:
    """The config a local run uses (local paths absolute: :meth:`PipelineConfig.local_paths`) with its
    pipeline definition checked, without looking at the inputs; raises ``ConfigError`` (or a component's
    ``ValueError``) and writes nothing."""
    local = config.local_paths()
    create_pipeline(local, local=False)  # the components check their settings; local=True would create ROOT
    return local


def run(config: PipelineConfig) -> list[str]:
    """Runs the pipeline locally and returns the summary lines (printed to stdout when the pipeline really
    ran: under ``tfx pipeline create`` the CLI only records the pipeline)."""
    config = config.for_local_run()  # inputs checked before anything is written
    pipeline = create_pipeline(config)
    _show_progress()
    config.save(os.path.join(config.root, CONFIG_FILENAME))
    tfx.orchestration.LocalDagRunner().run(pipeline)
    if _definition_only():
        return []
    lines = [f"pipeline {config.name} finished; resolved config: {os.path.join(config.root, CONFIG_FILENAME)}"]
    lines += summarize(config.root, config.serving_base, config.metadata)
    print("\n".join(lines), flush=True)
    return lines


def _definition_only() -> bool:
    """Whether the tfx CLI ran this file to record the pipeline (``tfx pipeline create/update``: it patches
    ``LocalDagRunner.run`` with a wrapper that skips the run) rather than to run it."""
    return hasattr(tfx.orchestration.LocalDagRunner.run, "__wrapped__")


def user_errors() -> tuple[type[Exception], ...]:
    """What a run raises for a problem in its config or its data (one line for the user, no traceback): a
    config error, a dataset the converter cannot read, eval labels that are not the model's classes."""
    from hrnet_tfx.components.evaluator import LabelRangeError
    from hrnet_tfx.data.labels import DataError

    return ConfigError, DataError, LabelRangeError


if __name__ == "__main__":
    try:
        run(config_from_env())
    except user_errors() as e:
        sys.exit(f"hrnet-tfx pipeline: {e}")
