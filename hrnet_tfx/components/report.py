"""EvaluationReport: the Evaluator's verdict and numbers as ``report.md`` / ``report.html`` for a shell user.

TFMA writes its results as protobuf records meant for notebook widgets. This component reads them with
``tfma.load_metrics`` and ``tfma.load_validation_result`` and writes, into its ``report`` artifact:

* ``report.md`` and ``report.html``: blessed or not, and why (each failed threshold with the value it
  got); top-1 / top-5 / loss / example count of the candidate, the baseline and their difference; and a
  per-class accuracy table with the class ids and names of the label map;
* ``report.json``: the same numbers for scripts.

The per-class table comes from the label slices of :func:`hrnet_tfx.components.evaluator.eval_config`
(top-1 accuracy on the examples of class ``c`` is the recall of ``c``). Class names come from the
``labels.tsv`` of the Examples (as written by ImageExampleGen), else from the model's
``assets/labels.tsv``; without either the table shows indices only.

:func:`write_report` does the work without TFX, for an evaluation directory on disk.
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
from typing import Any, Dict, List, Optional

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec
from tfx.utils import path_utils

from hrnet_tfx.components.evaluator import BASELINE, EXAMPLE_COUNT, LOSS, METRIC_LABELS, TOP1, TOP5
from hrnet_tfx.data.features import LABEL, LABEL_MAP_FILENAME
from hrnet_tfx.data.labels import ClassInfo, read_label_map

log = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_JSON = "report.json"
_OVERALL = "overall"


class EvaluationReportArtifact(types.Artifact):
    """The directory holding ``report.md``, ``report.html`` and ``report.json``."""

    TYPE_NAME = "hrnet_tfx.EvaluationReport"  # KFP v2 wants "namespace.Type"


@dataclasses.dataclass
class Report:
    """What the report says; :meth:`markdown` and :meth:`html` render it."""

    verdict: str  # "BLESSED", "NOT BLESSED" or "NOT VALIDATED"
    reasons: List[str]
    has_baseline: bool
    overall: Dict[str, Dict[str, float]]  # metric -> {"candidate", "baseline", "change"}
    per_class: List[Dict[str, Any]]  # index, id, name, examples, top1, top5, baseline_top1
    notes: List[str] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def _metric_rows(self) -> List[List[str]]:
        rows = []
        for metric in (TOP1, TOP5, LOSS, EXAMPLE_COUNT):
            values = self.overall.get(metric, {})
            row = [METRIC_LABELS[metric], _fmt(values.get("candidate"), metric)]
            if self.has_baseline:
                row += [_fmt(values.get("baseline"), metric), _fmt(values.get("change"), metric, signed=True)]
            rows.append(row)
        return rows

    def _metric_header(self) -> List[str]:
        return ["metric", "candidate"] + (["baseline", "change"] if self.has_baseline else [])

    def _class_header(self) -> List[str]:
        return ["index", "class id", "name", "examples", "top-1", "top-5"] + (
            ["baseline top-1"] if self.has_baseline else [])

    def _class_rows(self) -> List[List[str]]:
        rows = []
        for c in self.per_class:
            row = [str(c["index"]), c["id"], c["name"], _fmt(c.get("examples"), EXAMPLE_COUNT),
                   _fmt(c.get("top1"), TOP1), _fmt(c.get("top5"), TOP5)]
            if self.has_baseline:
                row.append(_fmt(c.get("baseline_top1"), TOP1))
            rows.append(row)
        return rows

    def markdown(self) -> str:
        def table(header, rows):
            esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(esc(x) for x in row) + " |" for row in rows]
            return "\n".join(lines)

        out = ["# Model evaluation", "", f"**Verdict: {self.verdict}**", ""]
        out += [f"- {r}" for r in self.reasons] + ([""] if self.reasons else [])
        out += [f"_{n}_" for n in self.notes] + ([""] if self.notes else [])
        out += ["## Metrics (whole eval split)", "", table(self._metric_header(), self._metric_rows()), ""]
        if self.per_class:
            out += ["## Per-class accuracy", "", table(self._class_header(), self._class_rows()), ""]
        return "\n".join(out)

    def html(self) -> str:
        def table(header, rows):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>" for row in rows)
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

        color = {"BLESSED": "#1a7f37", "NOT BLESSED": "#cf222e"}.get(self.verdict, "#9a6700")
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Model evaluation</title>",
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}</style></head><body>",
            "<h1>Model evaluation</h1>",
            f"<p style='font-size:1.4em;color:{color}'><b>{html.escape(self.verdict)}</b></p>",
        ]
        if self.reasons:
            parts.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in self.reasons) + "</ul>")
        parts += [f"<p><i>{html.escape(n)}</i></p>" for n in self.notes]
        parts += ["<h2>Metrics (whole eval split)</h2>", table(self._metric_header(), self._metric_rows())]
        if self.per_class:
            parts += ["<h2>Per-class accuracy</h2>", table(self._class_header(), self._class_rows())]
        parts.append("</body></html>")
        return "\n".join(parts)


def _fmt(value: Optional[float], metric: str, signed: bool = False) -> str:
    if value is None:
        return "-"
    if metric == EXAMPLE_COUNT:
        return f"{value:+.0f}" if signed else f"{value:.0f}"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _slice_name(slice_key) -> Any:
    keys = list(slice_key.single_slice_keys)
    if not keys:
        return _OVERALL
    if len(keys) == 1 and keys[0].column == LABEL and keys[0].HasField("int64_value"):
        return int(keys[0].int64_value)
    return None  # a slice this report does not show


def _read_metrics(eval_dir: str) -> Dict[Any, Dict[str, Dict[str, float]]]:
    """slice (``'overall'`` or a class index) -> metric -> {'candidate'|'baseline'|'change': value}."""
    table: Dict[Any, Dict[str, Dict[str, float]]] = {}
    for metrics in tfma.load_metrics(eval_dir):
        name = _slice_name(metrics.slice_key)
        if name is None:
            continue
        for item in metrics.metric_keys_and_values:
            key, value = item.key, item.value
            if not value.HasField("double_value") or key.HasField("sub_key"):
                continue
            role = "change" if key.is_diff else ("baseline" if key.model_name == BASELINE else "candidate")
            table.setdefault(name, {}).setdefault(key.name, {})[role] = float(value.double_value.value)
    return table


def _describe_failure(failure) -> str:
    key, threshold = failure.metric_key, failure.metric_threshold
    label = METRIC_LABELS.get(key.name, key.name)
    got = failure.metric_value.double_value.value if failure.metric_value.HasField("double_value") else None
    if threshold.HasField("change_threshold"):
        change = threshold.change_threshold
        bits = []
        if change.HasField("absolute"):
            op = ">=" if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER else "<="
            bits.append(f"change {op} {change.absolute.value + 0.0:+.4f}")
        if change.HasField("relative"):
            op = ">=" if change.direction == tfma.MetricDirection.HIGHER_IS_BETTER else "<="
            bits.append(f"relative change {op} {change.relative.value + 0.0:+.4f}")
        return (f"{label} vs the baseline (latest blessed model): change {got:+.4f}, "
                f"required {' and '.join(bits)}")
    bounds = threshold.value_threshold
    bits = []
    if bounds.HasField("lower_bound"):
        bits.append(f">= {bounds.lower_bound.value:.4f}")
    if bounds.HasField("upper_bound"):
        bits.append(f"<= {bounds.upper_bound.value:.4f}")
    shown = "missing" if got is None else f"{got:.4f}"
    return f"{label} {shown}, required {' and '.join(bits)}"


def build_report(eval_dir: str, classes: Optional[List[ClassInfo]] = None, blessed: Optional[bool] = None) -> Report:
    """Reads TFMA's output in ``eval_dir`` into a :class:`Report`.

    Args:
      eval_dir: the Evaluator's ``evaluation`` directory (TFMA's output path).
      classes: the label map (names for the per-class table), or None.
      blessed: the ModelBlessing's verdict, if known; else TFMA's ``validation_ok`` decides (and with no
        validation result the verdict is ``NOT VALIDATED``).
    """
    table = _read_metrics(eval_dir)
    if _OVERALL not in table:
        raise ValueError(f"{eval_dir} has no overall-slice metrics: is it a TFMA output directory of an "
                         "evaluation with tfma.SlicingSpec() (see hrnet_tfx.components.evaluator.eval_config)?")
    overall = table[_OVERALL]
    has_baseline = any("baseline" in v for v in overall.values())
    reasons, notes = [], []
    try:
        validation = tfma.load_validation_result(eval_dir)
    except Exception:  # no validations file: the evaluation had no thresholds
        validation = None
    if validation is not None:
        for per_slice in validation.metric_validations_per_slice:
            where = "" if not per_slice.slice_key.single_slice_keys else f" (slice {per_slice.slice_key})"
            reasons += [_describe_failure(f) + where for f in per_slice.failures]
        for missing in validation.missing_slices:
            reasons.append(f"slice {missing} has no examples")
        if validation.missing_thresholds:
            reasons.append(f"{len(validation.missing_thresholds)} thresholds had no metric to check")
    if blessed is None:
        blessed = validation.validation_ok if validation is not None else None
    verdict = "NOT VALIDATED" if blessed is None else ("BLESSED" if blessed else "NOT BLESSED")
    if blessed and not reasons:
        reasons.append("every threshold passed")
    elif blessed is False and not reasons:
        reasons.append("the Evaluator did not bless the model (no failed threshold was recorded)")
    if not has_baseline:
        notes.append("No baseline (no blessed model yet): change thresholds were not checked.")

    per_class = []
    indices = sorted(k for k in table if k != _OVERALL)
    info = {c.index: c for c in classes or []}
    for index in sorted(set(indices) | set(info)):
        metrics = table.get(index, {})
        c = info.get(index)
        per_class.append({
            "index": index, "id": c.id if c else "?", "name": c.name if c else "?",
            "examples": metrics.get(EXAMPLE_COUNT, {}).get("candidate"),
            "top1": metrics.get(TOP1, {}).get("candidate"),
            "top5": metrics.get(TOP5, {}).get("candidate"),
            "baseline_top1": metrics.get(TOP1, {}).get("baseline"),
        })
    if classes and set(indices) - set(info):
        notes.append(f"Label slices {sorted(set(indices) - set(info))} are not in the label map.")
    return Report(verdict, reasons, has_baseline, overall, per_class, notes)


def write_report(eval_dir: str, output_dir: str, classes: Optional[List[ClassInfo]] = None,
                 blessed: Optional[bool] = None) -> Report:
    """Writes ``report.md``, ``report.html`` and ``report.json`` for ``eval_dir`` into ``output_dir``."""
    report = build_report(eval_dir, classes, blessed)
    tf.io.gfile.makedirs(output_dir)
    for name, text in ((REPORT_MD, report.markdown()), (REPORT_HTML, report.html()),
                       (REPORT_JSON, json.dumps(report.to_json(), indent=1))):
        with tf.io.gfile.GFile(os.path.join(output_dir, name), "w") as f:
            f.write(text)
    return report


class EvaluationReportSpec(ComponentSpec):
    PARAMETERS = {}
    INPUTS = {
        "evaluation": ChannelParameter(type=standard_artifacts.ModelEvaluation),
        "model_blessing": ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        "examples": ChannelParameter(type=standard_artifacts.Examples, optional=True),
        "model": ChannelParameter(type=standard_artifacts.Model, optional=True),
    }
    OUTPUTS = {"report": ChannelParameter(type=EvaluationReportArtifact)}


class Executor(base_executor.BaseExecutor):
    """Writes the report (see the module docstring)."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        evaluation = artifact_utils.get_single_uri(input_dict["evaluation"])
        output = artifact_utils.get_single_instance(output_dict["report"])
        blessed = None
        if input_dict.get("model_blessing"):
            blessing = artifact_utils.get_single_instance(input_dict["model_blessing"])
            if blessing.has_custom_property("blessed"):
                blessed = bool(blessing.get_int_custom_property("blessed"))
        candidates = []
        if input_dict.get("examples"):
            candidates.append(os.path.join(artifact_utils.get_single_uri(input_dict["examples"]), LABEL_MAP_FILENAME))
        if input_dict.get("model"):
            model = artifact_utils.get_single_instance(input_dict["model"])
            candidates.append(os.path.join(path_utils.serving_model_path(model.uri), "assets", LABEL_MAP_FILENAME))
        classes = None
        for path in candidates:
            if tf.io.gfile.exists(path):
                classes = read_label_map(path)
                break
        report = write_report(evaluation, output.uri, classes, blessed)
        output.set_string_custom_property("verdict", report.verdict)
        for metric, key in ((TOP1, "top1"), (TOP5, "top5"), (LOSS, "loss")):
            value = report.overall.get(metric, {}).get("candidate")
            if value is not None:
                output.set_float_custom_property(key, value)
        log.info("evaluation report: %s -> %s", report.verdict, os.path.join(output.uri, REPORT_MD))


class EvaluationReport(base_component.BaseComponent):
    """Writes report.md / report.html / report.json from the Evaluator's output (see the module docstring)."""

    SPEC_CLASS = EvaluationReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

    def __init__(self, evaluation: types.BaseChannel, model_blessing: Optional[types.BaseChannel] = None,
                 examples: Optional[types.BaseChannel] = None, model: Optional[types.BaseChannel] = None):
        """Args:
          evaluation: the Evaluator's ``evaluation`` output.
          model_blessing: its ``blessing`` output (the verdict; default: TFMA's validation result).
          examples: the evaluated Examples (their ``labels.tsv`` names the classes).
          model: the candidate Model (its ``assets/labels.tsv`` when the Examples have none).
        """
        super().__init__(spec=EvaluationReportSpec(
            evaluation=evaluation, model_blessing=model_blessing, examples=examples, model=model,
            report=types.Channel(type=EvaluationReportArtifact)))
