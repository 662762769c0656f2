"""The Kubeflow runner: the same pipeline compiled to a KFP v2 spec that kfp's own loader and the
pipeline-spec protos accept, with the Trainer's GPU request and placement; Beam settings from the config."""

import pytest
import yaml
from click.testing import CliRunner
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

import hrnet_tfx  # noqa: F401
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.pipeline import load_config
from hrnet_tfx.pipeline.kubeflow_runner import compile_pipeline
from hrnet_tfx.pipeline.pipeline import create_pipeline

CLUSTER = ["root=gs://bucket/pipelines", "input_base=gs://bucket/ILSVRC2012", "serving_base=gs://bucket/serving",
           "kubeflow.image=registry.example.com/hrnet-tfx:0.1.0"]
GPU = ["kubeflow.trainer_gpus=8", "kubeflow.trainer_cpu=48", "kubeflow.trainer_memory_gb=320",
       'kubeflow.trainer_node_selector={"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}',
       "kubeflow.trainer_tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]",
       "beam_runner=DataflowRunner", "beam_workers=64", "beam_args=[--project=p, --region=us-central1]"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    path = tmp_path_factory.mktemp("kfp") / "hrnet_w18.yaml"
    compile_pipeline(load_config("imagenet_hrnet_w18", "", CLUSTER + GPU), str(path))
    return path


def test_spec_parses_with_the_pipeline_spec_protos(compiled):
    spec_doc, platform_doc = yaml.safe_load_all(compiled.read_text())
    spec = json_format.ParseDict(spec_doc, pipeline_spec_pb2.PipelineSpec())  # unknown fields would fail
    platform = json_format.ParseDict(platform_doc, pipeline_spec_pb2.PlatformSpec())
    assert spec.pipeline_info.name == "hrnet-w18-imagenet" and spec.schema_version == "2.0.0"
    assert spec.default_pipeline_root == "gs://bucket/pipelines"
    assert set(spec.root.dag.tasks) >= {"ImageExampleGen", "HorovodTrainer", "Evaluator", "EvaluationReport",
                                        "HRNetPusher"}
    placement = platform.platforms["kubernetes"].deployment_spec.executors["HorovodTrainer_executor"]
    assert dict(placement["nodeSelector"]["labels"]) == {"cloud.google.com/gke-accelerator": "nvidia-tesla-a100"}
    assert [dict(t) for t in placement["tolerations"]] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_trainer_carries_its_gpu_request_and_every_step_the_image(compiled):
    from kfp.components import load_component_from_file

    component = load_component_from_file(str(compiled))  # what kfp.Client uploads
    executors = json_format.MessageToDict(component.pipeline_spec.deployment_spec)["executors"]
    trainer = executors["HorovodTrainer_executor"]["container"]
    assert trainer["resources"]["accelerator"] == {"type": "nvidia.com/gpu", "count": "8"}
    assert trainer["resources"]["cpuLimit"] == 48 and trainer["resources"]["memoryLimit"] == 320
    assert "HorovodTrainer_executor" in component.platform_spec.platforms["kubernetes"].deployment_spec.executors
    containers = {label: e["container"] for label, e in executors.items() if "container" in e}
    assert {c["image"] for c in containers.values()} == {"registry.example.com/hrnet-tfx:0.1.0"}
    assert all("resources" not in c for label, c in containers.items() if label != "HorovodTrainer_executor")
    example_gen = containers["ImageExampleGen_executor"]["args"]
    assert {"--runner=DataflowRunner", "--max_num_workers=64", "--project=p", "--region=us-central1"} <= set(example_gen)
    # Dataflow's workers install the package from the image's setup.py (the steps have it installed)
    for label in ("ImageExampleGen_executor", "Evaluator_executor"):
        assert [a for a in containers[label]["args"] if a.startswith("--setup_file")] == [
            "--setup_file=/opt/hrnet-tfx/setup.py"], label
    assert trainer["args"][:2] == ["--executor_class_path", "hrnet_tfx.components.trainer.Executor"]


def test_without_placement_one_document_and_cpu_trainer(tmp_path):
    path = tmp_path / "demo.yaml"
    compile_pipeline(load_config("demo", "", CLUSTER), str(path))
    (spec,) = yaml.safe_load_all(path.read_text())
    trainer = spec["deploymentSpec"]["executors"]["HorovodTrainer_executor"]["container"]
    assert "accelerator" not in trainer.get("resources", {})
    assert not any(a.startswith("--setup_file") for e in spec["deploymentSpec"]["executors"].values()
                   for a in e.get("container", {}).get("args", []))  # in-process Beam: the image has the package
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.config.json", "demo.yaml"]  # no temp file left
    assert load_config("", str(tmp_path / "demo.config.json")) == load_config("demo", "", CLUSTER)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (CLUSTER[:3], "kubeflow: image is not set"),
        (CLUSTER[1:], "root='outputs/pipeline' is a relative local path"),
        (CLUSTER + ["root=ram://pipelines"], "kubeflow: root='ram://pipelines': ram:// is TensorFlow's in-memory"),
        (CLUSTER + ["input_base=s3://bucket/ILSVRC2012"], "kubeflow: input_base='s3://bucket/ILSVRC2012': s3:// is not"),
        (CLUSTER + ["serving_base=file:///serving"], "kubeflow: serving_base='file:///serving': file:// is the pod's"),
        (CLUSTER + ["name=my_pipeline"], r"name 'my_pipeline' must match"),
        (CLUSTER + ["kubeflow.gpus=2"], r"kubeflow: unknown key\(s\) \['gpus'\]"),
        (CLUSTER + ["kubeflow.trainer_gpus=two"], "kubeflow: trainer_gpus='two' is not a valid int"),
        (CLUSTER + ["kubeflow.trainer_tolerations=[{key: a, effects: NoSchedule}]"], r"unknown key\(s\) \['effects' \(did you mean 'effect'\?\)\]"),
        (CLUSTER + ["kubeflow.trainer_node_selector=[a]"], "trainer_node_selector must map"),
        (CLUSTER + ["beam_runner=SparkRunner", "beam_workers=4"], "beam_workers is not mapped for runner 'SparkRunner'"),
    ],
)
def test_bad_kubeflow_configs_fail_before_compiling(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message):
        compile_pipeline(load_config("demo", "", overrides), str(tmp_path / "p.yaml"))
    assert not (tmp_path / "p.yaml").exists()


def test_beam_settings_come_from_the_config(tmp_path):
    local = load_config("demo", "", [f"root={tmp_path}", "beam_workers=2"])
    args = create_pipeline(local).beam_pipeline_args
    assert args[:3] == ["--runner=FnApiRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]
    assert any(a.startswith("--setup_file=") and a.endswith("setup.py") for a in args)
    flink = load_config("demo", "", [f"root={tmp_path}", "beam_runner=FlinkRunner", "beam_workers=16",
                                     "beam_args=[--flink_master=flink:8081]"])
    assert flink.beam_pipeline_args()[:3] == ["--runner=FlinkRunner", "--parallelism=16", "--flink_master=flink:8081"]
    with pytest.raises(ConfigError, match="beam_args must be a list of strings"):
        load_config("demo", "", ["beam_args=--runner=DataflowRunner"])


def test_compile_kubeflow_command(tmp_path):
    from hrnet_tfx.cli import main

    out = tmp_path / "spec.yaml"
    result = CliRunner().invoke(main, ["pipeline", "compile-kubeflow", "--preset", "demo", "-o", str(out)]
                                + [arg for o in CLUSTER + ["kubeflow.trainer_gpus=2"] for arg in ("-s", o)])
    assert result.exit_code == 0, result.output
    assert "trainer 2 x nvidia.com/gpu" in result.output
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["deploymentSpec"]["executors"]["HorovodTrainer_executor"]["container"]["resources"]["accelerator"][
        "count"] == "2"
    bad = CliRunner().invoke(main, ["pipeline", "compile-kubeflow", "--preset", "demo", "-o", str(tmp_path / "x.yaml")])
    assert bad.exit_code != 0 and "image is not set" in bad.output


def test_container_recipe_matches_the_pinned_set():
    """The image builds what the pipeline spec runs: the TFX release we pin, our constraints, Horovod with NCCL."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    dockerfile = (root / "Dockerfile").read_text()
    pins = dict(line.split("==", 1) for line in (root / "requirements" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert re.search(r"^ARG TFX_IMAGE=gcr\.io/tfx-oss-public/tfx:(\S+)$", dockerfile, re.M).group(1) == pins["tfx"]
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (root / path).exists(), f"Dockerfile copies missing {path}"
    assert '-c requirements/constraints.txt ".[kfp]"' in dockerfile
    horovod = re.search(r"horovod==(\S+)", dockerfile).group(1)
    assert f"horovod=={horovod}" in (root / "scripts" / "setup.sh").read_text()
    assert "HOROVOD_GPU_OPERATIONS=NCCL" in dockerfile and "TF_USE_LEGACY_KERAS=1" in dockerfile
    from hrnet_tfx.pipeline.pipeline import IMAGE_SETUP_FILE  # what Dataflow workers get as --setup_file

    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.M).group(1)
    assert IMAGE_SETUP_FILE == f"{workdir}/setup.py" and re.search(r"^COPY setup\.py .*\./$", dockerfile, re.M)


def test_readme_kubeflow_example_compiles(tmp_path):
    """The README's kfp.yaml, as written, compiles with the GPU request it shows."""
    import pathlib
    import re

    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"e\.g\. `kfp\.yaml`:\n\n   ```yaml\n(.*?)   ```", readme, re.S).group(1)
    (tmp_path / "kfp.yaml").write_text("\n".join(line[3:] for line in block.splitlines()) + "\n")
    compile_pipeline(load_config("", str(tmp_path / "kfp.yaml")), str(tmp_path / "hrnet_w18.yaml"))
    spec, platform = yaml.safe_load_all((tmp_path / "hrnet_w18.yaml").read_text())
    trainer = spec["deploymentSpec"]["executors"]["HorovodTrainer_executor"]["container"]
    assert trainer["resources"]["accelerator"]["count"] == "8"
    args = spec["deploymentSpec"]["executors"]["ImageExampleGen_executor"]["container"]["args"]
    assert "--runner=DataflowRunner" in args and args.count("--setup_file=/opt/hrnet-tfx/setup.py") == 1
