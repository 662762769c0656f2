"""The HorovodTrainer TFX component: definition-time checks (fast) and a real LocalDagRunner pipeline
ImageExampleGen -> HorovodTrainer on a tiny sample (e2e)."""

import json
import os

import pytest

import hrnet_tfx  # noqa: F401
import tensorflow as tf
from tfx import v1 as tfx

from hrnet_tfx.components.image_example_gen import ImageExampleGen
from hrnet_tfx.components.trainer import HorovodTrainer, resolve_config
from hrnet_tfx.data.sample import make_sample
from hrnet_tfx.models.config import ConfigError

from conftest import REPO

BEAM_ARGS = ["--runner=FnApiRunner", f"--setup_file={REPO / 'setup.py'}"]
TINY = dict(model="tiny.yaml", image_size=64, per_worker_batch_size=6, train_steps=6, log_every_steps=3,
            checkpoint_every_steps=3)


def test_component_checks_its_config_at_definition():
    from tfx.types import Channel

    examples = Channel(type=tfx.types.standard_artifacts.Examples)
    with pytest.raises(ConfigError, match="unknown key"):
        HorovodTrainer(examples, train_config={"modle": "hrnet_w18"})
    with pytest.raises(ValueError, match=r"must not set \['train_files'\]"):
        HorovodTrainer(examples, train_config={"train_files": "/data/*"})


def test_checkpoint_dir_is_stable_for_the_same_inputs_and_config(tmp_path):
    examples = tmp_path / "ExampleGen" / "examples" / "1"  # from another ExampleGen: no manifest
    (examples / "Split-train").mkdir(parents=True)
    p = str(tmp_path)
    a = resolve_config(TINY, str(examples), f"{p}/Trainer/model_run/7", f"{p}/Trainer/model/7")
    b = resolve_config(TINY, str(examples), f"{p}/Trainer/model_run/9", f"{p}/Trainer/model/9")
    c = resolve_config({**TINY, "train_steps": 7}, str(examples), f"{p}/Trainer/model_run/9", f"{p}/Trainer/model/9")
    assert a.model_dir == b.model_dir != c.model_dir
    assert a.model_dir.startswith(f"{p}/Trainer/checkpoints/")
    assert a.export_dir == f"{p}/Trainer/model/7/Format-Serving"
    assert (a.train_files, a.eval_files) == (f"{examples}/Split-train/*", f"{examples}/Split-eval/*")
    assert (a.num_train_examples, a.label_map) == (0, "")  # counted by the launcher


def test_converted_examples_give_counts_and_labels_without_reading_records(tmp_path):
    """The manifest -> settings mapping the component shares with 'hrnet-tfx train --data' (the real
    converter's manifest is used by the e2e tests)."""
    from hrnet_tfx.data import layout
    from hrnet_tfx.data.training_data import training_data_settings

    examples = tmp_path / "examples"
    (examples / "Split-train").mkdir(parents=True)
    (examples / "labels.tsv").write_text("0\ta\ta\n1\tb\tb\n2\tc\tc\n")
    (examples / "manifest.json").write_text(json.dumps(
        {"format": layout.MANIFEST_FORMAT, "complete": True, "num_classes": 3,
         "splits": {"train": {"num_examples": 6}, "eval": {"num_examples": 3}}}))
    settings = training_data_settings(str(examples))
    config = resolve_config(TINY, str(examples), str(tmp_path / "T/model_run/1"), str(tmp_path / "T/model/1"))
    assert (settings["num_train_examples"], settings["num_classes"]) == (6, 3)
    assert (config.num_train_examples, config.num_classes) == (6, 3)
    assert config.label_map == str(examples / "labels.tsv")
    assert config.train_files == settings["train_files"] == str(examples / "Split-train" / "train-*-of-*")
    assert resolve_config({**TINY, "num_classes": 4}, str(examples), str(tmp_path / "T/model_run/1"),
                          str(tmp_path / "T/model/1")).num_classes == 4  # the user's setting wins


@pytest.mark.e2e
def test_pipeline_trains_and_exports(tmp_path):
    data = tmp_path / "data"
    make_sample(str(data), num_classes=3, train_per_class=6, val_per_class=2, image_size=48)
    example_gen = ImageExampleGen(str(data), train_shards=2, eval_shards=2)
    trainer = HorovodTrainer(example_gen.outputs["examples"], train_config=TINY, num_workers=1)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="trainer-test", pipeline_root=str(tmp_path / "root"), components=[example_gen, trainer],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(tmp_path / "mlmd.sqlite")),
        beam_pipeline_args=BEAM_ARGS,
    )
    tfx.orchestration.LocalDagRunner().run(pipeline)

    model_root = tmp_path / "root" / "HorovodTrainer" / "model"
    (execution,) = os.listdir(model_root)
    serving = model_root / execution / "Format-Serving"
    loaded = tf.saved_model.load(str(serving))
    assert {"serving_default", "predict_images", "predict_examples"} <= set(loaded.signatures)
    labels = (serving / "assets" / "labels.tsv").read_text().splitlines()
    assert len(labels) == 3
    run_dir = tmp_path / "root" / "HorovodTrainer" / "model_run" / execution
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 6 and metrics["count"] == 6
    assert json.loads((run_dir / "train_config.json").read_text())["num_classes"] == 3
    assert os.listdir(run_dir / "tensorboard")
