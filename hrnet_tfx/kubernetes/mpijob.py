"""Kubernetes manifests for multi-node Horovod training with a Kubeflow MPIJob (mpi-operator v2,
``kubeflow.org/v2beta1``).

:func:`mpijob_manifests` turns a resolved :class:`TrainConfig` and an :class:`MPIJobSpec` (image, nodes,
GPUs, volumes) into two objects: a ConfigMap holding the config as ``train_config.json`` and the MPIJob
whose launcher runs ``mpirun ... python -m hrnet_tfx.training.worker --config <that file>`` on every
worker slot. :func:`hrnet_tfx.kubernetes.objects.write_manifests` writes them as one multi-document YAML
for ``kubectl apply -f``. Nothing here talks to a cluster or reads the training data.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import types
from typing import Any, Mapping, Sequence

import hrnet_tfx  # noqa: F401
from hrnet_tfx.fs import is_uri, shared_uri_problem
from hrnet_tfx.kubernetes import objects
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.training.config import TrainConfig, split_paths
from hrnet_tfx.training.launcher import worker_command

API_VERSION = "kubeflow.org/v2beta1"
CONFIG_DIR = "/etc/hrnet-tfx"
CONFIG_FILE = "train_config.json"
CONFIG_VOLUME = "train-config"
DATA_VOLUME = "data"
HOSTFILE = "/etc/mpi/hostfile"  # written and mounted by mpi-operator v2 (ConfigMap <job>-config)
WORKER_COMMAND = ("/usr/sbin/sshd", "-De")  # foreground sshd (the Dockerfile configures it)
DEFAULT_NCCL_ENV = types.MappingProxyType({"NCCL_DEBUG": "WARN"})


@dataclasses.dataclass(frozen=True)
class MPIJobSpec:
    """Where and how the training processes run on the cluster.

    Args:
      name: the MPIJob's name (a DNS-1035 label; the operator names pods ``<name>-worker-<i>``).
      image: container image with this package, TensorFlow, Horovod (built with NCCL), OpenMPI and sshd.
      workers: worker pods (nodes), >= 1.
      gpus_per_worker: ``nvidia.com/gpu`` limit per worker; 0 trains on CPU. One process per GPU.
      cpu, memory: requests per worker, e.g. ``"8"``, ``"64Gi"``; empty leaves them unset.
      node_selector, tolerations: scheduling constraints for the worker pods (the launcher needs none).
      service_account: for both pods (e.g. Workload Identity for ``gs://``); empty = namespace default.
      nccl_env, env: environment of every training process (set on the launcher, forwarded by
        ``mpirun -x``); ``env`` wins over ``nccl_env``.
      pvc, host_path: the data volume, mounted on the workers at ``mount_path``: a
        PersistentVolumeClaim name or a node directory (at most one; neither for data on ``gs://``).
      launcher_cpu, launcher_memory: the launcher only runs ``mpirun``.
      backoff_limit: retries of the launcher before the job fails (None: the Job default); a retry
        resumes from the latest checkpoint in ``model_dir``.
    """

    name: str = "hrnet-train"
    image: str = ""
    namespace: str = "default"
    workers: int = 1
    gpus_per_worker: int = 1
    cpu: str = ""
    memory: str = ""
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    service_account: str = ""
    nccl_env: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_NCCL_ENV))
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pvc: str = ""
    host_path: str = ""
    mount_path: str = "/data"
    launcher_cpu: str = "1"
    launcher_memory: str = "2Gi"
    backoff_limit: int | None = None

    def __post_init__(self):
        for key in ("node_selector", "nccl_env", "env"):
            object.__setattr__(self, key, objects.frozen_strings(getattr(self, key)))
        object.__setattr__(self, "tolerations", objects.frozen_tolerations(self.tolerations))
        if not self.image:
            raise ConfigError("mpijob: image is required (a container image with hrnet-tfx, Horovod and OpenMPI)")
        if self.workers < 1:
            raise ConfigError(f"mpijob: workers must be >= 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ConfigError(f"mpijob: gpus_per_worker must be >= 0, got {self.gpus_per_worker}")
        pod_suffix = f"-worker-{self.workers - 1}"  # the operator names the last worker pod <name><suffix>
        objects.check_name("mpijob: name", self.name, max_length=objects.MAX_NAME - len(pod_suffix),
                           why=f", so that pod name '{self.name}{pod_suffix}' fits in {objects.MAX_NAME}")
        for key in ("cpu", "memory", "launcher_cpu", "launcher_memory"):
            objects.check_quantity(f"mpijob: {key}", getattr(self, key))
        objects.check_env_names("mpijob", {**self.nccl_env, **self.env})
        if self.pvc and self.host_path:
            raise ConfigError("mpijob: set pvc or host_path for the data volume, not both")
        if (self.pvc or self.host_path) and not posixpath.isabs(self.mount_path):
            raise ConfigError(f"mpijob: mount_path must be absolute, got {self.mount_path!r}")
        if self.backoff_limit is not None and self.backoff_limit < 0:
            raise ConfigError(f"mpijob: backoff_limit must be >= 0, got {self.backoff_limit}")

    @property
    def slots_per_worker(self) -> int:
        """Training processes per worker pod: one per GPU, or one on CPU."""
        return self.gpus_per_worker or 1

    @property
    def num_processes(self) -> int:
        """Horovod size: ``workers * slots_per_worker``."""
        return self.workers * self.slots_per_worker

    @property
    def has_volume(self) -> bool:
        return bool(self.pvc or self.host_path)


def check_cluster_config(config: TrainConfig, spec: MPIJobSpec, eval_only: bool = False) -> None:
    """Checks what can be checked without the cluster's files; raises :class:`ConfigError` naming the field.

    Every path must be visible from every pod: a URI TensorFlow reads (``gs://``) or an absolute
    path. ``model_dir`` and ``export_dir`` must also outlive the pods (rank 0 writes them, and a restarted
    job may resume on another node): a URI or a path inside the mounted data volume. An explicit global
    batch must split evenly over the ``workers * slots`` processes.
    """
    _check_model(config.model)
    if not config.model_dir:
        raise ConfigError("model_dir is not set")
    required = ("eval_files",) if eval_only else ("train_files", "eval_files")
    for key in required:
        if not getattr(config, key):
            raise ConfigError(f"{key} is not set")
    for key in ("train_files", "eval_files", "label_map", "init_from"):
        for part in split_paths(getattr(config, key)):
            problem = shared_uri_problem(part)
            if problem:
                raise ConfigError(f"{key} {part!r}: {problem}; use a gs:// URI or an absolute path (in the image "
                                  "or the data volume)")
            if not (is_uri(part) or posixpath.isabs(part)):
                raise ConfigError(f"{key} {part!r} is a relative path the pods cannot see: use an absolute "
                                  "path (in the image or the data volume) or a gs:// URI")
    for key in ("model_dir", "export_dir"):
        path = getattr(config, key)
        if not path:
            continue
        where = f"a path under the data volume's mount path {spec.mount_path}" if spec.has_volume else \
            "a data volume (--pvc/--host-path) and a path under its mount path"
        problem = shared_uri_problem(path)
        if problem:
            raise ConfigError(f"{key} {path!r}: {problem}; use a gs:// URI, or {where}")
        if not (is_uri(path) or (spec.has_volume and objects.under_mount(path, spec.mount_path))):
            raise ConfigError(f"{key} {path!r} is not shared storage (every rank and a restarted pod must see the "
                              f"same directory, and the pod's own disk is lost): use a gs:// URI, or {where}")
    if config.global_batch_size and config.global_batch_size % spec.num_processes:
        raise ConfigError(f"global_batch_size {config.global_batch_size} is not divisible by {spec.num_processes} "
                          f"workers ({spec.workers} node(s) x {spec.slots_per_worker} slot(s))")
    if config.backend == "tf_distribute" and spec.num_processes > 1:
        raise ConfigError("backend 'tf_distribute' cannot span MPI processes: use 'auto' or 'horovod'")


def mpijob_manifests(train_config: TrainConfig, spec: MPIJobSpec, eval_only: bool = False,
                     allow_changed_config: bool = False) -> list[dict]:
    """The ConfigMap (``train_config.json``) and the ``kubeflow.org/v2beta1`` MPIJob for one run.

    The ConfigMap holds the config resolved for the job's ``workers * slots`` processes: the per-worker
    and the global batch (``per_worker_batch_size`` x processes unless ``global_batch_size`` is set).
    ``allow_changed_config`` lets the workers resume a ``model_dir`` whose saved settings differ.

    The launcher runs plain ``mpirun`` with the usual Horovod flags rather than ``horovodrun``:
    mpi-operator v2 already writes ``/etc/mpi/hostfile`` (``<worker> slots=N``), sets up SSH and retries
    connections while worker pods start (``OMPI_MCA_plm_rsh_args``), so ``mpirun -np workers*slots`` is
    all that is needed; ``horovodrun`` would add its own SSH checks and a second launcher layer. Worker
    pods run ``sshd`` (:data:`WORKER_COMMAND`); ``mpirun`` starts one
    ``python -m hrnet_tfx.training.worker`` per slot. The environment of those processes comes from the
    launcher (``-x``), not from the worker pods, so ``nccl_env``/``env`` are set on the launcher only.

    Raises:
      ConfigError: see :func:`check_cluster_config`.
    """
    check_cluster_config(train_config, spec, eval_only)
    train_config = train_config.for_workers(spec.num_processes)
    labels = objects.app_labels("hrnet-tfx", spec.name)
    config_map_name = f"{spec.name}-train-config"  # "<name>-config" belongs to the operator
    config_map = objects.config_map(config_map_name, spec.namespace, labels, {
        CONFIG_FILE: json.dumps(train_config.to_dict(), indent=2, sort_keys=True) + "\n"})
    launcher = _launcher_pod(spec, config_map_name, launcher_command(spec, eval_only, allow_changed_config))
    return [config_map, _mpijob(spec, labels, launcher, _worker_pod(spec, config_map_name))]


def launcher_command(spec: MPIJobSpec, eval_only: bool = False, allow_changed_config: bool = False) -> list[str]:
    """The launcher's ``mpirun`` command: one training worker per slot, the environment forwarded."""
    command = ["mpirun", "--allow-run-as-root", "-np", str(spec.num_processes), "--hostfile", HOSTFILE,
               "-bind-to", "none", "-map-by", "slot", "-mca", "pml", "ob1", "-mca", "btl", "^openib"]
    for name in dict.fromkeys(["LD_LIBRARY_PATH", "PATH", *_launcher_env(spec)]):
        command += ["-x", name]
    worker = worker_command(posixpath.join(CONFIG_DIR, CONFIG_FILE), eval_only, allow_changed_config)
    return command + ["python", *worker[1:]]  # the image's python, not this machine's sys.executable


def _launcher_env(spec: MPIJobSpec) -> dict[str, str]:
    return {"PYTHONUNBUFFERED": "1", **spec.nccl_env, **spec.env}


def _config_volume_and_mount(config_map_name: str) -> tuple[dict, dict]:
    return (objects.config_map_volume(CONFIG_VOLUME, config_map_name),
            objects.mount(CONFIG_VOLUME, CONFIG_DIR, read_only=True))


def _launcher_pod(spec: MPIJobSpec, config_map_name: str, command: list[str]) -> dict:
    """The launcher's pod spec: runs ``command`` (``mpirun``), no GPUs, the config mounted."""
    volume, config_mount = _config_volume_and_mount(config_map_name)
    launcher = objects.container(
        "launcher", spec.image, command, env=_launcher_env(spec),
        resources=objects.resources(spec.launcher_cpu, spec.launcher_memory), mounts=[config_mount])
    return objects.pod_spec([launcher], [volume], service_account=spec.service_account)


def _worker_pod(spec: MPIJobSpec, config_map_name: str) -> dict:
    """A worker's pod spec: ``sshd`` for the launcher's ``mpirun``, the GPUs, shared memory for NCCL, the
    config and the data volume, and the scheduling constraints."""
    volume, config_mount = _config_volume_and_mount(config_map_name)
    volumes = [volume, {"name": "dshm", "emptyDir": {"medium": "Memory"}}]  # NCCL's shared memory
    mounts = [config_mount, objects.mount("dshm", "/dev/shm")]
    if spec.has_volume:
        source = objects.claim_volume(DATA_VOLUME, spec.pvc) if spec.pvc else \
            {"name": DATA_VOLUME, "hostPath": {"path": spec.host_path, "type": "Directory"}}
        volumes.append(source)
        mounts.append(objects.mount(DATA_VOLUME, spec.mount_path))
    # Workers only serve ssh for the launcher's mpirun; the command is set because the image's entry
    # point is TFX's executor runner.
    worker = objects.container(
        "worker", spec.image, WORKER_COMMAND,
        resources=objects.resources(spec.cpu, spec.memory, limit=False, gpus=spec.gpus_per_worker), mounts=mounts)
    return objects.pod_spec([worker], volumes, service_account=spec.service_account,
                            node_selector=spec.node_selector, tolerations=spec.tolerations)


def _mpijob(spec: MPIJobSpec, labels: Mapping[str, str], launcher: dict, worker: dict) -> dict:
    """The MPIJob object around the two pod specs."""
    run_policy: dict[str, Any] = {"cleanPodPolicy": "Running"}
    if spec.backoff_limit is not None:
        run_policy["backoffLimit"] = spec.backoff_limit
    return {
        "apiVersion": API_VERSION,
        "kind": "MPIJob",
        "metadata": objects.metadata(spec.name, spec.namespace, labels),
        "spec": {
            "slotsPerWorker": spec.slots_per_worker,
            "runPolicy": run_policy,
            "mpiImplementation": "OpenMPI",
            "mpiReplicaSpecs": {
                "Launcher": {"replicas": 1, "restartPolicy": "OnFailure",
                             "template": objects.pod_template(labels, launcher)},
                "Worker": {"replicas": spec.workers, "restartPolicy": "Never",
                           "template": objects.pod_template(labels, worker)},
            },
        },
    }


def _check_model(model: str) -> None:
    """A registered variant, a packaged network config, or an absolute config path the pods can read."""
    from hrnet_tfx.models.registry import PACKAGED_CONFIGS, get_config, list_models

    if posixpath.isabs(model) or model in list_models():
        return
    get_config(model)  # unknown name -> ConfigError naming the known ones
    if os.sep in model or not os.path.isfile(os.path.join(PACKAGED_CONFIGS, model)):
        raise ConfigError(f"model {model!r} is a local file the pods cannot read: use a registered variant, "
                          "a packaged config, or an absolute path in the image or the data volume")
