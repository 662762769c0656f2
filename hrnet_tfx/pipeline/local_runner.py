"""Runs the pipeline with TFX's LocalDagRunner; usable as-is by the tfx CLI::

    HRNET_TFX_PRESET=demo tfx pipeline create --engine local --pipeline_path hrnet_tfx/pipeline/local_runner.py
    tfx run create --engine local --pipeline_name hrnet-tfx-demo

The config comes from the environment: ``HRNET_TFX_PRESET`` (a preset name), ``HRNET_TFX_CONFIG`` (a YAML
file) and ``HRNET_TFX_OVERRIDES`` (space-separated ``key=value``); ``hrnet-tfx pipeline run`` takes the
same as options.
"""

import logging
import os
import sys

import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from tfx import v1 as tfx

from hrnet_tfx.pipeline.config import load_config
from hrnet_tfx.pipeline.pipeline import create_pipeline


def config_from_env():
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


def run(config) -> None:
    _show_progress()
    config.save(os.path.join(config.root, "pipeline_config.json"))
    tfx.orchestration.LocalDagRunner().run(create_pipeline(config))


if __name__ == "__main__":
    run(config_from_env())
