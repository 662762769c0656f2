"""Finding and restoring the training checkpoints of a model directory, whatever state it was left in.

The checkpoints themselves (``ckpt-<step>.index`` + ``ckpt-<step>.data-*``) are the truth, not
TensorFlow's ``checkpoint`` state file: a garbled state file would otherwise make a rerun start again at
step 0 and save over the existing checkpoints, and a damaged newest checkpoint would stop every resume
although older ones are kept. :func:`restore_newest` tries the checkpoints newest first and falls back,
with a warning, past those it cannot read; :func:`prepare_resume` moves those aside and makes the state
file agree with what was restored, so ``tf.train.CheckpointManager`` keeps and deletes the right files
and the run's next saves never write over an old file.
"""

from __future__ import annotations

import logging
import os
import re

import hrnet_tfx  # noqa: F401
import tensorflow as tf

from hrnet_tfx.models.config import ConfigError

log = logging.getLogger(__name__)

PREFIX = "ckpt"
DAMAGED = "damaged-"
"""Name prefix of the files of an unreadable checkpoint moved aside by :func:`prepare_resume`."""
_NAME = re.compile(rf"^{PREFIX}-(\d+)\.(index|data-\d+-of-\d+)$")
# Reading a damaged checkpoint: a missing file (NotFoundError), a cut index (DataLossError) or data file
# (IndexError "Read less bytes than requested" from the bundle reader), a bad checksum (DataLossError).
_UNREADABLE = (tf.errors.OpError, IndexError)


class CheckpointError(ConfigError):
    """Checkpoint files exist but none can be restored; the message names each one and why."""


def list_checkpoints(ckpt_dir: str) -> list[tuple[int, str]]:
    """``(step, prefix)`` of every checkpoint with any file in ``ckpt_dir``, newest first."""
    if not tf.io.gfile.isdir(ckpt_dir):
        return []
    steps = {int(m.group(1)) for m in map(_NAME.match, tf.io.gfile.listdir(ckpt_dir)) if m}
    return [(step, os.path.join(ckpt_dir, f"{PREFIX}-{step}")) for step in sorted(steps, reverse=True)]


def restore_newest(checkpoint: tf.train.Checkpoint, ckpt_dir: str) -> str | None:
    """Restores the newest readable checkpoint of ``ckpt_dir`` into ``checkpoint``; returns its prefix,
    or None when the directory holds no checkpoint files.

    A checkpoint that cannot be read (missing or cut data file, damaged index) is skipped with a warning
    that names it; the next older one is tried.

    Raises:
      CheckpointError: checkpoint files exist but none can be read, or one does not fit the model.
    """
    failures, skipped = [], []
    for _, prefix in list_checkpoints(ckpt_dir):
        try:
            checkpoint.restore(prefix).assert_existing_objects_matched()
        except _UNREADABLE as e:
            reason = getattr(e, "message", None) or str(e) or type(e).__name__
            skipped.append(os.path.basename(prefix))
            failures.append(f"{skipped[-1]}: {reason}")
            log.warning("checkpoint %s cannot be read (%s): trying the previous one", prefix, reason)
            continue
        except (AssertionError, ValueError) as e:
            raise CheckpointError(f"checkpoint {prefix} does not fit this model ({e}); its model_dir belongs to "
                                  "another network or class count") from None
        if skipped:
            log.warning("resuming from %s: the newer checkpoint(s) %s could not be read", prefix, ", ".join(skipped))
        return prefix
    if failures:
        raise CheckpointError(
            f"{ckpt_dir} holds checkpoint files but none can be read ({'; '.join(failures)}). Refusing to "
            "start again at step 0 over them: repair or move them away, or use another model_dir.")
    return None


def prepare_resume(ckpt_dir: str, restored: str) -> None:
    """Before training goes on from ``restored``: moves the files of the unreadable newer checkpoints
    aside (``damaged-ckpt-<step>.*``, kept for inspection; the run saves those steps again under their
    own names) and makes the ``checkpoint`` state file list ``restored`` as the latest, after the older
    checkpoints."""
    step = int(restored.rsplit("-", 1)[1])
    newer = {s for s, _ in list_checkpoints(ckpt_dir) if s > step}
    for name in tf.io.gfile.listdir(ckpt_dir):
        match = _NAME.match(name)
        if match and int(match.group(1)) in newer:
            tf.io.gfile.rename(os.path.join(ckpt_dir, name), os.path.join(ckpt_dir, DAMAGED + name), overwrite=True)
            log.warning("moved %s aside to %s", os.path.join(ckpt_dir, name), DAMAGED + name)
    kept = [prefix for _, prefix in reversed(list_checkpoints(ckpt_dir))]
    tf.compat.v1.train.update_checkpoint_state(ckpt_dir, restored, all_model_checkpoint_paths=kept)
