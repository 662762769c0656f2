"""The config toolkit every config module uses: files through tf.io.gfile, strict keys, typed overrides."""

from __future__ import annotations

import dataclasses
import json
import uuid

import pytest

from hrnet_tfx import config_io
from hrnet_tfx.config_io import ConfigError


@dataclasses.dataclass(frozen=True)
class Inner:
    gpus: int = 0
    name: str = ""


@dataclasses.dataclass(frozen=True)
class Outer:
    steps: int = 1
    rate: float = 0.5
    push: bool = True
    epochs: tuple[float, ...] = (1.0,)
    inner: Inner = dataclasses.field(default_factory=Inner)


@pytest.mark.parametrize("root", ["local", "ram"])
def test_read_save_and_read_back_on_local_disk_and_a_bucket_like_file_system(root, tmp_path):
    import tensorflow as tf

    base = str(tmp_path) if root == "local" else f"ram://config-{uuid.uuid4().hex}"
    path = f"{base}/sub/c.yaml"
    tf.io.gfile.makedirs(f"{base}/sub")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("steps: 3\ninner: {gpus: 2}\n")
    config = config_io.from_dict(Outer, config_io.read_config_file(path, "test config"), "test config")
    assert config == Outer(steps=3, inner=Inner(gpus=2))
    config_io.write_json(f"{base}/out/c.json", config_io.to_dict(config))
    with tf.io.gfile.GFile(f"{base}/out/c.json") as f:
        saved = json.load(f)
    assert saved == {"steps": 3, "rate": 0.5, "push": True, "epochs": [1.0], "inner": {"gpus": 2, "name": ""}}
    assert config_io.from_dict(Outer, saved, "test config") == config
    assert tf.io.gfile.listdir(f"{base}/out") == ["c.json"]  # no temporary file left beside it
    with pytest.raises(ConfigError, match=r"^test config file not found: .*/missing\.yaml$"):
        config_io.read_config_file(f"{base}/missing.yaml", "test config")


def test_unknown_keys_name_the_closest_and_every_allowed_key_also_in_a_nested_config():
    with pytest.raises(ConfigError, match=r"^test config: unknown key\(s\) \['stpes' \(did you mean 'steps'\?\)\]; "
                                          r"allowed: epochs, inner, push, rate, steps$"):
        config_io.from_dict(Outer, {"stpes": 2}, "test config")
    with pytest.raises(ConfigError, match=r"^test config, inner: unknown key\(s\) \['gpu' \(did you mean 'gpus'\?\)\]; "
                                          r"allowed: gpus, name$"):
        config_io.from_dict(Outer, {"inner": {"gpu": 2}}, "test config")
    with pytest.raises(ConfigError, match=r"^test config: missing key\(s\) \['rate', 'push'\]$"):
        config_io.from_dict(Outer, {"steps": 1, "epochs": [], "inner": {}}, "test config", require_all=True)


def test_overrides_are_typed_by_the_field_they_set():
    overrides = config_io.parse_overrides(["steps=4", "rate=1", "push=false", "epochs=3", "inner.gpus=8",
                                           "inner.name="])
    data = config_io.nest_dotted(overrides, ["inner"])
    assert data == {"steps": 4, "rate": 1, "push": False, "epochs": 3, "inner": {"gpus": 8, "name": ""}}
    config = config_io.from_dict(Outer, config_io.merge({"inner": {"name": "x"}}, data, ["inner"]), "test config")
    assert config == Outer(steps=4, rate=1.0, push=False, epochs=(3.0,), inner=Inner(gpus=8, name=""))
    assert isinstance(config.rate, float)
    for item, message in [("steps=2.5", r"test config: steps=2\.5 is not a valid int"),
                          ("push=yes please", r"test config: push='yes please' is not a valid bool"),
                          ("epochs=[a]", r"test config: epochs=\['a'\] is not a valid list of numbers"),
                          ("inner.gpus=two", r"test config, inner: gpus='two' is not a valid int")]:
        with pytest.raises(ConfigError, match=message):
            config_io.from_dict(Outer, config_io.nest_dotted(config_io.parse_overrides([item]), ["inner"]),
                                "test config")
    with pytest.raises(ConfigError, match=r"override 'steps' is not key=value"):
        config_io.parse_overrides(["steps"])
    with pytest.raises(ConfigError, match=r"^override 'epochs=\[1': cannot parse the value: "):
        config_io.parse_overrides(["epochs=[1"])


def test_the_three_config_modules_share_the_toolkit():
    from hrnet_tfx.models import config as models_config
    from hrnet_tfx.pipeline import config as pipeline_config
    from hrnet_tfx.training import config as training_config

    assert models_config.ConfigError is training_config.ConfigError is pipeline_config.ConfigError is ConfigError
    assert models_config.read_config_file is config_io.read_config_file
