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


@models.command()
@click.argument("name")
@click.option("--image-size", default=224, show_default=True, help="Input height and width.")
@click.option("--num-classes", default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def summary(name: str, image_size: int, num_classes: int, as_json: bool) -> None:
    """Parameters, multiply-adds, official GFLOPs and layer counts of NAME (""" + NAME_HELP + ")."""
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


@models.command("import-weights")
@click.argument("name")
@click.argument("weights", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--num-classes", default=1000, show_default=True)
@click.option("--image-size", default=224, show_default=True, help="Input size recorded in the SavedModel.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["savedmodel", "checkpoint"]),
    default="savedmodel",
    show_default=True,
    help="savedmodel: a Keras SavedModel (serving, eval, fine-tuning); checkpoint: TF weights "
    "(model.load_weights after build_model).",
)
def import_weights(name: str, weights: str, output: str, num_classes: int, image_size: int, fmt: str) -> None:
    """Import official/timm PyTorch WEIGHTS (.pth or .safetensors) into NAME and write it to --output."""
    from hrnet_tfx.models import ConfigError, WeightImportError, build_model, load_pytorch_weights

    if os.path.exists(output) and os.listdir(output):
        raise click.ClickException(f"output directory is not empty: {output}")
    try:
        model = build_model(name, num_classes=num_classes, image_size=image_size)
        count = load_pytorch_weights(model, weights)
    except (ConfigError, WeightImportError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    tmp = output.rstrip("/") + ".partial"
    if fmt == "savedmodel":
        model.save(tmp, save_format="tf", include_optimizer=False)
    else:
        os.makedirs(tmp, exist_ok=True)
        model.save_weights(os.path.join(tmp, "ckpt"))
    with open(os.path.join(tmp, "hrnet_model.json"), "w", encoding="utf-8") as f:
        json.dump({"model": name, "num_classes": num_classes, "image_size": image_size,
                   "weights": os.path.abspath(weights), "format": fmt}, f, indent=2)
    if os.path.exists(output):
        os.rmdir(output)
    os.replace(tmp, output)  # complete outputs only: nothing half-written appears at --output
    click.echo(f"imported {count} tensors from {weights} into {name}; wrote {fmt} to {output}")
