"""Exports a trained HRNet as the SavedModel that TF Serving, TFMA and clients use.

Signatures (the eval transform of :mod:`hrnet_tfx.data.preprocessing` is inside the graph, so clients
send encoded images or tf.Examples, never pixels):

``serving_default``: input ``inputs``, serialized ``tf.Example`` [N] (``image/encoded``), outputs
    ``scores`` (class probabilities, [N, C] float32) and ``classes`` (the label strings, [N, C], in class
    order). This is the form TF Serving's Classify API requires (one string input named ``inputs``, at
    most the two outputs ``classes`` and ``scores``) and what TFMA evaluates (output ``scores``).
``predict_images``: input ``images``, encoded image bytes [N] (JPEG, PNG, ...); outputs
    ``probabilities`` [N, C], ``top_k_ids`` [N, k] int32, ``top_k_labels`` [N, k] string and
    ``top_k_scores`` [N, k] float32: what a client calling Predict wants.
``predict_examples``: the same four outputs for serialized tf.Examples (input ``examples``).

The label map file travels in ``assets/`` and the label strings are also constants in the graph.
``tf.saved_model.load(path).logits`` maps normalised images to logits (evaluation, fine-tuning), and
``model_variables`` holds the weights in ``model.variables`` order (see :func:`load_weights_into`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf

from hrnet_tfx.data import features
from hrnet_tfx.data.preprocessing import IMAGE_SIZE, eval_transform_batch

SIGNATURE_CLASSIFY = "serving_default"
SIGNATURE_IMAGES = "predict_images"
SIGNATURE_EXAMPLES = "predict_examples"
TOP_K = 5


def _predictions(logits_fn, images, labels: tf.Tensor, top_k: int) -> dict[str, tf.Tensor]:
    probabilities = tf.nn.softmax(tf.cast(logits_fn(images), tf.float32), axis=-1)
    k = min(top_k, int(labels.shape[0]))
    top = tf.math.top_k(probabilities, k=k)
    return {
        "probabilities": probabilities,
        "top_k_ids": top.indices,
        "top_k_labels": tf.gather(labels, top.indices),
        "top_k_scores": top.values,
    }


class ServingModule(tf.Module):
    """What the SavedModel holds: the model's variables (``model_variables``, in ``model.variables``
    order), ``logits`` (normalised images -> logits, traced once and shared by every signature) and
    the three signatures. A plain ``tf.Module``: saving skips Keras' per-layer tracing, loading needs
    no Keras."""

    def __init__(self, model, labels: Sequence[str], image_size: int = IMAGE_SIZE, top_k: int = TOP_K):
        super().__init__(name="hrnet_serving")
        num_classes = int(model.output_shape[-1])
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels for a model with {num_classes} classes")
        self.model_variables = list(model.variables)
        self.label_strings = tf.constant(list(labels), dtype=tf.string)
        self.image_size = image_size
        self.top_k = top_k
        self.logits = tf.function(
            lambda images: model(images, training=False),
            input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")],
            autograph=False,  # plain Keras layers: converting them only makes tracing 10x slower
        )

    def _decode_examples(self, serialized):
        spec = {features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
        encoded = tf.io.parse_example(serialized, spec)[features.IMAGE_ENCODED]
        return eval_transform_batch(encoded, self.image_size)

    def signatures(self) -> dict:
        """The three serving signatures as concrete functions."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(inputs):
            out = _predictions(self.logits, self._decode_examples(inputs), self.label_strings, self.top_k)
            batch = tf.shape(inputs)[0]
            return {"scores": out["probabilities"], "classes": tf.tile(self.label_strings[tf.newaxis], [batch, 1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def predict_images(images):
            pixels = eval_transform_batch(images, self.image_size)
            return _predictions(self.logits, pixels, self.label_strings, self.top_k)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        def predict_examples(examples):
            return _predictions(self.logits, self._decode_examples(examples), self.label_strings, self.top_k)

        return {
            SIGNATURE_CLASSIFY: classify.get_concrete_function(),
            SIGNATURE_IMAGES: predict_images.get_concrete_function(),
            SIGNATURE_EXAMPLES: predict_examples.get_concrete_function(),
        }


def export_saved_model(
    model,
    export_dir: str,
    labels: Sequence[str],
    *,
    image_size: int = IMAGE_SIZE,
    top_k: int = TOP_K,
    label_map_path: str | None = None,
) -> str:
    """Writes ``model`` with the serving signatures to ``export_dir`` (which must not exist yet).

    The SavedModel is written next to ``export_dir`` and renamed into place, so a crash never leaves a
    partial model at ``export_dir``. ``label_map_path`` (the converter's labels file) is copied into
    ``assets/`` beside the model.
    """
    if tf.io.gfile.exists(export_dir):
        raise FileExistsError(f"export directory already exists: {export_dir}")
    parent = os.path.dirname(os.path.abspath(export_dir))
    tf.io.gfile.makedirs(parent)
    module = ServingModule(model, labels, image_size, top_k)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        if label_map_path:
            shutil.copy(label_map_path, os.path.join(tmp, "assets", features.LABEL_MAP_FILENAME))
        os.replace(tmp, export_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir


def load_weights_into(model, export_dir: str) -> None:
    """Copies the weights of an exported SavedModel into ``model`` (built with the same network)."""
    loaded = tf.saved_model.load(export_dir)
    source = getattr(loaded, "model_variables", None)
    if source is None:
        raise ValueError(f"{export_dir} is not a SavedModel exported by hrnet-tfx (no model_variables)")
    shapes = [tuple(v.shape) for v in source]
    wanted = [tuple(v.shape) for v in model.variables]
    if shapes != wanted:
        raise ValueError(f"{export_dir} holds a different network: {len(shapes)} variables vs {len(wanted)} "
                         "expected, or their shapes differ")
    model.set_weights([v.numpy() for v in source])
