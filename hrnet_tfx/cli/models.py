"""``hrnet-tfx models ...``: list variants, summarise one, import official PyTorch weights."""

from __future__ import annotations

import json
import os

import click

NAME_HELP = "a registered variant (hrnet-tfx models list) or a network config file (.yaml/.json)"


@click.group()
def models() -> None:
    """The HRNet-C model family."""


@models.command("list")
def list_cmd() -> None:
    """Print the registered variants."""
    from hrnet_tfx.models.registry import list_models

    for name in list_models():
        click.echo(name)


@models.command(help="Parameters, multiply-adds, official GFLOPs and layer counts of NAME (" + NAME_HELP + ").")
@click.argument("name")
@click.option("--image-size", default=224, show_default=True, help="Input height and width.")
@click.option("--num-classes", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def summary(name: str, image_size: int, num_classes: int, as_json: bool) -> None:
    from hrnet_tfx.models import ConfigError, model_summary

    try:
        info = model_summary(name, image_size=image_size, num_classes=num_classes)
    except (ConfigError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"{info['name']} at {image_size}x{image_size}, {num_classes} classes")
    click.echo(f"  trainable parameters       {info['trainable_params']:>15,}")
    click.echo(f"  non-trainable (BN stats)   {info['non_trainable_params']:>15,}")
    click.echo(f"  multiply-adds              {info['macs']:>15,}")
    click.echo(f"  GFLOPs (official counter)  {info['gflops_official']:>15.2f}")
    click.echo(f"  layers                     {info['num_layers']:>15,}")
    for kind, count in info["layers"].items():
        click.echo(f"    {kind:<24} {count:>15,}")


CHECKPOINT_PREFIX = "ckpt"
MODEL_INFO_FILE = "hrnet_model.json"


@models.command("import-weights")
@click.argument("name")
@click.argument("weights")
@click.option("--output", "-o", required=True,
              help="Directory to write (must not exist or be empty; local or a bucket).")
@click.option("--labels", "labels_path", default=None,
              help="Label map (labels.tsv: index<TAB>id<TAB>name, as 'hrnet-tfx data convert' writes) for the "
                   "exported model's class names [default: class_<i>].")
@click.option("--num-classes", type=click.IntRange(min=1), default=None,
              help="Classifier size [default: the classifier's in WEIGHTS].")
@click.option("--image-size", default=224, show_default=True, type=click.IntRange(min=32),
              help="Input height and width of the serving signatures.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["savedmodel", "checkpoint"]),
    default="savedmodel",
    show_default=True,
    help="savedmodel: the serving SavedModel the Trainer exports (serve it, evaluate or fine-tune from it "
    "with train --init-from); checkpoint: a TF checkpoint of the model (train --init-from, or "
    "tf.train.Checkpoint(model=model).restore).",
)
@click.option("--serving-dtype", type=click.Choice(["float32", "bfloat16"]), default="float32", show_default=True,
              help="savedmodel: compute dtype of the served graph (BatchNorm folded into the convolutions; "
              "bfloat16 pays off only where its convolutions are fast: 1.78x float32 on an AMD EPYC Zen 4, "
              "0.65-0.70x on an Intel Xeon without AMX; see the README's Performance section). The training "
              "weights are kept in float32 beside it, for fine-tuning.")
def import_weights(name: str, weights: str, output: str, labels_path: str | None, num_classes: int | None,
                   image_size: int, fmt: str, serving_dtype: str) -> None:
    """Import official/timm PyTorch WEIGHTS (.pth or .safetensors) into NAME and write it to --output.

    NAME is a registered variant or a network config file. The output is what the rest of hrnet-tfx reads:
    'hrnet-tfx train --model NAME --init-from OUTPUT' fine-tunes or (--eval-only) evaluates it (a different
    class count re-initialises only the classifier), and the savedmodel format is also a model version that
    'hrnet-tfx serve' serves (write it as BASE/MODEL_NAME/1).
    """
    import tensorflow as tf

    from hrnet_tfx.models import ConfigError, WeightImportError, build_model, load_pytorch_weights, read_state_dict

    try:
        _check_output(output)
        state = read_state_dict(weights)
        num_classes = _num_classes(state, num_classes, weights)
        labels = _labels(labels_path, num_classes, weights)
        model = build_model(name, num_classes=num_classes, image_size=image_size)
        count = load_pytorch_weights(model, state)
        if fmt == "savedmodel":
            from hrnet_tfx.serving.export import export_saved_model

            export_saved_model(model, output, labels, image_size=image_size, label_map_path=labels_path,
                               serving_dtype=serving_dtype)
        else:
            _write_checkpoint(model, output, {"model": name, "num_classes": num_classes, "image_size": image_size,
                                              "labels": labels, "weights": weights})
    except (ConfigError, WeightImportError, ValueError, FileExistsError) as e:
        raise click.ClickException(str(e)) from None
    except tf.errors.OpError as e:
        raise click.ClickException(f"cannot write {output}: {e.message}") from None
    what = "the serving SavedModel" if fmt == "savedmodel" else "a TF checkpoint"
    click.echo(f"imported {count} tensors from {weights} into {name} ({num_classes} classes"
               f"{', labels from ' + labels_path if labels_path else ''}); wrote {what} to {output}")
    click.echo(f"  fine-tune: hrnet-tfx train --model {name} --init-from {output} --data DATA --model-dir DIR")
    click.echo(f"  evaluate:  hrnet-tfx train --model {name} --init-from {output} --data DATA --model-dir DIR "
               "--eval-only")
    if fmt == "savedmodel":
        click.echo("  serve:     write it as BASE/MODEL_NAME/VERSION (e.g. --output serving/hrnet/1), then "
                   "hrnet-tfx serve BASE")


def _check_output(output: str) -> None:
    """Refuses a non-empty --output, or one no file system here can write; removes an empty one (the export
    publishes a new directory)."""
    import tensorflow as tf

    from hrnet_tfx.fs import unreadable_scheme

    problem = unreadable_scheme(output)
    if problem:
        raise click.ClickException(f"--output {output}: {problem}")

    if tf.io.gfile.exists(output):
        if not tf.io.gfile.isdir(output) or tf.io.gfile.listdir(output):
            raise click.ClickException(f"output directory is not empty: {output}")
        tf.io.gfile.rmtree(output)


def _num_classes(state: dict, requested: int | None, weights: str) -> int:
    classifier = state.get("classifier.weight")
    found = int(classifier.shape[0]) if classifier is not None else None
    if requested is not None and found is not None and requested != found:
        raise click.ClickException(
            f"--num-classes {requested}, but the classifier in {weights} has {found} classes. Import them as "
            f"they are, then fine-tune on your classes: hrnet-tfx train --init-from OUTPUT -s num_classes="
            f"{requested} ... re-initialises only the classifier")
    if requested is None and found is None:
        raise click.ClickException(f"{weights} has no classifier.weight: pass --num-classes")
    return requested or found


def _labels(path: str | None, num_classes: int, weights: str) -> list[str]:
    """The class names the export carries (the Trainer's rule: the label map's names, else class_<i>)."""
    from hrnet_tfx.data.labels import DataError, read_label_map
    from hrnet_tfx.training.config import TrainConfig
    from hrnet_tfx.training.loop import label_strings

    if path:
        try:
            count = len(read_label_map(path))
        except DataError as e:
            raise click.ClickException(f"--labels: {e}") from None
        if count != num_classes:
            raise click.ClickException(f"--labels {path} has {count} classes, but the classifier in {weights} has "
                                       f"{num_classes}")
    return label_strings(TrainConfig(num_classes=num_classes, label_map=path or ""))


def _write_checkpoint(model, output: str, info: dict) -> None:
    """A ``tf.train.Checkpoint(model=model)`` in ``output`` (what ``train --init-from`` restores), with
    ``hrnet_model.json``; staged beside ``output`` and published complete (the ``checkpoint`` index last)."""
    import uuid

    import tensorflow as tf

    from hrnet_tfx.fs import copy_tree, join, parent_dir, remove_tree, renames_atomically

    staging = join(parent_dir(output), f".import-{os.path.basename(output.rstrip('/'))}-{uuid.uuid4().hex[:12]}")
    try:
        tf.io.gfile.makedirs(staging)
        tf.train.CheckpointManager(tf.train.Checkpoint(model=model), staging, max_to_keep=1,
                                   checkpoint_name=CHECKPOINT_PREFIX).save()
        with tf.io.gfile.GFile(f"{staging}/{MODEL_INFO_FILE}", "w") as f:
            f.write(json.dumps(info, indent=2) + "\n")
        if renames_atomically(output):
            tf.io.gfile.rename(staging, output, overwrite=False)
        else:
            copy_tree(staging, output, last=("checkpoint",))  # latest_checkpoint() sees nothing before the end
            remove_tree(staging)
    except BaseException:
        if tf.io.gfile.exists(staging):
            remove_tree(staging)
        raise
