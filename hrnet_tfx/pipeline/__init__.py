"""Pipeline assembly: ``create_pipeline(config)`` wires the DAG; runners differ only in the runner.

``load_config(preset, path, overrides)`` builds the one :class:`PipelineConfig`; ``local_runner`` runs
it with TFX's LocalDagRunner (also as the tfx CLI's ``--pipeline_path``).
"""

from hrnet_tfx.pipeline.config import PRESETS, PipelineConfig, load_config

__all__ = ["PRESETS", "PipelineConfig", "load_config"]
