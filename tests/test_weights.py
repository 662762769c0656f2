"""Weight import against the PyTorch reference fixture (timm's HighResolutionNet, random weights and
BatchNorm statistics), made by tools/make_torch_fixture.py; torch itself is never needed here."""

import os
import pickle
import zipfile

import numpy as np
import pytest

from hrnet_tfx import models
from hrnet_tfx.models.weights import WeightImportError, read_state_dict

from conftest import FIXTURES

TIMM_TINY = FIXTURES / "timm_tiny"


def _max_rel_error(model, fixture_dir) -> float:
    x = np.load(fixture_dir / "inputs.npy").transpose(0, 2, 3, 1)  # NCHW -> NHWC
    expected = np.load(fixture_dir / "logits.npy")
    got = model(x, training=False).numpy()
    return float(np.abs(got - expected).max() / np.abs(expected).max())


@pytest.fixture()
def tiny_model(tiny_config_path):
    return models.build_model(str(tiny_config_path), num_classes=10, image_size=64)


@pytest.mark.parametrize(
    "source",
    [
        "state_dict.safetensors",  # timm's format (hf hub files)
        "official.pth",  # official training checkpoint: {"state_dict": {"module." + key}}, zip format
        "legacy.pth",  # torch < 1.6 format, like the 2019 official ImageNet weights
    ],
)
def test_import_matches_pytorch_logits(tiny_model, source):
    before = _max_rel_error(tiny_model, TIMM_TINY)
    loaded = models.load_pytorch_weights(tiny_model, TIMM_TINY / source)
    assert loaded == len(read_state_dict(TIMM_TINY / "state_dict.safetensors"))
    assert before > 0.1  # random Keras init is far from the reference ...
    assert _max_rel_error(tiny_model, TIMM_TINY) < 1e-4  # ... the imported model is not


def test_import_from_dict_of_numpy_arrays(tiny_model):
    state = read_state_dict(TIMM_TINY / "state_dict.safetensors")
    models.load_pytorch_weights(tiny_model, dict(state))
    assert _max_rel_error(tiny_model, TIMM_TINY) < 1e-4


def test_build_model_with_weights_argument(tiny_config_path):
    model = models.build_model(
        str(tiny_config_path), num_classes=10, image_size=64, weights=TIMM_TINY / "state_dict.safetensors"
    )
    assert _max_rel_error(model, TIMM_TINY) < 1e-4


def test_every_offending_key_is_named_and_nothing_is_loaded(tiny_model):
    state = read_state_dict(TIMM_TINY / "state_dict.safetensors")
    del state["stage3.1.fuse_layers.2.0.1.0.weight"]
    del state["bn1.running_var"]
    state["extra.weight"] = np.zeros(3, np.float32)
    state["classifier.weight"] = np.zeros((11, 64), np.float32)
    before = [w.copy() for w in tiny_model.get_weights()]
    with pytest.raises(WeightImportError) as err:
        models.load_pytorch_weights(tiny_model, state)
    message = str(err.value)
    for key in ["stage3.1.fuse_layers.2.0.1.0.weight", "bn1.running_var", "extra.weight", "classifier.weight"]:
        assert key in message
    assert "nothing was loaded" in message
    assert all(np.array_equal(a, b) for a, b in zip(before, tiny_model.get_weights()))


def test_exclude_classifier_for_fine_tuning_on_other_classes(tiny_config_path):
    model = models.build_model(str(tiny_config_path), num_classes=3, image_size=64)
    with pytest.raises(WeightImportError, match="classifier.weight"):
        models.load_pytorch_weights(model, TIMM_TINY / "state_dict.safetensors")
    loaded = models.load_pytorch_weights(model, TIMM_TINY / "state_dict.safetensors", exclude=["classifier"])
    state = read_state_dict(TIMM_TINY / "state_dict.safetensors")
    assert loaded == len(state) - 2
    np.testing.assert_array_equal(
        model.get_layer("final_layer.0").kernel.numpy(),
        state["final_layer.0.weight"].transpose(2, 3, 1, 0),
    )


def test_missing_head_biases_hint_at_head_conv_bias(tiny_model):
    state = {k: v for k, v in read_state_dict(TIMM_TINY / "state_dict.safetensors").items()
             if not (k.startswith(("downsamp_modules", "final_layer.0")) and k.endswith(".0.bias"))}
    with pytest.raises(WeightImportError, match="head_conv_bias"):
        models.load_pytorch_weights(tiny_model, state)


def test_bad_files_are_named(tmp_path, tiny_model):
    with pytest.raises(WeightImportError, match="not found"):
        models.load_pytorch_weights(tiny_model, tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightImportError, match="junk.pth"):
        models.load_pytorch_weights(tiny_model, junk)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(WeightImportError, match="bad.safetensors"):
        models.load_pytorch_weights(tiny_model, bad_st)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pth_reader_refuses_arbitrary_code(tmp_path, tiny_model):
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"conv1.weight": _Evil()}, protocol=2))
    with pytest.raises(WeightImportError, match="refusing to load"):
        models.load_pytorch_weights(tiny_model, path)


def test_truncated_legacy_file_is_reported(tmp_path, tiny_model):
    data = (TIMM_TINY / "legacy.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightImportError, match="truncated"):
        models.load_pytorch_weights(tiny_model, path)


@pytest.mark.skipif(not os.environ.get("HRNET_TORCH_FIXTURE"), reason="set HRNET_TORCH_FIXTURE=DIR (made by "
                    "tools/make_torch_fixture.py --variant NAME) to check a full-size variant")
@pytest.mark.large
def test_full_size_variant_matches_pytorch():
    import pathlib

    fixture = pathlib.Path(os.environ["HRNET_TORCH_FIXTURE"])
    name = os.environ.get("HRNET_TORCH_VARIANT", "hrnet_w18_small")
    logits = np.load(fixture / "logits.npy")
    size = np.load(fixture / "inputs.npy").shape[-1]
    model = models.build_model(name, num_classes=logits.shape[1], image_size=size)
    models.load_pytorch_weights(model, fixture / "state_dict.safetensors")
    assert _max_rel_error(model, fixture) < 1e-4


def test_read_state_dict_unwraps_wrappers_and_drops_bookkeeping():
    state = read_state_dict({"state_dict": {"module.a.weight": np.ones(2), "module.a.num_batches_tracked": np.array(3)}})
    assert list(state) == ["a.weight"]
    with pytest.raises(WeightImportError, match="not arrays"):
        read_state_dict({"a.weight": "text"})
