"""``hrnet-tfx train``: the seed's train.py abilities outside TFX (network, data, resume, eval-only,
workers), on the same library the HorovodTrainer component runs."""

from __future__ import annotations

import json
import os
import threading

import click

DATA_READ_TIMEOUT_S = 60.0
"""How long reading ``--data``'s layout and manifest may take. A reachable bucket answers in about a second;
when nothing answers (a network that drops the packets), TensorFlow's GCS client waits 61 s per attempt
and retries 10 times (measured: three attempts took 200 s), so without a bound the command would hang
for over 10 minutes before failing."""
BUCKET_ACCESS = ("this machine needs network access to the bucket and credentials for it (gs://: set "
                 "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run 'gcloud auth "
                 "application-default login')")


def resolve_config(config_file: str | None, data_dir: str | None, overrides=(), unreadable_hint: str = "",
                   **fields):
    """The training config as ``hrnet-tfx train`` layers it: the official recipe <- ``config_file`` <-
    ``data_dir``'s settings (:func:`hrnet_tfx.data.training_data.training_data_settings`) <- non-empty
    ``fields`` (model, model_dir, ...) <- ``key=value`` overrides. Raises ``ConfigError``, or
    ``click.ClickException`` for unusable or unreadable data (naming ``data_dir``, what to do about a
    bucket, then ``unreadable_hint``)."""
    from hrnet_tfx.config_io import parse_overrides
    from hrnet_tfx.training.config import TrainConfig

    base = TrainConfig.from_file(config_file or "").to_dict()
    if data_dir:
        base.update(read_data_settings(data_dir, unreadable_hint))
    base.update({key: value for key, value in fields.items() if value})
    return TrainConfig.from_dict({**base, **parse_overrides(overrides)})


def read_data_settings(data_dir: str, unreadable_hint: str = "") -> dict:
    """``training_data_settings(data_dir)``, or a ``click.ClickException`` naming ``data_dir`` when it is not
    training data, cannot be read (a bucket without credentials or network, an unknown file system), or
    does not answer within :data:`DATA_READ_TIMEOUT_S`."""
    import tensorflow as tf

    from hrnet_tfx.data.layout import IncompleteOutputError
    from hrnet_tfx.data.training_data import NotTrainingDataError, training_data_settings

    outcome: dict = {}

    def read():
        try:
            outcome["settings"] = training_data_settings(data_dir)
        except Exception as e:  # noqa: BLE001 - handed to the calling thread below
            outcome["error"] = e

    # A daemon thread: a read that never returns is left behind when the command exits.
    reader = threading.Thread(target=read, name="read --data", daemon=True)
    reader.start()
    reader.join(DATA_READ_TIMEOUT_S)
    if reader.is_alive():
        raise _unreadable(data_dir, f"no answer within {DATA_READ_TIMEOUT_S:.0f} s", unreadable_hint)
    error = outcome.get("error")
    if isinstance(error, (NotTrainingDataError, IncompleteOutputError)):
        raise click.ClickException(str(error))
    if isinstance(error, tf.errors.UnimplementedError):  # no such file system: credentials would not help
        raise _unreadable(data_dir, error.message, unreadable_hint, bucket=False)
    if isinstance(error, tf.errors.OpError):
        raise _unreadable(data_dir, error.message, unreadable_hint)
    if error is not None:
        raise error
    return outcome["settings"]


def _unreadable(data_dir: str, reason: str, hint: str, bucket: bool = True) -> click.ClickException:
    """One message: the path, why (on one line), what a bucket needs, then ``hint``."""
    from hrnet_tfx.data.storage import is_local

    advice = [f"To read {data_dir} {BUCKET_ACCESS}."] if bucket and not is_local(data_dir) else []
    return click.ClickException(" ".join([f"cannot read --data {data_dir}: {' '.join(reason.split())}.", *advice,
                                          *filter(None, [hint])]))


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
    from hrnet_tfx.training.launcher import WorkersFailedError
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
    except WorkersFailedError as e:
        raise click.ClickException(f"training workers failed with exit code {e.returncode}; their errors are "
                                   "in the output above") from None
    summary = {k: metrics[k] for k in ("top1", "top5", "loss", "count", "step") if k in metrics}
    click.echo(json.dumps(summary))
