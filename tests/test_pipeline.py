"""Pipeline config layers and DAG assembly (fast); the whole pipeline is in tests/test_pipeline_e2e.py."""

import re

import pytest

from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.models.registry import list_models
from hrnet_tfx.pipeline import PRESETS, load_config
from hrnet_tfx.pipeline.pipeline import create_pipeline

from conftest import TINY_CONFIG


def test_presets_cover_every_variant_and_the_demo():
    assert list(PRESETS) == ["demo"] + [f"imagenet_{n}" for n in list_models()]
    for name in list_models():
        assert load_config(f"imagenet_{name}").train.model == name
    official = load_config("imagenet_hrnet_w32")
    assert official.train.for_workers(4).peak_lr == 0.05  # the official 4 GPUs x 32 images


def test_layers_preset_file_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("preset: demo\ninput_base: /data/mine\ntrain:\n  train_steps: 7\n")
    config = load_config("", str(path), ["train.global_batch_size=4", "push=false"])
    assert config.input_base == "/data/mine" and config.push is False
    assert config.train.train_steps == 7 and config.train.global_batch_size == 4
    assert config.train.model == "tiny.yaml"  # the rest of the preset's train block is kept


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


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["trian.epochs=2"],
         r"unknown key\(s\) \['trian.epochs' \(did you mean 'train.epochs'\?\)\]"),
        (["serving_bas=/x"],
         r"unknown key\(s\) \['serving_bas' \(did you mean 'serving_base'\?\)\]; allowed: beam_args,"),
        (["train.epoch=2"],
         r"pipeline config, train: unknown key\(s\) \['epoch' \(did you mean 'epochs'\?\)\]; allowed: "
                            r"backend, .*, weight_decay$"),
        (["kubeflow.imag=x"],
         r"kubeflow: unknown key\(s\) \['imag' \(did you mean 'image'\?\)\]; allowed: gpu_type, image,"),
        (["train.model=tiny.yml"],
         r"train.model: network config file not found: tiny.yml \(did you mean 'tiny.yaml'\?\)"),
        (["train.model=hrnet_w81"], r"train.model: unknown model 'hrnet_w81' \(did you mean 'hrnet_w48'\?\)"),
        (["train.train_files=/x/*"], r"train.train_files is set by the pipeline from ImageExampleGen's output"),
    ],
)
def test_config_errors_suggest_the_key_and_resolve_the_model(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("demo", "", overrides)


def test_config_spells_out_every_setting_and_round_trips(tmp_path):
    """What is printed and saved is what runs: every TrainConfig, ConvertOptions and KubeflowConfig field (train
    without the paths the Trainer takes from its artifacts; the counts the data decides as 0); a saved config loads
    back to an equal one."""
    import json

    from hrnet_tfx.data.options import ConvertOptions
    from hrnet_tfx.pipeline.config import KubeflowConfig, PipelineConfig
    from hrnet_tfx.training.config import TrainConfig

    config = load_config("demo", "", ["train.epochs=3"])
    expected_train = {**TrainConfig().to_dict(), **PRESETS["demo"]["train"], "epochs": 3.0, "num_classes": 0,
                      "num_train_examples": 0}
    for key in ("train_files", "eval_files", "label_map", "model_dir", "export_dir"):
        del expected_train[key]
    assert config.to_dict()["train"] == expected_train
    assert config.train == TrainConfig.from_dict(expected_train)  # typed
    assert config.kubeflow == KubeflowConfig()  # typed, and spelled out in full when saved
    assert config.to_dict()["kubeflow"] == {
        "image": "", "trainer_gpus": 0, "gpu_type": "nvidia.com/gpu", "trainer_cpu": 0.0, "trainer_memory_gb": 0.0,
        "trainer_node_selector": {}, "trainer_tolerations": []}
    assert config.convert == ConvertOptions(train_shards=4, eval_shards=2)
    assert config.to_dict()["convert"] == {
        "train_shards": 4, "eval_shards": 2, "compression": "none", "max_bad_fraction": 0.001, "verify": "markers",
        "label_offset": 1, "seed": "hrnet-tfx", "max_image_bytes": 64 * 2**20}
    assert load_config("demo", "", ["train.num_classes=5"]).train.num_classes == 5  # set: kept
    config.save(str(tmp_path / "saved.json"))
    assert PipelineConfig.from_dict(json.loads((tmp_path / "saved.json").read_text())) == config
    assert load_config("", str(tmp_path / "saved.json")) == config


def test_typed_sections_refuse_a_wrong_type_naming_the_key(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("preset: demo\ntrain: {jit_compile: 'yes'}\n")
    with pytest.raises(ConfigError, match=r"^pipeline config, train: jit_compile='yes' is not a valid bool$"):
        load_config("", str(path))
    for overrides, message in [
        (["train.epochs=many"], r"^pipeline config, train: epochs='many' is not a valid float$"),
        (["train.schedule=linear"], r"^pipeline config, train: schedule must be one of \('step', 'cosine'\)$"),
        (["convert.train_shards=four"], r"^pipeline config, convert: train_shards='four' is not a valid int$"),
        (["convert.verify=full"], r"^pipeline config, convert: verify must be one of \('markers', 'decode'\)"),
        (["train_shards=4"], r"^pipeline config: unknown key\(s\) \['train_shards' \(did you mean "
                             r"'convert.train_shards'\?\)\]"),  # the conversion settings live in convert:
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config("demo", "", overrides)


def _component(pipeline, component_id):
    return next(c for c in pipeline.components if c.id == component_id)


def test_convert_section_and_fingerprint_reach_image_example_gen(tmp_path):
    config = load_config("demo", "", [f"root={tmp_path}", "convert.verify=decode", "convert.max_image_bytes=1000",
                                      "convert.compression=gzip", "fingerprint=files"])
    props = _component(create_pipeline(config), "ImageExampleGen").exec_properties
    assert (props["verify"], props["max_image_bytes"], props["compression"], props["fingerprint"]) == (
        "decode", 1000, "gzip", "files")
    assert (props["train_shards"], props["eval_shards"], props["max_bad_fraction"]) == (4, 2, 0.001)  # the preset's


def test_train_counts_left_out_come_from_the_data(tmp_path):
    """train: without num_classes / num_train_examples says 0 ("from the data"), and the Trainer then takes both
    from ImageExampleGen's manifest; a count the user sets wins."""
    import json

    from hrnet_tfx.components.trainer import resolve_config
    from hrnet_tfx.data import layout

    examples = tmp_path / "examples"
    (examples / "Split-train").mkdir(parents=True)
    (examples / "manifest.json").write_text(json.dumps(
        {"format": layout.MANIFEST_FORMAT, "complete": True, "num_classes": 3,
         "splits": {"train": {"num_examples": 6}, "eval": {"num_examples": 3}}}))
    for overrides, expected in [([], (3, 6)), (["train.num_classes=5", "train.num_train_examples=4"], (5, 4))]:
        config = load_config("demo", "", [f"root={tmp_path}", *overrides])
        if not overrides:
            assert (config.train.num_classes, config.train.num_train_examples) == (0, 0)
        trainer = _component(create_pipeline(config), "HorovodTrainer")
        run = resolve_config(json.loads(trainer.exec_properties["train_config"]), str(examples),
                             str(tmp_path / "T/model_run/1"), str(tmp_path / "T/model/1"))
        assert (run.num_classes, run.num_train_examples) == expected


def test_local_run_config_is_absolute_and_checks_inputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "net.yaml").write_text(TINY_CONFIG.read_text())
    config = load_config("demo", "", ["input_base=data", "train.model=net.yaml"]).for_local_run()
    assert (config.input_base, config.root, config.serving_base, config.metadata_path) == (
        str(tmp_path / "data"), str(tmp_path / "outputs" / "pipeline"), str(tmp_path / "outputs" / "serving"),
        str(tmp_path / "outputs" / "pipeline" / "metadata.sqlite"))
    assert config.train.model == str(tmp_path / "net.yaml")
    assert load_config("demo", "", ["input_base=data"]).for_local_run().train.model == "tiny.yaml"  # packaged
    assert config.for_local_run() == config
    with pytest.raises(ConfigError, match=r"input_base .*/nothing does not exist or is not a directory \(the "
                                          r"dataset: "):
        load_config("demo", "", ["input_base=nothing"]).for_local_run()
    with pytest.raises(ConfigError, match=r"train.init_from .*/w.pth does not exist"):
        load_config("demo", "", ["input_base=data", "train.init_from=w.pth"]).for_local_run()
    bucket = f"ram://local-run-{id(config)}"
    import tensorflow as tf

    tf.io.gfile.makedirs(f"{bucket}/data/train")
    on_bucket = load_config("demo", "", [f"input_base={bucket}/data", f"root={bucket}/root",
                                         f"metadata_path={tmp_path / 'm.sqlite'}"]).for_local_run()
    assert (on_bucket.input_base, on_bucket.root) == (f"{bucket}/data", f"{bucket}/root")
    with pytest.raises(ConfigError, match=r"input_base ram://.*/none does not exist"):
        load_config("demo", "", [f"input_base={bucket}/none"]).for_local_run()


def _cli(*args):
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    return CliRunner().invoke(main, ["pipeline", *args])


def test_dry_run_prints_the_resolved_config_and_runs_nothing(tmp_path, monkeypatch):
    import json

    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").mkdir()
    result = _cli("run", "--preset", "demo", "-s", "input_base=sample", "--dry-run")
    assert result.exit_code == 0, result.output
    printed, note = result.output.rsplit("}\n", 1)
    resolved = json.loads(printed + "}")
    assert (resolved["input_base"], resolved["root"], resolved["metadata_path"]) == (
        str(tmp_path / "sample"), str(tmp_path / "outputs" / "pipeline"),
        str(tmp_path / "outputs" / "pipeline" / "metadata.sqlite"))
    assert resolved["train"]["model"] == "tiny.yaml" and resolved["train"]["weight_decay"] == 1e-4
    assert resolved["kubeflow"]["gpu_type"] == "nvidia.com/gpu"
    assert note.strip() == ("(train.num_classes and train.num_train_examples: counted from the converted data at "
                            "run time)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # nothing written


@pytest.mark.parametrize(
    "overrides, message, printed",
    [
        (["input_base=missing"],
         r"^Error: pipeline config: input_base /\S+/missing does not exist or is not a directory",
         True),  # a dry run still shows the resolved config first
        (["input_base=sample", "train.model=tiny.yml"],
         r"^Error: pipeline config: train.model: network config file not found: tiny.yml", False),
    ],
)
@pytest.mark.parametrize("dry_run", [True, False])
def test_pipeline_run_refuses_bad_inputs_before_any_work(tmp_path, monkeypatch, overrides, message, printed, dry_run):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").mkdir()
    args = ["run", "--preset", "demo"] + [a for o in overrides for a in ("-s", o)] + (["--dry-run"] if dry_run else [])
    result = _cli(*args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert re.search(message, lines[-1]), result.output
    assert len(lines) > 1 if (dry_run and printed) else len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample"]  # no metadata, no pipeline root


def test_pipeline_run_reports_an_unreadable_dataset_in_one_line(tmp_path, monkeypatch):
    """A dataset that exists but has no known layout fails in ImageExampleGen's driver, the first step: one line
    from the converter, not a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    result = _cli("run", "--preset", "demo", "-s", "input_base=data")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"Error: cannot tell the layout of {tmp_path / 'data'}: expected train/ and val/ folders (ImageNet or image "
        "folders) or train-*-of-* TFRecords")
    assert "Traceback" not in result.output
