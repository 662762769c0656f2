"""``hrnet-tfx train``: the seed's train.py abilities outside TFX (network, data, resume, eval-only,
workers), on the same library the HorovodTrainer component runs."""

from __future__ import annotations

import json
import os

import click


def resolve_config(config_file: str | None, data_dir: str | None, overrides=(), **fields):
    """The training config as ``hrnet-tfx train`` layers it: the official recipe <- ``config_file`` <-
    ``data_dir``'s settings (:func:`hrnet_tfx.data.training_data.training_data_settings`) <- non-empty
    ``fields`` (model, model_dir, ...) <- ``key=value`` overrides. Raises ``ConfigError`` (or
    ``click.ClickException`` for unusable data)."""
    from hrnet_tfx.data.layout import IncompleteOutputError
    from hrnet_tfx.data.training_data import NotTrainingDataError, training_data_settings
    from hrnet_tfx.training.config import TrainConfig, parse_overrides

    base = TrainConfig.from_file(config_file or "").to_dict()
    if data_dir:
        try:
            base.update(training_data_settings(data_dir))
        except (NotTrainingDataError, IncompleteOutputError) as e:
            raise click.ClickException(str(e)) from None
    base.update({key: value for key, value in fields.items() if value})
    return TrainConfig.from_dict({**base, **parse_overrides(overrides)})


@click.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Training config (YAML/JSON).")
@click.option("--model", help="Registered variant or network config file (default hrnet_w18).")
@click.option("--data", "data_dir", type=click.Path(file_okay=False), help="Converted data or inception TFRecords.")
@click.option("--model-dir", help="Checkpoints, TensorBoard logs, metrics (required).")
@click.option("--export-dir", help="Write the serving SavedModel here at the end.")
@click.option("--init-from", help="Start from PyTorch weights (.pth/.safetensors), a SavedModel or a checkpoint.")
@click.option("--workers", type=int, default=None, help="Horovod workers on this machine [one per GPU, or 1].")
@click.option("--eval-only", is_flag=True, help="Evaluate the latest checkpoint (or --init-from) and exit.")
@click.option("--no-resume", is_flag=True, help="Refuse to start if --model-dir already has checkpoints.")
@click.option("--allow-changed-config", is_flag=True,
              help="Resume although model, data, batch or schedule differ from --model-dir's train_config.json.")
@click.option("--set", "-s", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Any training config field, e.g. -s epochs=90 -s per_worker_batch_size=64.")
def train(config_file, model, data_dir, model_dir, export_dir, init_from, workers, eval_only, no_resume,
          allow_changed_config, overrides):
    """Train (or evaluate) an HRNet with Horovod: resumes from --model-dir's latest checkpoint.

    Settings are layered: the official recipe <- --config FILE <- the options below <- --set KEY=VALUE.
    A resume must keep the saved model, data, batch and schedule (see --allow-changed-config).

    \b
    Example:
      hrnet-tfx train --model hrnet_w18 --data /data/imagenet-tfrecords --model-dir runs/w18 --workers 8
    """
    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.training import launch
    from hrnet_tfx.training.checkpoints import list_checkpoints
    from hrnet_tfx.training.loop import CHECKPOINT_SUBDIR

    try:
        config = resolve_config(config_file, data_dir, overrides, model=model, model_dir=model_dir,
                                export_dir=export_dir, init_from=init_from)
        if no_resume and list_checkpoints(os.path.join(config.model_dir, CHECKPOINT_SUBDIR)):
            raise ConfigError(f"{config.model_dir} already has checkpoints (drop --no-resume to resume)")
        metrics = launch(config, num_workers=workers, eval_only=eval_only, allow_changed_config=allow_changed_config)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    summary = {k: metrics[k] for k in ("top1", "top5", "loss", "count", "step") if k in metrics}
    click.echo(json.dumps(summary))
