"""The ``hrnet-tfx models`` commands, run through click's runner (and once as a real process)."""

import json
import subprocess
import sys

import numpy as np
import tf_keras as keras
from click.testing import CliRunner

from hrnet_tfx.cli import main

from conftest import FIXTURES, TINY_CONFIG


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_models_list_is_a_real_console_command():
    out = subprocess.run([sys.executable, "-m", "hrnet_tfx.cli", "models", "list"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out[:3] == ["hrnet_w18_small", "hrnet_w18_small_v2", "hrnet_w18"] and len(out) == 9


def test_models_summary_json_on_a_config_file():
    result = _run("models", "summary", str(TINY_CONFIG), "--image-size", "64", "--num-classes", "10", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["trainable_params"] > 0 and info["macs"] > 0
    assert info["layers"]["Conv2D"] == info["layers"]["BatchNormalization"]


def test_models_summary_table():
    result = _run("models", "summary", "tiny.yaml", "--image-size", "64")
    assert result.exit_code == 0
    assert "GFLOPs (official counter)" in result.output and "trainable parameters" in result.output


def test_unknown_model_is_a_clean_error():
    result = CliRunner().invoke(main, ["models", "summary", "hrnet_w19"])
    assert result.exit_code != 0
    assert "unknown model 'hrnet_w19'" in result.output and "Traceback" not in result.output


def test_import_weights_writes_a_loadable_savedmodel(tmp_path):
    out = tmp_path / "imported"
    result = _run("models", "import-weights", "tiny.yaml", str(FIXTURES / "timm_tiny" / "official.pth"),
                  "--output", str(out), "--num-classes", "10", "--image-size", "64")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "imported.partial").exists()
    model = keras.models.load_model(str(out), compile=False)
    x = np.load(FIXTURES / "timm_tiny" / "inputs.npy").transpose(0, 2, 3, 1)
    expected = np.load(FIXTURES / "timm_tiny" / "logits.npy")
    np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    assert json.loads((out / "hrnet_model.json").read_text())["num_classes"] == 10


def test_import_weights_checkpoint_format_and_refusals(tmp_path):
    from hrnet_tfx import models

    out = tmp_path / "ckpt"
    weights = str(FIXTURES / "timm_tiny" / "state_dict.safetensors")
    result = _run("models", "import-weights", "tiny.yaml", weights, "-o", str(out), "--num-classes", "10",
                  "--image-size", "64", "--format", "checkpoint")
    assert result.exit_code == 0, result.output
    model = models.build_model("tiny.yaml", num_classes=10, image_size=64)
    model.load_weights(str(out / "ckpt")).assert_existing_objects_matched()
    x = np.load(FIXTURES / "timm_tiny" / "inputs.npy").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(model(x, training=False), np.load(FIXTURES / "timm_tiny" / "logits.npy"),
                               rtol=1e-4, atol=1e-3)
    again = CliRunner().invoke(main, ["models", "import-weights", "tiny.yaml", weights, "-o", str(out)])
    assert again.exit_code != 0 and "not empty" in again.output
    wrong = CliRunner().invoke(main, ["models", "import-weights", "hrnet_w18", weights, "-o", str(tmp_path / "w")])
    assert wrong.exit_code != 0 and "nothing was loaded" in wrong.output
    assert not (tmp_path / "w").exists()
