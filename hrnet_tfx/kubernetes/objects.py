"""The Kubernetes pieces every manifest writer here shares (the MPIJob for training, TF Serving): checks
of names, quantities and environment names, the small objects (labels, metadata, ConfigMap, volumes,
containers, pod specs) and writing the manifests for ``kubectl apply -f``.

Objects are plain dicts in the API's JSON field names; optional fields that are empty are left out, as
``kubectl`` would. The tests check every object built from these pieces against the Kubernetes API models.
"""

from __future__ import annotations

import posixpath
import re
import types
from typing import Any, Iterable, Mapping, Sequence

from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.yaml_io import write_yaml_documents

QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(\d+(\.\d*)?|\.\d+)))?$")
"""A Kubernetes resource quantity (the apimachinery Quantity pattern): ``"8"``, ``"500m"``, ``"64Gi"``."""
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
"""A DNS-1035 label (Service names, and the pod names the MPI operator derives): lowercase letters, digits
and ``-``, starting with a letter."""
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
"""An environment variable name a shell (and ``mpirun -x``) accepts."""
MAX_NAME = 63
"""The longest DNS label."""
GPU_RESOURCE = "nvidia.com/gpu"
"""The NVIDIA device plugin's extended resource."""


# ----------------------------------------------------------------------------------------------- checks
def check_name(what: str, name: str, max_length: int = MAX_NAME, why: str = "") -> str:
    """``name`` if it is a DNS-1035 label of at most ``max_length`` characters; else :class:`ConfigError`
    naming ``what`` (and ``why``, e.g. the longer names derived from it)."""
    if not DNS1035.match(name or "") or len(name) > max_length:
        raise ConfigError(f"{what} {name!r} must be a lowercase DNS label (a-z, 0-9, '-', starting with a letter, "
                          f"at most {max_length} characters{why})")
    return name


def check_quantity(what: str, value: str) -> str:
    """``value`` if it is empty or a Kubernetes quantity; else :class:`ConfigError` naming ``what``."""
    if value and not QUANTITY.match(value):
        raise ConfigError(f"{what}={value!r} is not a Kubernetes quantity (e.g. '8', '500m', '64Gi')")
    return value


def check_env_names(what: str, names: Iterable[str]) -> None:
    """Raises :class:`ConfigError` naming every name in ``names`` that is not an environment variable name."""
    bad = [name for name in names if not ENV_NAME.match(name)]
    if bad:
        raise ConfigError(f"{what}: invalid environment variable name(s) {bad}")


def cpu_cores(value: str) -> float:
    """The number of cores a CPU quantity stands for (``"500m"`` -> 0.5, ``"4"`` -> 4)."""
    return float(value[:-1]) / 1000 if value.endswith("m") else float(value)


def under_mount(path: str, mount_path: str) -> bool:
    """Whether ``path`` is an absolute path inside the volume mounted at ``mount_path``."""
    if not posixpath.isabs(path):
        return False
    mount = posixpath.normpath(mount_path)
    return posixpath.commonpath([posixpath.normpath(path), mount]) == mount


def frozen_strings(mapping: Mapping) -> Mapping[str, str]:
    """A read-only ``str -> str`` copy of ``mapping`` (node selectors, environments), for frozen specs."""
    return types.MappingProxyType({str(k): str(v) for k, v in mapping.items()})


def frozen_tolerations(tolerations: Iterable[Mapping[str, Any]]) -> tuple[dict, ...]:
    """A tuple copy of ``tolerations`` (each a V1Toleration mapping), for frozen specs."""
    return tuple(dict(t) for t in tolerations)


# ----------------------------------------------------------------------------------------------- pieces
def app_labels(app: str, instance: str) -> dict[str, str]:
    """The recommended ``app.kubernetes.io`` labels; Services and Deployments select their pods by them."""
    return {"app.kubernetes.io/name": app, "app.kubernetes.io/instance": instance}


def metadata(name: str, namespace: str, labels: Mapping[str, str]) -> dict:
    """A V1ObjectMeta."""
    return {"name": name, "namespace": namespace, "labels": dict(labels)}


def config_map(name: str, namespace: str, labels: Mapping[str, str], data: Mapping[str, str]) -> dict:
    """A V1ConfigMap holding ``data`` (file name -> text)."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(name, namespace, labels), "data": dict(data)}


def config_map_volume(volume: str, config_map_name: str) -> dict:
    """A V1Volume of a ConfigMap (its keys become files)."""
    return {"name": volume, "configMap": {"name": config_map_name}}


def claim_volume(volume: str, claim: str, read_only: bool = False) -> dict:
    """A V1Volume of a PersistentVolumeClaim."""
    source = {"claimName": claim, **({"readOnly": True} if read_only else {})}
    return {"name": volume, "persistentVolumeClaim": source}


def mount(volume: str, path: str, read_only: bool = False) -> dict:
    """A V1VolumeMount."""
    return {"name": volume, "mountPath": path, **({"readOnly": True} if read_only else {})}


def env_vars(env: Mapping[str, str]) -> list[dict]:
    """V1EnvVars with plain values, in ``env``'s order."""
    return [{"name": k, "value": v} for k, v in env.items()]


def resources(cpu: str = "", memory: str = "", *, limit: bool = True, gpus: int = 0,
              gpu_resource: str = GPU_RESOURCE) -> dict:
    """V1ResourceRequirements: ``cpu``/``memory`` requested (and limited to the same amount when ``limit``),
    ``gpus`` limited (extended resources are requested at their limit); empty parts are left out."""
    amounts = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
    requirements: dict[str, dict] = {}
    if amounts:
        requirements["requests"] = dict(amounts)
        if limit:
            requirements["limits"] = dict(amounts)
    if gpus:
        requirements.setdefault("limits", {})[gpu_resource] = str(gpus)
    return requirements


def container(name: str, image: str, command: Sequence[str], *, args: Sequence[str] = (),
              env: Mapping[str, str] | None = None, resources: Mapping | None = None,
              mounts: Sequence[Mapping] = (), **fields) -> dict:
    """A V1Container; ``fields`` (ports, probes) are added as they are, empty parts are left out."""
    out: dict[str, Any] = {"name": name, "image": image, "command": list(command)}
    if args:
        out["args"] = list(args)
    if env:
        out["env"] = env_vars(env)
    out.update(fields)
    out["resources"] = dict(resources or {})
    if mounts:
        out["volumeMounts"] = [dict(m) for m in mounts]
    return out


def pod_spec(containers: Sequence[Mapping], volumes: Sequence[Mapping] = (), *, service_account: str = "",
             node_selector: Mapping[str, str] | None = None, tolerations: Sequence[Mapping] = ()) -> dict:
    """A V1PodSpec; the scheduling fields are set only when given."""
    spec: dict[str, Any] = {"containers": [dict(c) for c in containers]}
    if volumes:
        spec["volumes"] = [dict(v) for v in volumes]
    if service_account:
        spec["serviceAccountName"] = service_account
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        spec["tolerations"] = [dict(t) for t in tolerations]
    return spec


def pod_template(labels: Mapping[str, str], spec: Mapping) -> dict:
    """A V1PodTemplateSpec: the pods' labels and spec."""
    return {"metadata": {"labels": dict(labels)}, "spec": dict(spec)}


# ----------------------------------------------------------------------------------------------- writing
def write_manifests(objs: Sequence[Mapping], path: str, header: str = "") -> None:
    """Writes ``objs`` as one multi-document YAML for ``kubectl apply -f``: atomically (a failed write
    leaves no file and keeps an old one), ``"-"`` is stdout, ``header`` (``#`` comment lines) goes first.
    See :func:`hrnet_tfx.yaml_io.write_yaml_documents`."""
    write_yaml_documents(objs, path, header)
