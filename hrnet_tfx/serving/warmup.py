"""TF Serving warm-up requests: ``<SavedModel>/assets.extra/tf_serving_warmup_requests``.

TF Serving replays this file (a TFRecord of ``PredictionLog`` records) when it loads a version, before the
version takes traffic; a version whose warm-up fails is not served. The Pusher writes it
(:func:`write_warmup_requests`); the development server replays it too. One record per signature the model
has: Predict with the images (every output, as the client asks: an ``output_filter`` would build another
pruned graph on first use) for ``predict_images`` and ``predict_images_top_k``, Classify for
``serving_default`` and Predict with the same tf.Examples for ``predict_examples``.
"""

from __future__ import annotations

import io
import os
from typing import Iterator, Sequence

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from hrnet_tfx.data import features
from hrnet_tfx.serving.errors import Code, ServingError
from hrnet_tfx.serving.export import (EXTRA_ASSETS_DIR, INPUT_EXAMPLES, INPUT_IMAGES, SAVED_MODEL_PB,
                                      SIGNATURE_CLASSIFY, SIGNATURE_EXAMPLES, SIGNATURE_IMAGES, SIGNATURE_TOP_K)
from hrnet_tfx.serving.images import read_images
from hrnet_tfx.serving.tensors import to_tensor_proto

WARMUP_DIR = EXTRA_ASSETS_DIR
WARMUP_FILENAME = "tf_serving_warmup_requests"
MAX_RECORDS = 1000
"""TF Serving reads at most this many warm-up records."""


def warmup_file(saved_model_dir: str) -> str:
    """Path of the warm-up file inside a SavedModel directory."""
    return os.path.join(saved_model_dir, WARMUP_DIR, WARMUP_FILENAME)


def sample_images(count: int = 2, seed: int = 0) -> list[bytes]:
    """``count`` small synthetic JPEGs (smooth gradients with noise; landscape and portrait alternate)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        h, w = (96, 128) if i % 2 == 0 else (128, 96)
        y, x = np.mgrid[0:h, 0:w]
        base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h) + 64 * (i % 3)], axis=-1)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
        images.append(buf.getvalue())
    return images


def image_example(image: bytes) -> bytes:
    """A serialized tf.Example holding ``image`` in ``image/encoded`` (what the example signatures parse)."""
    from tensorflow.core.example import example_pb2, feature_pb2

    example = example_pb2.Example()
    example.features.feature[features.IMAGE_ENCODED].CopyFrom(
        feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[image])))
    return example.SerializeToString()


def _signature_names(saved_model_dir: str) -> set[str]:
    from tensorflow.core.protobuf import saved_model_pb2

    import tensorflow as tf

    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(saved_model_dir, SAVED_MODEL_PB), "rb") as f:
        saved_model.ParseFromString(f.read())
    names = set()
    for meta_graph in saved_model.meta_graphs:
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            names.update(meta_graph.signature_def)
    return names


def build_warmup_records(signatures: set[str], images: Sequence[bytes], model_name: str = "hrnet") -> list:
    """The PredictionLog records for ``images`` and the signatures present (see the module docstring)."""
    from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

    examples = [image_example(image) for image in images]

    def predict(signature: str, input_name: str, values: list[bytes]):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = model_name, signature
        request.inputs[input_name].CopyFrom(to_tensor_proto(np.array(values, dtype=object)))
        return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))

    records = [predict(signature, INPUT_IMAGES, images) for signature in (SIGNATURE_IMAGES, SIGNATURE_TOP_K)
               if signature in signatures]
    if SIGNATURE_CLASSIFY in signatures:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = model_name, SIGNATURE_CLASSIFY
        for data in examples:
            request.input.example_list.examples.add().ParseFromString(data)
        records.append(prediction_log_pb2.PredictionLog(
            classify_log=prediction_log_pb2.ClassifyLog(request=request)))
    if SIGNATURE_EXAMPLES in signatures:
        records.append(predict(SIGNATURE_EXAMPLES, INPUT_EXAMPLES, examples))
    return records


def write_warmup_requests(saved_model_dir: str, images: Sequence[bytes | str | os.PathLike] | None = None, *,
                          model_name: str = "hrnet") -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` into a SavedModel directory; returns its path.

    Args:
      saved_model_dir: the exported SavedModel (its ``saved_model.pb`` says which signatures to warm up).
      images: encoded images or image files to put in the requests (default: two small generated JPEGs).
        Keep them few and small: TF Serving runs every record before serving the version.
      model_name: the model name recorded in the requests (TF Serving ignores it).

    The file is written next to its final name and renamed into place, so a reader never sees half of it.

    Raises:
      ValueError: the SavedModel has none of the export contract's signatures.
      hrnet_tfx.serving.images.ImageFileError: an image file cannot be read or is too large.
    """
    import tensorflow as tf

    images = read_images(images, what="warm-up image") if images is not None else sample_images()
    if not images:
        raise ValueError("write_warmup_requests needs at least one image")
    signatures = _signature_names(saved_model_dir)
    records = build_warmup_records(signatures, images, model_name)
    if not records:
        raise ValueError(f"{saved_model_dir} has none of the signatures {SIGNATURE_IMAGES}, {SIGNATURE_TOP_K}, "
                         f"{SIGNATURE_CLASSIFY}, {SIGNATURE_EXAMPLES} (it has {sorted(signatures)})")
    path = warmup_file(saved_model_dir)
    tf.io.gfile.makedirs(os.path.dirname(path))
    tmp = path + ".tmp"
    with tf.io.TFRecordWriter(tmp) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def read_warmup_requests(saved_model_dir: str) -> Iterator:
    """The ``PredictionLog`` records of a SavedModel's warm-up file (at most :data:`MAX_RECORDS`)."""
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2

    for i, data in enumerate(tf.data.TFRecordDataset(warmup_file(saved_model_dir)).as_numpy_iterator()):
        if i >= MAX_RECORDS:
            return
        yield prediction_log_pb2.PredictionLog.FromString(data)


def warmup_calls(saved_model_dir: str) -> Iterator[tuple[str, object]]:
    """``(method, request)`` of each warm-up record: ``"Predict"`` or ``"Classify"`` (what
    :func:`write_warmup_requests` writes; another kind raises ServingError UNIMPLEMENTED)."""
    for record in read_warmup_requests(saved_model_dir):
        kind = record.WhichOneof("log_type")
        if kind not in ("predict_log", "classify_log"):
            raise ServingError(Code.UNIMPLEMENTED, f"warm-up records of type {kind} are not supported here")
        yield kind.removesuffix("_log").capitalize(), getattr(record, kind).request


def replay_warmup_requests(saved_model_dir: str, stub, model_name: str, timeout: float = 30.0) -> int:
    """Sends every warm-up record to a ``PredictionServiceStub`` (model name replaced); returns the count.
    Lets a test or an operator check a model's warm-up file against a running server."""
    count = 0
    for count, (method, request) in enumerate(warmup_calls(saved_model_dir), 1):
        request.model_spec.name = model_name
        getattr(stub, method)(request, timeout=timeout)
    return count
