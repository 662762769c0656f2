"""``hrnet-tfx data ...``: convert ImageNet, image folders or inception TFRecords to sharded tf.Examples;
write a small synthetic sample dataset."""

from __future__ import annotations

import click

from hrnet_tfx.data.options import (COMPRESSIONS, DEFAULT_FINGERPRINT, DEFAULT_LAYOUT, FINGERPRINTS, LAYOUTS,
                                    VERIFY_MODES, ConvertOptions)

_DEFAULTS = ConvertOptions()
_MB = 2**20


@click.group()
def data() -> None:
    """Datasets: conversion to TFRecords and a synthetic sample."""


@data.command(name="convert")
@click.argument("input_dir", metavar="INPUT", type=click.Path(file_okay=False))
@click.argument("output_dir", metavar="OUTPUT", type=click.Path(file_okay=False))
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- BEAM_OPTIONS...]")
@click.option("--layout", type=click.Choice(LAYOUTS), default=DEFAULT_LAYOUT, show_default=True,
              help="Input layout (the layouts are described above); auto detects it.")
@click.option("--train-shards", type=click.IntRange(min=1), default=_DEFAULTS.train_shards, show_default=True)
@click.option("--eval-shards", type=click.IntRange(min=1), default=_DEFAULTS.eval_shards, show_default=True)
@click.option("--compression", type=click.Choice(COMPRESSIONS), default=_DEFAULTS.compression, show_default=True,
              help="JPEG bytes barely compress (GZIP saves <1%, costs CPU on every read), so none.")
@click.option("--max-bad-fraction", type=click.FloatRange(0, 1), default=_DEFAULTS.max_bad_fraction,
              show_default=True,
              help="Fail when a split has more unusable files than this (they are listed in bad_files.tsv).")
@click.option("--verify", type=click.Choice(VERIFY_MODES), default=_DEFAULTS.verify, show_default=True,
              help="markers: check JPEG header and end marker (fast); decode: decode every image.")
@click.option("--label-offset", type=int, default=_DEFAULTS.label_offset, show_default=True,
              help="tfrecords layout: subtracted from imported labels (inception's are 1-based).")
@click.option("--seed", default=_DEFAULTS.seed, show_default=True, help="Shuffle key.")
@click.option("--fingerprint", type=click.Choice(FINGERPRINTS), default=DEFAULT_FINGERPRINT, show_default=True,
              help="What decides that an unfinished run may be resumed: the names in every directory, "
                   "or also a stat of every file.")
@click.option("--max-image-mb", type=click.FloatRange(min=0, min_open=True),
              default=_DEFAULTS.max_image_bytes / _MB, show_default=True,
              help="Skip (and report) input files larger than this; also bounds imported TFRecord records.")
@click.option("--overwrite", is_flag=True,
              help="Replace a complete conversion of other input or options (kept until the new one is complete).")
def convert_cmd(input_dir: str, output_dir: str, beam_args: tuple[str, ...], layout: str, train_shards: int,
                eval_shards: int, compression: str, max_bad_fraction: float, verify: str, label_offset: int,
                seed: str, fingerprint: str, max_image_mb: float, overwrite: bool) -> None:
    """Convert INPUT into sharded tf.Example TFRecords in OUTPUT (OUTPUT/Split-train, OUTPUT/Split-eval,
    labels.tsv, bad_files.tsv, manifest.json). INPUT and OUTPUT may be local paths or bucket URLs
    (gs://bucket/ILSVRC2012).

    \b
    Layouts:
      imagenet     INPUT/train/<wnid>/*.JPEG and INPUT/val/ sorted into <wnid>/ folders, or flat with
                   LOC_val_solution.csv or the devkit's ground truth + meta.mat (Kaggle's
                   ILSVRC/Data/CLS-LOC/ nesting is found too)
      imagefolder  INPUT/train/<class>/... and INPUT/val/<class>/... (or validation/, eval/)
      tfrecords    INPUT/train-*-of-* and INPUT/validation-*-of-* (inception/TF-slim); records are kept
                   (their images checked), labels shifted by --label-offset

    Beam pipeline options follow a `--`, for example
    `hrnet-tfx data convert IN OUT -- --direct_num_workers=2 --direct_running_mode=multi_processing`.
    Without --runner, Beam's FnApiRunner (the DirectRunner's local engine) runs the job in this process.
    An interrupted run is resumed by running the same command again.
    """
    from hrnet_tfx.data.convert import check_output_dir, convert
    from hrnet_tfx.data.labels import DataError
    from hrnet_tfx.data.sources import discover

    try:
        options = ConvertOptions(train_shards=train_shards, eval_shards=eval_shards, compression=compression,
                                 max_bad_fraction=max_bad_fraction, verify=verify, label_offset=label_offset,
                                 seed=seed, max_image_bytes=int(max_image_mb * _MB))
        check_output_dir(output_dir)
        dataset = discover(input_dir, layout=layout, fingerprint=fingerprint)
        click.echo(_describe(dataset), err=True)
        result = convert(dataset, output_dir, options, beam_args=list(beam_args), overwrite=overwrite)
    except (DataError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if result.reused:
        click.echo(f"{output_dir} already holds this conversion; nothing to do")
    for split, info in result.manifest["splits"].items():
        click.echo(f"{split}: {info['num_examples']} examples in {info['num_shards']} shards "
                   f"({info['num_fixed']} re-encoded, {info['num_bad']} skipped)")
    click.echo(f"{result.manifest['num_classes']} classes; wrote {output_dir}")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _describe(dataset) -> str:
    """``imagenet layout: 1000 classes; train 1281167 images, eval 50000 images`` (imported TFRecords:
    the classes come from the records, and the splits are counted in files)."""
    classes = _count(len(dataset.classes), "class", "classes") if dataset.classes else "classes from the records"
    splits = ", ".join(f"{name} " + (_count(len(s.items), "image", "images") if s.kind == "images" else
                                     _count(len(s.files), "TFRecord file", "TFRecord files"))
                       for name, s in dataset.splits.items())
    return f"{dataset.layout} layout: {classes}; {splits}"


@data.command(name="make-sample")
@click.argument("output_dir", metavar="OUTPUT", type=click.Path(file_okay=False))
@click.option("--classes", "num_classes", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--train-per-class", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--val-per-class", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--image-size", type=click.IntRange(min=8), default=64, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--odd/--no-odd", default=True, show_default=True,
              help="Include fixable odd files (CMYK, PNG named .JPEG, grayscale, progressive).")
@click.option("--corrupt", is_flag=True,
              help="Add 3 unusable files (skipped by convert: raise --max-bad-fraction for them).")
def make_sample_cmd(output_dir: str, num_classes: int, train_per_class: int, val_per_class: int,
                    image_size: int, seed: int, odd: bool, corrupt: bool) -> None:
    """Write a small synthetic dataset in the ImageNet layout to OUTPUT (train/<wnid>/, flat val/ with
    LOC_val_solution.csv, LOC_synset_mapping.txt), with classes a tiny model can learn."""
    from hrnet_tfx.data.labels import DataError
    from hrnet_tfx.data.sample import make_sample

    try:
        info = make_sample(output_dir, num_classes=num_classes, train_per_class=train_per_class,
                           val_per_class=val_per_class, image_size=image_size, seed=seed, odd=odd,
                           corrupt=corrupt)
    except (DataError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"wrote {info['train_images']} train and {info['val_images']} val images of {num_classes} "
               f"classes to {output_dir} ({len(info['odd_files'])} odd, {len(info['corrupt_files'])} corrupt)")
