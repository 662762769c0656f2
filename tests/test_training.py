"""The trainer: config layers, schedule, early errors (fast); real single-worker and two-rank Horovod
training, kill-and-resume, eval-only and the tf.distribute fallback (e2e)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pytest

from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.training import TrainConfig, launch, worker_command
from hrnet_tfx.training.launcher import prepare
from hrnet_tfx.training.loop import validate
from hrnet_tfx.training.schedule import WarmupSchedule

from conftest import REPO


def _config(records, model_dir, **overrides) -> TrainConfig:
    base = dict(
        model="tiny.yaml", num_classes=3, image_size=64, train_files=str(records / "train" / "*"),
        eval_files=str(records / "eval" / "*"), label_map=str(records / "labels.tsv"), model_dir=str(model_dir),
        global_batch_size=8, train_steps=30, log_every_steps=10, checkpoint_every_steps=10, base_lr=0.8,
        lr_decay_epochs=[3.0], seed=1, deterministic=True,
    )
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------- fast tier: config and schedule


def test_defaults_are_the_official_recipe():
    c = TrainConfig()
    assert (c.per_worker_batch_size, c.momentum, c.nesterov, c.weight_decay) == (32, 0.9, True, 1e-4)
    assert c.lr_decay_epochs == (30.0, 60.0, 90.0) and c.epochs == 100
    official = c.for_workers(4)  # 4 GPUs x 32 images, lr 0.05
    assert (official.global_batch_size, official.peak_lr, official.resolved_warmup_epochs) == (128, 0.05, 0)
    big = c.for_workers(32)
    assert (big.global_batch_size, big.resolved_warmup_epochs) == (1024, 5) and big.peak_lr == pytest.approx(0.4)


def test_per_worker_batch_is_the_knob_and_an_explicit_global_batch_wins():
    eight = TrainConfig().for_workers(8)
    assert (eight.per_worker_batch_size, eight.global_batch_size, eight.peak_lr) == (32, 256, 0.1)
    assert eight.for_workers(8) == eight  # resolving again changes nothing
    fixed = TrainConfig(global_batch_size=128).for_workers(8)
    assert (fixed.per_worker_batch_size, fixed.global_batch_size, fixed.peak_lr) == (16, 128, 0.05)
    with pytest.raises(ConfigError, match="global_batch_size 128 is not divisible by 3 workers"):
        TrainConfig(global_batch_size=128).for_workers(3)
    with pytest.raises(ConfigError, match="global batch is not resolved"):
        TrainConfig().peak_lr
    with pytest.raises(ConfigError, match="per_worker_batch_size must be >= 1"):
        TrainConfig(per_worker_batch_size=0)


def test_config_file_overrides_and_unknown_keys(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: hrnet_w32\nepochs: 2\nlr_decay_epochs: [1]\n")
    c = TrainConfig.from_file(str(path), ["global_batch_size=256", "label_smoothing=0.1"])
    assert (c.model, c.epochs, c.global_batch_size, c.label_smoothing) == ("hrnet_w32", 2.0, 256, 0.1)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['learning_rate'\]; allowed: "):
        TrainConfig.from_file(str(path), ["learning_rate=0.1"])
    with pytest.raises(ConfigError, match="global_batch_size='many'"):
        TrainConfig.from_file(str(path), ["global_batch_size=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        TrainConfig.from_file(str(path), ["epochs"])
    with pytest.raises(ConfigError, match="schedule must be one of"):
        TrainConfig(schedule="linear")


def test_train_command_names_the_allowed_keys_for_an_unknown_one(tmp_path):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    result = CliRunner().invoke(main, ["train", "--model-dir", str(tmp_path / "m"), "-s", "label_smothing=0.1"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "training config: unknown key(s) ['label_smothing' (did you mean 'label_smoothing'?)]; allowed: " \
           "backend, base_batch, base_lr, checkpoint_every_steps, " in result.output
    assert ", weight_decay\n" in result.output


def test_schedule_step_warmup_and_cosine():
    step = WarmupSchedule(0.4, steps_per_epoch=10, total_epochs=100, warmup_epochs=5, kind="step",
                          decay_epochs=[30, 60, 90])
    assert float(step(0)) == pytest.approx(0.4 * 0.1 / 5)
    assert float(step(25)) == pytest.approx(0.4 * 2.6 / 5)
    assert float(step(50)) == pytest.approx(0.4)
    assert float(step(299)) == pytest.approx(0.4)
    assert float(step(300)) == pytest.approx(0.04)
    assert float(step(950)) == pytest.approx(0.0004)
    cosine = WarmupSchedule(0.1, steps_per_epoch=10, total_epochs=10, kind="cosine")
    assert float(cosine(0)) == pytest.approx(0.1)
    assert float(cosine(50)) == pytest.approx(0.05)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-7)


def test_bad_configuration_fails_before_training(color_records, tmp_path):
    import tensorflow as tf

    good = _config(color_records, tmp_path / "m")
    validate(good, 2)
    with pytest.raises(ConfigError, match="unknown model 'hrnet_w99'"):
        validate(good.replace(model="hrnet_w99"), 1)
    with pytest.raises(ConfigError, match=r"^num_classes is 0 \(from the data\) and no manifest.json gave the class count: set num_classes"):
        validate(good.replace(num_classes=0), 1)  # the pipeline's "from the data", left unresolved
    with pytest.raises(ConfigError, match="not divisible by 3 workers"):
        validate(good, 3)
    with pytest.raises(ConfigError, match="eval_files: no files match"):
        validate(good.replace(eval_files=str(tmp_path / "none-*")), 1)
    with pytest.raises(ConfigError, match=r"train_files is not set: give the data \(hrnet-tfx train --data DIR, "
                       r"or -s train_files=PATTERN -s eval_files=PATTERN"):
        validate(good.replace(train_files=""), 1)
    with pytest.raises(ConfigError, match="eval-only needs a checkpoint"):
        validate(good, 1, eval_only=True)
    with pytest.raises(ConfigError, match="init_from not found"):
        validate(good.replace(init_from=str(tmp_path / "w.pth")), 1)
    validate(good.replace(export_dir=str(tmp_path / "new-export")), 1)
    for existing in (tmp_path / "export", f"ram://{uuid.uuid4().hex}/export"):  # local and a bucket-like path
        tf.io.gfile.makedirs(str(existing))
        with pytest.raises(ConfigError, match=rf"^export_dir {re.escape(str(existing))} already exists: remove it "
                                              "or export elsewhere$"):
            validate(good.replace(export_dir=str(existing)), 1)


def test_training_refuses_serving_weight_caching(color_records, tmp_path, monkeypatch):
    """TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 (a serving setting) makes oneDNN keep the first weights it saw; a
    2-worker training run under it went NaN. Training refuses it, naming it; evaluation does not."""
    good = _config(color_records, tmp_path / "m")
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    with pytest.raises(ConfigError, match=r"^TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 is set: oneDNN would keep computing "
                       r"with the first weights .* unset it to train"):
        validate(good, 1)
    with pytest.raises(ConfigError, match="eval-only needs a checkpoint"):  # past the check
        validate(good, 1, eval_only=True)
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "0")
    validate(good, 1)


def test_worker_command_is_the_outside_launcher_entry_point():
    cmd = worker_command("/cfg.json", eval_only=True)
    assert cmd[1:] == ["-m", "hrnet_tfx.training.worker", "--config", "/cfg.json", "--eval-only"]
    cmd = worker_command("/cfg.json", allow_changed_config=True)
    assert cmd[1:] == ["-m", "hrnet_tfx.training.worker", "--config", "/cfg.json", "--allow-changed-config"]


def test_launcher_counts_the_examples_once_for_every_worker(color_records, tmp_path):
    """The workers get the count in their config (they count only when it is 0)."""
    config = _config(color_records, tmp_path / "m", global_batch_size=0, per_worker_batch_size=4)
    prepared = prepare(config, workers=2)
    assert (prepared.num_train_examples, prepared.per_worker_batch_size, prepared.global_batch_size) == (48, 4, 8)
    assert prepare(config.replace(num_train_examples=40), workers=2).num_train_examples == 40  # given: not counted


def _fake_run(model_dir, config: TrainConfig) -> None:
    """A model dir as a run leaves it: ``train_config.json`` and a (real, if tiny) checkpoint ``ckpt-10``."""
    import tensorflow as tf

    config.replace(model_dir=str(model_dir)).save(str(model_dir / "train_config.json"))
    tf.train.Checkpoint(v=tf.Variable(1.0)).write(str(model_dir / "checkpoints" / "ckpt-10"))


def test_train_command_refuses_a_resume_with_other_settings(color_records, tmp_path):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    data = ["-s", f"train_files={color_records / 'train' / '*'}", "-s", f"eval_files={color_records / 'eval' / '*'}"]
    first = ["-s", "image_size=64", "-s", "per_worker_batch_size=16", "-s", "train_steps=300", "-s", "num_classes=3"]
    saved = TrainConfig.from_file("", [a for a in data + first if a != "-s"] + ["model=tiny.yaml"])
    _fake_run(tmp_path / "m", saved.for_workers(1).replace(num_train_examples=48))
    args = ["train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--workers", "1", *data]
    result = CliRunner().invoke(main, args + ["-s", "num_classes=3", "-s", "log_every_steps=7"])  # -s options dropped
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "holds checkpoints of a run with other settings" in result.output
    for change in ("image_size: 64 -> 224", "per_worker_batch_size: 16 -> 32", "global_batch_size: 16 -> 32",
                   "train_steps: 300 -> 0", "--allow-changed-config"):
        assert change in result.output, change
    assert "log_every_steps" not in result.output  # free to change
    evaluated = CliRunner().invoke(main, args + first[:2] + ["-s", "num_classes=5", "--eval-only"])
    assert evaluated.exit_code != 0 and "num_classes: 3 -> 5" in evaluated.output
    assert "per_worker_batch_size" not in evaluated.output  # eval-only compares the model only


def test_train_command_refuses_eval_only_with_a_random_classifier(color_records, tmp_path):
    """The PyTorch fixture has 10 classes: evaluating it on 3 would score a random head."""
    from click.testing import CliRunner

    from conftest import FIXTURES
    from hrnet_tfx.cli import main

    result = CliRunner().invoke(main, [
        "train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--workers", "1", "--eval-only",
        "--init-from", str(FIXTURES / "timm_tiny" / "state_dict.safetensors"), "-s", "num_classes=3",
        "-s", "image_size=64", "-s", f"eval_files={color_records / 'eval' / '*'}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "has a classifier of 10 classes, num_classes is 3: eval-only would evaluate a randomly initialised " \
           "classifier" in result.output


def _ten_class_model():
    from hrnet_tfx.models import build_model

    return build_model("tiny.yaml", num_classes=10, image_size=64)


@pytest.fixture(scope="module")
def ten_class_checkpoint(tmp_path_factory):
    """A 10-class tiny network's checkpoint directory as the loop writes it (model and optimizer, through a
    CheckpointManager), and its first conv kernel; the runs below have 3 classes."""
    import tensorflow as tf
    import tf_keras as keras

    root = tmp_path_factory.mktemp("ten")
    model = _ten_class_model()
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model, optimizer=optimizer), str(root / "checkpoints"),
                               max_to_keep=1, checkpoint_name="ckpt").save(checkpoint_number=7)
    return str(root / "checkpoints"), model.get_layer("conv1").kernel.numpy()


@pytest.fixture(scope="module")
def ten_class_export(tmp_path_factory):
    """The same network exported as a SavedModel (about 25 s on 2 cores: e2e tier)."""
    from hrnet_tfx.serving.export import export_saved_model

    export_dir = str(tmp_path_factory.mktemp("ten_export") / "export")
    export_saved_model(_ten_class_model(), export_dir, [f"c{i}" for i in range(10)], image_size=64)
    return export_dir


def _eval_only_from(init_from: str, color_records, tmp_path):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    result = CliRunner().invoke(main, [
        "train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--workers", "1", "--eval-only",
        "--init-from", init_from, "-s", "num_classes=3", "-s", "image_size=64",
        "-s", f"eval_files={color_records / 'eval' / '*'}"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output == f"Error: init_from {init_from} has a classifier of 10 classes, num_classes is 3: " \
                            "eval-only would evaluate a randomly initialised classifier. Set num_classes to match, " \
                            "or train (fine-tune) first.\n"


def test_train_command_refuses_eval_only_of_a_checkpoint_with_other_classes(ten_class_checkpoint, color_records,
                                                                            tmp_path):
    """It failed with a raw restore error."""
    _eval_only_from(ten_class_checkpoint[0], color_records, tmp_path)


@pytest.mark.e2e
def test_train_command_refuses_eval_only_of_a_saved_model_with_other_classes(ten_class_export, color_records,
                                                                             tmp_path):
    """It evaluated a random classifier."""
    _eval_only_from(ten_class_export, color_records, tmp_path)


# ---------------------------------------------------------------- e2e tier: real training runs


@pytest.fixture(scope="module")
def single(color_records, tmp_path_factory):
    """One uninterrupted single-worker run (Horovod, size 1) with export."""
    model_dir = tmp_path_factory.mktemp("single")
    config = _config(color_records, model_dir, export_dir=str(model_dir / "export"))
    return config, launch(config, num_workers=1)


@pytest.mark.e2e
def test_single_worker_learns_checkpoints_and_exports(single):
    config, metrics = single
    history = metrics["train_history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["count"] == 12 and metrics["top1"] >= 2 / 3
    ckpts = sorted(os.listdir(os.path.join(config.model_dir, "checkpoints")))
    assert "ckpt-30.index" in ckpts and "ckpt-20.index" in ckpts
    assert os.path.exists(os.path.join(config.export_dir, "saved_model.pb"))
    assert os.path.exists(os.path.join(config.export_dir, "assets", "labels.tsv"))
    assert os.listdir(os.path.join(config.model_dir, "tensorboard"))
    saved = json.loads(open(os.path.join(config.model_dir, "train_config.json")).read())
    assert saved["train_steps"] == 30 and TrainConfig.from_dict(saved) == config.for_workers(1).replace(
        num_train_examples=48)  # resolved: both batch numbers and the count


def _same_eval(a: dict, b: dict) -> None:
    """Two evaluations of the same weights on the same 12 images: the same counts, the same loss up to
    the order of float sums (batches and shards differ)."""
    assert (a["count"], a["top1"], a["top5"]) == (b["count"], b["top1"], b["top5"]) and a["count"] == 12
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-7)


def _evaluate_saved_model(export_dir: str, config: TrainConfig) -> dict:
    """Top-1/top-5/loss of an exported SavedModel on the eval files, through its ``logits`` function."""
    import tensorflow as tf

    from hrnet_tfx.data.input import make_dataset

    loaded = tf.saved_model.load(export_dir)
    dataset = make_dataset(config.eval_files, training=False, batch_size=5, image_size=config.image_size,
                           num_classes=config.num_classes)
    logits, labels = [], []
    for images, batch_labels in dataset:
        logits.append(loaded.logits(images).numpy())
        labels.append(batch_labels.numpy())
    logits, labels = np.concatenate(logits).astype(np.float64), np.concatenate(labels)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    ranks = (logits > logits[np.arange(len(labels)), labels][:, None]).sum(1)  # classes scoring higher
    return {"count": len(labels), "top1": float(np.mean(ranks < 1)), "top5": float(np.mean(ranks < 5)),
            "loss": float(-log_probs[np.arange(len(labels)), labels].mean())}


@pytest.mark.e2e
def test_two_horovod_ranks_report_the_model_they_export(single, color_records, tmp_path, caplog):
    """One 2-worker run (4 images per worker): both ranks hold identical weights, BatchNorm statistics
    included; its metrics.json, its periodic eval, --eval-only on its checkpoints and the exported
    SavedModel all score the same model."""
    config, reference = single
    config = config.replace(model_dir=str(tmp_path / "two"), export_dir=str(tmp_path / "two-export"),
                            global_batch_size=0, per_worker_batch_size=4, checkpoint_every_steps=15,
                            eval_every_epochs=2.5)  # 6 steps/epoch: a periodic eval at step 15
    with caplog.at_level("INFO", logger="hrnet_tfx.training"):
        metrics = launch(config, num_workers=2)
    assert "batch: 4 per worker x 2 worker(s) = global batch 8; peak lr 0.05 " in caplog.text
    for name in ("launch_config.json", "train_config.json"):  # counted once, by the launcher
        saved = json.loads((tmp_path / "two" / name).read_text())
        assert (saved["per_worker_batch_size"], saved["global_batch_size"], saved["num_train_examples"]) == (4, 8, 48)
    checksums = metrics["weight_checksums"]
    assert len(checksums) == 2 and len(checksums[0]) == 4 and checksums[0] == checksums[1]
    history = metrics["train_history"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert metrics["step"] == reference["step"] == 30
    assert metrics["learning_rate"] == pytest.approx(reference["learning_rate"])
    # Same global batch, same recipe: the pair reaches what one process reaches (BN batch statistics
    # come from 4 images instead of 8, so not bit-identical).
    assert abs(history[-1]["loss"] - reference["train_history"][-1]["loss"]) < 0.5
    assert metrics["top1"] >= 2 / 3

    written = json.loads((tmp_path / "two" / "metrics.json").read_text())
    _same_eval(written, metrics)
    evaluated = launch(config.replace(export_dir=""), num_workers=1, eval_only=True)
    assert evaluated["step"] == 30
    _same_eval(evaluated, written)
    _same_eval(_evaluate_saved_model(config.export_dir, config), written)

    (periodic,) = metrics["eval_history"]
    assert periodic["step"] == 15
    at15 = tmp_path / "at15"
    shutil.copytree(tmp_path / "two", at15)
    for path in (at15 / "checkpoints").glob("ckpt-30.*"):
        path.unlink()
    evaluated = launch(config.replace(model_dir=str(at15), export_dir=""), num_workers=1, eval_only=True)
    assert evaluated["step"] == 15
    _same_eval(evaluated, periodic)


def _copy_run(config: TrainConfig, where) -> TrainConfig:
    """A copy of ``config``'s model dir (without its export) and the config pointing at it."""
    shutil.copytree(config.model_dir, where, ignore=shutil.ignore_patterns("export"))
    return config.replace(model_dir=str(where), export_dir="")


def _checkpoint_files(model_dir) -> dict:
    return {p.name: p.read_bytes() for p in sorted((model_dir / "checkpoints").glob("ckpt-*"))}


@pytest.mark.e2e
def test_resume_falls_back_past_damaged_checkpoints(single, tmp_path, caplog):
    config = _copy_run(single[0], tmp_path / "damaged")  # ckpt-10, ckpt-20, ckpt-30
    ckpts = tmp_path / "damaged" / "checkpoints"
    (data30,) = ckpts.glob("ckpt-30.data-*")
    data30.write_bytes(data30.read_bytes()[: data30.stat().st_size // 2])  # cut short
    (data20,) = ckpts.glob("ckpt-20.data-*")
    data20.unlink()  # lost
    with caplog.at_level("WARNING", logger="hrnet_tfx.training"):
        metrics = launch(config, num_workers=1)
    assert metrics["start_step"] == 10 and metrics["step"] == 30
    assert f"checkpoint {ckpts / 'ckpt-30'} cannot be read" in caplog.text
    assert f"checkpoint {ckpts / 'ckpt-20'} cannot be read" in caplog.text
    assert f"resuming from {ckpts / 'ckpt-10'}: the newer checkpoint(s) ckpt-30, ckpt-20 could not be read" \
        in caplog.text
    assert tf_latest(ckpts) == str(ckpts / "ckpt-30")  # saved again, readable
    assert sorted(p.name for p in ckpts.glob("damaged-*")) == sorted(  # kept aside, for inspection
        ["damaged-ckpt-30.index", f"damaged-{data30.name}", "damaged-ckpt-20.index"])


def tf_latest(ckpts) -> str:
    import tensorflow as tf

    return tf.train.latest_checkpoint(str(ckpts))


@pytest.mark.e2e
def test_garbled_checkpoint_state_resumes_from_the_newest_checkpoint(single, tmp_path):
    config = _copy_run(single[0], tmp_path / "garbled")
    ckpts = tmp_path / "garbled" / "checkpoints"
    (ckpts / "checkpoint").write_text('model_checkpoint_path: "ckpt-3\x00')  # cut mid-write
    before = _checkpoint_files(tmp_path / "garbled")
    metrics = launch(config, num_workers=1)
    assert metrics["start_step"] == 30 and metrics["step"] == 30  # not a restart at step 0
    assert _checkpoint_files(tmp_path / "garbled") == before  # no ckpt-N written over
    assert tf_latest(ckpts) == str(ckpts / "ckpt-30")  # the state file agrees again
    _same_eval(metrics, single[1])


@pytest.mark.e2e
def test_no_readable_checkpoint_is_an_error_not_a_restart(single, tmp_path):
    from hrnet_tfx.training.checkpoints import CheckpointError

    config = _copy_run(single[0], tmp_path / "unreadable")
    for path in (tmp_path / "unreadable" / "checkpoints").glob("ckpt-*.data-*"):
        path.write_bytes(b"\0" * 10)
    before = _checkpoint_files(tmp_path / "unreadable")
    with pytest.raises(CheckpointError, match=r"holds checkpoint files but none can be read \(ckpt-30: .*; "
                                              r"ckpt-20: .*; ckpt-10: .*\)\. Refusing to start again at step 0"):
        launch(config, num_workers=1)
    assert _checkpoint_files(tmp_path / "unreadable") == before


def _to_ram(records) -> str:
    """A copy of the colour records on TF's in-memory file system."""
    import tensorflow as tf

    root = f"ram://training-{uuid.uuid4().hex}"
    for path in records.rglob("*"):
        if path.is_file():
            target = f"{root}/{path.relative_to(records)}"
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(str(path), target)
    return root


@pytest.mark.e2e
def test_train_resume_and_eval_only_on_a_bucket_like_file_system(color_records):
    """Data and model_dir on ram:// (in this process only, so one in-process worker)."""
    import tensorflow as tf

    root = _to_ram(color_records)
    config = _config(color_records, f"{root}/run", train_files=f"{root}/train/*", eval_files=f"{root}/eval/*",
                     label_map=f"{root}/labels.tsv", train_steps=4, checkpoint_every_steps=2, log_every_steps=2)
    first = launch(config, num_workers=1)
    assert first["step"] == 4
    ckpts = f"{root}/run/checkpoints"
    assert {"ckpt-2.index", "ckpt-4.index", "checkpoint"} <= set(tf.io.gfile.listdir(ckpts))
    for path in tf.io.gfile.glob(f"{ckpts}/ckpt-4.data-*"):  # the newest checkpoint is lost
        tf.io.gfile.remove(path)
    resumed = launch(config, num_workers=1)
    assert (resumed["start_step"], resumed["step"]) == (2, 4)
    evaluated = launch(config, num_workers=1, eval_only=True)
    assert evaluated["step"] == 4
    _same_eval(evaluated, resumed)
    with tf.io.gfile.GFile(f"{root}/run/train_config.json") as f:
        assert TrainConfig.from_dict(json.load(f)) == config.for_workers(1).replace(num_train_examples=48)
    for name, step in (("metrics.json", 4), ("eval_metrics.json", 4)):
        with tf.io.gfile.GFile(f"{root}/run/{name}") as f:
            assert json.load(f)["step"] == step
    assert tf.io.gfile.listdir(f"{root}/run/tensorboard")


@pytest.mark.e2e
def test_trainer_exports_to_a_bucket_like_file_system(color_records, tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.chdir(tmp_path)  # a local-only export writes ./ram:/...: keep it out of the work tree

    from hrnet_tfx.models import build_model
    from hrnet_tfx.training.loop import export

    root = f"ram://training-export-{uuid.uuid4().hex}"
    config = _config(color_records, f"{root}/run", export_dir=f"{root}/export")
    export(config, build_model("tiny.yaml", num_classes=3, image_size=64))
    loaded = tf.saved_model.load(f"{root}/export")
    assert {"serving_default", "predict_images", "predict_examples"} <= set(loaded.signatures)


@pytest.mark.e2e
def test_kill_and_resume_continues_where_it_stopped(single, color_records, tmp_path):
    reference_config, reference = single
    config = reference_config.replace(model_dir=str(tmp_path / "killed"), export_dir=str(tmp_path / "killed-export"))
    config.save(str(tmp_path / "cfg.json"))
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1"}
    proc = subprocess.Popen(worker_command(str(tmp_path / "cfg.json")), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoints" / "ckpt-10.index"
    deadline = time.time() + 600
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the worker never wrote its first checkpoint"
    assert not (tmp_path / "killed" / "metrics.json").exists() and not (tmp_path / "killed-export").exists()

    metrics = launch(config, num_workers=1)
    assert 10 <= metrics["start_step"] < 30  # resumed, not restarted from scratch
    assert metrics["train_history"][0]["step"] > metrics["start_step"]
    assert metrics["step"] == reference["step"] == 30
    assert metrics["learning_rate"] == pytest.approx(reference["learning_rate"])
    assert os.path.exists(tmp_path / "killed-export" / "saved_model.pb")


@pytest.mark.e2e
def test_eval_only_on_checkpoint_and_on_exported_model(single, tmp_path):
    config, reference = single
    from_checkpoint = launch(config.replace(export_dir=""), num_workers=1, eval_only=True)
    assert from_checkpoint["top1"] == reference["top1"] and from_checkpoint["count"] == 12
    assert from_checkpoint["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    exported = config.replace(model_dir=str(tmp_path / "eval"), export_dir="", init_from=config.export_dir)
    from_export = launch(exported, num_workers=1, eval_only=True)
    assert from_export["loss"] == pytest.approx(reference["loss"], rel=1e-5)
    written = json.loads(open(os.path.join(config.model_dir, "eval_metrics.json")).read())
    assert written["eval_only"] and written["top1"] == reference["top1"]
    trained = json.loads(open(os.path.join(config.model_dir, "metrics.json")).read())
    assert not trained["eval_only"] and len(trained["train_history"]) == 3  # the training run's, kept


@pytest.mark.e2e
def test_tf_distribute_fallback_trains(color_records, tmp_path, caplog):
    config = _config(color_records, tmp_path / "mirrored", backend="tf_distribute", train_steps=4,
                     log_every_steps=2)
    with caplog.at_level("INFO"):
        metrics = launch(config, num_workers=1)
    assert "MirroredStrategy" in caplog.text and "Horovod not used" in caplog.text
    assert metrics["step"] == 4 and np.isfinite(metrics["loss"])


@pytest.mark.e2e
def test_fine_tune_from_pytorch_weights_with_new_classifier(color_records, tmp_path, caplog):
    from conftest import FIXTURES

    config = _config(color_records, tmp_path / "ft", train_steps=2, log_every_steps=1,
                     init_from=str(FIXTURES / "timm_tiny" / "state_dict.safetensors"))
    with caplog.at_level("WARNING", logger="hrnet_tfx.training"):
        metrics = launch(config, num_workers=1)  # the fixture has 10 classes: the classifier is left random
    assert metrics["step"] == 2
    assert "has a classifier of 10 classes, this run has 3 classes: the classifier starts from random weights " \
           "(fine-tuning)" in caplog.text


def test_worker_module_runs_as_a_script_with_bad_config(tmp_path):
    (tmp_path / "bad.yaml").write_text("nope: 1\n")
    result = subprocess.run([sys.executable, "-m", "hrnet_tfx.training.worker", "--config", str(tmp_path / "bad.yaml")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "unknown key(s) ['nope']" in result.stderr


def test_train_command_errors_are_clean(color_records, tmp_path):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--model-dir", str(tmp_path / "m")])
    assert result.exit_code != 0 and "neither 'hrnet-tfx data convert' output" in result.output
    result = CliRunner().invoke(main, ["train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "eval_files is not set: give the data (hrnet-tfx train --data DIR, or -s train_files=PATTERN -s " \
           "eval_files=PATTERN" in result.output
    (tmp_path / "half" / "Split-train").mkdir(parents=True)  # an unfinished conversion
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "half"), "--model-dir", str(tmp_path / "m")])
    assert result.exit_code != 0 and "holds no completed conversion" in result.output
    assert "Traceback" not in result.output
    help_text = " ".join(CliRunner().invoke(main, ["train", "--help"]).output.split())
    assert "the options below" in help_text and "above" not in help_text
    assert "--allow-changed-config" in help_text
    result = CliRunner().invoke(main, ["train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"),
                                       "--eval-only", "-s", f"eval_files={color_records / 'eval' / '*'}"])
    assert result.exit_code != 0 and "eval-only needs a checkpoint" in result.output


@pytest.mark.e2e
def test_train_command_fine_tunes_a_checkpoint_of_other_classes(ten_class_checkpoint, color_records, tmp_path,
                                                                caplog):
    """The checkpoint's 10-class classifier is dropped with a warning; every other weight starts from it."""
    import tensorflow as tf
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    source, conv1 = ten_class_checkpoint
    with caplog.at_level("WARNING"):
        result = CliRunner().invoke(main, [
            "train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--workers", "1",
            "--init-from", source, "-s", "num_classes=3", "-s", "image_size=64",
            "-s", "train_steps=1", "-s", "global_batch_size=4", "-s", "base_lr=1e-12", "-s", "num_train_examples=48",
            "-s", f"train_files={color_records / 'train' / '*'}", "-s", f"eval_files={color_records / 'eval' / '*'}"])
    assert result.exit_code == 0, result.output
    assert f"init_from {source} has a classifier of 10 classes, this run has 3 classes: " \
           "the classifier starts from random weights (fine-tuning)" in caplog.text
    reader = tf.train.load_checkpoint(str(tmp_path / "m" / "checkpoints"))
    after = reader.get_tensor("model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE")
    np.testing.assert_allclose(after, conv1, atol=1e-9)  # one step at lr 1e-12
    assert reader.get_tensor("model/layer_with_weights-172/kernel/.ATTRIBUTES/VARIABLE_VALUE").shape[-1] == 3


@pytest.mark.e2e
def test_train_command_on_converted_sample(tmp_path):
    """The standalone flow: make-sample -> data convert -> train (with export) -> eval-only."""
    from click.testing import CliRunner

    from hrnet_tfx.cli import main
    from hrnet_tfx.data.layout import load_manifest

    runner = CliRunner()
    assert runner.invoke(main, ["data", "make-sample", str(tmp_path / "raw"), "--classes", "3"]).exit_code == 0
    converted = runner.invoke(main, ["data", "convert", str(tmp_path / "raw"), str(tmp_path / "data"),
                                     "--train-shards", "2", "--eval-shards", "2"])
    assert converted.exit_code == 0, converted.output
    args = ["train", "--model", "tiny.yaml", "--data", str(tmp_path / "data"), "--model-dir", str(tmp_path / "m"),
            "--workers", "1", "-s", "image_size=64", "-s", "global_batch_size=6", "-s", "train_steps=3",
            "-s", "log_every_steps=1"]
    result = runner.invoke(main, args + ["--export-dir", str(tmp_path / "export")])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    manifest = load_manifest(str(tmp_path / "data"))
    assert summary["step"] == 3 and summary["count"] == manifest["splits"]["eval"]["num_examples"]  # the whole split
    assert os.path.exists(tmp_path / "export" / "saved_model.pb")
    again = runner.invoke(main, args + ["--eval-only"])
    assert again.exit_code == 0 and json.loads(again.output.strip().splitlines()[-1])["top1"] == summary["top1"]
    refused = runner.invoke(main, args + ["--no-resume"])
    assert refused.exit_code != 0 and "already has checkpoints" in refused.output
    saved = json.loads((tmp_path / "m" / "train_config.json").read_text())
    assert (saved["per_worker_batch_size"], saved["global_batch_size"], saved["num_train_examples"]) == (6, 6, 60)
    # A rerun that drops the -s options would train another recipe on these checkpoints: refused.
    dropped = runner.invoke(main, args[:9])  # without the -s options
    assert dropped.exit_code != 0 and "Traceback" not in dropped.output
    for change in ("image_size: 64 -> 224", "global_batch_size: 6 -> 32", "train_steps: 3 -> 0"):
        assert change in dropped.output, change
    longer = runner.invoke(main, args + ["-s", "train_steps=5"])
    assert longer.exit_code != 0 and "train_steps: 3 -> 5" in longer.output
    longer = runner.invoke(main, args + ["-s", "train_steps=5", "--allow-changed-config"])
    assert longer.exit_code == 0, longer.output
    assert json.loads(longer.output.strip().splitlines()[-1])["step"] == 5
    assert json.loads((tmp_path / "m" / "train_config.json").read_text())["train_steps"] == 5


@pytest.mark.e2e
def test_mixed_precision_and_fp16_allreduce_options_train(color_records, tmp_path):
    config = _config(color_records, tmp_path / "opts", train_steps=3, log_every_steps=1, dtype_policy="mixed_bfloat16",
                     fp16_allreduce=True, label_smoothing=0.1, schedule="cosine",
                     warmup_epochs=0.5, export_dir=str(tmp_path / "opts-export"))
    metrics = launch(config, num_workers=1)
    assert metrics["step"] == 3 and all(np.isfinite(h["loss"]) for h in metrics["train_history"])
    assert os.path.exists(tmp_path / "opts-export" / "saved_model.pb")  # exported as float32


@pytest.mark.e2e
def test_xla_training_matches_plain_training(color_records, tmp_path):
    """jit_compile compiles forward + gradient with XLA (the fusion upsampling has an XLA gradient)."""
    runs = {}
    for jit in (False, True):
        config = _config(color_records, tmp_path / f"jit{jit}", train_steps=3, log_every_steps=1,
                         checkpoint_every_steps=100, jit_compile=jit, base_lr=0.05)
        runs[jit] = launch(config, num_workers=1)
    losses = {jit: [h["loss"] for h in m["train_history"]] for jit, m in runs.items()}
    assert len(losses[True]) == 3 and all(np.isfinite(losses[True]))
    # Same seed, same data: XLA only reorders float32 sums (gradients agree to ~1e-3, see test_models).
    np.testing.assert_allclose(losses[True], losses[False], rtol=1e-2)


# ---------------------------------------------------------------- init sources checked before the workers


def test_bad_weights_fail_before_any_horovod_worker_starts(color_records, tmp_path):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    weights = tmp_path / "w18.pth"
    weights.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # a cut download: a zip header, then nothing
    model_dir = tmp_path / "m"
    start = time.monotonic()
    result = CliRunner().invoke(main, [
        "train", "--model", "tiny.yaml", "--model-dir", str(model_dir), "--workers", "2", "--init-from",
        str(weights), "-s", f"train_files={color_records / 'train' / '*'}",
        "-s", f"eval_files={color_records / 'eval' / '*'}", "-s", "num_classes=3", "-s", "image_size=64"])
    took = time.monotonic() - start
    assert result.exit_code == 1 and result.exception is not None and "Traceback" not in result.output
    assert result.output == f"Error: {weights}: damaged zip archive (BadZipFile: File is not a zip file)\n"
    assert not (model_dir / "launch_config.json").exists()  # written just before horovodrun starts
    assert took < 5, took


@pytest.mark.parametrize("kind", ["savedmodel", "checkpoint"])
def test_unreadable_tf_init_sources_fail_before_the_workers(kind, color_records, tmp_path):
    import tensorflow as tf

    prefix = tmp_path / kind / "variables" / "variables" if kind == "savedmodel" else tmp_path / kind / "ckpt-1"
    tf.train.Checkpoint(v=tf.Variable(tf.zeros([64]))).write(str(prefix))
    source = tmp_path / kind if kind == "savedmodel" else prefix  # a SavedModel directory, a checkpoint prefix
    if kind == "savedmodel":
        (source / "saved_model.pb").write_bytes(b"")
    data = prefix.parent / f"{prefix.name}.data-00000-of-00001"
    corrupt = bytearray(data.read_bytes())
    corrupt[8] ^= 0xFF  # one flipped bit in a tensor's bytes: only its checksum shows it
    data.write_bytes(bytes(corrupt))
    config = _config(color_records, tmp_path / "m", init_from=str(source))
    with pytest.raises(ConfigError, match=rf"init_from {source}: cannot read {prefix}: .*Checksum does not match"):
        prepare(config, workers=2)
    prepare(config, workers=1)  # one in-process worker: read once, by the worker itself
    data.write_bytes(data.read_bytes()[:8])  # cut short
    with pytest.raises(ConfigError, match=rf"cannot read {prefix}: Read less bytes than requested"):
        prepare(config, workers=2)


@pytest.mark.e2e
def test_failed_horovod_workers_are_one_message_with_the_exit_code(color_records, tmp_path, capfd):
    """Weights that read fine but do not fit the network fail in rank 0; every rank says why in one line."""
    import numpy as np
    import safetensors.numpy
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    weights = tmp_path / "other_net.safetensors"
    safetensors.numpy.save_file({"fc.weight": np.zeros((3, 8), np.float32)}, str(weights))
    result = CliRunner().invoke(main, [
        "train", "--model", "tiny.yaml", "--model-dir", str(tmp_path / "m"), "--workers", "2", "--init-from",
        str(weights), "-s", f"train_files={color_records / 'train' / '*'}",
        "-s", f"eval_files={color_records / 'eval' / '*'}", "-s", "num_classes=3", "-s", "image_size=64",
        "-s", "global_batch_size=8", "-s", "train_steps=1"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == "Error: training workers failed with exit code 1; their errors are in the output above\n"
    workers = capfd.readouterr()
    worker_output = workers.out + workers.err
    assert "Traceback" not in worker_output, worker_output
    assert "[0]<stderr>:1 key(s) not used by the model:\n[0]<stderr>:  fc.weight" in worker_output
    assert "rank 0 failed (see its log); stopping rank 1 too" in worker_output
    # Rank 1 waits before exiting so that rank 0 is usually the one horovodrun names; on a loaded machine the
    # order may still flip, so either rank may be named, but the line must be the last one and say exit code 1.
    assert re.search(r"horovodrun: Horovod detected that one or more processes exited with non-zero status, thus "
                     r"causing the job to be terminated\. The first process to do so was: Process name: [01] "
                     r"Exit code: 1\n\Z", worker_output), worker_output[-600:]


_REPLICA_CHECK = '''
import sys
import tf_keras as keras
from hrnet_tfx.training.distribute import HorovodBackend
from hrnet_tfx.training.loop import check_replicas_consistent

backend = HorovodBackend()
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, kernel_initializer="ones"),
                          keras.layers.BatchNormalization()])
if sys.argv[1] == "diverge" and backend.rank == 1:
    model.layers[1].moving_mean.assign_add([0.0, 1e-6, 0.0])  # a non-trainable weight, barely off
try:
    rows = check_replicas_consistent(model, backend)
except RuntimeError as e:
    print(f"rank {backend.rank}: {e}", flush=True)
    sys.exit(3)
print(f"rank {backend.rank}: consistent {len(rows)}", flush=True)
'''


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["same", "diverge"])
def test_replica_check_fails_when_horovod_workers_hold_different_weights(case, tmp_path):
    """The check behind "silently diverging workers fail the run", on two real Horovod ranks: equal weights
    pass, and one BatchNorm statistic off by 1e-6 on rank 1 fails the run."""
    script = tmp_path / "check.py"
    script.write_text(_REPLICA_CHECK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run([sys.executable, "-m", "hrnet_tfx.training.horovodrun", "-np", "2", "-H", "localhost:2",
                          "--gloo", sys.executable, str(script), case], capture_output=True, text=True, env=env,
                         timeout=600)
    out = run.stdout + run.stderr
    if case == "same":
        assert run.returncode == 0, out
        assert "rank 0: consistent 2" in out and "rank 1: consistent 2" in out
    else:
        assert run.returncode == 1, out
        assert re.search(r"rank [01]: data-parallel workers hold different weights after training", out), out
