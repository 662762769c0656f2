"""TF Serving on Kubernetes: a Deployment + Service running the real ``tensorflow/serving`` image on the
model base the Pusher writes (a bucket), for ``kubectl apply -f``.

:func:`serving_manifests` turns a :class:`ServingSpec` into three objects:

* a ConfigMap holding TF Serving's ``--batching_parameters_file`` (:class:`hrnet_tfx.serving.batching.
  BatchingOptions`, the same parameters ``hrnet-tfx serve`` gives a local ``tensorflow_model_server``);
* a Deployment whose container runs ``tensorflow_model_server`` with the command line of
  :func:`hrnet_tfx.serving.server.model_server_command`: ``--model_base_path=<model base>/<model name>``
  (the directory the Pusher writes versions into; TF Serving serves the highest complete version and
  picks up new pushes every ``poll_seconds``), gRPC on 8500 and REST on 8501. TF Serving replays each
  version's warm-up file (``assets.extra/tf_serving_warmup_requests``, written by the Pusher) before the
  version serves. Readiness: ``GET /v1/models/<name>/metadata`` on the REST port, which answers 200 only
  when a version is loaded (the model-status endpoint ``/v1/models/<name>`` already answers while the
  first version is still loading, and 404 before the first push); liveness: the gRPC port accepts
  connections. CPU and memory requests (= limits), and ``nvidia.com/gpu`` for the ``-gpu`` image;
* a Service (``ClusterIP`` by default) exposing ports ``grpc`` 8500 and ``http`` 8501, which
  ``hrnet-tfx predict --server`` talks to (through ``kubectl port-forward`` or the Service address).

Bucket credentials: on GKE run the pods under a Kubernetes service account bound to a Google service
account that can read the bucket (Workload Identity, ``service_account``); elsewhere pass credentials
through ``env`` (e.g. ``GOOGLE_APPLICATION_CREDENTIALS`` with a mounted key) as the image expects.
"""

from __future__ import annotations

import dataclasses
import math
import posixpath
from typing import Any, Mapping, Sequence

from hrnet_tfx.fs import is_uri, shared_uri_problem
from hrnet_tfx.kubernetes import objects
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.serving.batching import BatchingOptions
from hrnet_tfx.serving.names import check_model_name
from hrnet_tfx.serving.server import MODEL_SERVER, model_server_command

TF_SERVING_VERSION = "2.16.1"
"""The TF Serving release matching this project's tensorflow-serving-api (and TensorFlow 2.16)."""
TF_SERVING_IMAGE = f"tensorflow/serving:{TF_SERVING_VERSION}"
TF_SERVING_GPU_IMAGE = f"tensorflow/serving:{TF_SERVING_VERSION}-gpu"
GRPC_PORT = 8500
REST_PORT = 8501
CONFIG_DIR = "/etc/hrnet-tfx-serving"
BATCHING_FILE = "batching_parameters.txt"
BATCHING_SUFFIX = "-batching"
"""The batching ConfigMap is ``<name>-batching``."""
BATCHING_VOLUME = "batching"
MODELS_VOLUME = "models"


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """What to serve and where it runs.

    Args:
      model_base: the Pusher's model base (the pipeline's ``serving_base``): a bucket URI the image can
        read (``gs://`` in the stock ``tensorflow/serving`` image), or an absolute path under
        ``mount_path`` with ``pvc``.
      model_name: the served model's name (versions are read from ``<model_base>/<model_name>/``).
      name: Deployment, Service and ConfigMap name prefix (a DNS-1035 label).
      image: the TF Serving image (default: ``tensorflow/serving:2.16.1``, ``-gpu`` when ``gpus > 0``).
      replicas: pods behind the Service.
      gpus: GPUs per pod (``gpu_resource``); 0 serves on CPU.
      cpu, memory: per pod, requested and limited to the same amount.
      batching: TF Serving's batching parameters; None turns batching off. ``num_batch_threads`` 0
        becomes the pod's CPU count (not the count of the machine writing the manifests).
      poll_seconds: how often TF Serving looks for new versions (each look lists the bucket).
      service_type: ``ClusterIP`` (reach it with ``kubectl port-forward``), ``LoadBalancer`` or ``NodePort``.
      service_account: for the pods (e.g. Workload Identity for ``gs://``); empty = namespace default.
      node_selector, tolerations: where the pods may run; env: extra environment of the server.
      pvc, mount_path: a PersistentVolumeClaim holding the model base, mounted read-only.
    """

    model_base: str
    model_name: str = "hrnet"
    name: str = "hrnet-serving"
    namespace: str = "default"
    image: str = ""
    replicas: int = 1
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    cpu: str = "4"
    memory: str = "8Gi"
    batching: BatchingOptions | None = dataclasses.field(default_factory=BatchingOptions)
    poll_seconds: int = 10
    service_type: str = "ClusterIP"
    service_account: str = ""
    node_selector: Mapping[str, str] = dataclasses.field(default_factory=dict)
    tolerations: Sequence[Mapping[str, Any]] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    pvc: str = ""
    mount_path: str = "/models"

    def __post_init__(self):
        for key in ("node_selector", "env"):
            object.__setattr__(self, key, objects.frozen_strings(getattr(self, key)))
        object.__setattr__(self, "tolerations", objects.frozen_tolerations(self.tolerations))
        object.__setattr__(self, "model_base", self.model_base.rstrip("/"))
        if not self.image:
            object.__setattr__(self, "image", TF_SERVING_GPU_IMAGE if self.gpus else TF_SERVING_IMAGE)
        try:
            check_model_name(self.model_name)
        except ValueError as e:
            raise ConfigError(f"serving: {e}") from None
        objects.check_name("serving: name", self.name, max_length=objects.MAX_NAME - len(BATCHING_SUFFIX))
        if self.replicas < 1 or self.gpus < 0 or self.poll_seconds < 1:
            raise ConfigError("serving: replicas and poll_seconds must be >= 1, gpus >= 0")
        objects.check_quantity("serving: cpu", self.cpu)
        objects.check_quantity("serving: memory", self.memory)
        if self.service_type not in ("ClusterIP", "LoadBalancer", "NodePort"):
            raise ConfigError(f"serving: service_type {self.service_type!r} is not ClusterIP, LoadBalancer or NodePort")
        objects.check_env_names("serving", self.env)
        problem = shared_uri_problem(self.model_base)
        if problem:
            raise ConfigError(f"serving: model base {self.model_base!r}: {problem}; use a gs:// URI or --pvc with a "
                              f"path under --mount-path ({self.mount_path})")
        if is_uri(self.model_base):  # a gs:// URI: shared_uri_problem refused every other scheme
            return
        if not (self.pvc and objects.under_mount(self.model_base, self.mount_path)):
            raise ConfigError(
                f"serving: model base {self.model_base!r} is not where the pods can read it: use a bucket URI "
                f"(gs://BUCKET/serving, the pipeline's serving_base) or --pvc with a path under --mount-path "
                f"({self.mount_path})")

    @property
    def model_dir(self) -> str:
        """TF Serving's ``--model_base_path``: the directory holding the version directories."""
        return posixpath.join(self.model_base, self.model_name)

    def batching_options(self) -> BatchingOptions | None:
        """``batching`` with ``num_batch_threads`` resolved for the pod (its CPU count, at least 1)."""
        if self.batching is None or self.batching.num_batch_threads:
            return self.batching
        threads = max(1, math.ceil(objects.cpu_cores(self.cpu))) if self.cpu else 4
        return dataclasses.replace(self.batching, num_batch_threads=threads)


def serving_manifests(spec: ServingSpec) -> list[dict]:
    """The ConfigMap (batching parameters), Deployment and Service serving ``spec`` (see the module docstring)."""
    labels = objects.app_labels("hrnet-tfx-serving", spec.name)
    batching = spec.batching_options()
    config_map_name = spec.name + BATCHING_SUFFIX
    manifests = []
    if batching:
        manifests.append(objects.config_map(config_map_name, spec.namespace, labels,
                                            {BATCHING_FILE: batching.to_text_proto()}))
    pod = _pod(spec, config_map_name if batching else "")
    return manifests + [_deployment(spec, labels, pod), _service(spec, labels)]


def _server_container(spec: ServingSpec, batching: bool) -> dict:
    """``tensorflow_model_server`` on the model base: ports, probes, resources, the config mounts."""
    command = model_server_command(
        MODEL_SERVER, spec.model_name, spec.model_dir, grpc_port=GRPC_PORT, rest_port=REST_PORT,
        poll_seconds=spec.poll_seconds,
        batching_parameters_file=posixpath.join(CONFIG_DIR, BATCHING_FILE) if batching else None)
    mounts = [objects.mount(BATCHING_VOLUME, CONFIG_DIR, read_only=True)] if batching else []
    if spec.pvc:
        mounts.append(objects.mount(MODELS_VOLUME, spec.mount_path, read_only=True))
    return objects.container(
        "tf-serving", spec.image, command[:1], args=command[1:], env=spec.env,
        resources=objects.resources(spec.cpu, spec.memory, gpus=spec.gpus, gpu_resource=spec.gpu_resource),
        mounts=mounts,
        ports=[{"name": "grpc", "containerPort": GRPC_PORT}, {"name": "http", "containerPort": REST_PORT}],
        readinessProbe={"httpGet": {"path": f"/v1/models/{spec.model_name}/metadata", "port": "http"},
                        "initialDelaySeconds": 5, "periodSeconds": 5, "failureThreshold": 3},
        livenessProbe={"tcpSocket": {"port": "grpc"}, "initialDelaySeconds": 15, "periodSeconds": 10,
                       "failureThreshold": 6},
    )


def _pod(spec: ServingSpec, batching_config_map: str) -> dict:
    """The server's pod spec; ``batching_config_map`` (empty: no batching) is mounted at :data:`CONFIG_DIR`."""
    volumes = [objects.config_map_volume(BATCHING_VOLUME, batching_config_map)] if batching_config_map else []
    if spec.pvc:
        volumes.append(objects.claim_volume(MODELS_VOLUME, spec.pvc, read_only=True))
    return objects.pod_spec([_server_container(spec, bool(batching_config_map))], volumes,
                            service_account=spec.service_account, node_selector=spec.node_selector,
                            tolerations=spec.tolerations)


def _deployment(spec: ServingSpec, labels: Mapping[str, str], pod: dict) -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": objects.metadata(spec.name, spec.namespace, labels),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": dict(labels)},
            "template": objects.pod_template(labels, pod),
        },
    }


def _service(spec: ServingSpec, labels: Mapping[str, str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": objects.metadata(spec.name, spec.namespace, labels),
        "spec": {
            "type": spec.service_type,
            "selector": dict(labels),
            "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                      {"name": "http", "port": REST_PORT, "targetPort": "http"}],
        },
    }
