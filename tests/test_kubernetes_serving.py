"""TF Serving on the cluster: the Deployment + Service (+ batching ConfigMap) of ``hrnet-tfx serving-manifests``
checked field by field against the Kubernetes API models, wired consistently (ports, labels, probe, the
model base the Pusher writes), and the permissions of every file written for users."""

import importlib.metadata
import os
import stat

import pytest
import yaml
from click.testing import CliRunner

from hrnet_tfx.cli import main
from hrnet_tfx.kubernetes.serving import TF_SERVING_VERSION, ServingSpec, serving_manifests
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.serving.batching import BatchingOptions
from hrnet_tfx.serving.server import model_server_command

from k8s_check import check_k8s  # the Kubernetes API model checker (kubernetes client models)

KINDS = {"ConfigMap": "V1ConfigMap", "Deployment": "V1Deployment", "Service": "V1Service"}


def by_kind(objects) -> dict:
    return {o["kind"]: o for o in objects}


@pytest.mark.parametrize("changes", [
    {},
    {"gpus": 2, "replicas": 3, "service_type": "LoadBalancer", "service_account": "serving",
     "node_selector": {"pool": "gpu"}, "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
     "env": {"GOOGLE_APPLICATION_CREDENTIALS": "/var/secrets/key.json"}},
    {"model_base": "/models/serving", "pvc": "models", "batching": None},
])
def test_manifests_are_valid_kubernetes_objects(changes):
    objects = serving_manifests(ServingSpec(**{"model_base": "gs://bucket/serving", **changes}))
    assert [o["kind"] for o in objects] == (["ConfigMap"] if "batching" not in changes else []) + [
        "Deployment", "Service"]
    for obj in objects:
        assert check_k8s(obj, KINDS[obj["kind"]]) == [], obj["kind"]


def test_tf_serving_runs_on_the_pushers_model_base_with_batching_warmup_and_readiness():
    spec = ServingSpec(model_base="gs://bucket/serving/", model_name="hrnet", cpu="3500m", gpus=1)
    objs = by_kind(serving_manifests(spec))
    pod = objs["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "tensorflow/serving:2.16.1-gpu"
    assert container["command"] + container["args"] == model_server_command(
        "tensorflow_model_server", "hrnet", "gs://bucket/serving/hrnet", poll_seconds=10,
        batching_parameters_file="/etc/hrnet-tfx-serving/batching_parameters.txt")
    assert "--model_base_path=gs://bucket/serving/hrnet" in container["args"]
    # the batching file is mounted where the flag points, with threads for the pod's 3.5 CPUs
    assert objs["ConfigMap"]["data"] == {
        "batching_parameters.txt": BatchingOptions(num_batch_threads=4).to_text_proto()}
    (mount,) = container["volumeMounts"]
    assert mount["mountPath"] == "/etc/hrnet-tfx-serving"
    assert pod["spec"]["volumes"] == [{"name": mount["name"], "configMap": {"name": "hrnet-serving-batching"}}]
    assert container["resources"] == {"requests": {"cpu": "3500m", "memory": "8Gi"},
                                      "limits": {"cpu": "3500m", "memory": "8Gi", "nvidia.com/gpu": "1"}}
    # readiness once a version is loaded (after TF Serving replayed its warm-up requests), on the REST port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 8500, "http": 8501}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v1/models/hrnet/metadata", "port": "http"}
    assert container["livenessProbe"]["tcpSocket"] == {"port": "grpc"}
    # the Service selects these pods and forwards both ports by name
    service = objs["Service"]["spec"]
    assert service["selector"] == pod["metadata"]["labels"] == objs["Deployment"]["spec"]["selector"]["matchLabels"]
    assert {p["targetPort"]: p["port"] for p in service["ports"]} == ports


def test_cpu_image_and_tf_serving_release_match_the_serving_api():
    assert TF_SERVING_VERSION == importlib.metadata.version("tensorflow-serving-api")
    (container,) = by_kind(serving_manifests(ServingSpec("gs://b/s")))["Deployment"]["spec"]["template"]["spec"][
        "containers"]
    assert container["image"] == f"tensorflow/serving:{TF_SERVING_VERSION}"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]


@pytest.mark.parametrize("changes, message", [
    ({"model_base": "serving"}, "model base 'serving' is not where the pods can read it"),
    ({"model_base": "/data/serving", "pvc": "models"}, r"under --mount-path \(/models\)"),
    ({"model_base": "ram://x"}, "model base 'ram://x': ram:// is TensorFlow's in-memory file system"),
    ({"model_base": "s3://b/serving"}, r"model base 's3://b/serving': s3:// is not a file system .* use a gs:// URI"),
    ({"model_base": "file:///models/serving", "pvc": "models"}, "file:// is the pod's own disk"),
    ({"model_name": "hrnet\n"}, r"model name 'hrnet\\n'"),
    ({"name": "HRNet"}, "must be a lowercase DNS label"),
    ({"memory": "8 GB"}, "memory='8 GB' is not a Kubernetes quantity"),
    ({"service_type": "Ingress"}, "service_type 'Ingress'"),
])
def test_bad_specs_are_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        ServingSpec(**{"model_base": "gs://bucket/serving", **changes})


def test_serving_manifests_command(tmp_path):
    out = tmp_path / "serve.yaml"
    result = CliRunner().invoke(main, [
        "serving-manifests", "--model-base", "gs://bucket/serving", "--model-name", "hrnet", "--gpus", "1",
        "--max-batch-size", "64", "--node-selector", "pool=gpu", "-o", str(out)])
    assert result.exit_code == 0, result.output
    objs = by_kind(yaml.safe_load_all(out.read_text()))
    assert "max_batch_size { value: 64 }" in objs["ConfigMap"]["data"]["batching_parameters.txt"]
    assert objs["Deployment"]["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    bad = CliRunner().invoke(main, ["serving-manifests", "--model-base", "serving"])
    assert bad.exit_code != 0 and "is not where the pods can read it" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_files_for_users_get_the_usual_permissions(tmp_path, umask, mode):
    """Manifests, KFP specs and configs are created like any file (0666 less the umask), not 0600."""
    from hrnet_tfx.pipeline import load_config
    from hrnet_tfx.pipeline.kubeflow_runner import compile_pipeline

    previous = os.umask(umask)
    try:
        assert CliRunner().invoke(main, ["serving-manifests", "--model-base", "gs://b/s", "-o",
                                         str(tmp_path / "serve.yaml")]).exit_code == 0
        assert CliRunner().invoke(main, ["mpijob", "--image", "img", "--model-dir", "gs://b/m", "-s",
                                         "train_files=gs://b/t-*", "-s", "eval_files=gs://b/e-*", "-o",
                                         str(tmp_path / "train.yaml")]).exit_code == 0
        compile_pipeline(load_config("demo", "", ["root=gs://b/p", "input_base=gs://b/in", "serving_base=gs://b/s",
                                                  "kubeflow.image=img"]), str(tmp_path / "kfp.yaml"))
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"serve.yaml": mode, "train.yaml": mode, "kfp.yaml": mode, "kfp.config.json": mode}
