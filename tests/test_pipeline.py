"""Pipeline config layers and DAG assembly (fast); the whole pipeline is in tests/test_pipeline_e2e.py."""

import pytest

from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.pipeline import PRESETS, load_config
from hrnet_tfx.pipeline.pipeline import create_pipeline


def test_presets_cover_every_variant_and_the_demo():
    assert "demo" in PRESETS
    assert {f"imagenet_{n}" for n in ("hrnet_w18_small", "hrnet_w18", "hrnet_w64")} <= set(PRESETS)
    official = load_config("imagenet_hrnet_w32")
    assert official.train_config().model == "hrnet_w32"
    assert official.train_config().for_workers(4).peak_lr == 0.05  # the official 4 GPUs x 32 images


def test_layers_preset_file_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("preset: demo\ninput_base: /data/mine\ntrain:\n  train_steps: 7\n")
    config = load_config("", str(path), ["train.global_batch_size=4", "push=false"])
    assert config.input_base == "/data/mine" and config.push is False
    assert config.train["train_steps"] == 7 and config.train["global_batch_size"] == 4
    assert config.train["model"] == "tiny.yaml"  # the rest of the preset's train block is kept


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bogus=1"], r"unknown key\(s\) \['bogus'\]"),
        (["train.bogus=1"], r"train: .*unknown key\(s\) \['bogus'\]"),
        (["input_base="], "input_base"),
        (["train.global_batch_size=lots"], "global_batch_size='lots'"),
        (["train.label_offset=1"], "train.label_offset=1 but ImageExampleGen writes 0-based labels"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", "", overrides)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ConfigError, match="unknown preset 'imagenet_w18'.*demo"):
        load_config("imagenet_w18")


def test_dag_without_optional_stages(tmp_path):
    config = load_config("demo", "", [f"root={tmp_path}", "evaluate=false", "push=false"])
    pipeline = create_pipeline(config)
    assert [c.id for c in pipeline.components] == ["ImageExampleGen", "HorovodTrainer"]
    assert any(a.startswith("--runner=") for a in pipeline.beam_pipeline_args)
