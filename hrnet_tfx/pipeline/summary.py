"""Prints where a pipeline run left its outputs: ``python -m hrnet_tfx.pipeline.summary ROOT SERVING_BASE``.

Reads the newest execution directory of each component under the pipeline root (TFX names them by
execution id) and the newest pushed version under the serving base.
"""

import json
import os
import sys


def _latest(path: str) -> str:
    """The newest numbered execution directory under ``path`` ('' if none)."""
    if not os.path.isdir(path):
        return ""
    runs = [d for d in os.listdir(path) if d.isdigit()]
    return os.path.join(path, max(runs, key=int)) if runs else ""


def summarize(root: str, serving_base: str) -> list[str]:
    lines = []
    run = _latest(os.path.join(root, "HorovodTrainer", "model_run"))
    if run and os.path.exists(os.path.join(run, "metrics.json")):
        with open(os.path.join(run, "metrics.json"), encoding="utf-8") as f:
            m = json.load(f)
        lines.append(f"eval top-1 {m['top1']:.4f}  top-5 {m['top5']:.4f}  loss {m['loss']:.4f}  "
                     f"({m['count']} images, step {m['step']})")
        lines.append(f"TensorBoard logs:  tensorboard --logdir {os.path.join(run, 'tensorboard')}")
    model = _latest(os.path.join(root, "HorovodTrainer", "model"))
    if model:
        lines.append(f"trained model:     {os.path.join(model, 'Format-Serving')}")
    report = _latest(os.path.join(root, "EvaluationReport", "report"))
    if report:
        lines.append(f"metrics report:    {os.path.join(report, 'report.md')} (and report.html)")
    pushed = []
    for name in sorted(os.listdir(serving_base)) if os.path.isdir(serving_base) else []:
        versions = [v for v in os.listdir(os.path.join(serving_base, name)) if v.isdigit()]
        pushed += [os.path.join(serving_base, name, v) for v in sorted(versions, key=int)[-1:]]
    lines.append(f"pushed model:      {pushed[-1] if pushed else '(nothing pushed: not blessed?)'}")
    return lines


if __name__ == "__main__":
    print("\n".join(summarize(sys.argv[1], sys.argv[2])))
