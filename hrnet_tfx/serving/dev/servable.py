"""One loaded SavedModel version, run as TF Serving runs it: a TF session over the ``serve`` MetaGraph,
signatures run by the tensor names in their SignatureDefs (faster to load than ``tf.saved_model.load``, and
``Session.run`` is thread-safe, so concurrent requests run in parallel).

Request validation follows TF Serving's (an unknown signature is ``FAILED_PRECONDITION`` for Predict,
``INVALID_ARGUMENT`` for Classify; input names must match exactly; graph errors keep TensorFlow's code).
Beyond it, a request carries at most ``max_items`` images or examples, and a gRPC tensor's dtype and
declared shape are checked against the signature before it is converted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Sequence

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from hrnet_tfx.serving import warmup
from hrnet_tfx.serving.dev.core import INTERNAL_MESSAGE
from hrnet_tfx.serving.dev.image_guard import ImageGuard
from hrnet_tfx.serving.errors import Code, ServingError, invalid
from hrnet_tfx.serving.export import INPUT_CLASSIFY, OUTPUT_CLASSES, OUTPUT_SCORES, SIGNATURE_CLASSIFY
from hrnet_tfx.serving.tensors import datatype_of, declared_shape, dtype_name, numpy_dtype, to_ndarray

log = logging.getLogger(__name__)

_CLIENT_FAULTS = frozenset({Code.INVALID_ARGUMENT, Code.FAILED_PRECONDITION, Code.OUT_OF_RANGE, Code.NOT_FOUND})


def from_tf_error(error: tf.errors.OpError) -> ServingError:
    """A :class:`ServingError` for a TensorFlow ``OpError`` raised while running a signature: TensorFlow's
    code (an undecodable image is ``INVALID_ARGUMENT``, as TF Serving reports it) and, for errors caused by
    the request, its message without the "Graph execution error" noise; any other error is logged and the
    client gets a generic message."""
    try:
        code = Code(error.error_code)
    except ValueError:
        code = Code.INTERNAL
    message = error.message or str(error)
    lines = [ln for ln in message.splitlines() if ln.strip() and not ln.startswith(("Detected at node", "<stack"))]
    text = " ".join(ln.strip() for ln in lines) or type(error).__name__
    if code not in _CLIENT_FAULTS:
        log.error("the model failed with %s: %s", code.name, text)
        return ServingError(code, INTERNAL_MESSAGE)
    return ServingError(code, text)


def check_item_count(count: int, limit: int | None, what: str) -> None:
    """INVALID_ARGUMENT if a request carries more than ``limit`` items (images or examples)."""
    if limit is not None and count > limit:
        raise invalid(f"{count:,} {what} in one request, more than this server's limit of {limit:,} "
                      "(--max-items-per-request); split the request")


def check_examples(count: int, context_bytes: int, examples_bytes: int, max_items: int | None,
                   max_bytes: int | None) -> None:
    """INVALID_ARGUMENT for more than ``max_items`` examples, or more than ``max_bytes`` bytes once the
    context is merged into each (a 1 MiB context with a million empty examples would make a terabyte)."""
    check_item_count(count, max_items, "examples")
    merged = count * context_bytes + examples_bytes
    if max_bytes is not None and merged > max_bytes:
        raise invalid(f"{count:,} examples with a {context_bytes:,}-byte context make {merged:,} bytes, more "
                      f"than this server's limit of {max_bytes:,} bytes per request")


def input_to_serialized_examples(request_input, max_examples: int | None = None,
                                 max_bytes: int | None = None) -> list[bytes]:
    """The serialized ``tf.Example`` s of a Classify request's ``tensorflow.serving.Input``, checked by
    :func:`check_examples` first. A context is merged into every example as TF Serving merges it, by
    concatenating the serialized messages (an example's own feature wins on a name clash)."""
    kind = request_input.WhichOneof("kind")
    if kind not in ("example_list", "example_list_with_context"):
        return []
    examples = getattr(request_input, kind).examples
    prefix = request_input.example_list_with_context.context.SerializeToString() if kind.endswith("context") else b""
    check_examples(len(examples), len(prefix), sum(e.ByteSize() for e in examples), max_examples, max_bytes)
    return [prefix + e.SerializeToString() for e in examples]


@contextlib.contextmanager
def _quiet_tf_deprecations():
    tf_log = logging.getLogger("tensorflow")
    level = tf_log.level
    tf_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tf_log.setLevel(level)


def _shape_str(shape) -> str:
    if shape.unknown_rank:
        return "[?]"
    return "[" + ",".join(str(d.size) for d in shape.dim) + "]"


def _shape_compatible(shape_proto, shape: tuple) -> bool:
    if shape_proto.unknown_rank:
        return True
    if len(shape_proto.dim) != len(shape):
        return False
    return all(d.size < 0 or d.size == s for d, s in zip(shape_proto.dim, shape))


class SavedModelServable:
    """A SavedModel version loaded into a TF session; see the module docstring.

    Args:
      name: the model name (for messages and response model specs).
      version: the version number.
      path: the version directory.
      image_guard: header checks on image inputs before the graph runs (None: no checks).
      max_items: most images/examples (first dimension of an input) per request (None: no limit).
    """

    def __init__(self, name: str, version: int, path: str, *, image_guard: ImageGuard | None = None,
                 max_items: int | None = None):
        self.name, self.version, self.path = name, version, path
        self.image_guard = image_guard
        self.max_items = max_items
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph,
                                             config=tf.compat.v1.ConfigProto(allow_soft_placement=True))
        try:
            with self._graph.as_default(), _quiet_tf_deprecations():
                meta_graph = tf.compat.v1.saved_model.loader.load(self._session, [tf.saved_model.SERVING], path)
        except Exception as e:
            self._session.close()
            raise ServingError(Code.FAILED_PRECONDITION, f"cannot load the SavedModel at {path}: {e}") from e
        self.signature_defs = dict(meta_graph.signature_def)

    # -- signatures ------------------------------------------------------------------------------------
    def signature(self, name: str | None, code: Code = Code.FAILED_PRECONDITION):
        """The SignatureDef called ``name`` (empty/None: ``serving_default``); ``code`` if there is none."""
        key = name or SIGNATURE_CLASSIFY
        signature = self.signature_defs.get(key)
        if signature is None:
            known = ", ".join(sorted(k for k in self.signature_defs if not k.startswith("__")))
            raise ServingError(code, f'Serving signature key "{key}" not found. This model has: {known}')
        return signature

    # -- running ---------------------------------------------------------------------------------------
    def _run(self, feeds: dict, fetches: Sequence[str]) -> list:
        try:
            return self._session.run(list(fetches), feed_dict=feeds)
        except tf.errors.OpError as e:
            raise from_tf_error(e) from None

    @staticmethod
    def _check_names(signature_name: str, signature, sent) -> None:
        sent, expected = set(sent), set(signature.inputs)
        if sent != expected:
            extra, missing = sorted(sent - expected), sorted(expected - sent)
            raise invalid(
                f"input names do not match the signature '{signature_name}': it takes "
                f"{{{','.join(sorted(expected))}}}; sent extra {{{','.join(extra)}}}, missing "
                f"{{{','.join(missing)}}}")

    def _check_input(self, alias: str, info, dtype: int, shape: tuple) -> None:
        """INVALID_ARGUMENT unless an input's dtype and shape fit the signature's and the item cap."""
        if dtype != info.dtype:
            raise invalid(f"input '{alias}' must be {dtype_name(info.dtype)}, got {dtype_name(dtype)}")
        if not _shape_compatible(info.tensor_shape, shape):
            raise invalid(f"input '{alias}' must have shape {_shape_str(info.tensor_shape)}, got {list(shape)}")
        if shape:
            check_item_count(shape[0], self.max_items, f"items in input '{alias}'")

    def _feeds(self, signature_name: str, signature, inputs: dict) -> dict:
        self._check_names(signature_name, signature, inputs)
        feeds = {}
        for alias, info in signature.inputs.items():
            value = np.asarray(inputs[alias])
            self._check_input(alias, info, datatype_of(value), value.shape)
            feeds[alias] = value.astype(numpy_dtype(info.dtype), copy=False)
        if self.image_guard is not None:
            self.image_guard.check_inputs(feeds)
        return {signature.inputs[alias].name: value for alias, value in feeds.items()}

    def predict_protos(self, signature_name: str | None, tensors: dict, output_filter: Sequence[str] = ()) -> dict:
        """:meth:`predict` on ``{input alias: TensorProto}``: names, dtypes and declared shapes are checked
        against the signature (and the item cap) before any tensor is converted."""
        signature = self.signature(signature_name)
        self._check_names(signature_name or SIGNATURE_CLASSIFY, signature, tensors)
        for alias, proto in tensors.items():
            self._check_input(alias, signature.inputs[alias], proto.dtype, declared_shape(proto, f"input '{alias}'"))
        inputs = {alias: to_ndarray(proto, f"input '{alias}'") for alias, proto in tensors.items()}
        return self.predict(signature_name, inputs, output_filter)

    def predict(self, signature_name: str | None, inputs: dict, output_filter: Sequence[str] = ()) -> dict:
        """Runs a signature: ``{input alias: array}`` -> ``{output alias: array}`` (Predict API semantics:
        FAILED_PRECONDITION for an unknown signature, INVALID_ARGUMENT for wrong inputs, bad images, too many
        items or an unknown output, TensorFlow's code for errors raised by the graph)."""
        signature_name = signature_name or SIGNATURE_CLASSIFY
        signature = self.signature(signature_name)
        aliases = list(output_filter) or sorted(signature.outputs)
        for alias in aliases:
            if alias not in signature.outputs:
                raise invalid(f"output tensor alias not found in signature: {alias}. Outputs expected to be in "
                              f"the set {{{','.join(sorted(signature.outputs))}}}.")
        if len(set(aliases)) != len(aliases):
            raise invalid(f"duplicate output tensor alias in output_filter: {list(output_filter)}")
        feeds = self._feeds(signature_name, signature, inputs)
        outputs = self._run(feeds, [signature.outputs[a].name for a in aliases])
        return dict(zip(aliases, outputs))

    def classify(self, signature_name: str | None, examples: Sequence[bytes]):
        """Runs a classification signature on serialized tf.Examples (Classify API semantics): ``(classes,
        scores)``, ``[N, C]`` arrays (labels as bytes, float32 scores), either None if the signature lacks it."""
        signature_name = signature_name or SIGNATURE_CLASSIFY
        signature = self.signature(signature_name, code=Code.INVALID_ARGUMENT)
        if len(signature.inputs) != 1:
            raise invalid(f"signature '{signature_name}' cannot classify: expected one input Tensor, it has "
                          f"{len(signature.inputs)}")
        if INPUT_CLASSIFY not in signature.inputs:
            raise ServingError(Code.FAILED_PRECONDITION, f"signature '{signature_name}' cannot classify: its "
                               f"input is '{next(iter(signature.inputs))}', not '{INPUT_CLASSIFY}'")
        aliases = [a for a in (OUTPUT_CLASSES, OUTPUT_SCORES) if a in signature.outputs]
        if not aliases:
            raise ServingError(Code.FAILED_PRECONDITION, f"signature '{signature_name}' cannot classify: it has "
                               f"neither a '{OUTPUT_CLASSES}' nor a '{OUTPUT_SCORES}' output")
        if not examples:
            raise invalid("ClassificationRequest::input is empty.")
        serialized = np.empty(len(examples), dtype=object)
        serialized[:] = list(examples)
        feeds = self._feeds(signature_name, signature, {INPUT_CLASSIFY: serialized})
        outputs = dict(zip(aliases, self._run(feeds, [signature.outputs[a].name for a in aliases])))
        for alias, out in outputs.items():
            if out.ndim != 2 or out.shape[0] != len(examples):
                raise invalid(f"Expected Tensor shape: [batch_size num_classes] but '{alias}' has "
                              f"{list(out.shape)} for {len(examples)} examples")
        classes, scores = outputs.get(OUTPUT_CLASSES), outputs.get(OUTPUT_SCORES)
        if classes is not None and scores is not None and classes.shape != scores.shape:
            raise invalid(f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. "
                          f"{scores.shape[1]}")
        return classes, scores

    # -- warm-up and lifetime --------------------------------------------------------------------------
    def warm_up(self) -> int:
        """Replays the version's warm-up requests like TF Serving does at load; returns the count. A failed one
        raises its ServingError (TF Serving then refuses to serve the version, and so do we)."""
        path = warmup.warmup_file(self.path)
        if not tf.io.gfile.exists(path):
            return 0
        count, start = 0, time.monotonic()
        try:
            for method, request in warmup.warmup_calls(self.path):
                signature_name = request.model_spec.signature_name
                if method == "Predict":
                    self.predict_protos(signature_name, dict(request.inputs), list(request.output_filter))
                else:
                    self.classify(signature_name, input_to_serialized_examples(request.input))
                count += 1
        except ServingError as e:
            raise ServingError(e.code, f"warm-up request {count} in {path} failed: {e.message}") from None
        log.info("%s: version %d warmed up with %d requests in %.1f s", self.name, self.version, count,
                 time.monotonic() - start)
        return count

    def close(self) -> None:
        """Releases the session (the watcher calls this once in-flight requests have finished)."""
        self._session.close()
