"""Prints where a pipeline run left its outputs: ``python -m hrnet_tfx.pipeline.summary ROOT SERVING_BASE``.

Reads the newest execution directory of each component under the pipeline root (TFX names them by
execution id) and the newest pushed version under the serving base. Both may be local or bucket URIs.
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


def summarize(root: str, serving_base: str) -> list[str]:
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
    pushed = []
    for name in sorted(_listdir(serving_base)):
        version = model_base.latest_version(_join(serving_base, name))
        if version is not None:
            pushed.append(_join(serving_base, name, str(version)))
    lines.append(f"pushed model:      {pushed[-1] if pushed else '(nothing pushed: not blessed?)'}")
    return lines


if __name__ == "__main__":
    print("\n".join(summarize(sys.argv[1], sys.argv[2])))
