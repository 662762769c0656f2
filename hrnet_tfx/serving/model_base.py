"""TF Serving model base paths: find a model's versions (the Pusher, ``serve`` and the development server).

Layout: ``<base>/<model_name>/<version>/saved_model.pb`` (version: a non-negative integer). A version counts
only when it is *complete*: its name is all digits and ``saved_model.pb`` (or ``.pbtxt``) is present, which
writers copy last or rename into place; hidden or temporary directories (``.export-*``, ``3.partial``) are
ignored. Paths may be local or bucket URIs (everything goes through ``tf.io.gfile``).
"""

from __future__ import annotations

import os

from hrnet_tfx.fs import gfile, is_uri, unreadable_scheme
from hrnet_tfx.serving.names import check_model_name

SAVED_MODEL_PB = "saved_model.pb"
SAVED_MODEL_FILES = (SAVED_MODEL_PB, "saved_model.pbtxt")


def _listdir(path: str) -> list[str]:
    return [name.rstrip("/") for name in gfile().listdir(path)]


def parse_version(name: str) -> int | None:
    """The version number of a directory name, or None if it is not one (``"7"`` -> 7, ``".7"`` -> None).

    Like TF Serving: a non-negative int64 written in ASCII digits.
    """
    if not name or len(name) > 19 or not name.isascii() or not name.isdigit():
        return None
    version = int(name)
    return version if version < 2**63 else None


def version_dirs(model_dir: str) -> dict[int, str]:
    """All version directories of a model (complete or not): ``{version: path}``. Empty if no directory."""
    try:
        names = _listdir(model_dir)
    except Exception as e:  # tf.errors.NotFoundError (imported lazily, hence matched by name)
        if type(e).__name__ == "NotFoundError":
            return {}
        raise
    found = {}
    for name in names:
        version = parse_version(name)
        path = os.path.join(model_dir, name)
        if version is not None and gfile().isdir(path):
            found[version] = path
    return found


def saved_model_file(version_dir: str) -> str | None:
    """Path of the version's ``saved_model.pb`` (or ``.pbtxt``), or None while the version is incomplete."""
    for name in SAVED_MODEL_FILES:
        path = os.path.join(version_dir, name)
        if gfile().exists(path):
            return path
    return None


def complete_versions(model_dir: str) -> list[int]:
    """The complete versions of a model, ascending."""
    return sorted(v for v, path in version_dirs(model_dir).items() if saved_model_file(path))


def latest_version(model_dir: str) -> int | None:
    """The highest complete version, or None."""
    versions = complete_versions(model_dir)
    return versions[-1] if versions else None


def resolve_model(model_base: str, model_name: str | None = None) -> tuple[str, str]:
    """Finds the model directory (the one holding version directories) for a base path.

    Args:
      model_base: a model base (``<base>`` holding ``<model_name>/<version>/``) or one model's directory
        (``<base>/<model_name>`` holding ``<version>/``).
      model_name: the model's name. Without it, a model directory is named after itself, and a base must
        hold exactly one model.

    Returns ``(model_name, model_dir)``; the directory may not exist yet when ``model_name`` is given (a server
    can start before the first push). Raises ``ValueError`` listing what was found when no name can be inferred.
    """
    problem = unreadable_scheme(model_base)
    if problem:
        raise ValueError(f"model base {model_base!r}: {problem}")
    base = model_base if is_uri(model_base) else os.path.abspath(model_base)
    base = base.rstrip("/") or "/"
    base_is_model = bool(version_dirs(base))
    if model_name:
        check_model_name(model_name)
        candidate = os.path.join(base, model_name)
        if base_is_model and not gfile().isdir(candidate):
            return model_name, base
        return model_name, candidate
    if base_is_model:
        return os.path.basename(base), base
    if not gfile().isdir(base):
        raise ValueError(f"model base {model_base!r} does not exist; pass --model-name to wait for a first push")
    models = sorted(n for n in _listdir(base) if not n.startswith(".") and version_dirs(os.path.join(base, n)))
    if len(models) == 1:
        return models[0], os.path.join(base, models[0])
    if not models:
        raise ValueError(
            f"no model under {model_base!r}: expected <base>/<model_name>/<version>/saved_model.pb or "
            f"<model_dir>/<version>/saved_model.pb; pass --model-name to wait for a first push")
    raise ValueError(f"{model_base!r} holds several models ({', '.join(models)}); choose one with --model-name")
