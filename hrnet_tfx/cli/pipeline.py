"""``hrnet-tfx pipeline ...``: run the TFX pipeline without the tfx CLI."""

from __future__ import annotations

import click


@click.group()
def pipeline() -> None:
    """The end-to-end TFX pipeline (ExampleGen -> Trainer -> Evaluator -> Pusher)."""


@pipeline.command("presets")
def presets_cmd() -> None:
    """List the named presets."""
    from hrnet_tfx.pipeline.config import PRESETS

    for name in PRESETS:
        click.echo(name)


@pipeline.command()
@click.option("--preset", default="", help="Starting point (hrnet-tfx pipeline presets).")
@click.option("--config", "config_file", default="", help="Pipeline YAML (local or a bucket).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. -s train.epochs=2 -s push=false.")
@click.option("--dry-run", is_flag=True,
              help="Print the resolved config (every setting, absolute paths), check the inputs and exit.")
def run(preset: str, config_file: str, overrides: tuple, dry_run: bool) -> None:
    """Run the pipeline with TFX's LocalDagRunner; reruns reuse TFX's cache.

    The config and the inputs are checked before anything runs; the run ends with a summary (metrics,
    report, pushed version, TensorBoard command), and its resolved config is saved as
    ROOT/pipeline_config.json.
    """
    import json

    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.pipeline.config import load_config
    from hrnet_tfx.training.config import FROM_DATA

    try:
        config = load_config(preset, config_file, overrides)
        if dry_run:
            from hrnet_tfx.pipeline.local_runner import resolve

            resolved = resolve(config)
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if dry_run:
        click.echo(json.dumps(resolved.to_dict(), indent=2, sort_keys=True))
        counted = [f"train.{key}" for key in FROM_DATA if not getattr(resolved.train, key)]
        if counted:
            click.echo(f"({' and '.join(counted)}: counted from the converted data at run time)", err=True)
        try:
            resolved.check_inputs()  # after printing: a preset's config is worth seeing without its data
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        return
    from hrnet_tfx.pipeline.local_runner import run as run_local
    from hrnet_tfx.pipeline.local_runner import user_errors

    try:
        run_local(config)
    except user_errors() as e:
        raise click.ClickException(str(e)) from None


@pipeline.command("compile-kubeflow")
@click.option("--preset", default="", help="Starting point (hrnet-tfx pipeline presets).")
@click.option("--config", "config_file", default="", help="Pipeline YAML (local or a bucket).")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field, e.g. -s kubeflow.image=REGISTRY/hrnet-tfx:0.1.0 -s kubeflow.trainer_gpus=8.")
@click.option("--output", "-o", default="pipeline.yaml", show_default=True, help="KFP v2 pipeline spec (.yaml).")
def compile_kubeflow(preset: str, config_file: str, overrides: tuple, output: str) -> None:
    """Compile the same pipeline for Kubeflow Pipelines (KFP v2 spec with the Trainer's GPUs)."""
    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.pipeline.config import load_config
    from hrnet_tfx.pipeline.kubeflow_runner import compile_pipeline

    try:
        config = load_config(preset, config_file, overrides)
        compile_pipeline(config, output)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    kfp = config.kubeflow
    click.echo(f"wrote {output}: pipeline {config.name}, image {kfp.image}, trainer {kfp.trainer_gpus} x "
               f"{kfp.gpu_type}; upload it in the KFP UI or with kfp.Client().upload_pipeline")
