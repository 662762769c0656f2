"""The whole pipeline on tiny data with LocalDagRunner: every artifact recorded in MLMD, a cached
second run, and a model that fails the bound is not pushed."""

import os

import pytest

import hrnet_tfx  # noqa: F401
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from hrnet_tfx.data.sample import make_sample
from hrnet_tfx.pipeline import load_config
from hrnet_tfx.pipeline.local_runner import run


def _store(config):
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = os.path.abspath(config.metadata)
    return metadata_store.MetadataStore(connection)


def _pushed(store):
    return [a.custom_properties["pushed"].int_value for a in store.get_artifacts_by_type("PushedModel")]


@pytest.mark.e2e
def test_whole_pipeline_caches_and_refuses_a_bad_model(tmp_path):
    make_sample(str(tmp_path / "sample"), num_classes=3, train_per_class=8, val_per_class=3, image_size=48)
    overrides = [f"input_base={tmp_path / 'sample'}", f"root={tmp_path / 'root'}",
                 f"serving_base={tmp_path / 'serving'}", "train.train_steps=40", "top1_lower_bound=0.0"]
    config = load_config("demo", "", overrides)
    summary = run(config)
    store = _store(config)
    for kind in ("Examples", "Model", "ModelRun", "ModelEvaluation", "ModelBlessing", "PushedModel"):
        assert len(store.get_artifacts_by_type(kind)) == 1, kind
    assert _pushed(store) == [1]
    (version,) = os.listdir(tmp_path / "serving" / "hrnet")
    assert os.path.exists(tmp_path / "serving" / "hrnet" / version / "saved_model.pb")
    assert os.path.exists(tmp_path / "root" / "pipeline_config.json")
    saved = tmp_path / "root" / "pipeline_config.json"
    assert summary[0] == f"pipeline hrnet-tfx-demo finished; resolved config: {saved}"
    assert summary[-2] == f"pushed model:      {tmp_path / 'serving' / 'hrnet' / version}"

    # unchanged inputs: conversion and training come from TFX's cache (the Evaluator reruns: its baseline input
    # is now the blessed model)
    rerun_summary = run(config)
    cached = {store.get_execution_types_by_id([e.type_id])[0].name.rsplit(".", 1)[-1]
              for e in store.get_executions() if e.last_known_state == metadata_store_pb2.Execution.CACHED}
    assert {"ImageExampleGen", "HorovodTrainer"} <= cached
    assert len(store.get_artifacts_by_type("Model")) == 1 and len(store.get_artifacts_by_type("Examples")) == 1
    # the same model is already the latest version: no second version, the PushedModel points at the first
    versions = [v for v in os.listdir(tmp_path / "serving" / "hrnet") if not v.startswith(".")]
    assert versions == [version]
    rerun = max(store.get_artifacts_by_type("PushedModel"), key=lambda a: a.id)
    assert rerun.custom_properties["pushed"].int_value == 1
    assert rerun.custom_properties["already_pushed"].int_value == 1
    assert rerun.custom_properties["pushed_version"].string_value == version
    assert rerun_summary[-2].endswith(f"{version} (already the latest version: nothing new pushed)")

    refusing = load_config("demo", "", overrides[:-1] + ["top1_lower_bound=1.01"])
    refused_summary = run(refusing)  # the trained model is reused from cache; the stricter bound refuses it
    assert _pushed(store)[-1] == 0
    assert refused_summary[-1] == ("pushed model:      (not pushed: the Evaluator did not bless the model; the metrics "
                                   "report says why)")
    assert [v for v in os.listdir(tmp_path / "serving" / "hrnet") if not v.startswith(".")] == versions


@pytest.mark.e2e
def test_whole_pipeline_on_a_bucket(tmp_path):
    """root, input_base and serving_base on TF's in-memory ram:// file system (one process: one Horovod
    worker), ML Metadata local; the served version is complete and the rerun pushes nothing new."""
    import ram_beam_filesystem  # noqa: F401  (Beam IO in TFMA's Evaluator reaches ram:// through tf.io.gfile)
    import tensorflow as tf

    from hrnet_tfx.serving import model_base
    from hrnet_tfx.fs import copy_tree

    bucket = f"ram://pipeline-{os.getpid()}"
    make_sample(str(tmp_path / "sample"), num_classes=3, train_per_class=4, val_per_class=2, image_size=48)
    copy_tree(str(tmp_path / "sample"), f"{bucket}/sample")
    config = load_config("demo", "", [f"input_base={bucket}/sample", f"root={bucket}/root",
                                      f"serving_base={bucket}/serving", f"metadata_path={tmp_path / 'mlmd.sqlite'}",
                                      "train.train_steps=4", "top1_lower_bound=0.0"])
    run(config)
    assert tf.io.gfile.exists(f"{bucket}/root/pipeline_config.json")
    (version,) = model_base.complete_versions(f"{bucket}/serving/hrnet")
    run(config)
    assert model_base.complete_versions(f"{bucket}/serving/hrnet") == [version]
    assert not os.path.exists("ram:")  # nothing went to a local ./ram:/ directory
