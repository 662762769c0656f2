"""HRNetPusher: pushes a blessed model into a TF Serving model base, warm-up requests and label map included.

TF Serving watches ``<base>/<model_name>/`` and loads every directory whose name is a number as a
version (the highest one by default), as soon as it sees the directory; a load that fails is retried a
few times. A version must therefore never show ``saved_model.pb`` before its variables, assets and
warm-up file (``assets.extra/tf_serving_warmup_requests``, read once, at load) are complete. The model
base may be local or a bucket (``gs://``): every file goes through ``tf.io.gfile``.

Layout of ``<base>/<model_name>/`` (TF Serving and :mod:`hrnet_tfx.serving.model_base` only look at
names made of ASCII digits, so the hidden entries are invisible to them)::

    1700000000/                         a complete version (saved_model.pb present)
    .staging-<ms>-<token>/              a push being prepared (ms: its start, UNIX milliseconds)
    .claims/<version>-<ms>-<token>      a push publishing <version> (object stores only)

Protocol of :func:`push_saved_model`:

1. Clean up after killed pushes: staging directories and claims older than ``stale_after`` seconds
   (default :data:`STALE_AFTER_SECONDS`) are removed, and with a stale claim the incomplete version
   directory it was writing. A younger one may belong to a concurrent push and is left alone.
2. Skip a model that is already the latest version: each version records what was pushed in
   ``assets.extra/hrnet_tfx_push.json`` (the source and a fingerprint of the SavedModel's graph, variable
   index (which holds every tensor's checksum), assets and training weights' index). When the newest
   complete version has the same fingerprint, nothing is written and that version is returned
   (``reused``), so rerunning an unchanged pipeline does not push the same model as a second version.
3. Stage: copy the SavedModel into ``.staging-<ms>-<token>/`` (all of it: the training weights in
   ``assets.extra/training_weights/`` travel with the version, for fine-tuning from it), add
   ``assets/labels.tsv`` (from the model, else from the Examples), the warm-up requests
   (:func:`hrnet_tfx.serving.warmup.write_warmup_requests`) and the push record.
4. Publish under a new version number: the current UNIX time in seconds, or one above the newest
   version (and above every live claim) if that is not lower, so the newest push is the version served.

   * Local file system: ``rename`` the staging directory to the version directory, which is atomic
     and refuses an existing version; a push that loses the race takes the next number.
   * Object stores have no atomic rename and no create-if-absent, but list strongly consistently (GCS,
     S3). A push *claims* a number by writing ``.claims/<version>-<ms>-<token>`` and then listing
     ``.claims/`` and the model directory: it wins only if it sees no other live claim for that number
     and no such version directory; otherwise it deletes its claim, waits a random moment and claims a
     higher number. Two pushes can never both win: the one that wrote its claim second lists after both
     claims exist, so it sees the other's (a winner keeps its claim until its version is complete). Both
     may lose, then both retry. The winner copies the staging directory into the version directory with
     ``saved_model.pb`` last, then deletes its claim and the staging directory.

A push that fails cleanly removes what it wrote; a killed push leaves its staging directory (and claim),
which the first push after ``stale_after`` removes. Only a push killed during the last copy on an object
store leaves a version directory without ``saved_model.pb`` (TF Serving fails to load it, as with TFX's
stock Pusher); the claim left beside it lets a later push remove it once stale.

The ``pushed_model`` output carries the stock Pusher's custom properties: ``pushed`` (1 or 0),
``pushed_destination`` (the version directory) and ``pushed_version``; when pushed, the artifact's
directory holds a copy of the pushed version. A model that is already the latest version gets
``pushed = 1`` pointing at that version and ``already_pushed = 1``. An unblessed model is not pushed
(``pushed = 0``) and nothing is written under the model base.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import random
import re
import time
import uuid
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tfx import types
from tfx.components.util import model_utils
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter
from tfx.utils import json_utils, path_utils

from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.fs import copy_tree, is_uri, remove_tree, renames_atomically, walk_files
from hrnet_tfx.serving import model_base
from hrnet_tfx.serving.names import check_model_name
from hrnet_tfx.serving.export import SAVED_MODEL_PB, TRAINING_WEIGHTS, publish_directory
from hrnet_tfx.serving.warmup import WARMUP_DIR, write_warmup_requests

log = logging.getLogger(__name__)

PUSHED = "pushed"
PUSHED_DESTINATION = "pushed_destination"
PUSHED_VERSION = "pushed_version"
ALREADY_PUSHED = "already_pushed"
STAGING_PREFIX = ".staging-"
CLAIMS_DIR = ".claims"
PUSH_RECORD = "hrnet_tfx_push.json"
"""What was pushed, in the version's ``assets.extra/`` (TF Serving ignores that directory but warm-up)."""
STALE_AFTER_SECONDS = 3600.0
"""A staging directory or claim older than this belongs to a killed push (a push takes seconds to minutes)."""
MAX_CLAIM_ATTEMPTS = 50
_STAGING = re.compile(r"\.staging-(\d+)-([0-9a-f]+)")
_CLAIM = re.compile(r"(\d+)-(\d+)-([0-9a-f]+)")


class PushError(RuntimeError):
    """The model could not be pushed (nothing became visible under the model base)."""


class Push(NamedTuple):
    """The outcome of :func:`push_saved_model`."""

    version: int
    directory: str
    reused: bool = False
    """True: the model already was the latest version, nothing was written."""


def _join(parent: str, *names: str) -> str:
    return posixpath.join(parent, *names) if is_uri(parent) else os.path.join(parent, *names)


def _names(directory: str) -> List[str]:
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(directory)]
    except tf.errors.NotFoundError:
        return []


def _now_ms() -> int:
    return int(time.time() * 1000)


def next_version(model_dir: str, now: Optional[float] = None, claimed: Sequence[int] = ()) -> int:
    """The version number of the next push into ``model_dir``: the current UNIX time in seconds, or one
    above the newest existing (or ``claimed``) version if that is not lower (a version is never reused,
    and the newest push always has the highest number)."""
    now_s = int(time.time() if now is None else now)
    taken = list(model_base.version_dirs(model_dir)) + list(claimed)
    return max([now_s] + [v + 1 for v in taken])


def saved_model_fingerprint(saved_model_dir: str, extra: Optional[Dict[str, str]] = None) -> str:
    """A SHA-256 over the SavedModel's ``saved_model.pb``, variable index, ``assets/`` and training weights'
    index (``assets.extra/training_weights/``), plus ``extra``: {relative path: file} added at push time.
    An index holds a checksum of every tensor, so the data files need not be read; the rest of
    ``assets.extra/`` (written by the Pusher) is left out."""
    weights_dir = posixpath.dirname(TRAINING_WEIGHTS) + "/"
    files: Dict[str, str] = {}
    for dirpath, rel_dir, filenames in walk_files(saved_model_dir):
        for name in filenames:
            rel = posixpath.normpath(posixpath.join(rel_dir, name))
            data = ".data-" in rel and (rel.startswith("variables/") or rel.startswith(weights_dir))
            if data or (rel.startswith(WARMUP_DIR + "/") and not rel.startswith(weights_dir)):
                continue
            files[rel] = _join(dirpath, name)
    files.update(extra or {})
    digest = hashlib.sha256()
    for rel in sorted(files):
        with tf.io.gfile.GFile(files[rel], "rb") as f:
            digest.update(f"{rel}\0{hashlib.sha256(f.read()).hexdigest()}\n".encode())
    return digest.hexdigest()


def read_push_record(version_dir: str) -> Optional[dict]:
    """The push record of a version (see the module docstring), or None (pushed by something else)."""
    path = _join(version_dir, WARMUP_DIR, PUSH_RECORD)
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            record = json.loads(f.read())
    except (tf.errors.NotFoundError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _latest_push(model_dir: str, fingerprint: str) -> Optional[Push]:
    latest = model_base.latest_version(model_dir)
    if latest is None:
        return None
    directory = _join(model_dir, str(latest))
    record = read_push_record(directory)
    if record and record.get("fingerprint") == fingerprint:
        return Push(latest, directory, reused=True)
    return None


def _claims(model_dir: str) -> Dict[str, tuple[int, int, str]]:
    """Claim marker name -> (version, start ms, token)."""
    out = {}
    for name in _names(_join(model_dir, CLAIMS_DIR)):
        m = _CLAIM.fullmatch(name)
        version = model_base.parse_version(m.group(1)) if m else None
        if version is not None:
            out[name] = (version, int(m.group(2)), m.group(3))
    return out


def clean_stale(model_dir: str, stale_after: float = STALE_AFTER_SECONDS) -> List[str]:
    """Removes what killed pushes left in ``model_dir`` (see the module docstring); returns the paths removed.

    Staging directories and claims younger than ``stale_after`` seconds are kept: they may belong to a push
    running right now.
    """
    cutoff = _now_ms() - stale_after * 1000
    removed = []
    for name in _names(model_dir):
        m = _STAGING.fullmatch(name)
        if m and int(m.group(1)) < cutoff:
            path = _join(model_dir, name)
            remove_tree(path)
            removed.append(path)
    versions = model_base.version_dirs(model_dir)
    for name, (version, started, _) in _claims(model_dir).items():
        if started >= cutoff:
            continue
        if version in versions and not model_base.saved_model_file(versions[version]):
            remove_tree(versions[version])  # the half-copied version of the killed push
            removed.append(versions[version])
        path = _join(model_dir, CLAIMS_DIR, name)
        tf.io.gfile.remove(path)
        removed.append(path)
    if removed:
        log.info("removed what killed pushes left in %s: %s", model_dir, ", ".join(removed))
    return removed


def claim_version(model_dir: str, token: str, *, now: Optional[float] = None,
                  stale_after: float = STALE_AFTER_SECONDS, backoff: float = 0.05) -> tuple[int, str]:
    """Claims a new version number in ``model_dir`` on a store without atomic rename (see the module
    docstring); returns ``(version, claim marker path)``. Delete the marker once the version is complete.

    Raises:
      PushError: no number could be claimed in :data:`MAX_CLAIM_ATTEMPTS` attempts.
    """
    claims_dir = _join(model_dir, CLAIMS_DIR)
    tf.io.gfile.makedirs(claims_dir)
    for attempt in range(MAX_CLAIM_ATTEMPTS):
        cutoff = _now_ms() - stale_after * 1000
        live = {n: c for n, c in _claims(model_dir).items() if c[1] >= cutoff}
        version = next_version(model_dir, now, [c[0] for c in live.values()])
        marker = _join(claims_dir, f"{version}-{_now_ms()}-{token}")
        with tf.io.gfile.GFile(marker, "w") as f:
            f.write(json.dumps({"version": version, "token": token}))
        rivals = [n for n, c in _claims(model_dir).items()
                  if c[0] == version and c[2] != token and c[1] >= cutoff]
        if not rivals and version not in model_base.version_dirs(model_dir):
            return version, marker
        tf.io.gfile.remove(marker)
        log.info("version %d of %s is contended (%s); trying a higher one", version, model_dir,
                 ", ".join(rivals) or "directory exists")
        time.sleep(random.uniform(0, backoff * (attempt + 1)))
    raise PushError(f"could not claim a version in {model_dir} after {MAX_CLAIM_ATTEMPTS} attempts "
                    "(many concurrent pushes?)")


def _stage(saved_model_dir: str, staging: str, model_name: str, label_map_path: Optional[str], has_labels: bool,
           warmup_images, record: dict) -> None:
    copy_tree(saved_model_dir, staging)
    if not has_labels:
        tf.io.gfile.makedirs(_join(staging, "assets"))
        tf.io.gfile.copy(label_map_path, _join(staging, "assets", LABEL_MAP_FILENAME), overwrite=True)
    write_warmup_requests(staging, warmup_images, model_name=model_name)
    with tf.io.gfile.GFile(_join(staging, WARMUP_DIR, PUSH_RECORD), "w") as f:
        f.write(json.dumps(record, indent=1, sort_keys=True))


def push_saved_model(
    saved_model_dir: str,
    base_directory: str,
    model_name: str,
    *,
    label_map_path: Optional[str] = None,
    warmup_images: Optional[Sequence[bytes | str | os.PathLike]] = None,
    now: Optional[float] = None,
    rename: Optional[bool] = None,
    stale_after: float = STALE_AFTER_SECONDS,
    skip_if_latest: bool = True,
) -> Push:
    """Pushes an exported SavedModel as a new version of ``model_name`` under ``base_directory``.

    See the module docstring for the protocol.

    Args:
      saved_model_dir: the SavedModel (of :mod:`hrnet_tfx.serving.export`); local or a URI.
      base_directory: TF Serving's model base (``--model_base_path`` is ``<base_directory>/<model_name>``);
        local or a bucket URI.
      model_name: the served model's name (a directory name: letters, digits, ``_.-``).
      label_map_path: a ``labels.tsv`` to ship when the model has none in ``assets/``.
      warmup_images: images for the warm-up requests (default: two small generated JPEGs).
      now: the UNIX time used for the version (default: the clock); for tests.
      rename: publish by renaming the staging directory (default: on local file systems) or, when False,
        by the object-store claim protocol.
      stale_after: age in seconds after which another push's staging directory or claim is removed.
      skip_if_latest: return the latest version instead of pushing when it holds the same model.

    Returns:
      A :class:`Push`: ``(version, directory, reused)``.

    Raises:
      PushError: the source is not a SavedModel, there is no label map to ship, or the model name is not
        a directory name; nothing was made visible.
    """
    has_labels = _check_source(saved_model_dir, model_name, label_map_path)
    if rename is None:
        rename = renames_atomically(base_directory)
    model_dir = _join(base_directory, model_name)
    tf.io.gfile.makedirs(model_dir)
    clean_stale(model_dir, stale_after)
    fingerprint = saved_model_fingerprint(
        saved_model_dir, None if has_labels else {f"assets/{LABEL_MAP_FILENAME}": label_map_path})
    if skip_if_latest:
        existing = _latest_push(model_dir, fingerprint)
        if existing:
            log.info("%s is already version %d of %s (%s): not pushed again", saved_model_dir, existing.version,
                     model_name, existing.directory)
            return existing

    token = uuid.uuid4().hex
    staging = _join(model_dir, f"{STAGING_PREFIX}{_now_ms()}-{token}")
    record = {"source": saved_model_dir, "fingerprint": fingerprint, "token": token,
              "pushed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    version, final = _stage_and_publish(
        saved_model_dir, staging, model_dir, model_name, label_map_path=label_map_path, has_labels=has_labels,
        warmup_images=warmup_images, record=record, rename=rename, now=now, stale_after=stale_after)
    log.info("pushed %s as %s version %d: %s", saved_model_dir, model_name, version, final)
    return Push(version, final)


def _check_source(saved_model_dir: str, model_name: str, label_map_path: Optional[str]) -> bool:
    """Refuses a bad model name, a source that is not a SavedModel, or a model without a label map to ship;
    returns whether the model has its own ``assets/labels.tsv``."""
    try:
        check_model_name(model_name)
    except ValueError as e:
        raise PushError(str(e)) from None
    if not tf.io.gfile.exists(_join(saved_model_dir, SAVED_MODEL_PB)):
        raise PushError(f"{saved_model_dir} is not a SavedModel (no {SAVED_MODEL_PB})")
    has_labels = tf.io.gfile.exists(_join(saved_model_dir, "assets", LABEL_MAP_FILENAME))
    if not has_labels and not (label_map_path and tf.io.gfile.exists(label_map_path)):
        raise PushError(f"{saved_model_dir} has no assets/{LABEL_MAP_FILENAME} and no label map was given "
                        f"(label_map_path={label_map_path!r}); clients need it to name the classes")
    return has_labels


def _stage_and_publish(saved_model_dir: str, staging: str, model_dir: str, model_name: str, *,
                       label_map_path: Optional[str], has_labels: bool, warmup_images, record: dict, rename: bool,
                       now: Optional[float], stale_after: float) -> tuple[int, str]:
    """Stages the version in ``staging`` and publishes it (by rename, or by claiming a version number and
    copying); returns ``(version, directory)``. On any failure, removes the staging directory and, when the
    claim is ours, what was begun at the version directory and the claim, then re-raises."""
    marker = final = None
    writing_final = False
    try:
        _stage(saved_model_dir, staging, model_name, label_map_path, has_labels, warmup_images, record)
        if rename:
            return _publish_by_rename(staging, model_dir, now)
        version, marker = claim_version(model_dir, record["token"], now=now, stale_after=stale_after)
        final = _join(model_dir, str(version))
        if tf.io.gfile.exists(final):  # written by something that ignores the claims
            raise PushError(f"{final} appeared although this push claimed version {version}")
        writing_final = True
        publish_directory(staging, final, rename=False)
        tf.io.gfile.remove(marker)
        return version, final
    except BaseException:
        if tf.io.gfile.exists(staging):
            remove_tree(staging)
        if marker is not None:  # we hold the claim: what we began to write at the version directory is ours
            if writing_final and tf.io.gfile.exists(final):
                remove_tree(final)
            tf.io.gfile.remove(marker)
        raise


def _publish_by_rename(staging: str, model_dir: str, now: Optional[float]) -> tuple[int, str]:
    """Renames ``staging`` to the next free version; a version taken meanwhile moves it to the next one."""
    for _ in range(MAX_CLAIM_ATTEMPTS):
        version = next_version(model_dir, now)
        final = _join(model_dir, str(version))
        try:
            publish_directory(staging, final, rename=True)
            return version, final
        except FileExistsError:
            log.info("version %d of %s was taken by a concurrent push; trying the next one", version, model_dir)
    raise PushError(f"could not publish {staging} in {MAX_CLAIM_ATTEMPTS} attempts (many concurrent pushes?)")


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
            label_map = _join(artifact_utils.get_single_uri(input_dict["examples"]), LABEL_MAP_FILENAME)
        images = json_utils.loads(exec_properties.get("warmup_images") or "null")
        push = push_saved_model(
            path_utils.serving_model_path(model.uri), exec_properties["base_directory"],
            exec_properties["model_name"], label_map_path=label_map, warmup_images=images)
        copy_tree(push.directory, pushed_model.uri)
        pushed_model.set_int_custom_property(PUSHED, 1)
        pushed_model.set_string_custom_property(PUSHED_DESTINATION, push.directory)
        pushed_model.set_string_custom_property(PUSHED_VERSION, str(push.version))
        pushed_model.set_int_custom_property(ALREADY_PUSHED, int(push.reused))

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
        check_model_name(model_name)
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
