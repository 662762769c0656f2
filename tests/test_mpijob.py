"""The Kubeflow MPIJob generator: manifests checked against the kubeflow.org/v2beta1 MPIJob API and the
Kubernetes pod API, the cluster-path and batch refusals, and ``hrnet-tfx mpijob`` writing a file."""

import dataclasses
import json
import os
import socket
import sys
import threading
import time

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from hrnet_tfx.cli import main
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.kubernetes.mpijob import MPIJobSpec, mpijob_manifests
from hrnet_tfx.kubernetes.objects import write_manifests
from hrnet_tfx.training.config import TrainConfig

from conftest import TINY_CONFIG
from k8s_check import check_k8s

# --- kubeflow.org/v2beta1 MPIJob, written from mpi-operator's pkg/apis/kubeflow/v2beta1/types.go, the CRD
# (manifests/base/kubeflow.org_mpijobs.yaml) and the operator's admission checks
# (pkg/apis/kubeflow/validation/validation.go: enums, Launcher replicas == 1, Worker replicas >= 1,
# restartPolicy Never/OnFailure). Pod templates are only outlined here; check_k8s() checks them in full.
QUANTITY = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
INT32 = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}  # every int32 field here must be >= 0
INT64 = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}
POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"],
                            "properties": {"containers": {"type": "array", "minItems": 1}}}},
}
REPLICA_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "replicas": INT32,
        "restartPolicy": {"enum": ["Never", "OnFailure"]},
        "template": POD_TEMPLATE,
    },
}
MPIJOB_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "kubeflow.org/v2beta1"},
        "kind": {"const": "MPIJob"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            # the operator's name check: "<name>-worker-<i>" must be a DNS-1035 label
            "properties": {"name": {"type": "string", "pattern": "^[a-z]([-a-z0-9]*[a-z0-9])?$", "maxLength": 54}},
        },
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["mpiReplicaSpecs"],
            "properties": {
                "slotsPerWorker": INT32,
                "runLauncherAsWorker": {"type": "boolean"},
                "sshAuthMountPath": {"type": "string", "minLength": 1},
                "launcherCreationPolicy": {"enum": ["AtStartup", "WaitForWorkersReady"]},
                "mpiImplementation": {"enum": ["OpenMPI", "Intel", "MPICH"]},
                "runPolicy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "cleanPodPolicy": {"enum": ["None", "Running", "All"]},
                        "ttlSecondsAfterFinished": INT32,
                        "activeDeadlineSeconds": INT64,
                        "backoffLimit": INT32,
                        "suspend": {"type": "boolean"},
                        "managedBy": {"enum": ["kubeflow.org/mpi-operator", "kueue.x-k8s.io/multikueue"]},
                        "schedulingPolicy": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "minAvailable": INT32,
                                "queue": {"type": "string"},
                                "minResources": {"type": "object", "additionalProperties": {
                                    "anyOf": [{"type": "integer"}, {"type": "string", "pattern": QUANTITY}]}},
                                "priorityClass": {"type": "string"},
                                "scheduleTimeoutSeconds": INT32,
                            },
                        },
                    },
                },
                "mpiReplicaSpecs": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["Launcher"],
                    "properties": {
                        "Launcher": {"allOf": [REPLICA_SPEC, {"properties": {"replicas": {"const": 1}}}]},
                        "Worker": {"allOf": [REPLICA_SPEC, {"properties": {"replicas": {"minimum": 1}}}]},
                    },
                },
            },
        },
        "status": {"type": "object"},
    },
}


def schema_errors(obj) -> list[str]:
    validator = jsonschema.Draft202012Validator(MPIJOB_SCHEMA)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(obj)]


# --- fixtures ------------------------------------------------------------------------------------
def train_config(**changes) -> TrainConfig:
    base = dict(model="hrnet_w18_small", train_files="/data/imagenet/train-*", eval_files="gs://bucket/val-*",
                model_dir="/data/runs/w18", global_batch_size=256)
    return TrainConfig.from_dict({**base, **changes})


def spec(**changes) -> MPIJobSpec:
    return MPIJobSpec(**{"name": "w18", "image": "registry.example/hrnet-tfx:0.1.0", "workers": 2,
                         "gpus_per_worker": 4, "pvc": "imagenet", **changes})


def manifests(config=None, **changes):
    config_map, mpijob = mpijob_manifests(config or train_config(), spec(**changes))
    return config_map, mpijob


def pod(mpijob, role: str) -> dict:
    return mpijob["spec"]["mpiReplicaSpecs"][role]["template"]["spec"]


# --- the manifests are valid ---------------------------------------------------------------------
@pytest.mark.parametrize("changes", [
    {},
    {"gpus_per_worker": 0, "cpu": "8", "memory": "64Gi", "pvc": "", "host_path": "/mnt/imagenet",
     "mount_path": "/mnt/imagenet", "node_selector": {"pool": "train"}, "service_account": "trainer",
     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
     "env": {"TF_CPP_MIN_LOG_LEVEL": "1"}, "backoff_limit": 2},
])
def test_manifests_are_a_valid_configmap_and_mpijob(changes):
    config = train_config(model_dir="/mnt/imagenet/runs") if changes else train_config()
    config_map, mpijob = manifests(config, **changes)
    assert schema_errors(mpijob) == []
    assert check_k8s(config_map, "V1ConfigMap") == []
    assert check_k8s(mpijob["metadata"], "V1ObjectMeta") == []
    for role in ("Launcher", "Worker"):
        assert check_k8s(mpijob["spec"]["mpiReplicaSpecs"][role]["template"], "V1PodTemplateSpec") == [], role
    # what kubectl receives is what was checked: plain YAML types, no anchors
    assert json.loads(json.dumps(mpijob)) == mpijob


def test_gpu_limits_slots_and_process_count():
    _, mpijob = manifests(workers=3, gpus_per_worker=4, config=train_config(global_batch_size=384))
    assert mpijob["spec"]["slotsPerWorker"] == 4
    assert mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 3
    worker = pod(mpijob, "Worker")["containers"][0]
    assert worker["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert worker["command"] == ["/usr/sbin/sshd", "-De"]  # sshd for mpirun; the image entry point is TFX's
    command = pod(mpijob, "Launcher")["containers"][0]["command"]
    assert command[:2] == ["mpirun", "--allow-run-as-root"]
    assert command[command.index("-np") + 1] == "12"
    assert command[command.index("--hostfile") + 1] == "/etc/mpi/hostfile"
    assert command[-5:] == ["python", "-m", "hrnet_tfx.training.worker", "--config", "/etc/hrnet-tfx/train_config.json"]
    forwarded = [command[i + 1] for i, arg in enumerate(command) if arg == "-x"]
    assert {"NCCL_DEBUG", "LD_LIBRARY_PATH", "PATH"} <= set(forwarded)
    assert {"name": "NCCL_DEBUG", "value": "WARN"} in pod(mpijob, "Launcher")["containers"][0]["env"]
    assert "nvidia.com/gpu" not in json.dumps(pod(mpijob, "Launcher"))
    assert mpijob["spec"]["mpiImplementation"] == "OpenMPI"
    assert mpijob["spec"]["runPolicy"]["cleanPodPolicy"] == "Running"
    shm = [v for v in pod(mpijob, "Worker")["volumes"] if v["name"] == "dshm"]
    assert shm == [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]


def test_cpu_workers_run_one_process_each_without_gpu_limits():
    _, mpijob = manifests(workers=4, gpus_per_worker=0, cpu="16", memory="32Gi")
    assert mpijob["spec"]["slotsPerWorker"] == 1
    worker = pod(mpijob, "Worker")["containers"][0]
    assert worker["resources"] == {"requests": {"cpu": "16", "memory": "32Gi"}}
    command = pod(mpijob, "Launcher")["containers"][0]["command"]
    assert command[command.index("-np") + 1] == "4"


def test_configmap_round_trips_to_the_same_config_and_is_mounted_where_the_command_reads_it():
    config = train_config(epochs=90.0, lr_decay_epochs=[30, 60], label_smoothing=0.1)
    config_map, mpijob = manifests(config)
    assert TrainConfig.from_dict(json.loads(config_map["data"]["train_config.json"])) == config
    name = config_map["metadata"]["name"]
    assert name != "w18-config"  # mpi-operator's own ConfigMap (the hostfile) has that name
    for role in ("Launcher", "Worker"):
        spec_ = pod(mpijob, role)
        volume = next(v for v in spec_["volumes"] if v.get("configMap", {}).get("name") == name)
        mount = next(m for m in spec_["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
        assert mount["mountPath"] == "/etc/hrnet-tfx"


def test_data_volume_scheduling_and_eval_only():
    _, mpijob = mpijob_manifests(train_config(train_files=""), spec(node_selector={"gpu": "a100"}), eval_only=True)
    worker = pod(mpijob, "Worker")
    assert {"name": "data", "persistentVolumeClaim": {"claimName": "imagenet"}} in worker["volumes"]
    assert {"name": "data", "mountPath": "/data"} in worker["containers"][0]["volumeMounts"]
    assert worker["nodeSelector"] == {"gpu": "a100"} and "nodeSelector" not in pod(mpijob, "Launcher")
    assert pod(mpijob, "Launcher")["containers"][0]["command"][-1] == "--eval-only"


def test_spec_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec().workers = 8


# --- refusals ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_dir", ["runs/w18", "/tmp/runs/w18", "/database/runs", "file:///data/runs"])
def test_model_dir_off_shared_storage_is_refused(model_dir):
    with pytest.raises(ConfigError, match=r"model_dir .*gs://"):
        manifests(train_config(model_dir=model_dir))


def test_model_dir_on_uri_or_volume_is_accepted():
    manifests(train_config(model_dir="gs://bucket/runs/w18"), pvc="")
    manifests(train_config(model_dir="/data/runs/w18"))
    with pytest.raises(ConfigError, match="model_dir"):  # no volume: an absolute path is the pod's own disk
        manifests(train_config(model_dir="/data/runs/w18"), pvc="")


@pytest.mark.parametrize("key, value, message", [
    ("model_dir", "ram://runs/w18", "model_dir 'ram://runs/w18': ram:// is TensorFlow's in-memory file system"),
    ("export_dir", "s3://bucket/export", "export_dir 's3://bucket/export': s3:// is not a file system"),
    ("train_files", "/data/a-*,hdfs://nn/b-*", "train_files 'hdfs://nn/b-\\*': hdfs:// is not a file system"),
    ("eval_files", "file:///data/val-*", "eval_files 'file:///data/val-\\*': file:// is the pod's own disk"),
])
def test_uris_pods_cannot_share_are_refused(key, value, message):
    with pytest.raises(ConfigError, match=message):
        manifests(train_config(**{key: value}))


@pytest.mark.parametrize("key", ["train_files", "eval_files", "init_from", "label_map"])
def test_relative_data_paths_are_refused(key):
    with pytest.raises(ConfigError, match=key):
        manifests(train_config(**{key: "/data/a-*,relative/b-*"}))


def test_batch_not_divisible_by_all_processes_is_refused():
    with pytest.raises(ConfigError, match=r"global_batch_size 256 is not divisible by 12"):
        manifests(workers=3, gpus_per_worker=4)


def test_configmap_states_the_per_worker_and_the_global_batch():
    def resolved(config, **changes):
        config_map, _ = manifests(config, **changes)
        saved = json.loads(config_map["data"]["train_config.json"])
        return saved["per_worker_batch_size"], saved["global_batch_size"]

    default = train_config(global_batch_size=0)  # the official 32 per GPU
    assert resolved(default) == (32, 256)  # 2 nodes x 4 GPUs
    assert resolved(default, workers=4, gpus_per_worker=8) == (32, 1024)
    assert resolved(default.replace(per_worker_batch_size=64), workers=3, gpus_per_worker=4) == (64, 768)
    assert resolved(train_config(global_batch_size=256)) == (32, 256)
    assert resolved(train_config(global_batch_size=128)) == (16, 128)  # an explicit global batch wins


def test_allow_changed_config_reaches_the_workers():
    _, mpijob = mpijob_manifests(train_config(), spec(), allow_changed_config=True)
    assert pod(mpijob, "Launcher")["containers"][0]["command"][-1] == "--allow-changed-config"


@pytest.mark.parametrize("changes, message", [
    ({"image": ""}, "image is required"),
    ({"workers": 0}, "workers must be >= 1"),
    ({"gpus_per_worker": -1}, "gpus_per_worker"),
    ({"memory": "64GB"}, "not a Kubernetes quantity"),
    ({"name": "W18_run"}, "DNS label"),
    ({"host_path": "/mnt/x"}, "not both"),
])
def test_bad_spec_is_refused(changes, message):
    with pytest.raises(ConfigError, match=message):
        spec(**changes)


def test_local_network_config_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.yaml").write_text(TINY_CONFIG.read_text())
    manifests(train_config(model="tiny.yaml"))  # packaged with hrnet_tfx: every pod has it
    manifests(train_config(model="/data/configs/net.yaml"))  # absolute: in the image or on the volume
    for local in ("net.yaml", "./net.yaml"):
        with pytest.raises(ConfigError, match="local file the pods cannot read"):
            manifests(train_config(model=local))
    with pytest.raises(ConfigError, match="unknown model 'hrnet_w19'"):
        manifests(train_config(model="hrnet_w19"))


# --- the checks themselves can fail --------------------------------------------------------------
@pytest.mark.parametrize("mutate, expected", [
    (lambda j: j["spec"]["runPolicy"].update(cleanPodPolicy="Sometimes"), "cleanPodPolicy"),
    (lambda j: j["spec"]["mpiReplicaSpecs"].update(PS=j["spec"]["mpiReplicaSpecs"]["Worker"]), "PS"),
    (lambda j: j["spec"]["mpiReplicaSpecs"]["Launcher"].update(replicas=2), "replicas"),
    (lambda j: j["spec"]["mpiReplicaSpecs"]["Worker"].update(restartPolicy="Always"), "restartPolicy"),
    (lambda j: j["spec"].update(slotsPerWorkers=4), "slotsPerWorkers"),
    (lambda j: j["spec"].update(mpiImplementation="MVAPICH"), "mpiImplementation"),
    (lambda j: j.update(apiVersion="kubeflow.org/v1"), "apiVersion"),
    (lambda j: j["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"].update(containers=[]), "containers"),
])
def test_schema_rejects_bad_mpijobs(mutate, expected):
    _, mpijob = manifests()
    mutate(mpijob)
    errors = schema_errors(mpijob)
    assert errors and expected in " ".join(errors), errors


@pytest.mark.parametrize("mutate, expected", [
    (lambda p: p.update(nodeSelecter={"gpu": "a100"}),
     "nodeSelecter: unknown field of V1PodSpec (did you mean 'nodeSelector'?)"),
    (lambda p: p["containers"][0].update(resources={"limit": {"nvidia.com/gpu": "1"}}),
     "resources.limit: unknown field"),
    (lambda p: p["containers"][0]["resources"].update(limits={"nvidia.com/gpu": 1}), "expected str"),
    (lambda p: p["containers"][0].update(ports=[{"containerPort": "22"}]), "containerPort: expected int"),
    (lambda p: p["containers"][0].pop("name"), "`name`, must not be `None`"),
    (lambda p: p.update(volumes={"name": "x"}), "volumes: expected a list"),
])
def test_pod_checker_rejects_bad_pod_specs(mutate, expected):
    _, mpijob = manifests()
    template = mpijob["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
    mutate(template["spec"])
    errors = check_k8s(template, "V1PodTemplateSpec")
    assert any(expected in e for e in errors), errors


# --- writing and the command ---------------------------------------------------------------------
def test_write_manifests_is_atomic_and_stdout_works(tmp_path, capsys):
    objs = list(manifests())
    out = tmp_path / "job.yaml"
    write_manifests(objs, str(out))
    assert list(yaml.safe_load_all(out.read_text())) == objs
    assert os.listdir(tmp_path) == ["job.yaml"]
    with pytest.raises(yaml.representer.RepresenterError):  # fails mid-write: old file kept, no temp file
        write_manifests(objs + [{"bad": object()}], str(out))
    assert os.listdir(tmp_path) == ["job.yaml"] and list(yaml.safe_load_all(out.read_text())) == objs
    write_manifests(objs, "-")
    assert list(yaml.safe_load_all(capsys.readouterr().out)) == objs


def test_mpijob_command_writes_configmap_and_mpijob(tmp_path):
    data = tmp_path / "inception"  # inception-format TFRecords, resolved as 'hrnet-tfx train --data' does
    data.mkdir()
    for name in ("train-00000-of-00001", "validation-00000-of-00001"):
        (data / name).write_bytes(b"")
    out = tmp_path / "manifests" / "w18.yaml"
    result = CliRunner().invoke(main, [
        "mpijob", "--image", "registry.example/hrnet-tfx:0.1.0", "--data", str(data), "--model", "hrnet_w18_small",
        "--model-dir", "gs://bucket/runs/w18", "--workers", "2", "--gpus-per-worker", "2", "--cpu", "8",
        "--memory", "64Gi", "--node-selector", "pool=gpu", "--name", "w18", "-s", "global_batch_size=64",
        "--output", str(out)])
    assert result.exit_code == 0, result.output
    config_map, mpijob = docs = list(yaml.safe_load_all(out.read_text()))
    assert [d["kind"] for d in docs] == ["ConfigMap", "MPIJob"]
    assert schema_errors(mpijob) == []
    config = TrainConfig.from_dict(json.loads(config_map["data"]["train_config.json"]))
    assert (config.train_files, config.label_offset, config.global_batch_size, config.per_worker_batch_size) == \
        (str(data / "train-*-of-*"), 1, 64, 16)
    assert pod(mpijob, "Worker")["nodeSelector"] == {"pool": "gpu"}
    assert os.listdir(out.parent) == ["w18.yaml"]


@pytest.mark.parametrize("args, message", [
    (["--model-dir", "runs/w18"], "model_dir 'runs/w18' is not shared storage"),
    (["--model-dir", "gs://b/m", "--workers", "3", "-s", "global_batch_size=128"], "not divisible by 3"),
    (["--model-dir", "gs://b/m", "--node-selector", "pool"], "is not KEY=VALUE"),
])
def test_mpijob_command_errors_are_clean(args, message):
    files = ["-s", "train_files=/data/train-*", "-s", "eval_files=/data/val-*"]
    result = CliRunner().invoke(main, ["mpijob", "--image", "img", *files, *args])
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["mpijob", "--model-dir", "gs://b/m", *files])
    assert missing.exit_code != 0 and "--image" in missing.output


# --- data this machine cannot read ---------------------------------------------------------------
@pytest.fixture
def silent_proxy(monkeypatch):
    """An HTTPS proxy that accepts connections and never answers: a bucket behind a network that drops
    the packets. TensorFlow's GCS client (libcurl) goes through it for every request made meanwhile."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at teardown
                return

    threading.Thread(target=accept, daemon=True).start()
    for name in ("no_proxy", "NO_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield held
    monkeypatch.undo()  # before the sockets close, so the abandoned read's retry does not come back here
    server.close()
    for conn in held:
        conn.close()
    # The command left its read behind (a daemon thread); it now fails fast. Wait for it: a thread that
    # returns into Python while the interpreter shuts down aborts the process.
    for thread in threading.enumerate():
        if thread.name == "read --data":
            thread.join(timeout=60)
            assert not thread.is_alive()


@pytest.mark.parametrize("command", ["mpijob", "train"])
def test_data_on_an_unknown_file_system_is_one_clear_error(command, tmp_path):
    args = ["--image", "img", "--model-dir", "gs://b/runs"] if command == "mpijob" else ["--model-dir", str(tmp_path)]
    result = CliRunner().invoke(main, [command, "--data", "nosuch://bucket/imagenet", *args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "Error: cannot read --data nosuch://bucket/imagenet: File system scheme 'nosuch' not implemented" \
        in result.output
    assert "GOOGLE_APPLICATION_CREDENTIALS" not in result.output  # credentials would not help
    files_instead = "-s train_files='nosuch://bucket/imagenet/Split-train/train-*-of-*'"
    assert (files_instead in result.output) == (command == "mpijob")  # train reads the data here anyway


def test_data_on_a_bucket_that_does_not_answer_fails_within_the_bound(silent_proxy, monkeypatch):
    monkeypatch.setattr(sys.modules["hrnet_tfx.cli.train"], "DATA_READ_TIMEOUT_S", 2.0)  # the module, not the command
    start = time.monotonic()
    result = CliRunner().invoke(main, ["mpijob", "--image", "img", "--data", "gs://bucket/imagenet",
                                       "--model-dir", "gs://bucket/runs"])
    took = time.monotonic() - start
    assert silent_proxy, "the read did not go through the proxy"
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert result.output.startswith("Error: cannot read --data gs://bucket/imagenet: no answer within 2 s. To read "
                                    "gs://bucket/imagenet this machine needs network access to the bucket and "
                                    "credentials for it (gs://: set GOOGLE_APPLICATION_CREDENTIALS"), result.output
    assert "-s train_files='gs://bucket/imagenet/Split-train/train-*-of-*' -s eval_files='gs://bucket/imagenet/" \
           "Split-eval/validation-*-of-*' -s label_map=gs://bucket/imagenet/labels.tsv" in result.output
    assert took < 10, took  # TensorFlow alone waits 61 s per attempt and retries 10 times
