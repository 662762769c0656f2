"""Exports a trained HRNet as the SavedModel that TF Serving, TFMA and clients use: the serving contract,
and the one owner of the signature names and their input and output keys.

Signatures (the eval transform of :mod:`hrnet_tfx.data.preprocessing` is inside the graph, so clients
send encoded images or tf.Examples, never pixels):

``serving_default``: input ``inputs``, serialized ``tf.Example`` [N] (``image/encoded``), outputs
    ``scores`` (class probabilities, [N, C] float32) and ``classes`` (the label strings, [N, C], in class
    order): the form TF Serving's Classify API requires and TFMA evaluates.
``predict_images``: input ``images``, encoded image bytes [N]; outputs ``probabilities`` [N, C],
    ``top_k_ids`` [N, k] int32, ``top_k_labels`` [N, k] string and ``top_k_scores`` [N, k] float32.
``predict_examples``: the same four outputs for serialized tf.Examples (input ``examples``).
``predict_images_top_k``: input ``images``; only the three ``top_k_*`` outputs. What the client uses: over
    REST, the JSON for [32, 1000] probabilities took 40-55% of the CPU time of the tiny test network itself
    (``benchmarks/bench_serving.py``).

The served graph is :func:`hrnet_tfx.models.inference.inference_model` of the model (BatchNorm folded, in
``serving_dtype``), with its weights frozen into graph constants: the SavedModel holds no variables and one
copy of the weights. A convolution whose filter is a constant lets TensorFlow's oneDNN kernels reorder the
filter into their blocked layout once and keep it, in TF Serving as in any other runtime (with variables
every call reorders all 325 filters of hrnet_w18: ~17% of its oneDNN time; ``benchmarks/README.md``). The
training weights go beside it in
``assets.extra/training_weights/`` (read by :func:`load_weights_into`). Every file goes through
``tf.io.gfile``, and :func:`publish_directory` makes a complete export appear at once (README, Training).
"""

from __future__ import annotations

import logging
import os
import uuid
from typing import Sequence

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from hrnet_tfx.data import features
from hrnet_tfx.data.preprocessing import IMAGE_SIZE, eval_transform_batch
from hrnet_tfx.fs import copy_tree, join, parent_dir, remove_tree, renames_atomically
from hrnet_tfx.models.inference import INFERENCE_DTYPES, inference_model
from hrnet_tfx.serving.model_base import SAVED_MODEL_PB

EXTRA_ASSETS_DIR = "assets.extra"
"""A SavedModel's directory for files that are not part of the graph (TF Serving reads only its warm-up file)."""
TRAINING_WEIGHTS = f"{EXTRA_ASSETS_DIR}/training_weights/weights"
"""Checkpoint prefix, relative to an export, of the training weights (see the module docstring)."""
SERVING_DTYPES = INFERENCE_DTYPES
"""Compute dtypes of the served graph: ``float32`` (default) or ``bfloat16``."""
MAX_GRAPH_WEIGHT_BYTES = 2**31 - 2**27
"""The most weight bytes an export takes: they are constants of ``saved_model.pb``, a protobuf message,
which cannot exceed 2 GiB (128 MiB are left for the rest of the graph; hrnet_w64 in float32 is 512 MB)."""
STAGING_PREFIX = ".export-"
# The serving contract's names (clients, warm-up, TFMA and the development server import them from here).
SIGNATURE_CLASSIFY = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # "serving_default": TFMA, Classify API
SIGNATURE_IMAGES = "predict_images"
SIGNATURE_EXAMPLES = "predict_examples"
SIGNATURE_TOP_K = "predict_images_top_k"
INPUT_CLASSIFY = tf.saved_model.CLASSIFY_INPUTS  # "inputs": serialized tf.Examples
INPUT_IMAGES = "images"
INPUT_EXAMPLES = "examples"
OUTPUT_SCORES = tf.saved_model.CLASSIFY_OUTPUT_SCORES  # "scores"
OUTPUT_CLASSES = tf.saved_model.CLASSIFY_OUTPUT_CLASSES  # "classes"
OUTPUT_PROBABILITIES = "probabilities"
OUTPUT_TOP_K_IDS = "top_k_ids"
OUTPUT_TOP_K_LABELS = "top_k_labels"
OUTPUT_TOP_K_SCORES = "top_k_scores"
TOP_K_OUTPUTS = (OUTPUT_TOP_K_IDS, OUTPUT_TOP_K_LABELS, OUTPUT_TOP_K_SCORES)
TOP_K = 5

log = logging.getLogger(__name__)


def _predictions(logits_fn, images, labels: tf.Tensor, top_k: int) -> dict[str, tf.Tensor]:
    probabilities = tf.nn.softmax(tf.cast(logits_fn(images), tf.float32), axis=-1)
    k = min(top_k, int(labels.shape[0]))
    top = tf.math.top_k(probabilities, k=k)
    return {
        OUTPUT_PROBABILITIES: probabilities,
        OUTPUT_TOP_K_IDS: top.indices,
        OUTPUT_TOP_K_LABELS: tf.gather(labels, top.indices),
        OUTPUT_TOP_K_SCORES: top.values,
    }


class ServingModule(tf.Module):
    """What the SavedModel holds: ``logits`` (normalised images -> float32 logits, traced once with the
    served network's weights as constants, and shared by every signature) and the serving signatures. A
    plain ``tf.Module``: saving skips Keras' per-layer tracing, loading needs no Keras.

    Args:
      model: the trained functional Keras model (any dtype policy); not modified.
      labels: one class name per output.
      image_size: the signatures' input size.
      top_k: how many classes the ``top_k_*`` outputs hold.
      serving_dtype: ``"float32"`` or ``"bfloat16"`` (:data:`SERVING_DTYPES`), the served graph's compute dtype.
      fold: serve :func:`~hrnet_tfx.models.inference.inference_model` (BatchNorm folded); ``False`` serves
        ``model`` itself (float32 only; for comparisons, ``benchmarks/bench_serving.py``).
    """

    def __init__(self, model, labels: Sequence[str], image_size: int = IMAGE_SIZE, top_k: int = TOP_K,
                 serving_dtype: str = "float32", fold: bool = True):
        super().__init__(name="hrnet_serving")
        num_classes = int(model.output_shape[-1])
        if len(labels) != num_classes:
            raise ValueError(f"{len(labels)} labels for a model with {num_classes} classes")
        if serving_dtype not in SERVING_DTYPES:
            raise ValueError(f"serving_dtype must be one of {SERVING_DTYPES}, got {serving_dtype!r}")
        if not fold and serving_dtype != "float32":
            raise ValueError("an unfolded export serves the model as it is: serving_dtype must be float32")
        served = inference_model(model, dtype=serving_dtype) if fold else model
        weight_bytes = sum(v.shape.num_elements() * v.dtype.size for v in served.variables)
        if weight_bytes > MAX_GRAPH_WEIGHT_BYTES:
            raise ValueError(f"the served network's weights take {weight_bytes:,} bytes; the export keeps them as "
                             f"constants in the SavedModel's graph, which protobuf caps at 2 GiB (at most "
                             f"{MAX_GRAPH_WEIGHT_BYTES:,} bytes of weights here): serve in bfloat16 or a smaller "
                             "network")
        self.label_strings = tf.constant(list(labels), dtype=tf.string)
        self.image_size = image_size
        self.top_k = top_k
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")
        traced = tf.function(lambda images: tf.cast(served(images, training=False), tf.float32),
                             autograph=False)  # plain Keras layers: converting them only makes tracing 10x slower
        frozen = convert_variables_to_constants_v2(traced.get_concrete_function(spec))
        self.logits = tf.function(lambda images: frozen(images)[0], input_signature=[spec], autograph=False)

    def _decode_examples(self, serialized):
        spec = {features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
        encoded = tf.io.parse_example(serialized, spec)[features.IMAGE_ENCODED]
        return eval_transform_batch(encoded, self.image_size)

    def signatures(self) -> dict:
        """The serving signatures as concrete functions."""

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_CLASSIFY)])
        def classify(inputs):
            out = _predictions(self.logits, self._decode_examples(inputs), self.label_strings, self.top_k)
            batch = tf.shape(inputs)[0]
            return {OUTPUT_SCORES: out[OUTPUT_PROBABILITIES],
                    OUTPUT_CLASSES: tf.tile(self.label_strings[tf.newaxis], [batch, 1])}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGES)])
        def predict_images(images):
            pixels = eval_transform_batch(images, self.image_size)
            return _predictions(self.logits, pixels, self.label_strings, self.top_k)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_EXAMPLES)])
        def predict_examples(examples):
            return _predictions(self.logits, self._decode_examples(examples), self.label_strings, self.top_k)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=INPUT_IMAGES)])
        def predict_images_top_k(images):
            out = _predictions(self.logits, eval_transform_batch(images, self.image_size), self.label_strings,
                               self.top_k)
            return {key: out[key] for key in TOP_K_OUTPUTS}

        return {
            SIGNATURE_CLASSIFY: classify.get_concrete_function(),
            SIGNATURE_IMAGES: predict_images.get_concrete_function(),
            SIGNATURE_EXAMPLES: predict_examples.get_concrete_function(),
            SIGNATURE_TOP_K: predict_images_top_k.get_concrete_function(),
        }


def publish_directory(staging: str, final: str, *, rename: bool | None = None) -> None:
    """Makes the SavedModel in ``staging`` appear at ``final`` (which must not exist), complete or not at all.

    ``rename`` (default: :func:`renames_atomically`) renames the directory; otherwise every file is
    copied with ``saved_model.pb`` last and ``staging`` is removed. Raises ``FileExistsError`` when
    ``final`` exists (a concurrent writer took it; on a local file system the rename itself refuses).
    """
    if rename is None:
        rename = renames_atomically(final)
    if rename:
        try:
            tf.io.gfile.rename(staging, final, overwrite=False)
        except tf.errors.OpError as e:
            if tf.io.gfile.exists(final):
                raise FileExistsError(f"{final} appeared while publishing {staging}") from e
            raise
        return
    if tf.io.gfile.exists(final):
        raise FileExistsError(f"{final} already exists")
    copy_tree(staging, final, last=(SAVED_MODEL_PB,))
    remove_tree(staging)


def export_saved_model(model, export_dir: str, labels: Sequence[str], *, image_size: int = IMAGE_SIZE,
                       top_k: int = TOP_K, label_map_path: str | None = None, rename: bool | None = None,
                       serving_dtype: str = "float32", fold: bool = True) -> str:
    """Writes ``model`` with the serving signatures to ``export_dir`` (which must not exist yet).

    ``export_dir`` may be local or a bucket URI. The SavedModel is written into a staging directory
    beside it and published with :func:`publish_directory` (renamed on a local file system, copied with
    ``saved_model.pb`` last on object stores; ``rename`` forces one or the other), so a crash never
    leaves a complete-looking model at ``export_dir``. ``label_map_path`` (the converter's labels file,
    local or a URI) is copied into ``assets/`` beside the model. ``serving_dtype`` and ``fold`` are
    :class:`ServingModule`'s; the training weights go to ``assets.extra/training_weights/`` (module
    docstring).
    """
    if tf.io.gfile.exists(export_dir):
        complete = tf.io.gfile.exists(join(export_dir, SAVED_MODEL_PB))
        raise FileExistsError(f"export directory already exists: {export_dir}" + (
            "" if complete else f" (without {SAVED_MODEL_PB}: left by an interrupted export? remove it)"))
    parent = parent_dir(export_dir)
    tf.io.gfile.makedirs(parent)
    module = ServingModule(model, labels, image_size, top_k, serving_dtype=serving_dtype, fold=fold)
    name = os.path.basename(export_dir.rstrip("/"))
    staging = join(parent, f"{STAGING_PREFIX}{name}-{uuid.uuid4().hex[:12]}")
    try:
        tf.io.gfile.makedirs(staging)
        tf.saved_model.save(module, staging, signatures=module.signatures())
        write_training_weights(model, staging)
        if label_map_path:
            tf.io.gfile.makedirs(join(staging, "assets"))
            tf.io.gfile.copy(label_map_path, join(join(staging, "assets"), features.LABEL_MAP_FILENAME),
                             overwrite=True)
        publish_directory(staging, export_dir, rename=rename)
    except BaseException:
        if tf.io.gfile.exists(staging):
            remove_tree(staging)
        raise
    return export_dir


CLASSIFIER_PREFIX = "classifier/"
"""Variable names of the classification head's final Dense layer (PyTorch's ``classifier``)."""


def write_training_weights(model, saved_model_dir: str) -> str:
    """Writes every variable of ``model`` (float32, keyed by its name: ``stem/conv1/kernel:0``) as the TF
    checkpoint ``<saved_model_dir>/assets.extra/training_weights/weights``; returns that prefix."""
    names = [v.name for v in model.variables]
    if len(set(names)) != len(names):
        raise ValueError(f"{model.name} has variables sharing a name: the training weights are keyed by name")
    prefix = join(saved_model_dir, TRAINING_WEIGHTS)
    tf.io.gfile.makedirs(parent_dir(prefix))
    tensors = [tf.cast(v, tf.float32) if v.dtype.is_floating else tf.convert_to_tensor(v) for v in model.variables]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return prefix


def weights_checkpoint(export_dir: str) -> str:
    """The checkpoint prefix of an export's training weights: ``assets.extra/training_weights/weights``, or
    for an export written before it existed, the SavedModel's own ``variables/variables``."""
    prefix = join(export_dir, TRAINING_WEIGHTS)
    if tf.io.gfile.exists(prefix + ".index"):
        return prefix
    return join(join(export_dir, "variables"), "variables")


def load_weights_into(model, export_dir: str, *, new_classifier: bool = True) -> list[str]:
    """Copies the training weights of an export (:func:`export_saved_model`, ``hrnet-tfx models
    import-weights``) into ``model``, built with the same network, matching variables by name.

    Reads ``assets.extra/training_weights/`` (every variable, BatchNorm statistics included), or the
    ``model_variables`` of an export written before it existed. When only the classifier's shape differs
    (fine-tuning on another class count) and ``new_classifier`` is true, every other weight is copied and
    the classifier keeps its fresh initialisation. Nothing is assigned unless everything else matches and
    every tensor was read. Returns the names of the variables left as they were (the classifier's, or
    none); raises ``ValueError`` naming what differs or what cannot be read.
    """
    shapes, read = _export_weights(export_dir)
    wanted = {v.name: v for v in model.variables}
    missing, unused = sorted(set(wanted) - set(shapes)), sorted(set(shapes) - set(wanted))
    if missing or unused:
        raise ValueError(f"{export_dir} holds a different network: {len(shapes)} variables vs {len(wanted)}"
                         f" expected; missing {_some(missing)}, unused {_some(unused)}")
    pairs = {n: (shapes[n], tuple(v.shape)) for n, v in wanted.items()}
    differ = sorted(n for n, (have, want) in pairs.items() if have != want)
    skipped = [n for n in differ if n.startswith(CLASSIFIER_PREFIX)] if new_classifier else []
    if set(differ) - set(skipped):
        raise ValueError(f"{export_dir} holds a different network: " + "; ".join(
            f"{n} is {list(pairs[n][0])}, expected {list(pairs[n][1])}" for n in differ[:5]))
    values = {name: read(name) for name in wanted if name not in skipped}  # shapes checked: sizes are bounded
    for name, value in values.items():
        wanted[name].assign(value)
    if skipped:
        log.warning("loaded %s except its classifier (%s classes there, %s here), which starts from random "
                    "weights (fine-tuning)", export_dir, pairs[skipped[0]][0][-1], pairs[skipped[0]][1][-1])
    return skipped


def _export_weights(export_dir: str):
    """``({name: shape}, read(name) -> value)`` of an export's training weights (see :func:`load_weights_into`)."""
    prefix = weights_checkpoint(export_dir)
    if prefix == join(export_dir, TRAINING_WEIGHTS):
        try:
            reader = tf.compat.v1.train.NewCheckpointReader(prefix)  # load_checkpoint takes ram:// prefixes for dirs
            shapes = {n: tuple(s) for n, s in reader.get_variable_to_shape_map().items()}
            dtypes = reader.get_variable_to_dtype_map()
        except tf.errors.OpError as e:
            raise ValueError(f"cannot read the training weights {prefix}: {' '.join(e.message.split())}") from None
        wrong = sorted(n for n, d in dtypes.items() if d != tf.float32)
        if wrong:
            raise ValueError(f"{prefix}: {_some(wrong)} not float32 ({dtypes[wrong[0]].name})")

        def read(name):
            try:
                return reader.get_tensor(name)
            except (tf.errors.OpError, IndexError, ValueError) as e:  # a cut data file raises IndexError
                message = " ".join(e.message.split()) if isinstance(e, tf.errors.OpError) else str(e)
                raise ValueError(f"cannot read {name} from the training weights {prefix}: {message}") from None

        return shapes, read
    source = getattr(tf.saved_model.load(export_dir), "model_variables", None)
    if source is None:
        raise ValueError(f"{export_dir} is not a SavedModel exported by hrnet-tfx (no {TRAINING_WEIGHTS} and no "
                         "model_variables): export it with hrnet_tfx.serving.export or 'hrnet-tfx models "
                         "import-weights'")
    by_name = {v.name: v for v in source}
    if len(by_name) != len(source):
        raise ValueError(f"{export_dir} holds {len(source)} variables under {len(by_name)} names")
    return {n: tuple(v.shape) for n, v in by_name.items()}, lambda name: by_name[name]


def _some(names: list[str]) -> str:
    return "none" if not names else ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
