"""The development server's side of TF Serving's REST JSON: requests to arrays/Examples, results to JSON.

Predict takes ``instances`` (row format, answered ``{"predictions": [...]}``) or ``inputs`` (columnar,
answered ``{"outputs": ...}``), each as a bare value/list for a one-input signature or an object keyed by
input name; values are strings (text or ``{"b64": ...}``): the HRNet signatures take encoded images or
serialized tf.Examples, and the development server converts nothing else (TF Serving also takes numbers).
Classify takes ``{"signature_name": ..., "context": {feature: value}, "examples": [{feature: value}]}``
(integers and booleans become ``int64_list``, other numbers ``float_list``, strings ``bytes_list``) and
answers ``{"results": [[[label, score], ...], ...]}``. Errors are ``{"error": "..."}``.

Requests are bounded before they are expanded: at most :data:`MAX_JSON_VALUES` JSON values per body (a list
of empty objects costs ~30x its bytes as Python objects), tensors of at most 32 dimensions, and at most
``max_items`` instances or examples (a Classify context is merged into each only if the result fits).
"""

from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping

import numpy as np
from tensorflow.core.framework import types_pb2

from hrnet_tfx.serving import rest_json
from hrnet_tfx.serving.errors import invalid
from hrnet_tfx.serving.export import SIGNATURE_CLASSIFY
from hrnet_tfx.serving.rest_json import decode_b64, is_b64
from hrnet_tfx.serving.tensors import MAX_RANK, dtype_name
from hrnet_tfx.serving.dev.servable import check_examples, check_item_count

_FLT_MAX = float(np.finfo(np.float32).max)
MAX_JSON_VALUES = 2_000_000
"""Most JSON values (counted by their separators) a request body may hold."""


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (NaN and Infinity written as TF Serving writes them)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def error_body(message: str) -> bytes:
    """``{"error": message}``."""
    return dumps({"error": message})


def parse_json(body: bytes) -> dict:
    """The request body as a JSON object (INVALID_ARGUMENT if it is empty, malformed or not an object)."""
    if not body:
        raise invalid("JSON Parse error: The document is empty")
    values = 0 if len(body) <= MAX_JSON_VALUES else body.count(b",") + body.count(b"[") + body.count(b"{")
    if values > MAX_JSON_VALUES:
        raise invalid(f"JSON Parse error: about {values:,} values in the document, more than this server's limit "
                      f"of {MAX_JSON_VALUES:,}")
    try:
        doc = json.loads(body)
    except RecursionError:
        raise invalid("JSON Parse error: the document is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise invalid(f"JSON Parse error: {e}") from None
    if not isinstance(doc, dict):
        raise invalid(f"JSON Value: {_short(doc)} Is not object")
    return doc


def _short(value: Any, limit: int = 120) -> str:
    try:
        if isinstance(value, (list, dict)) and len(value) > limit:
            raise ValueError("too long to show")
        text = json.dumps(value)
    except (RecursionError, ValueError):
        return "[...]" if isinstance(value, list) else "{...}"
    return text if len(text) <= limit else text[:limit] + "..."


def signature_name_of(doc: dict) -> str:
    """The request's ``signature_name`` ('' when absent)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise invalid("'signature_name' key must be a string value.")
    return name


# -- Predict ---------------------------------------------------------------------------------------------
def _leaf(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if is_b64(value):
        return decode_b64(value, where)
    kind = "Object" if isinstance(value, dict) else type(value).__name__
    raise invalid(f"{where}: JSON Value: {_short(value)} Type: {kind} is not of expected type: DT_STRING")


def json_to_array(value: Any, dtype: int, where: str) -> np.ndarray:
    """A JSON value (scalar or nested lists, all rows the same length) as an object array of bytes.

    ``dtype`` (a DT_ enum) must be ``DT_STRING``: the HRNet signatures take images or tf.Examples, and the
    development server converts nothing else (TF Serving also takes numbers)."""
    if dtype != types_pb2.DT_STRING:
        raise invalid(f"{where}: the development server takes string inputs only (encoded images, serialized "
                      f"tf.Examples), not {dtype_name(dtype)}")
    shape = []
    probe = value
    while isinstance(probe, list):
        shape.append(len(probe))
        if len(shape) > MAX_RANK:
            raise invalid(f"{where}: lists nested more than {MAX_RANK} deep")
        if not probe:
            break
        probe = probe[0]
    flat: list = []

    def walk(node: Any, level: int, path: str) -> None:
        if isinstance(node, list):
            if level >= len(shape):
                raise invalid(f"{where}{path}: list nested deeper than the others (expected rank {len(shape)})")
            if len(node) != shape[level]:
                raise invalid(f"{where}{path}: list of {len(node)} values where the others have {shape[level]} "
                              f"(shape {shape})")
            for i, child in enumerate(node):
                walk(child, level + 1, f"{path}[{i}]")
        else:
            if level != len(shape):
                raise invalid(f"{where}{path}: value {_short(node)} found at depth {level} (expected depth "
                              f"{len(shape)})")
            flat.append(_leaf(node, f"{where}{path}"))

    walk(value, 0, "")
    array = np.empty(len(flat), dtype=object)
    array[:] = flat
    return array.reshape(shape)


def _check_rows(value: Any, max_items: int | None, what: str) -> None:
    if isinstance(value, list):
        check_item_count(len(value), max_items, what)


def parse_predict(doc: dict, input_infos: Callable[[str], Mapping[str, Any]],
                  max_items: int | None = None) -> tuple[str, dict, bool]:
    """Reads a Predict request ``doc``: ``(signature_name, {alias: array}, row_format)``. ``input_infos`` maps
    a signature name to its ``{input alias: TensorInfo}`` (raising for an unknown one); at most ``max_items``
    instances (or rows of a columnar input) are accepted, counted before conversion."""
    signature_name = signature_name_of(doc)
    infos = input_infos(signature_name)
    names = sorted(infos)
    has_instances, has_inputs = "instances" in doc, "inputs" in doc
    if has_instances and has_inputs:
        raise invalid("Not formatted correctly: expecting only one of 'inputs' or 'instances' keys to exist")
    if has_instances:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise invalid("Expecting 'instances' to be an list/array")
        if not instances:
            raise invalid("No values in 'instances' array")
        _check_rows(instances, max_items, "instances")
        objects = isinstance(instances[0], dict) and not is_b64(instances[0])
        if not objects:
            if len(names) > 1:
                raise invalid(f"instances is a plain list, but expecting list of objects as multiple input tensors "
                              f"required as per the signature ({', '.join(names)})")
            for i, item in enumerate(instances):
                if isinstance(item, dict) and not is_b64(item):
                    raise invalid(f"Expecting value/list but got object at item {i} of input list")
            alias = names[0]
            return signature_name, {alias: json_to_array(instances, infos[alias].dtype, "instances")}, True
        columns: dict[str, list] = {name: [] for name in names}
        for i, item in enumerate(instances):
            if not isinstance(item, dict) or is_b64(item):
                raise invalid(f"Expecting object but got list at item {i} of input list")
            unknown = sorted(set(item) - set(names))
            if unknown:
                raise invalid(f"instances[{i}]: JSON object: does not have named input: {unknown[0]} (the signature "
                              f"'{signature_name or SIGNATURE_CLASSIFY}' takes {', '.join(names)})")
            missing = sorted(set(names) - set(item))
            if missing:
                raise invalid(f"instances[{i}]: missing named input: {missing[0]} (keys must be equal to: "
                              f"{', '.join(names)})")
            for name in names:
                columns[name].append(item[name])
        inputs = {name: json_to_array(values, infos[name].dtype, f"instances[*].{name}")
                  for name, values in columns.items()}
        return signature_name, inputs, True
    if has_inputs:
        value = doc["inputs"]
        for column in (value.values() if isinstance(value, dict) and not is_b64(value) else [value]):
            _check_rows(column, max_items, "rows in 'inputs'")
        if not isinstance(value, dict) or is_b64(value):
            if len(names) > 1:
                raise invalid("inputs is a plain value/list, but expecting an object as multiple input tensors "
                              f"required as per the signature ({', '.join(names)})")
            return signature_name, {names[0]: json_to_array(value, infos[names[0]].dtype, "inputs")}, False
        unknown = sorted(set(value) - set(names))
        if unknown:
            raise invalid(f"'inputs' object: does not have named input: {unknown[0]} (the signature "
                          f"'{signature_name or SIGNATURE_CLASSIFY}' takes {', '.join(names)})")
        for name in names:
            if name not in value:
                raise invalid(f"Missing named input: {name} in 'inputs' object.")
        return signature_name, {n: json_to_array(value[n], infos[n].dtype, f"inputs.{n}") for n in names}, False
    raise invalid("Missing 'inputs' or 'instances' key")


def predict_json(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
    """The Predict answer as JSON bytes: ``{"predictions": ...}`` (row format) or ``{"outputs": ...}``
    (columnar), shaped as TF Serving shapes them. Written directly (not via nested Python lists) because
    formatting a [32, 1000] float tensor that way costs several times more."""
    if not outputs:
        raise invalid("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    if row_format:
        batch = None
        for name in names:
            shape = np.shape(outputs[name])
            if not shape:
                raise invalid(f"Tensor name: {name} has no shape information")
            if batch is not None and shape[0] != batch:
                raise invalid(f"Tensor name: {name} has inconsistent batch size: {shape[0]} expecting: {batch}")
            batch = shape[0]
    texts = {name: rest_json.json_texts(name, outputs[name]) for name in names}
    keys = {name: json.dumps(name, ensure_ascii=False) for name in names}
    if not row_format:
        if len(names) == 1:
            body = texts[names[0]][0]
        else:
            body = "{" + ",".join(f"{keys[n]}:{texts[n][0]}" for n in names) + "}"
        return ('{"outputs":' + body + "}").encode("utf-8")
    if len(names) == 1:
        rows = texts[names[0]][1]
    else:
        rows = ["{" + ",".join(f"{keys[n]}:{texts[n][1][i]}" for n in names) + "}" for i in range(batch)]
    return ('{"predictions":[' + ",".join(rows) + "]}").encode("utf-8")


# -- Classify --------------------------------------------------------------------------------------------
def _add_feature_value(feature, value: Any, where: str) -> None:
    kind = feature.WhichOneof("kind")

    def want(expected: str):
        if kind not in (None, expected):
            raise invalid(f"{where}: Unexpected element type in feature: expecting type: "
                          f"{kind.replace('_list', '')}")
        return getattr(feature, expected)

    if isinstance(value, bool):
        want("int64_list").value.append(int(value))
    elif isinstance(value, int):
        if not -2**63 <= value < 2**63:
            raise invalid(f"{where}: integer {value} does not fit int64")
        want("int64_list").value.append(value)
    elif isinstance(value, float):
        if math.isfinite(value) and abs(value) > _FLT_MAX:
            raise invalid(f"{where}: Cannot convert JSON value: {value} to float without loss of precision.")
        want("float_list").value.append(value)
    elif isinstance(value, str):
        want("bytes_list").value.append(value.encode("utf-8"))
    elif is_b64(value):
        want("bytes_list").value.append(decode_b64(value, where))
    else:
        kind_name = "Null" if value is None else "Array" if isinstance(value, list) else "Object"
        raise invalid(f"{where}: has element with unexpected JSON type: {kind_name}")


def json_to_example(obj: Any, where: str):
    """A JSON object of features as a ``tf.train.Example`` (see the module docstring for the types)."""
    from tensorflow.core.example import example_pb2

    if not isinstance(obj, dict) or is_b64(obj):
        raise invalid(f"{where}: Example must be JSON object but got JSON {type(obj).__name__}")
    example = example_pb2.Example()
    for name, content in obj.items():
        feature = example.features.feature[name]
        for value in content if isinstance(content, list) else [content]:
            _add_feature_value(feature, value, f"{where} feature '{name}'")
    return example


def parse_classify(doc: dict, max_items: int | None = None, max_bytes: int | None = None) -> tuple[str, list[bytes]]:
    """Reads a Classify request: ``(signature_name, serialized tf.Examples)`` (context merged in), checked by
    :func:`~hrnet_tfx.serving.dev.servable.check_examples`."""
    signature_name = signature_name_of(doc)
    if "examples" not in doc:
        raise invalid("When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise invalid("Expecting 'examples' value to be an list/array")
    if not examples:
        raise invalid("'examples' value is an empty array")
    check_item_count(len(examples), max_items, "examples")  # before converting them
    context = json_to_example(doc["context"], "context").SerializeToString() if "context" in doc else b""
    serialized = [json_to_example(e, f"examples[{i}]").SerializeToString() for i, e in enumerate(examples)]
    check_examples(len(serialized), len(context), sum(map(len, serialized)), max_items, max_bytes)
    return signature_name, [context + e for e in serialized]


def format_classify(classes: np.ndarray | None, scores: np.ndarray | None) -> dict:
    """``{"results": [[[label, score], ...], ...]}`` (label "" or score 0.0 when the signature lacks one)."""
    reference = classes if classes is not None else scores
    n, c = reference.shape
    labels = rest_json.array_to_json(classes, "classes") if classes is not None else [[""] * c for _ in range(n)]
    values = rest_json.array_to_json(scores, "scores") if scores is not None else [[0.0] * c for _ in range(n)]
    return {"results": [[[labels[i][j], values[i][j]] for j in range(c)] for i in range(n)]}
