"""The Kubernetes API model checker the manifest tests share (MPIJob pods, TF Serving objects): every
object is checked field by field against the kubernetes client's models (v26), which are generated from
the Kubernetes OpenAPI spec."""

import difflib
import re

import kubernetes.client

PRIMITIVES = {"str": str, "int": int, "bool": bool, "float": (int, float), "datetime": str, "date": str}


def check_k8s(value, type_name: str, path: str = "$") -> list[str]:
    """Every problem of ``value`` (parsed YAML/JSON) as a ``type_name`` of the Kubernetes API: unknown
    fields (the JSON names in each model's ``attribute_map``), wrong types, missing required fields."""
    if type_name == "object":  # IntOrString, RawExtension: anything
        return []
    if m := re.fullmatch(r"list\[(.+)\]", type_name):
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        return [e for i, item in enumerate(value) for e in check_k8s(item, m.group(1), f"{path}[{i}]")]
    if m := re.fullmatch(r"dict\(str, (.+)\)", type_name):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping, got {value!r}"]
        return [e for k, item in value.items()
                for e in ([f"{path}: key {k!r} is not a string"] if not isinstance(k, str) else [])
                + check_k8s(item, m.group(1), f"{path}.{k}")]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and (type_name == "bool" or not isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {value!r}"]
    model = getattr(kubernetes.client, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping, got {value!r}"]
    by_json = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key in by_json:
            errors += check_k8s(item, model.openapi_types[by_json[key]], f"{path}.{key}")
        else:
            hint = difflib.get_close_matches(key, by_json, n=1)
            hint = f" (did you mean {hint[0]!r}?)" if hint else ""
            errors.append(f"{path}.{key}: unknown field of {type_name}{hint}")
    try:  # the model's own setters refuse a missing required field
        model(**{by_json[k]: v for k, v in value.items() if k in by_json})
    except ValueError as e:
        errors.append(f"{path}: {e}")
    return errors
