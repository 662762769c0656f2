"""Prints where a pipeline run left its outputs: ``python -m hrnet_tfx.pipeline.summary ROOT SERVING_BASE
[METADATA]``; ``hrnet-tfx pipeline run`` and ``tfx run create`` print it at the end of every local run.

Reads the newest execution directory of each component under the pipeline root (TFX names them by
execution id) and the newest pushed version under the serving base. Both may be local or bucket URIs.
With the run's ML Metadata file, the push line says what the Pusher did in the latest run (pushed a new
version, found it already pushed, or refused an unblessed model) instead of naming the newest version.
"""

import json
import posixpath
import sys

import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from hrnet_tfx.serving import model_base


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


def _listdir(path: str) -> list[str]:
    try:
        return [name.rstrip("/") for name in tf.io.gfile.listdir(path)]
    except tf.errors.NotFoundError:
        return []


def _latest(path: str) -> str:
    """The newest numbered execution directory under ``path`` ('' if none)."""
    runs = [(model_base.parse_version(d), d) for d in _listdir(path)]
    runs = [(n, d) for n, d in runs if n is not None]
    return _join(path, max(runs)[1]) if runs else ""


def latest_push(metadata_path: str) -> str | None:
    """What the latest Pusher execution recorded in ML Metadata (sqlite at ``metadata_path``), or None."""
    import os

    from ml_metadata import errors, metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if not os.path.isfile(metadata_path):
        return None
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = metadata_path
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    try:
        artifacts = metadata_store.MetadataStore(connection).get_artifacts_by_type("PushedModel")
    except errors.MlMetadataError:
        return None
    if not artifacts:
        return None
    props = max(artifacts, key=lambda a: a.id).custom_properties
    if not props["pushed"].int_value:
        return "(not pushed: the Evaluator did not bless the model; the metrics report says why)"
    already = " (already the latest version: nothing new pushed)" if props["already_pushed"].int_value else ""
    return props["pushed_destination"].string_value + already


def summarize(root: str, serving_base: str, metadata_path: str = "") -> list[str]:
    """The lines printed: eval metrics, TensorBoard logs, trained model, report and pushed version."""
    lines = []
    run = _latest(_join(root, "HorovodTrainer", "model_run"))
    if run and tf.io.gfile.exists(_join(run, "metrics.json")):
        with tf.io.gfile.GFile(_join(run, "metrics.json"), "r") as f:
            m = json.loads(f.read())
        lines.append(f"eval top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  loss {m['loss']:.4f}  "
                     f"({m['count']} images, step {m['step']})")
        lines.append(f"TensorBoard logs:  tensorboard --logdir {_join(run, 'tensorboard')}")
    model = _latest(_join(root, "HorovodTrainer", "model"))
    if model:
        lines.append(f"trained model:     {_join(model, 'Format-Serving')}")
    report = _latest(_join(root, "EvaluationReport", "report"))
    if report:
        lines.append(f"metrics report:    {_join(report, 'report.md')} (and report.html)")
    push = latest_push(metadata_path) if metadata_path else None
    if push is None:
        pushed = []
        for name in sorted(_listdir(serving_base)):
            version = model_base.latest_version(_join(serving_base, name))
            if version is not None:
                pushed.append(_join(serving_base, name, str(version)))
        push = pushed[-1] if pushed else "(nothing pushed: not blessed?)"
    lines.append(f"pushed model:      {push}")
    if not push.startswith("("):
        model_name = posixpath.basename(posixpath.dirname(push.split(" ")[0].rstrip("/")))
        lines.append(f"serve it:          hrnet-tfx serve {serving_base} --model-name {model_name}   "
                     "(then: hrnet-tfx predict IMAGE)")
    return lines


if __name__ == "__main__":
    print("\n".join(summarize(*sys.argv[1:4])))
