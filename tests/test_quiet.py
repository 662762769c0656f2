"""Known noise stays out of hrnet-tfx's output, and nothing else is hidden."""

import logging
import os
import subprocess
import sys

from hrnet_tfx import quiet

from conftest import FIXTURES, REPO


def _record(name, level, message):
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_known_noise_is_dropped_by_message_only():
    absl = quiet.KnownNoiseFilter([p for n, p, _ in quiet.KNOWN_NOISE if n == "absl"])
    assert not absl.filter(_record("absl", logging.WARNING, "ArtifactQuery.property_predicate is not supported."))
    assert not absl.filter(_record("absl", logging.INFO, "Function `classify` contains input name(s) 7825, 7827 with "
                                                         "unsupported characters which will be renamed to unknown"))
    assert absl.filter(_record("absl", logging.WARNING, "ArtifactQuery failed: no such artifact"))
    tf_noise = quiet.KnownNoiseFilter([p for n, p, _ in quiet.KNOWN_NOISE if n == "tensorflow"])
    deprecated = "From /x.py:112: tf_record_iterator (from tensorflow.python.lib.io.tf_record) is deprecated"
    assert not tf_noise.filter(_record("tensorflow", logging.WARNING, deprecated))
    assert tf_noise.filter(_record("tensorflow", logging.ERROR, "SavedModel file does not exist at: /m"))
    own = quiet.OwnInfoOnly()
    assert own.filter(_record("hrnet_tfx.training.loop", logging.INFO, "step 10/60"))
    assert not own.filter(_record("absl", logging.INFO, "Running driver for ImageExampleGen"))
    assert own.filter(_record("absl", logging.WARNING, "a warning from TFX"))
    assert not own.filter(_record("hrnet_tfx_other", logging.INFO, "not ours"))


def test_the_command_prints_no_known_noise():
    """TensorFlow's C++ start-up errors (cuFFT/cuDNN/cuBLAS) and Google's FutureWarnings were on stderr of every
    hrnet-tfx command that loads TensorFlow; now stderr holds only what the command has to say."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-m", "hrnet_tfx.cli", "models", "summary", "tiny.yaml", "--image-size",
                          "64", "--num-classes", "3"], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert out.stdout.splitlines()[0] == "tiny.yaml at 64x64, 3 classes"


def test_export_logs_no_captured_input_renames(tmp_path, caplog):
    """tf.saved_model.save logged one ~9 KB line per signature naming every captured variable."""
    from hrnet_tfx.models import build_model
    from hrnet_tfx.serving.export import export_saved_model

    model = build_model("tiny.yaml", num_classes=3, image_size=64)
    before = list(logging.getLogger("absl").filters)
    with caplog.at_level(logging.INFO):
        export_saved_model(model, str(tmp_path / "export"), ["a", "b", "c"], image_size=64)
    assert (tmp_path / "export" / "saved_model.pb").exists()
    assert not [r for r in caplog.records if "contains input name(s)" in r.getMessage()]
    assert max(len(r.getMessage()) for r in caplog.records) < 500
    assert logging.getLogger("absl").filters == before  # the caller's logging is left as it was


def test_a_training_worker_prints_no_known_noise(tmp_path):
    """Horovod ranks and MPIJob pods run ``python -m hrnet_tfx.training.worker``: its stderr carried TensorFlow's
    cuFFT/cuDNN/cuBLAS registration errors and Google's FutureWarnings before the worker's own message."""
    config = tmp_path / "train.yaml"
    config.write_text(f"model: no_such_model\nmodel_dir: {tmp_path / 'm'}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-m", "hrnet_tfx.training.worker", "--config", str(config)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].endswith("ERROR [worker] unknown model 'no_such_model'. Known models: hrnet_w18_small, "
                             "hrnet_w18_small_v2, hrnet_w18, hrnet_w30, hrnet_w32, hrnet_w40, hrnet_w44, hrnet_w48, "
                             "hrnet_w64; packaged configs: tiny.yaml; or pass a network config file (.yaml/.json).")
