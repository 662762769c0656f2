"""ImageExampleGen: a TFX ExampleGen for ImageNet, image folders and inception TFRecords.

It runs the same conversion as ``hrnet-tfx data convert`` (:func:`hrnet_tfx.data.convert.convert`) inside
the executor's Beam pipeline and publishes a standard ``Examples`` artifact:

* splits ``train`` and ``eval`` in ``Split-train/`` and ``Split-eval/`` (fixed shard counts, shuffled
  deterministically), ``split_names`` set;
* ``payload_format = FORMAT_TF_EXAMPLE``;
* ``file_format = 'tfrecords_gzip'``. That string is the only TFRecord file format TFX 1.16's readers
  accept (``tfxio_utils.make_tfxio`` rejects anything else), and it does not force GZIP: tfx_bsl's
  readers pick the compression per file from the name (``.gz`` -> GZIP, else none: Beam's
  ``ReadFromTFRecord`` with ``CompressionTypes.AUTO`` and ``dataset_util.detect_compression_type``).
  The stock ExampleGens also record it for their ``.gz`` files. Our shards are uncompressed by default
  (JPEG bytes do not compress) and GZIP shards end in ``.gz``, so both read correctly; the custom
  property ``compression`` says which it is.
* beside the splits in the artifact directory: ``labels.tsv`` (the label map that travels to serving),
  ``bad_files.tsv``, ``fixed_files.tsv`` and ``manifest.json`` (also as custom properties: ``num_classes``,
  ``label_map``, ``split_stats``).

Fingerprint: the stock FileBasedDriver globs and stats every input file on every run (1.33M stats for
ImageNet, each a request on an object store) to compute the input fingerprint that keys TFX's cache. This
driver instead runs the input discovery (which lists every directory once anyway and fails early on
unusable input, before the executor starts) and fingerprints the names in every directory plus the size
and mtime of label files and TFRecord inputs: adding, removing or renaming any image changes it, at no
cost beyond the listings. An image overwritten under the same name does not change it; pass
``fingerprint='files'`` to stat every file as the stock driver does (see
:func:`hrnet_tfx.data.sources.discover`). ``input_base`` and the artifact may be bucket URLs.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Dict, List

from tfx import types
from tfx.components.example_gen import driver as example_gen_driver
from tfx.components.example_gen import utils as example_gen_utils
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from hrnet_tfx.data.convert import convert, pipeline_options
from hrnet_tfx.data.labels import DataError
from hrnet_tfx.data.options import (DEFAULT_FINGERPRINT, DEFAULT_LAYOUT, FINGERPRINTS, LAYOUTS,
                                    ConvertOptions)
from hrnet_tfx.data.sources import discover

EXAMPLES_KEY = standard_component_specs.EXAMPLES_KEY
INPUT_BASE_KEY = standard_component_specs.INPUT_BASE_KEY
TFX_FILE_FORMAT = "tfrecords_gzip"
"""What the artifact records as ``file_format``: the only TFRecord value TFX 1.16 readers accept."""

_OPTIONS = typing.get_type_hints(ConvertOptions)
"""The conversion settings and their types: each is an execution parameter of the same name."""


class ImageExampleGenSpec(ComponentSpec):
    """Parameters of :class:`ImageExampleGen` (see its constructor)."""

    PARAMETERS = {
        INPUT_BASE_KEY: ExecutionParameter(type=str),
        "layout": ExecutionParameter(type=str),
        "fingerprint": ExecutionParameter(type=str),
        **{name: ExecutionParameter(type=kind) for name, kind in _OPTIONS.items()},
    }
    INPUTS = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples)}


def _options(exec_properties: Dict[str, Any]) -> ConvertOptions:
    return ConvertOptions(**{k: exec_properties[k] for k in _OPTIONS})


class Driver(example_gen_driver.Driver):
    """Resolves span 0 and the cheap input fingerprint (see the module docstring); fails early with a
    clear error if the input is unusable."""

    def resolve_exec_properties(self, exec_properties: Dict[str, Any], pipeline_info, component_info
                                ) -> Dict[str, Any]:
        del pipeline_info, component_info
        dataset = discover(exec_properties[INPUT_BASE_KEY], layout=exec_properties["layout"],
                           fingerprint=exec_properties["fingerprint"])
        exec_properties[example_gen_utils.SPAN_PROPERTY_NAME] = 0
        exec_properties[example_gen_utils.VERSION_PROPERTY_NAME] = None
        exec_properties[example_gen_utils.FINGERPRINT_PROPERTY_NAME] = dataset.fingerprint
        return exec_properties


class Executor(base_beam_executor.BaseBeamExecutor):
    """Runs :func:`hrnet_tfx.data.convert.convert` with the executor's Beam pipeline into the Examples
    artifact and records the properties TFX's readers use.

    It overrides ``Do`` of a plain Beam executor rather than extending ``BaseExampleGenExecutor``, whose
    ``Do`` writes through ``WriteSplit`` (runner-chosen shard counts, always GZIP) and whose
    ``GenerateExamplesByBeam`` would move image bytes through a shuffle.
    """

    def _pipeline(self):
        """The pipeline from the component's Beam args; like the standalone command, Beam's FnApiRunner
        when they name no runner (see :func:`hrnet_tfx.data.convert.pipeline_options`)."""
        if self._make_beam_pipeline_fn is not None:
            return self._make_beam_pipeline_fn()
        import apache_beam as beam

        return beam.Pipeline(options=pipeline_options(self._beam_pipeline_args))

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        dataset = discover(exec_properties[INPUT_BASE_KEY], layout=exec_properties["layout"],
                           fingerprint=exec_properties["fingerprint"])
        expected = exec_properties.get(example_gen_utils.FINGERPRINT_PROPERTY_NAME)
        if expected and expected != dataset.fingerprint:
            raise DataError(f"the input {dataset.input_dir} changed between the driver and the executor "
                            "(fingerprints differ); run the pipeline again once it is stable")
        result = convert(dataset, examples.uri, _options(exec_properties), pipeline_factory=self._pipeline)
        manifest = result.manifest
        examples.split_names = artifact_utils.encode_split_names(list(manifest["splits"]))
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, TFX_FILE_FORMAT)
        examples.set_string_custom_property("compression", manifest["options"]["compression"])
        examples.set_int_custom_property("num_classes", manifest["num_classes"])
        examples.set_string_custom_property("label_map", manifest["label_map"])
        examples.set_string_custom_property("split_stats", json.dumps(
            {s: {k: v for k, v in info.items() if k.startswith("num_")}
             for s, info in manifest["splits"].items()}, sort_keys=True))


class ImageExampleGen(base_beam_component.BaseBeamComponent):
    """A TFX ExampleGen that converts ImageNet, image folders or inception TFRecords into an Examples
    artifact with ``train`` and ``eval`` splits (see the module docstring).

    Beam options come from the pipeline's ``beam_pipeline_args`` or ``with_beam_pipeline_args``.
    """

    SPEC_CLASS = ImageExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
    DRIVER_CLASS = Driver

    def __init__(self, input_base: str, layout: str = DEFAULT_LAYOUT, *,
                 fingerprint: str = DEFAULT_FINGERPRINT, **options):
        """Args:
          input_base: the dataset directory (layouts in :mod:`hrnet_tfx.data.sources`): a local path or a
            URL of any TensorFlow file system (``gs://bucket/ILSVRC2012``).
          layout: ``auto``, ``imagenet``, ``imagefolder`` or ``tfrecords``.
          fingerprint: ``dirs`` (default: the names in every directory) or ``files`` (also a stat per
            file).
          **options: conversion settings, by name and with the defaults of
            :class:`hrnet_tfx.data.options.ConvertOptions` (``train_shards``, ``eval_shards``,
            ``compression``, ``max_bad_fraction``, ``verify``, ``label_offset``, ``seed``,
            ``max_image_bytes``).
        """
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise TypeError(f"ImageExampleGen got unknown option(s) {unknown}; known: {sorted(_OPTIONS)}")
        settings = dataclasses.asdict(ConvertOptions(**options))  # fails at definition, not at run time
        if layout not in LAYOUTS or fingerprint not in FINGERPRINTS:
            raise ValueError(f"layout must be one of {LAYOUTS} and fingerprint one of {FINGERPRINTS}, got "
                             f"{layout!r} and {fingerprint!r}")
        settings["max_bad_fraction"] = float(settings["max_bad_fraction"])
        spec = ImageExampleGenSpec(input_base=input_base, layout=layout, fingerprint=fingerprint, **settings,
                                   examples=types.Channel(type=standard_artifacts.Examples))
        super().__init__(spec=spec)
