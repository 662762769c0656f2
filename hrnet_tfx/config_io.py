"""The one toolkit behind every hrnet-tfx config (network, training, pipeline): a config is a frozen
dataclass, read from YAML/JSON (local or a bucket), built strictly from a mapping (unknown keys named with the
closest one, values typed, nested configs alike), overridden by ``key=value`` and saved as JSON atomically.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import typing
import uuid
from typing import Any, Iterable, Mapping, Sequence

from hrnet_tfx.fs import parent_dir


class ConfigError(ValueError):
    """A configuration (network, training or pipeline) is malformed; the message names the offending key."""


def read_config_file(path: str | os.PathLike, what: str = "config") -> dict[str, Any]:
    """The mapping in a YAML (or JSON) file, local or on a bucket (``tf.io.gfile``); an empty file is ``{}``.
    ``what`` names the kind of config in errors (``"training config"``)."""
    import tensorflow as tf
    import yaml

    path = os.fspath(path)
    try:
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise ConfigError(f"{what} file not found: {path}")
        with tf.io.gfile.GFile(path, "r") as f:
            text = f.read()
    except tf.errors.OpError as e:  # e.g. a bucket without credentials
        raise ConfigError(f"cannot read {what} file {path}: {e.message}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: cannot parse: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} settings, got {type(data).__name__}")
    return data


def write_json(path: str, obj: Any) -> None:
    """Writes ``obj`` as JSON to ``path`` (any ``tf.io.gfile`` file system) under a temporary name beside it,
    then renamed over it: readers never see half a file (and ``ram://``, whose writers append, is replaced)."""
    import tensorflow as tf

    tf.io.gfile.makedirs(parent_dir(path))
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(tmp, path, overwrite=True)


_CLOSE = 0.7  # difflib ratio: label_smothing -> label_smoothing 0.97, learning_rate -> serving_dtype 0.62 (no hint)


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``name``, or '' when none is close."""
    hint = difflib.get_close_matches(name, list(choices), n=1, cutoff=_CLOSE)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def check_keys(data: Any, allowed: Iterable[str], where: str, hints: Iterable[str] = ()) -> None:
    """Raises :class:`ConfigError` unless ``data`` is a mapping whose keys are all in ``allowed``: each unknown
    key is named with the closest of ``allowed`` and ``hints`` (e.g. ``section.key``), then every allowed key.
    ``where`` starts the message (``"pipeline config, train"``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    allowed = sorted(allowed)
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        named = ", ".join(f"{key!r}{did_you_mean(key, [*allowed, *hints])}" for key in unknown)
        raise ConfigError(f"{where}: unknown key(s) [{named}]; allowed: {', '.join(allowed)}")


def field_types(cls: type) -> dict[str, Any]:
    """``cls``'s fields and their types, resolved (the annotations are strings under postponed evaluation)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_config(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def sections(cls: type) -> list[str]:
    """The fields of ``cls`` that are nested configs (``section.key=value`` overrides reach into them)."""
    return [name for name, kind in field_types(cls).items() if _is_config(kind)]


def coerce(key: str, value: Any, kind: Any, where: str) -> Any:
    """``value`` checked and converted for a field of type ``kind``: bool, int, float, str, a tuple of
    floats (a single number is a one-element tuple) or a nested config (a mapping, built with
    :func:`from_dict`); other types pass through for the config's own checks. ``where`` starts the error."""
    if _is_config(kind):
        return value if isinstance(value, kind) else from_dict(kind, value, f"{where}, {key}")
    try:
        if kind is bool:
            if not isinstance(value, bool):
                raise TypeError
            return value
        if kind is int:
            if isinstance(value, bool) or float(value) != int(value):
                raise TypeError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind is str:
            return "" if value is None else str(value)
        if typing.get_origin(kind) is tuple and typing.get_args(kind) == (float, ...):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            if isinstance(value, (str, bytes, Mapping)):
                raise TypeError
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {key}={value!r} is not a valid {_type_name(kind)}") from None
    return value


def _type_name(kind: Any) -> str:
    if typing.get_origin(kind) is tuple:
        return "list of numbers"
    return getattr(kind, "__name__", str(kind))


def from_dict(cls: type, data: Any, where: str, *, require_all: bool = False):
    """``cls`` built from the mapping ``data``: unknown keys refused (:func:`check_keys`; a nested config's key
    given at the top is pointed to as ``section.key``), every key required when ``require_all``, each value
    checked against its field type (:func:`coerce`). The class's own checks (``__post_init__``) run last; their
    ``ValueError`` becomes a :class:`ConfigError` starting with ``where``."""
    types = field_types(cls)
    nested = [f"{key}.{name}" for key in sections(cls) for name in field_types(types[key])]
    check_keys(data, types, where, nested)
    if require_all:
        missing = [name for name in types if name not in data]
        if missing:
            raise ConfigError(f"{where}: missing key(s) {missing}")
    values = {key: coerce(key, value, types[key], where) for key, value in data.items()}
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """A frozen config as plain JSON/YAML data (tuples as lists, nested configs as mappings) that
    :func:`from_dict` turns back into an equal config."""

    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["epochs=2", "train.model=hrnet_w32"]`` -> ``{"epochs": 2, "train.model": "hrnet_w32"}``; values are
    parsed as YAML scalars/lists (``2`` is a number, ``[1, 2]`` a list, ``false`` a bool)."""
    import yaml

    out = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not key=value")
        try:
            out[key.strip()] = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse the value: {' '.join(str(e).split())}") from None
    return out


def nest_dotted(overrides: Mapping[str, Any], sections: Iterable[str]) -> dict[str, Any]:
    """Parsed overrides with each ``section.key`` (``section`` one of ``sections``) moved into a nested
    mapping: ``{"train.epochs": 2}`` -> ``{"train": {"epochs": 2}}``; other keys as they are."""
    sections = tuple(sections)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        section, dot, field = key.partition(".")
        if dot and section in sections:
            nested = out.get(section)
            out[section] = {**(nested if isinstance(nested, Mapping) else {}), field: value}
        else:
            out[key] = value
    return out


def merge(base: Mapping[str, Any], update: Mapping[str, Any], sections: Iterable[str] = ()) -> dict[str, Any]:
    """``base`` updated by ``update``; the nested mappings named in ``sections`` are updated key by key."""
    out = dict(base)
    for key, value in update.items():
        if key in tuple(sections) and isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out
