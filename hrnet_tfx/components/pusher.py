"""HRNetPusher: pushes a blessed model into a TF Serving model base, warm-up requests and label map included.

TF Serving watches ``<base>/<model_name>/`` and loads every directory whose name is a number as a
version (the highest one by default). A version must therefore appear complete, with its warm-up file
(``assets.extra/tf_serving_warmup_requests``) already inside: TF Serving reads that file once, when it
loads the version. The stock TFX Pusher copies ``saved_model.pb`` last, so a half-copied version has no
graph, but anything written into the version after that (a warm-up file, a label map) would race TF
Serving. This component instead:

1. copies the SavedModel into ``<base>/<model_name>/.staging-<version>/`` (not a number: TF Serving and
   :mod:`hrnet_tfx.serving.model_base` ignore it);
2. makes sure ``assets/labels.tsv`` is there (from the model, else from the Examples' ``labels.tsv``);
3. writes the warm-up requests with :func:`hrnet_tfx.serving.warmup.write_warmup_requests`;
4. renames the staging directory to ``<base>/<model_name>/<version>/`` in one ``rename`` (atomic on a
   POSIX file system). On a file system without directory renames (object stores: ``gs://``, ``s3://``)
   it copies every file into the version directory and ``saved_model.pb`` last, like the stock Pusher.

Versions are UNIX timestamps in seconds, like TFX's Pusher, and never reuse an existing version: if the
current second is taken (or an older clock is behind the newest version), the next free number above the
newest version is used, so a new push is always the version TF Serving serves.

The ``pushed_model`` output carries the stock Pusher's custom properties: ``pushed`` (1 or 0),
``pushed_destination`` (the version directory) and ``pushed_version``; when pushed, the artifact's
directory holds a copy of the pushed version. An unblessed model is not pushed (``pushed = 0``) and
nothing is written under the model base.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import io_utils, json_utils, path_utils

from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.serving.warmup import write_warmup_requests

log = logging.getLogger(__name__)

PUSHED = "pushed"
PUSHED_DESTINATION = "pushed_destination"
PUSHED_VERSION = "pushed_version"
STAGING_PREFIX = ".staging-"
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PushError(RuntimeError):
    """The model could not be pushed (nothing became visible under the model base)."""


def _is_local(path: str) -> bool:
    return "://" not in path


def _existing_versions(model_dir: str) -> List[int]:
    if not tf.io.gfile.isdir(model_dir):
        return []
    return [int(name.rstrip("/")) for name in tf.io.gfile.listdir(model_dir) if name.rstrip("/").isdigit()]


def next_version(model_dir: str, now: Optional[float] = None) -> int:
    """The version number of the next push into ``model_dir``: the current UNIX time in seconds, or one
    above the newest existing version if that is not lower (a version is never reused, and the newest
    push always has the highest number)."""
    now_s = int(time.time() if now is None else now)
    versions = _existing_versions(model_dir)
    return max([now_s] + [v + 1 for v in versions])


def _copy_tree(src: str, dst: str, last: Sequence[str] = ()) -> None:
    """Copies directory ``src`` to ``dst`` (created); the files named in ``last`` (relative) come last."""
    deferred = []
    for dirpath, _, filenames in tf.io.gfile.walk(src):
        rel = os.path.relpath(dirpath, src)
        target_dir = dst if rel == "." else os.path.join(dst, rel)
        tf.io.gfile.makedirs(target_dir)
        for name in filenames:
            rel_file = os.path.normpath(os.path.join(rel, name))
            if rel_file in last:
                deferred.append(rel_file)
                continue
            tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(target_dir, name), overwrite=True)
    for rel_file in deferred:
        tf.io.gfile.copy(os.path.join(src, rel_file), os.path.join(dst, rel_file), overwrite=True)


def push_saved_model(
    saved_model_dir: str,
    base_directory: str,
    model_name: str,
    *,
    label_map_path: Optional[str] = None,
    warmup_images: Optional[Sequence[bytes | str | os.PathLike]] = None,
    now: Optional[float] = None,
) -> tuple[int, str]:
    """Pushes an exported SavedModel as a new version of ``model_name`` under ``base_directory``.

    See the module docstring for the staging/rename protocol.

    Args:
      saved_model_dir: the SavedModel (of :mod:`hrnet_tfx.serving.export`).
      base_directory: TF Serving's model base (``--model_base_path`` is ``<base_directory>/<model_name>``).
      model_name: the served model's name (a directory name: letters, digits, ``_.-``).
      label_map_path: a ``labels.tsv`` to ship when the model has none in ``assets/``.
      warmup_images: images for the warm-up requests (default: two small generated JPEGs).
      now: the UNIX time used for the version (default: the clock); for tests.

    Returns:
      ``(version, version_dir)``.

    Raises:
      PushError: the source is not a SavedModel, or there is no label map to ship; nothing was made visible.
    """
    if not _MODEL_NAME.match(model_name or ""):
        raise PushError(f"model name {model_name!r} is not a usable directory name (letters, digits, _ . -)")
    if not tf.io.gfile.exists(os.path.join(saved_model_dir, "saved_model.pb")):
        raise PushError(f"{saved_model_dir} is not a SavedModel (no saved_model.pb)")
    has_labels = tf.io.gfile.exists(os.path.join(saved_model_dir, "assets", LABEL_MAP_FILENAME))
    if not has_labels and not (label_map_path and tf.io.gfile.exists(label_map_path)):
        raise PushError(f"{saved_model_dir} has no assets/{LABEL_MAP_FILENAME} and no label map was given "
                        f"(label_map_path={label_map_path!r}); clients need it to name the classes")

    model_dir = os.path.join(base_directory, model_name)
    tf.io.gfile.makedirs(model_dir)
    version = next_version(model_dir, now)
    # A random suffix keeps two concurrent pushes (same second) out of each other's staging directory.
    staging = os.path.join(model_dir, f"{STAGING_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
    try:
        _copy_tree(saved_model_dir, staging)
        if not has_labels:
            tf.io.gfile.makedirs(os.path.join(staging, "assets"))
            tf.io.gfile.copy(label_map_path, os.path.join(staging, "assets", LABEL_MAP_FILENAME), overwrite=True)
        write_warmup_requests(staging, warmup_images, model_name=model_name)
        while True:  # another pusher may have taken the number meanwhile: take the next one
            final = os.path.join(model_dir, str(version))
            if not tf.io.gfile.exists(final):
                break
            version += 1
        if _is_local(model_dir):
            # os.rename refuses to replace a non-empty directory, so a version appearing meanwhile is
            # never overwritten: the push fails instead.
            os.rename(staging, final)
        else:
            _copy_tree(staging, final, last=("saved_model.pb",))
            tf.io.gfile.rmtree(staging)
    except BaseException:
        if tf.io.gfile.exists(staging):
            tf.io.gfile.rmtree(staging)
        raise
    log.info("pushed %s as %s version %d: %s", saved_model_dir, model_name, version, final)
    return version, final


class HRNetPusherSpec(ComponentSpec):
    PARAMETERS = {
        "base_directory": ExecutionParameter(type=str),
        "model_name": ExecutionParameter(type=str),
        "warmup_images": ExecutionParameter(type=str, optional=True),  # JSON list of image paths
    }
    INPUTS = {
        "model": ChannelParameter(type=standard_artifacts.Model),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        "infra_blessing": ChannelParameter(type=standard_artifacts.InfraBlessing, optional=True),
        "examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {
        "pushed_model": ChannelParameter(type=standard_artifacts.PushedModel),
    }


class Executor(base_executor.BaseExecutor):
    """Pushes the model if it is blessed (see the module docstring)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model = artifact_utils.get_single_instance(input_dict["model"])
        pushed_model = artifact_utils.get_single_instance(output_dict["pushed_model"])
        reason = self._refusal(model, input_dict)
        if reason:
            log.info("not pushing %s: %s", model.uri, reason)
            pushed_model.set_int_custom_property(PUSHED, 0)
            return
        label_map = None
        if input_dict.get("examples"):
            label_map = os.path.join(artifact_utils.get_single_uri(input_dict["examples"]), LABEL_MAP_FILENAME)
        images = json_utils.loads(exec_properties.get("warmup_images") or "null")
        version, final = push_saved_model(
            path_utils.serving_model_path(model.uri), exec_properties["base_directory"],
            exec_properties["model_name"], label_map_path=label_map, warmup_images=images)
        io_utils.copy_dir(final, pushed_model.uri)
        pushed_model.set_int_custom_property(PUSHED, 1)
        pushed_model.set_string_custom_property(PUSHED_DESTINATION, final)
        pushed_model.set_string_custom_property(PUSHED_VERSION, str(version))

    @staticmethod
    def _refusal(model: types.Artifact, input_dict: Dict[str, List[types.Artifact]]) -> Optional[str]:
        """Why the model must not be pushed, or None."""
        blessings = input_dict.get("model_blessing")
        if blessings:
            blessing = artifact_utils.get_single_instance(blessings)
            if not model_utils.is_model_blessed(blessing):
                return f"the Evaluator did not bless it ({blessing.uri})"
            blessed_id = blessing.get_int_custom_property("current_model_id")
            if blessed_id and model.id and blessed_id != model.id:
                raise PushError(f"the blessing {blessing.uri} is for model id {blessed_id}, not for the model "
                                f"to push (id {model.id}, {model.uri}); wire both from the same Evaluator")
        infra = input_dict.get("infra_blessing")
        if infra and not model_utils.is_infra_validated(artifact_utils.get_single_instance(infra)):
            return "the InfraValidator did not bless it"
        if not blessings and not infra:
            log.warning("pushing %s without any validation (no model_blessing, no infra_blessing)", model.uri)
        return None


class HRNetPusher(base_component.BaseComponent):
    """Pushes a blessed hrnet-tfx model into a TF Serving model base (see the module docstring)."""

    SPEC_CLASS = HRNetPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, model: types.BaseChannel, base_directory: str, model_name: str = "hrnet", *,
                 model_blessing: Optional[types.BaseChannel] = None,
                 infra_blessing: Optional[types.BaseChannel] = None,
                 examples: Optional[types.BaseChannel] = None,
                 warmup_images: Optional[Sequence[str]] = None):
        """Args:
          model: the Model to push (its ``Format-Serving`` SavedModel).
          base_directory: the model base; versions go to ``<base_directory>/<model_name>/<version>/``.
          model_name: the name TF Serving serves the model under.
          model_blessing: the Evaluator's ModelBlessing; without ``blessed == 1`` nothing is pushed.
          infra_blessing: an InfraValidator's InfraBlessing, checked the same way.
          examples: Examples whose ``labels.tsv`` is shipped if the model has no ``assets/labels.tsv``.
          warmup_images: image files for the warm-up requests (default: two small generated JPEGs).
        """
        if not _MODEL_NAME.match(model_name or ""):
            raise ValueError(f"model_name {model_name!r} is not a usable directory name (letters, digits, _ . -)")
        if not base_directory:
            raise ValueError("base_directory is required")
        spec = HRNetPusherSpec(
            base_directory=base_directory,
            model_name=model_name,
            warmup_images=json_utils.dumps(list(warmup_images)) if warmup_images else None,
            model=model,
            model_blessing=model_blessing,
            infra_blessing=infra_blessing,
            examples=examples,
            pushed_model=types.Channel(type=standard_artifacts.PushedModel),
        )
        super().__init__(spec=spec)
