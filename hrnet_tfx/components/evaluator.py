"""Model evaluation with TFX's stock Evaluator (TFMA): top-1 / top-5 accuracy, loss and per-class accuracy.

:func:`eval_config` builds the :class:`tfma.EvalConfig` for the SavedModel of
:mod:`hrnet_tfx.serving.export`; :func:`make_evaluator` wires it into a pipeline together with the
``LatestBlessedModelStrategy`` resolver that supplies the baseline.

What TFMA 0.47 evaluates, and why the config looks like this:

* ``ModelSpec(signature_name='serving_default', prediction_key='scores')``: the signature takes the
  serialized tf.Example (its one string input ``inputs``, so TFMA feeds the raw records) and returns two
  outputs, ``scores`` (probabilities [N, C]) and ``classes`` (strings). ``prediction_key`` picks
  ``scores``; without it TFMA would hand the metrics a dict of both outputs. Without ``signature_name``
  TFMA would try to call the model as Keras on parsed features, which does not fit an image model.
* ``label_key='image/class/label'``: the int64 class index of :mod:`hrnet_tfx.data.features`, so the
  metrics are the sparse Keras ones: ``SparseCategoricalAccuracy`` (top-1),
  ``SparseTopKCategoricalAccuracy`` with ``k=5`` (top-5) and ``SparseCategoricalCrossentropy`` on the
  probabilities (``from_logits=false``).
* Blessing: an absolute lower bound on top-1 and on top-5, and a change threshold on top-1 against the
  baseline (the latest blessed model): the candidate may be at most ``max_top1_drop`` worse. On the first
  run there is no baseline; TFX's Evaluator then drops the baseline spec and ignores change thresholds
  ("rubber stamp"), so the bounds alone decide.
* Thresholds apply to the overall slice only (a plain ``MetricConfig.threshold`` would apply to every
  label slice too, refusing a model for one weak class).
* Slices: the whole eval set plus one slice per value of the label feature. Top-1 accuracy on the slice
  ``label == c`` is the recall of class ``c``: the per-class accuracy table of
  :mod:`hrnet_tfx.components.report`.

Labels. TFMA scores the label feature as stored: it cannot shift labels. Examples whose labels are
1-based (inception/TF-slim TFRecords read by a foreign ExampleGen; ``ImageExampleGen`` and ``hrnet-tfx
data convert`` shift them to 0-based) would be mis-scored, every prediction off by one class. So
:func:`eval_config` refuses ``label_offset != 0`` (the offset the Trainer was given for such Examples),
and the Evaluator of :func:`make_evaluator` checks every label while it runs (:func:`custom_extractors`):
a label outside ``[0, classes)`` of the model fails the evaluation with an error that names it, which
catches 1-based ImageNet labels (class 1000 appears) before a wrong number is reported.

Cost and memory. By default the Evaluator's TFXIO source batches records with Beam's adaptive
``BatchElements`` (1 to 1000 records, grown while a batch stays fast): on a CPU the batches stay small,
on a fast GPU they can reach 1000 224x224 images, too many for its memory (TFMA then retries the batch
one example at a time, very slowly). ``eval_config(inference_batch_size=N)`` fixes the model's batch to
N (e.g. 64-256 on a GPU) with tfx_bsl's RunInference extractor (:func:`custom_extractors`). Per-slice
metric state is a handful of floats per class, so 1000 label slices are cheap.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from hrnet_tfx.data import features
from hrnet_tfx.serving.export import OUTPUT_SCORES as PREDICTION_KEY
from hrnet_tfx.serving.export import SIGNATURE_CLASSIFY as SIGNATURE

CANDIDATE = "candidate"
BASELINE = "baseline"

TOP1 = "sparse_categorical_accuracy"
TOP5 = "sparse_top_k_categorical_accuracy"
LOSS = "sparse_categorical_crossentropy"
EXAMPLE_COUNT = "example_count"
METRIC_LABELS = {TOP1: "top-1 accuracy", TOP5: "top-5 accuracy", LOSS: "loss (cross-entropy)",
                 EXAMPLE_COUNT: "examples"}
"""TFMA metric names of :func:`eval_config` -> what the report calls them."""


HOOKS_MODULE = "hrnet_tfx.components.evaluator_hooks"
"""The Evaluator's ``module_path``: a module holding only :func:`custom_extractors`, because TFX reloads it."""


def _check_fraction(name: str, value: float, allow_above_one: bool = True) -> float:
    value = float(value)
    if value != value or value < 0.0:
        raise ValueError(f"{name} must be a non-negative number, got {value}")
    if not allow_above_one and value > 1.0:
        raise ValueError(f"{name} must be at most 1, got {value}")
    return value


def _overall(threshold: tfma.MetricThreshold) -> tfma.PerSliceMetricThreshold:
    # A plain MetricConfig.threshold applies to every slice, so one weak class would fail the model:
    # the bounds and the change threshold are for the whole eval set only.
    return tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()], threshold=threshold)


def eval_config(
    top1_lower_bound: float = 0.0,
    top5_lower_bound: float = 0.0,
    max_top1_drop: Optional[float] = 0.0,
    *,
    label_key: str = features.LABEL,
    per_class: bool = True,
    top_k: int = 5,
    inference_batch_size: Optional[int] = None,
    label_offset: int = 0,
) -> tfma.EvalConfig:
    """The TFMA config that evaluates and blesses an hrnet-tfx SavedModel (see the module docstring).

    Args:
      top1_lower_bound: the candidate's top-1 accuracy must be at least this (0 disables the check in
        effect; a value above 1 refuses every model, which tests use).
      top5_lower_bound: the same for top-5 accuracy.
      max_top1_drop: how much lower the candidate's top-1 accuracy may be than the baseline's (the latest
        blessed model), in absolute accuracy (0.0: never worse; 0.005: at most half a point worse).
        ``None`` evaluates no baseline and sets no change threshold.
      label_key: the int64 class-index feature of the eval examples.
      per_class: also slice by ``label_key`` (per-class accuracy).
      top_k: the k of the top-k accuracy (5 for ImageNet).
      inference_batch_size: run the model on batches of exactly this many examples (bounded accelerator
        memory; :func:`make_evaluator` then installs :func:`custom_extractors`). Default: TFMA's adaptive
        batches of 1 to 1000 examples.
      label_offset: what the Examples' labels are offset by (the Trainer's ``label_offset``). Only 0 is
        accepted: TFMA cannot shift labels (see the module docstring).

    Returns:
      A :class:`tfma.EvalConfig` with model specs ``candidate`` (and ``baseline`` unless
      ``max_top1_drop is None``).
    """
    _check_label_offset(label_offset, label_key)
    top1_lower_bound = _check_fraction("top1_lower_bound", top1_lower_bound)
    top5_lower_bound = _check_fraction("top5_lower_bound", top5_lower_bound)
    if max_top1_drop is not None:
        max_top1_drop = _check_fraction("max_top1_drop", max_top1_drop, allow_above_one=False)
    if top_k < 1:
        raise ValueError(f"top_k must be positive, got {top_k}")
    if inference_batch_size is not None and inference_batch_size < 1:
        raise ValueError(f"inference_batch_size must be positive, got {inference_batch_size}")

    slicing_specs = [tfma.SlicingSpec()]
    if per_class:
        slicing_specs.append(tfma.SlicingSpec(feature_keys=[label_key]))
    return tfma.EvalConfig(
        model_specs=_model_specs(label_key, inference_batch_size, with_baseline=max_top1_drop is not None),
        slicing_specs=slicing_specs,
        metrics_specs=[tfma.MetricsSpec(metrics=_metrics(top1_lower_bound, top5_lower_bound, max_top1_drop, top_k))],
    )


def _check_label_offset(label_offset: int, label_key: str) -> None:
    """Refuses a label offset: TFMA cannot shift labels (see the module docstring)."""
    if label_offset:
        raise ValueError(
            f"label_offset={label_offset}: the Evaluator (TFMA) scores {label_key!r} as stored and cannot shift "
            "labels, so every example would count as the neighbouring class. Convert the data with "
            "ImageExampleGen or 'hrnet-tfx data convert' (they write 0-based labels, shifting inception's "
            "1-based ones), or evaluate without TFMA ('hrnet-tfx train --eval-only' takes -s label_offset=1)")


def _model_specs(label_key: str, inference_batch_size: Optional[int], with_baseline: bool) -> list:
    """The candidate's model spec, and the baseline's when ``with_baseline``: the classification signature,
    its ``scores`` output, the label feature, and the fixed inference batch (0: TFMA's adaptive one)."""
    names = [(CANDIDATE, False)] + ([(BASELINE, True)] if with_baseline else [])
    return [tfma.ModelSpec(name=name, signature_name=SIGNATURE, label_key=label_key, prediction_key=PREDICTION_KEY,
                           is_baseline=is_baseline, inference_batch_size=inference_batch_size or 0)
            for name, is_baseline in names]


def _metrics(top1_lower_bound: float, top5_lower_bound: float, max_top1_drop: Optional[float],
             top_k: int) -> list:
    """Example count, top-1 (lower bound, and at most ``max_top1_drop`` below the baseline unless None),
    top-k (lower bound) and the cross-entropy of the probabilities; thresholds on the overall slice only."""
    top1_threshold = tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(lower_bound={"value": top1_lower_bound}))
    if max_top1_drop is not None:
        top1_threshold.change_threshold.CopyFrom(tfma.GenericChangeThreshold(
            direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_top1_drop}))
    return [
        tfma.MetricConfig(class_name="ExampleCount"),
        tfma.MetricConfig(class_name="SparseCategoricalAccuracy",
                          per_slice_thresholds=[_overall(top1_threshold)]),
        tfma.MetricConfig(
            class_name="SparseTopKCategoricalAccuracy", config=f'"k": {int(top_k)}',
            per_slice_thresholds=[_overall(tfma.MetricThreshold(
                value_threshold=tfma.GenericValueThreshold(lower_bound={"value": top5_lower_bound})))]),
        tfma.MetricConfig(class_name="SparseCategoricalCrossentropy", config='"from_logits": false'),
    ]


def make_evaluator(
    examples,
    model,
    config: Optional[tfma.EvalConfig] = None,
    *,
    example_splits: Sequence[str] = ("eval",),
    id_prefix: str = "",
) -> Tuple[Optional[tfx.dsl.Resolver], tfx.components.Evaluator]:
    """The baseline resolver and the stock TFX Evaluator for ``model`` on ``examples``.

    Args:
      examples: channel of Examples with the eval split (e.g. ``ImageExampleGen.outputs['examples']``).
      model: channel of the candidate Model (e.g. ``HorovodTrainer.outputs['model']``).
      config: from :func:`eval_config` (default: ``eval_config()``: no absolute bound, never worse than
        the latest blessed model).
      example_splits: the splits to evaluate on.
      id_prefix: prefix of the two node ids (``LatestBlessedModelResolver``, ``Evaluator``), for pipelines
        with more than one evaluation.

    Returns:
      ``(resolver, evaluator)``: add both to the pipeline. ``resolver`` is ``None`` when the config has
      no baseline spec. ``evaluator.outputs['evaluation']`` and ``['blessing']`` feed
      :class:`~hrnet_tfx.components.report.EvaluationReport` and
      :class:`~hrnet_tfx.components.pusher.HRNetPusher`.
    """
    config = config if config is not None else eval_config()
    has_baseline = any(spec.is_baseline for spec in config.model_specs)
    resolver = None
    baseline = None
    if has_baseline:
        resolver = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id(f"{id_prefix}LatestBlessedModelResolver")
        baseline = resolver.outputs["model"]
    evaluator = tfx.components.Evaluator(
        examples=examples,
        model=model,
        baseline_model=baseline,
        eval_config=config,
        example_splits=list(example_splits),
        module_path=HOOKS_MODULE,  # custom_extractors: label check, fixed inference batches
    ).with_id(f"{id_prefix}Evaluator")
    return resolver, evaluator


class LabelRangeError(ValueError):
    """An eval example's label is not a class index of the model."""


def _arrays(value):
    """The arrays in a (possibly per-model dict, or per-example list) extracts value."""
    if isinstance(value, dict):
        return [a for v in value.values() for a in _arrays(v)]
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return [] if value is None else [np.asarray(value)]


def check_labels(extracts: dict) -> dict:
    """Raises :class:`LabelRangeError` unless every label of the batch is in ``[0, classes)`` of the
    predictions (see the module docstring); returns ``extracts`` unchanged."""
    predictions = _arrays(extracts.get(tfma.PREDICTIONS_KEY))
    labels = [a.ravel() for a in _arrays(extracts.get(tfma.LABELS_KEY)) if a.size]
    if not predictions or not labels:
        return extracts
    num_classes = int(predictions[0].shape[-1])
    values = np.concatenate(labels).astype(np.int64)
    bad = values[(values < 0) | (values >= num_classes)]
    if bad.size:
        raise LabelRangeError(
            f"eval label {int(bad[0])} is not a class of the {num_classes}-class model (labels are 0 to "
            f"{num_classes - 1}); {bad.size} of {values.size} labels in this batch are out of range. 1-based "
            "labels (inception/TF-slim TFRecords)? TFMA cannot shift them: convert the data with ImageExampleGen "
            "or 'hrnet-tfx data convert', which write 0-based labels")
    return extracts


def custom_extractors(eval_shared_model, eval_config, tensor_adapter_config=None):
    """TFMA's extractors plus the label check (:func:`check_labels`) after the predictions, and, when
    ``ModelSpec.inference_batch_size`` is set, inference in fixed batches of that size.

    The stock Evaluator calls this (``module_path`` :data:`HOOKS_MODULE`, set by :func:`make_evaluator`).
    Fixed batches: TFMA's default predictions extractor calls the model on
    whatever batch Beam's adaptive batching produced (up to 1000 records, which on a fast GPU can be too
    many 224x224 images for its memory; TFMA then retries one example at a time), while tfx_bsl's
    RunInference extractor batches to exactly ``inference_batch_size``.
    """
    import apache_beam as beam
    from tensorflow_model_analysis.extractors import tfx_bsl_predictions_extractor

    predict = None
    if any(spec.inference_batch_size for spec in eval_config.model_specs):
        predict = tfx_bsl_predictions_extractor.TfxBslPredictionsExtractor(
            eval_config=eval_config, eval_shared_model=eval_shared_model)
    extractors = tfma.default_extractors(eval_shared_model=eval_shared_model, eval_config=eval_config,
                                         tensor_adapter_config=tensor_adapter_config,
                                         custom_predict_extractor=predict)
    names = [e.stage_name for e in extractors]
    after = max(i for i, name in enumerate(names) if "Predict" in name or "Inference" in name)
    check = tfma.extractors.Extractor(stage_name="CheckLabels", ptransform=beam.Map(check_labels))
    return extractors[:after + 1] + [check] + extractors[after + 1:]
