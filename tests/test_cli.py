"""The ``hrnet-tfx models`` commands, run through click's runner (and once as a real process)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from hrnet_tfx.cli import main
from hrnet_tfx.models.registry import list_models

from conftest import FIXTURES, TINY_CONFIG


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_models_list_is_a_real_console_command():
    out = subprocess.run([sys.executable, "-m", "hrnet_tfx.cli", "models", "list"], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == list_models()  # the nine official variants, in registration order (pinned in test_models.py)


def test_models_summary_json_on_a_config_file():
    result = _run("models", "summary", str(TINY_CONFIG), "--image-size", "64", "--num-classes", "10", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert (info["trainable_params"], info["non_trainable_params"], info["macs"]) == (117_070, 2_568, 5_624_704)
    assert info["layers"]["Conv2D"] == info["layers"]["BatchNormalization"] == 86


def test_models_summary_table():
    result = _run("models", "summary", "tiny.yaml", "--image-size", "64")
    assert result.exit_code == 0
    assert re.search(r"trainable parameters +181,420\n", result.output), result.output  # 1000 classes
    assert re.search(r"GFLOPs \(official counter\) +0\.01\n", result.output), result.output


def test_unknown_model_is_a_clean_error():
    result = CliRunner().invoke(main, ["models", "summary", "hrnet_w19"])
    assert result.exit_code != 0
    assert "unknown model 'hrnet_w19'" in result.output and "Traceback" not in result.output


def test_models_summary_help_has_a_description():
    result = _run("models", "summary", "--help")
    assert "Parameters, multiply-adds, official GFLOPs and layer counts of NAME" in result.output
    listing = _run("models", "--help")
    assert re.search(r"summary\s+Parameters, multiply-adds", listing.output), listing.output


def _fixture_inputs_and_logits():
    x = np.load(FIXTURES / "timm_tiny" / "inputs.npy").transpose(0, 2, 3, 1)  # NCHW -> NHWC
    return x, np.load(FIXTURES / "timm_tiny" / "logits.npy")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """``models import-weights`` of the fixture's official .pth with a label map: (output, labels file, result)."""
    tmp = tmp_path_factory.mktemp("imported")
    labels = tmp / "labels.tsv"
    labels.write_text("".join(f"{i}\tn{i:08d}\tthing {i}\n" for i in range(10)))
    out = tmp / "imported"
    result = _run("models", "import-weights", "tiny.yaml", str(FIXTURES / "timm_tiny" / "official.pth"),
                  "--output", str(out), "--image-size", "64", "--labels", str(labels))
    return out, labels, result


def test_import_weights_writes_the_serving_export_with_labels(imported):
    import tensorflow as tf

    out, labels, result = imported
    assert result.exit_code == 0, result.output
    assert "(10 classes, labels from" in result.output and f"--init-from {out}" in result.output
    assert sorted(p.name for p in out.parent.iterdir()) == ["imported", "labels.tsv"]  # no staging left
    loaded = tf.saved_model.load(str(out))
    assert set(loaded.signatures) == {"serving_default", "predict_images", "predict_examples", "predict_images_top_k"}
    x, expected = _fixture_inputs_and_logits()
    np.testing.assert_allclose(loaded.logits(x), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    jpeg = tf.io.encode_jpeg(tf.zeros([64, 64, 3], tf.uint8)).numpy()
    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg]))})).SerializeToString()
    classes = loaded.signatures["serving_default"](inputs=tf.constant([example]))["classes"].numpy()[0]
    assert [c.decode() for c in classes] == [f"thing {i}" for i in range(10)]
    assert (out / "assets" / "labels.tsv").read_text() == labels.read_text()


def test_imported_savedmodel_initialises_another_class_count(imported, tmp_path):
    """What train --init-from DIR does with it: every weight but a differing classifier is copied."""
    import yaml

    from hrnet_tfx import models
    from hrnet_tfx.serving.export import load_weights_into

    out = str(imported[0])
    same = models.build_model("tiny.yaml", num_classes=10, image_size=64)
    models.load_pytorch_weights(same, FIXTURES / "timm_tiny" / "official.pth")
    other = models.build_model("tiny.yaml", num_classes=3, image_size=64)
    initial_head = other.get_layer("classifier").get_weights()
    assert load_weights_into(other, out) == ["classifier/bias:0", "classifier/kernel:0"]
    for a, b in zip(other.get_layer("classifier").get_weights(), initial_head):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(other.get_weights()[:-2], same.get_weights()[:-2]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"classifier/bias:0 is \[10\], expected \[3\]"):
        load_weights_into(models.build_model("tiny.yaml", num_classes=3, image_size=64), out, new_classifier=False)
    no_bias = yaml.safe_load(TINY_CONFIG.read_text())
    no_bias["head_conv_bias"] = False
    (tmp_path / "no_bias.yaml").write_text(yaml.safe_dump(no_bias))
    with pytest.raises(ValueError, match=r"holds a different network: 436 variables vs 432 expected; missing none, "
                                         r"unused downsamp_modules.0.0/bias:0"):
        load_weights_into(models.build_model(str(tmp_path / "no_bias.yaml"), num_classes=10, image_size=64), out)


def test_import_weights_checkpoint_is_what_init_from_restores(tmp_path):
    import tensorflow as tf

    from hrnet_tfx import models

    out = tmp_path / "ckpt"
    weights = str(FIXTURES / "timm_tiny" / "state_dict.safetensors")
    result = _run("models", "import-weights", "tiny.yaml", weights, "-o", str(out), "--image-size", "64",
                  "--format", "checkpoint")
    assert result.exit_code == 0, result.output
    model = models.build_model("tiny.yaml", num_classes=10, image_size=64)
    path = tf.train.latest_checkpoint(str(out))  # as the trainer's init_from resolves a directory
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    x, expected = _fixture_inputs_and_logits()
    np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-4, atol=1e-3)
    info = json.loads((out / "hrnet_model.json").read_text())
    assert (info["model"], info["num_classes"], info["image_size"]) == ("tiny.yaml", 10, 64)
    assert info["labels"] == [f"class_{i}" for i in range(10)]


@pytest.mark.parametrize("fmt", ["savedmodel", "checkpoint"])
def test_import_weights_to_a_bucket(fmt):
    """``--output`` on a file system without directory renames (TF's in-memory ``ram://``): the output is
    complete, no staging directory is left beside it, and a second import into it is refused."""
    import uuid

    import tensorflow as tf

    from hrnet_tfx import models
    from hrnet_tfx.serving.export import load_weights_into

    parent = f"ram://import-{uuid.uuid4().hex[:8]}"
    out = f"{parent}/{fmt}"
    weights = str(FIXTURES / "timm_tiny" / "state_dict.safetensors")
    args = ["models", "import-weights", "tiny.yaml", weights, "-o", out, "--image-size", "64", "--format", fmt]
    result = _run(*args)
    assert result.exit_code == 0, result.output
    assert tf.io.gfile.listdir(parent) == [fmt]
    model = models.build_model("tiny.yaml", num_classes=10, image_size=64)
    if fmt == "checkpoint":
        tf.train.Checkpoint(model=model).restore(tf.train.latest_checkpoint(out)).expect_partial() \
            .assert_existing_objects_matched()
    else:
        assert load_weights_into(model, out, new_classifier=False) == []
    x, expected = _fixture_inputs_and_logits()
    np.testing.assert_allclose(model(x, training=False), expected, rtol=1e-4, atol=1e-3)
    again = _run(*args)
    assert again.exit_code != 0 and "output directory is not empty" in again.output


def test_import_weights_refusals_name_the_problem(tmp_path):
    import yaml

    weights = str(FIXTURES / "timm_tiny" / "state_dict.safetensors")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    (tmp_path / "three.tsv").write_text("0\tr\tred\n1\tg\tgreen\n2\tb\tblue\n")
    cases = [
        (["-o", str(tmp_path / "full")], "output directory is not empty"),
        (["-o", str(tmp_path / "a"), "--num-classes", "3"],
         "--num-classes 3, but the classifier in .* has 10 classes.*-s num_classes=3"),
        (["-o", str(tmp_path / "b"), "--labels", str(tmp_path / "three.tsv")],
         "--labels .*three.tsv has 3 classes, but the classifier in .* has 10"),
        (["-o", str(tmp_path / "c"), "--labels", str(tmp_path / "none.tsv")], "--labels: label map not found"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(main, ["models", "import-weights", "tiny.yaml", weights, "--image-size", "64",
                                           *extra])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        assert re.search(message, result.output), (message, result.output)
    no_bias = yaml.safe_load(TINY_CONFIG.read_text())
    no_bias["head_conv_bias"] = False
    (tmp_path / "no_bias.yaml").write_text(yaml.safe_dump(no_bias))
    wrong = CliRunner().invoke(main, ["models", "import-weights", str(tmp_path / "no_bias.yaml"), weights, "-o",
                                      str(tmp_path / "w"), "--image-size", "64"])
    assert wrong.exit_code == 1 and "nothing was loaded" in wrong.output
    missing = CliRunner().invoke(main, ["models", "import-weights", "tiny.yaml", str(tmp_path / "no.pth"),
                                        "-o", str(tmp_path / "m")])
    assert missing.exit_code == 1 and re.search("no.pth.*(not found|does not exist)", missing.output), missing.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "no_bias.yaml", "three.tsv"]  # nothing written
    assert (tmp_path / "full" / "x").read_text() == "keep me"
