"""ImageExampleGen: the driver's fingerprint, the executor's artifact properties, and (e2e) a real
LocalDagRunner pipeline whose Examples artifact TFX's own readers (StatisticsGen, tfxio) read."""

import dataclasses
import json
import os
import shutil

import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
from tfx.components.util import examples_utils, tfxio_utils  # noqa: E402
from tfx.dsl.components.base import base_beam_executor  # noqa: E402
from tfx.types import artifact_utils, standard_artifacts  # noqa: E402

from hrnet_tfx.components.image_example_gen import Driver, Executor, ImageExampleGen  # noqa: E402
from hrnet_tfx.data import features as F  # noqa: E402
from hrnet_tfx.data.convert import ConvertOptions  # noqa: E402
from hrnet_tfx.data.labels import DataError  # noqa: E402
from hrnet_tfx.data.sample import make_sample  # noqa: E402
from hrnet_tfx.data.sources import discover  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# FnApiRunner: in-process, honours direct_* options (the DirectRunner would first try to fetch Prism);
# --setup_file stops TFX from building an sdist of itself for every Beam executor.
BEAM_ARGS = ["--runner=FnApiRunner", f"--setup_file={os.path.join(REPO, 'setup.py')}"]


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_sample(str(root), num_classes=3, train_per_class=6, val_per_class=2, image_size=16)
    return str(root)


def _exec_properties(input_base, **overrides):
    props = dict(input_base=input_base, layout="auto", fingerprint="dirs", train_shards=2, eval_shards=2,
                 compression="none", max_bad_fraction=0.001, verify="markers", label_offset=1,
                 seed="hrnet-tfx", max_image_bytes=ConvertOptions.max_image_bytes)
    props.update(overrides)
    return props


def test_component_validates_options_at_definition():
    with pytest.raises(ValueError, match="compression"):
        ImageExampleGen("/data", compression="zstd")
    with pytest.raises(ValueError, match="layout"):
        ImageExampleGen("/data", layout="coco")
    gen = ImageExampleGen("/data", train_shards=8)
    assert gen.exec_properties["train_shards"] == 8 and gen.exec_properties["compression"] == "none"
    assert gen.exec_properties["max_image_bytes"] == 64 * 2**20
    with pytest.raises(ValueError, match="max_image_bytes"):
        ImageExampleGen("/data", max_image_bytes=0)
    assert set(gen.outputs) == {"examples"}


def test_cli_and_component_defaults_are_convert_options_defaults():
    """One owner: every conversion setting's default in the command and the component is ConvertOptions'."""
    from hrnet_tfx.cli.data import data

    defaults = dataclasses.asdict(ConvertOptions())
    params = {p.name: p.default for p in data.commands["convert"].params}
    cli = {name: params[name] for name in defaults if name != "max_image_bytes"}
    cli["max_image_bytes"] = int(params["max_image_mb"] * 2**20)
    assert cli == defaults
    props = ImageExampleGen("/data").exec_properties
    assert {name: props[name] for name in defaults} == defaults


def test_driver_resolves_span_and_cheap_fingerprint(sample):
    props = Driver(None).resolve_exec_properties(_exec_properties(sample), None, None)
    assert props["span"] == 0 and props["version"] is None
    assert props["input_fingerprint"] == discover(sample).fingerprint
    assert props["input_fingerprint"].startswith("dirs:")


def test_driver_fails_early_on_unusable_input(tmp_path):
    with pytest.raises(DataError, match="input directory does not exist"):
        Driver(None).resolve_exec_properties(_exec_properties(str(tmp_path / "missing")), None, None)


def test_tfx_accepts_only_tfrecords_gzip_as_tfrecord_file_format():
    """Why the artifact says 'tfrecords_gzip' even for uncompressed shards (see the component docs)."""
    kwargs = dict(file_pattern="/x/*", telemetry_descriptors=[], payload_format="FORMAT_TF_EXAMPLE")
    tfxio_utils.make_tfxio(file_format="tfrecords_gzip", **kwargs)
    with pytest.raises(ValueError):
        tfxio_utils.make_tfxio(file_format="tfrecords", **kwargs)


def test_executor_writes_examples_artifact(sample, tmp_path):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    props = _exec_properties(sample, input_fingerprint=discover(sample).fingerprint)
    executor = Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM_ARGS))
    executor.Do({}, {"examples": [examples]}, props)
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples_utils.get_payload_format_string(examples) == "FORMAT_TF_EXAMPLE"
    assert examples_utils.get_file_format(examples) == "tfrecords_gzip"
    assert examples.get_string_custom_property("compression") == "none"
    assert examples.get_int_custom_property("num_classes") == 3
    stats = json.loads(examples.get_string_custom_property("split_stats"))
    assert stats["train"]["num_examples"] == 18 and stats["eval"]["num_examples"] == 6
    assert sorted(os.listdir(tmp_path / "examples" / "Split-train")) == ["train-00000-of-00002",
                                                                         "train-00001-of-00002"]
    assert (tmp_path / "examples" / "labels.tsv").read_text().startswith("0\tn01440764\ttench")


def test_executor_refuses_input_changed_since_the_driver(sample, tmp_path):
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    executor = Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM_ARGS))
    with pytest.raises(DataError, match="changed between the driver and the executor"):
        executor.Do({}, {"examples": [examples]}, _exec_properties(sample, input_fingerprint="dirs:stale"))


# --- end to end ------------------------------------------------------------------------------------

def _run_pipeline(root, input_base, with_stats=True):
    from tfx.components import StatisticsGen
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    gen = ImageExampleGen(input_base, train_shards=2, eval_shards=2)
    components = [gen] + ([StatisticsGen(examples=gen.outputs["examples"])] if with_stats else [])
    config = metadata.sqlite_metadata_connection_config(os.path.join(root, "mlmd.sqlite"))
    LocalDagRunner().run(pipeline.Pipeline(
        pipeline_name="image_example_gen_e2e", pipeline_root=os.path.join(root, "pipeline"),
        components=components, metadata_connection_config=config, enable_cache=True,
        beam_pipeline_args=BEAM_ARGS))
    return config


def _examples_artifacts(config):
    from tfx.orchestration import metadata

    with metadata.Metadata(config) as m:
        found = []
        for mlmd_artifact in m.store.get_artifacts_by_type(standard_artifacts.Examples.TYPE_NAME):
            a = standard_artifacts.Examples()
            a.set_mlmd_artifact(mlmd_artifact)
            found.append(a)
        executions = sorted(m.store.get_executions(), key=lambda e: e.id)
    return sorted(found, key=lambda a: a.id), executions


@pytest.mark.e2e
def test_pipeline_with_statistics_gen_and_tfx_readers(sample, tmp_path):
    from ml_metadata.proto import metadata_store_pb2
    from tensorflow_metadata.proto.v0 import schema_pb2, statistics_pb2
    from tfx_bsl.tfxio import dataset_options

    input_base = str(tmp_path / "input")
    shutil.copytree(sample, input_base)
    config = _run_pipeline(str(tmp_path), input_base)
    (examples,), _ = _examples_artifacts(config)
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples_utils.get_payload_format_string(examples) == "FORMAT_TF_EXAMPLE"
    assert examples_utils.get_file_format(examples) == "tfrecords_gzip"
    assert examples.get_int_custom_property("span") == 0
    assert examples.get_string_custom_property("input_fingerprint") == discover(input_base).fingerprint

    # StatisticsGen read both splits through tfx_bsl's Beam source
    stats_dir = os.path.join(str(tmp_path), "pipeline", "StatisticsGen", "statistics")
    (run,) = os.listdir(stats_dir)
    for split, count in [("train", 18), ("eval", 6)]:
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        with open(os.path.join(stats_dir, run, f"Split-{split}", "FeatureStats.pb"), "rb") as f:
            stats.ParseFromString(f.read())
        assert stats.datasets[0].num_examples == count
        assert F.LABEL in {feat.path.step[0] for feat in stats.datasets[0].features}

    # the Trainer's path: DataAccessor.tf_dataset_factory -> tfxio TensorFlowDataset
    schema = schema_pb2.Schema()
    for name, kind in [(F.LABEL, schema_pb2.INT), (F.IMAGE_ENCODED, schema_pb2.BYTES)]:
        feature = schema.feature.add(name=name, type=kind)
        feature.shape.dim.add(size=1)  # fixed length: dense tensors, as a Trainer's schema would say
        feature.presence.min_fraction = 1.0
    factory = tfxio_utils.get_tf_dataset_factory_from_artifact([examples], [])
    dataset = factory(examples_utils.get_split_file_patterns([examples], "train"),
                      dataset_options.TensorFlowDatasetOptions(batch_size=4, num_epochs=1, shuffle=False),
                      schema)
    labels = [int(v) for batch in dataset for v in tf.reshape(batch[F.LABEL], [-1]).numpy()]
    assert sorted(labels) == [0] * 6 + [1] * 6 + [2] * 6
    image = next(iter(dataset))[F.IMAGE_ENCODED]
    assert tf.io.decode_jpeg(tf.reshape(image, [-1])[0], channels=3).shape == (16, 16, 3)

    # unchanged input: the cheap fingerprint lets TFX reuse the cached artifact
    _run_pipeline(str(tmp_path), input_base, with_stats=False)
    artifacts, executions = _examples_artifacts(config)
    assert len(artifacts) == 1
    assert executions[-1].last_known_state == metadata_store_pb2.Execution.CACHED

    # a new image changes the fingerprint: a new conversion runs
    wnid_dir = os.path.join(input_base, "train", "n01440764")
    shutil.copy(os.path.join(wnid_dir, "n01440764_1.JPEG"), os.path.join(wnid_dir, "n01440764_new.JPEG"))
    _run_pipeline(str(tmp_path), input_base, with_stats=False)
    artifacts, executions = _examples_artifacts(config)
    assert len(artifacts) == 2
    assert executions[-1].last_known_state == metadata_store_pb2.Execution.COMPLETE
    assert json.loads(artifacts[-1].get_string_custom_property("split_stats"))["train"]["num_examples"] == 19
