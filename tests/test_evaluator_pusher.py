"""Evaluator (TFMA) + EvaluationReport + HRNetPusher: config checks and push protocol (fast), and real
LocalDagRunner pipelines that bless, refuse and push (e2e).

The models are exported with :func:`hrnet_tfx.serving.export.export_saved_model` (the real serving
signatures) around a two-layer Keras network whose weights are set by hand, so their accuracy on the colour
records of ``conftest.write_color_records`` is known exactly: ``good`` averages the normalised colour
channels and picks the largest (top-1 = 1.0 on 4 red / 4 green / 4 blue eval images); ``constant``
always answers "red" (top-1 = 1/3).
"""

import json
import os
import pathlib

import numpy as np
import pytest

import hrnet_tfx  # noqa: F401
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from hrnet_tfx.components.evaluator import BASELINE, CANDIDATE, LabelRangeError, eval_config, make_evaluator
from hrnet_tfx.components.pusher import (PUSHED, PUSHED_DESTINATION, PUSHED_VERSION, STAGING_PREFIX, HRNetPusher,
                                         PushError, next_version, push_saved_model)
from hrnet_tfx.components.report import REPORT_HTML, REPORT_JSON, REPORT_MD, EvaluationReport
from hrnet_tfx.serving import model_base
from hrnet_tfx.serving.export import export_saved_model
from hrnet_tfx.serving.images import ImageFileError
from hrnet_tfx.serving.warmup import read_warmup_requests

from conftest import REPO, write_color_records

BEAM_ARGS = ["--runner=FnApiRunner", f"--setup_file={REPO / 'setup.py'}"]
LABELS = ["red", "green", "blue"]


def color_model(kind: str):
    """A hand-weighted Keras model on 64x64 images: ``good`` or ``constant`` (see the module docstring)."""
    import tf_keras as keras

    inputs = keras.Input((64, 64, 3))
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, logits)
    if kind == "good":
        model.layers[-1].set_weights([np.eye(3, dtype="float32") * 4, np.zeros(3, "float32")])
    elif kind == "constant":
        model.layers[-1].set_weights([np.zeros((3, 3), "float32"), np.array([2.0, 0.0, 0.0], "float32")])
    else:
        raise ValueError(kind)
    return model


def export_color_model(path: pathlib.Path, kind: str, label_map: str | None = None) -> pathlib.Path:
    """Exports :func:`color_model` ``kind`` to ``path/Format-Serving`` (the Model artifact layout); returns
    ``path``."""
    export_saved_model(color_model(kind), str(path / "Format-Serving"), LABELS, image_size=64,
                       label_map_path=label_map)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory, color_records):
    root = tmp_path_factory.mktemp("models")
    label_map = str(color_records / "labels.tsv")
    return {
        "good": export_color_model(root / "good", "good", label_map),
        "good_again": export_color_model(root / "good_again", "good", label_map),
        "constant": export_color_model(root / "constant", "constant", label_map),
        "no_labels": export_color_model(root / "no_labels", "good"),
    }


# --- eval config (fast) ---------------------------------------------------------------------------------


def test_eval_config_bounds_apply_to_the_whole_set_and_compare_with_the_baseline():
    config = eval_config(top1_lower_bound=0.7, top5_lower_bound=0.9, max_top1_drop=0.01)
    specs = {s.name: s for s in config.model_specs}
    assert set(specs) == {CANDIDATE, BASELINE} and specs[BASELINE].is_baseline
    for spec in specs.values():
        assert (spec.signature_name, spec.label_key, spec.prediction_key) == (
            "serving_default", "image/class/label", "scores")
    metrics = {m.class_name: m for m in config.metrics_specs[0].metrics}
    assert set(metrics) == {"ExampleCount", "SparseCategoricalAccuracy", "SparseTopKCategoricalAccuracy",
                            "SparseCategoricalCrossentropy"}
    assert json.loads("{" + metrics["SparseTopKCategoricalAccuracy"].config + "}") == {"k": 5}
    assert json.loads("{" + metrics["SparseCategoricalCrossentropy"].config + "}") == {"from_logits": False}
    (top1,) = metrics["SparseCategoricalAccuracy"].per_slice_thresholds
    assert list(top1.slicing_specs) == [tfma.SlicingSpec()]  # not every label slice
    assert top1.threshold.value_threshold.lower_bound.value == pytest.approx(0.7)
    assert top1.threshold.change_threshold.absolute.value == pytest.approx(-0.01)
    assert top1.threshold.change_threshold.direction == tfma.MetricDirection.HIGHER_IS_BETTER
    (top5,) = metrics["SparseTopKCategoricalAccuracy"].per_slice_thresholds
    assert top5.threshold.value_threshold.lower_bound.value == pytest.approx(0.9)
    assert not metrics["SparseCategoricalAccuracy"].HasField("threshold")
    assert tfma.SlicingSpec(feature_keys=["image/class/label"]) in config.slicing_specs


def test_eval_config_without_baseline_and_bad_values():
    config = eval_config(0.5, max_top1_drop=None, per_class=False)
    assert [s.name for s in config.model_specs] == [CANDIDATE]
    (top1,) = [m for m in config.metrics_specs[0].metrics if m.class_name == "SparseCategoricalAccuracy"]
    assert not top1.per_slice_thresholds[0].threshold.HasField("change_threshold")
    assert list(config.slicing_specs) == [tfma.SlicingSpec()]
    with pytest.raises(ValueError, match="top1_lower_bound"):
        eval_config(top1_lower_bound=-0.1)
    with pytest.raises(ValueError, match="max_top1_drop"):
        eval_config(max_top1_drop=2.0)


def test_make_evaluator_wires_the_latest_blessed_baseline():
    examples = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Examples)
    model = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model)
    resolver, evaluator = make_evaluator(examples, model, eval_config(0.5))
    assert resolver.id == "LatestBlessedModelResolver" and evaluator.id == "Evaluator"
    assert evaluator.inputs["baseline_model"] is resolver.outputs["model"]
    assert json.loads(evaluator.exec_properties["example_splits"]) == ["eval"]
    assert evaluator.exec_properties["module_path"] == "hrnet_tfx.components.evaluator_hooks"  # the label check
    resolver, evaluator = make_evaluator(examples, model, eval_config(0.5, max_top1_drop=None, inference_batch_size=64))
    assert resolver is None and "baseline_model" not in evaluator.inputs
    assert evaluator.exec_properties["module_path"] == "hrnet_tfx.components.evaluator_hooks"
    assert all(s.inference_batch_size == 64 for s in eval_config(inference_batch_size=64).model_specs)


# --- push protocol (fast) -------------------------------------------------------------------------------


def assert_complete_version(version_dir: pathlib.Path):
    assert (version_dir / "saved_model.pb").is_file()
    assert list((version_dir / "variables").glob("variables.index"))
    assert (version_dir / "assets" / "labels.tsv").read_text().splitlines()[1] == "1\tg\tgreen"
    records = list(read_warmup_requests(str(version_dir)))
    kinds = sorted(r.WhichOneof("log_type") for r in records)
    assert kinds == ["classify_log", "predict_log", "predict_log", "predict_log"]


def test_push_writes_a_complete_version_and_never_reuses_one(tmp_path, models):
    base = tmp_path / "base"
    v1, dir1, reused = push_saved_model(str(models["good"] / "Format-Serving"), str(base), "hrnet",
                                        now=1_700_000_000)
    assert not reused
    assert v1 == 1_700_000_000 and dir1 == str(base / "hrnet" / "1700000000")
    assert_complete_version(pathlib.Path(dir1))
    # Same second, and a clock behind the newest version: still a new, higher version.
    v2, _, _ = push_saved_model(str(models["good_again"] / "Format-Serving"), str(base), "hrnet", now=1_700_000_000)
    v3, dir3, _ = push_saved_model(str(models["constant"] / "Format-Serving"), str(base), "hrnet", now=5)
    assert v1 < v2 < v3 == v2 + 1
    assert model_base.complete_versions(str(base / "hrnet")) == [v1, v2, v3]
    assert model_base.latest_version(str(base / "hrnet")) == v3
    assert not [p for p in os.listdir(base / "hrnet") if p.startswith(STAGING_PREFIX)]
    assert next_version(str(base / "hrnet"), now=5) == v3 + 1


def test_push_ships_the_label_map_when_the_model_has_none(tmp_path, models, color_records):
    source = str(models["no_labels"] / "Format-Serving")
    with pytest.raises(PushError, match="no assets/labels.tsv"):
        push_saved_model(source, str(tmp_path / "base"), "hrnet")
    assert not (tmp_path / "base").exists()
    _, version_dir, _ = push_saved_model(source, str(tmp_path / "base"), "hrnet",
                                         label_map_path=str(color_records / "labels.tsv"))
    assert_complete_version(pathlib.Path(version_dir))


def test_a_failed_push_leaves_no_version_and_no_staging(tmp_path, models):
    base = tmp_path / "base"
    # warm-up image missing: fails after the copy, before the rename
    with pytest.raises(ImageFileError, match=r"^cannot read warm-up image .*/missing.jpg: No such file or directory$"):
        push_saved_model(str(models["good"] / "Format-Serving"), str(base), "hrnet",
                         warmup_images=[str(tmp_path / "missing.jpg")])
    assert os.listdir(base / "hrnet") == []
    with pytest.raises(PushError, match="not a SavedModel"):
        push_saved_model(str(tmp_path), str(base), "hrnet")
    with pytest.raises(PushError, match="model name"):
        push_saved_model(str(models["good"] / "Format-Serving"), str(base), "../x")


def test_a_half_copied_staging_directory_is_not_a_version(tmp_path, models):
    model_dir = tmp_path / "base" / "hrnet"
    staging = model_dir / f"{STAGING_PREFIX}1700000000-deadbeef"
    staging.mkdir(parents=True)
    # a staging directory as a crash would leave it: everything copied, saved_model.pb included
    (staging / "saved_model.pb").write_bytes((models["good"] / "Format-Serving" / "saved_model.pb").read_bytes())
    assert model_base.version_dirs(str(model_dir)) == {}
    assert model_base.latest_version(str(model_dir)) is None
    version, _, _ = push_saved_model(str(models["good"] / "Format-Serving"), str(tmp_path / "base"), "hrnet")
    assert model_base.complete_versions(str(model_dir)) == [version]


def test_pusher_component_checks_its_arguments():
    model = tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model)
    with pytest.raises(ValueError, match="model name 'a/b'"):
        HRNetPusher(model, "/srv/models", model_name="a/b")
    with pytest.raises(ValueError, match=r"model name 'hrnet\\n'"):
        HRNetPusher(model, "/srv/models", model_name="hrnet\n")
    with pytest.raises(ValueError, match="base_directory"):
        HRNetPusher(model, "")


# --- pipelines (e2e) ------------------------------------------------------------------------------------


def run_pipeline(tmp_path: pathlib.Path, records: pathlib.Path, model_dir: pathlib.Path, config, base: pathlib.Path):
    """ImportExampleGen -> (LatestBlessedModel resolver, Evaluator) -> EvaluationReport, HRNetPusher, with the
    model imported from ``model_dir``; same pipeline root and MLMD database for every call in a test."""
    example_gen = tfx.components.ImportExampleGen(
        input_base=str(records),
        input_config=tfx.proto.Input(splits=[tfx.proto.Input.Split(name="train", pattern="train/*"),
                                            tfx.proto.Input.Split(name="eval", pattern="eval/*")]))
    model = tfx.dsl.Importer(source_uri=str(model_dir), artifact_type=tfx.types.standard_artifacts.Model
                             ).with_id("ModelImporter")
    resolver, evaluator = make_evaluator(example_gen.outputs["examples"], model.outputs["result"], config)
    report = EvaluationReport(evaluator.outputs["evaluation"], evaluator.outputs["blessing"],
                              examples=example_gen.outputs["examples"], model=model.outputs["result"])
    pusher = HRNetPusher(model.outputs["result"], str(base), "hrnet", model_blessing=evaluator.outputs["blessing"])
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="evaluator-test", pipeline_root=str(tmp_path / "root"),
        components=[example_gen, model, resolver, evaluator, report, pusher],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "mlmd.sqlite")),
        beam_pipeline_args=BEAM_ARGS,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)
    return latest_outputs(tmp_path / "mlmd.sqlite")


def latest_outputs(mlmd_path: pathlib.Path) -> dict:
    """The newest artifact of each type the test reads: {type name: Artifact proto}."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = str(mlmd_path)
    store = metadata_store.MetadataStore(config)
    out = {}
    for type_name in ("ModelBlessing", "PushedModel", "hrnet_tfx.EvaluationReport"):
        artifacts = store.get_artifacts_by_type(type_name)
        out[type_name] = max(artifacts, key=lambda a: a.id)
    return out


def prop(artifact, name):
    value = artifact.custom_properties[name]
    return value.int_value if value.HasField("int_value") else value.string_value


@pytest.mark.e2e
def test_pipeline_blesses_pushes_and_refuses_a_worse_model(tmp_path, models):
    records = write_color_records(tmp_path / "records", train=3, eval_=12, shards=(1, 1))
    base = tmp_path / "serving"
    config = eval_config(top1_lower_bound=0.3, top5_lower_bound=0.3, max_top1_drop=0.0)

    # 1. First run, no baseline: the good model passes the bounds, is blessed and pushed.
    out = run_pipeline(tmp_path, records, models["good"], config, base)
    assert prop(out["ModelBlessing"], "blessed") == 1
    assert prop(out["PushedModel"], PUSHED) == 1
    (v1,) = model_base.complete_versions(str(base / "hrnet"))
    assert prop(out["PushedModel"], PUSHED_VERSION) == str(v1)
    assert prop(out["PushedModel"], PUSHED_DESTINATION) == str(base / "hrnet" / str(v1))
    assert_complete_version(base / "hrnet" / str(v1))
    report_dir = pathlib.Path(out["hrnet_tfx.EvaluationReport"].uri)
    text = (report_dir / REPORT_MD).read_text()
    assert "**Verdict: BLESSED**" in text and "No baseline" in text
    assert "| top-1 accuracy | 1.0000 |" in text and "| examples | 12 |" in text
    assert "| 1 | g | green | 4 | 1.0000 | 1.0000 |" in text
    assert "BLESSED" in (report_dir / REPORT_HTML).read_text()

    # 2. A worse model (top-1 1/3: above the bound 0.3, below the baseline's 1.0) is refused, not pushed.
    out = run_pipeline(tmp_path, records, models["constant"], config, base)
    assert not out["ModelBlessing"].custom_properties["blessed"].int_value
    assert prop(out["PushedModel"], PUSHED) == 0
    assert model_base.complete_versions(str(base / "hrnet")) == [v1]
    text = (pathlib.Path(out["hrnet_tfx.EvaluationReport"].uri) / REPORT_MD).read_text()
    assert "**Verdict: NOT BLESSED**" in text
    assert "top-1 accuracy vs the baseline (latest blessed model): change -0.6667, required change >= +0.0000" in text
    assert "| top-1 accuracy | 0.3333 | 1.0000 | -0.6667 |" in text
    assert "| 2 | b | blue | 4 | 0.0000 | 1.0000 | 1.0000 |" in text
    numbers = json.loads((pathlib.Path(out["hrnet_tfx.EvaluationReport"].uri) / REPORT_JSON).read_text())
    assert numbers["overall"]["sparse_categorical_accuracy"]["baseline"] == pytest.approx(1.0)

    # 3. An equally good model passes the change threshold against the baseline: a second, newer version.
    out = run_pipeline(tmp_path, records, models["good_again"], config, base)
    assert prop(out["PushedModel"], PUSHED) == 1
    versions = model_base.complete_versions(str(base / "hrnet"))
    assert len(versions) == 2 and versions[0] == v1 and prop(out["PushedModel"], PUSHED_VERSION) == str(versions[1])
    assert_complete_version(base / "hrnet" / str(versions[1]))


@pytest.mark.e2e
def test_pipeline_refuses_a_model_below_the_bound_on_the_first_run(tmp_path, models):
    records = write_color_records(tmp_path / "records", train=3, eval_=12, shards=(1, 1))
    base = tmp_path / "serving"
    # also runs the fixed-batch inference path (custom_extractors) on the single-model (no baseline) run
    config = eval_config(top1_lower_bound=1.01, inference_batch_size=5)
    out = run_pipeline(tmp_path, records, models["good"], config, base)
    assert not out["ModelBlessing"].custom_properties["blessed"].int_value
    assert prop(out["PushedModel"], PUSHED) == 0
    assert not base.exists() or not any(base.rglob("*"))
    text = (pathlib.Path(out["hrnet_tfx.EvaluationReport"].uri) / REPORT_MD).read_text()
    assert "**Verdict: NOT BLESSED**" in text
    assert "top-1 accuracy 1.0000, required >= 1.0100" in text
    assert "| top-1 accuracy | 1.0000 |" in text and "| 0 | r | red | 4 | 1.0000 | 1.0000 |" in text


def shifted_records(records: pathlib.Path, out: pathlib.Path, offset: int) -> str:
    """The eval records of ``records`` with ``offset`` added to every label (1: inception's 1-based labels)."""
    import tensorflow as tf

    out.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(out / "eval-00000-of-00001")) as writer:
        for data in tf.data.TFRecordDataset(sorted(map(str, (records / "eval").glob("eval-*")))):
            example = tf.train.Example.FromString(data.numpy())
            example.features.feature["image/class/label"].int64_list.value[0] += offset
            writer.write(example.SerializeToString())
    return str(out / "eval-00000-of-00001")


def run_tfma(model_dir: pathlib.Path, data: str, output: pathlib.Path, config):
    """TFMA as the Evaluator runs it, with :func:`custom_extractors` (what ``module_path`` installs)."""
    from hrnet_tfx.components.evaluator import custom_extractors

    shared = tfma.default_eval_shared_model(str(model_dir / "Format-Serving"), eval_config=config)
    return tfma.run_model_analysis(
        eval_shared_model=shared, eval_config=config, data_location=data, file_format="tfrecords",
        output_path=str(output), extractors=custom_extractors(shared, config),
        pipeline_options=None)


def test_one_based_labels_are_refused_where_the_config_knows_them():
    with pytest.raises(ValueError, match="label_offset=1: the Evaluator .TFMA. scores 'image/class/label' as stored"):
        eval_config(label_offset=1)


@pytest.mark.e2e
def test_evaluation_refuses_one_based_labels_and_scores_zero_based_ones(tmp_path, models, color_records):
    """1-based labels (class 3 of a 3-class model appears) fail the evaluation with a clear error instead of
    a top-1 of 0; the same records 0-based evaluate to top-1 1.0."""
    config = eval_config(top1_lower_bound=0.5, max_top1_drop=None, per_class=False)
    with pytest.raises(LabelRangeError, match=r"eval label 3 is not a class of the 3-class model .*1-based"):
        run_tfma(models["good"], shifted_records(color_records, tmp_path / "one_based", 1), tmp_path / "out1",
                 config)
    result = run_tfma(models["good"], shifted_records(color_records, tmp_path / "zero_based", 0),
                      tmp_path / "out0", config)
    (overall,) = [m for s, m in result.slicing_metrics if not s]
    assert overall[""][""]["sparse_categorical_accuracy"]["doubleValue"] == pytest.approx(1.0)

    # the report reads TFMA's output from a bucket and writes there (TF's in-memory ram:// file system)
    import tensorflow as tf

    from hrnet_tfx.components.report import write_report
    from hrnet_tfx.data.labels import read_label_map
    from hrnet_tfx.fs import copy_tree

    bucket = f"ram://report-{os.getpid()}"
    copy_tree(str(tmp_path / "out0"), f"{bucket}/evaluation")
    copy_tree(str(color_records), f"{bucket}/examples")
    report = write_report(f"{bucket}/evaluation", f"{bucket}/report", read_label_map(f"{bucket}/examples/labels.tsv"))
    assert report.verdict == "BLESSED"
    with tf.io.gfile.GFile(f"{bucket}/report/{REPORT_MD}") as f:
        assert "| top-1 accuracy | 1.0000 |" in f.read()
    assert sorted(tf.io.gfile.listdir(f"{bucket}/report")) == [REPORT_HTML, REPORT_JSON, REPORT_MD]
