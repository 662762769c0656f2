"""An inference-only copy of a trained HRNet: BatchNorm folded into the convolutions, optionally bfloat16.

:func:`inference_model` rewrites the functional graph of a trained ``tf_keras`` HRNet (any variant, config or
class count; float32 or mixed-precision policy): every ``BatchNormalization`` that directly follows a
``Conv2D`` (and is that convolution's only consumer) disappears into the convolution, whose kernel and bias
become ``kernel * s`` and ``(bias - moving_mean) * s + beta`` with ``s = gamma / sqrt(moving_variance +
epsilon)``, computed in float64. What is left is the chain conv + bias (+ add) + ReLU that TensorFlow's
grappler remapper fuses into one oneDNN convolution (``_FusedConv2D``). Every other layer is re-created from
its config with the same weights, so the output is the training graph's ``model(x, training=False)`` up to
float32 rounding (~1e-6 relative).

The contract is the model's: NHWC float images normalised like :func:`hrnet_tfx.data.preprocessing.normalize`
in, float32 logits out. The returned model has no BatchNorm variables and no optimizer state: it is for
inference and export only, never for training or weight import.

Why (hrnet_w18, 224x224, batch 8, 2 cores; ``benchmarks/profile_model.py``): grappler's remapper already
fuses conv + inference-mode BN (+ ReLU) of the training graph, but not conv + BN + Add, so the 117 residual
and fusion adds and their ReLUs run as separate passes over the activations. Conv + bias + Add + ReLU is a
remapper pattern: with BN folded, 113 adds and 113 ReLUs become oneDNN post-ops of the convolutions and the
op time per step drops by ~12%. ``benchmarks/README.md`` has the profile.

``dtype="bfloat16"`` builds the folded network with the ``"bfloat16"`` policy (weights stored as bfloat16,
so there is no per-call cast of every kernel as under ``"mixed_bfloat16"``) except the global pooling and
the classifier, which stay float32 so the logits are float32 and the 2048-channel average is accumulated in
float32. oneDNN runs bfloat16 convolutions with AVX512_BF16 or AMX instructions where the CPU has them and
converts to float32 elsewhere. Even with AVX512_BF16 the gain depends on the CPU: the served hrnet_w18 ran
1.78x float32's img/s on an AMD EPYC (Zen 4) and 0.65-0.70x on an Intel Xeon (Emerald Rapids, no AMX);
``benchmarks/bench_model.py``'s ``bf16 served`` row tells for a given machine. bfloat16 keeps 8
significant bits: on the tests' photo-like images the logits stay within 2% of their spread of the float32
ones and the top-1 class agrees on ~98% of the images (``tests/test_inference.py`` bounds both).
"""

from __future__ import annotations

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx.models.config import INFERENCE_DTYPES

_FLOAT32_LAYERS = (keras.layers.GlobalAveragePooling2D, keras.layers.Dense)
"""Layers kept in float32 in a bfloat16 inference model (the pooled features and the logits)."""


def inference_model(model: keras.Model, dtype: str | None = None, name: str | None = None) -> keras.Model:
    """Returns a new functional model computing ``model(x, training=False)`` with BatchNorm folded away.

    Args:
      model: a built functional ``tf_keras`` model, typically from :func:`hrnet_tfx.models.build_model`
        after training or weight import. It is not modified.
      dtype: compute dtype of the result: ``"float32"`` or ``"bfloat16"`` (see the module docstring);
        ``None`` follows the convolutions' policy (``mixed_bfloat16`` -> ``"bfloat16"``, anything else
        -> ``"float32"``).
      name: name of the new model (default: the model's name + ``"_inference"``).

    Returns:
      A ``tf_keras.Model`` with the same inputs and outputs (float32 logits, or float32 feature maps for a
      backbone), no BatchNormalization layer that followed a convolution, and new weights (the originals
      are untouched).

    Raises:
      ValueError: ``model`` is not a functional model, or ``dtype`` is not one of :data:`INFERENCE_DTYPES`.
    """
    if not getattr(model, "_is_graph_network", False):
        raise ValueError(f"inference_model needs a functional Keras model (like build_model's), got {type(model).__name__}")
    if dtype is None:
        convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
        dtype = "bfloat16" if any(c.compute_dtype == "bfloat16" for c in convs) else "float32"
    if dtype not in INFERENCE_DTYPES:
        raise ValueError(f"dtype must be one of {INFERENCE_DTYPES}, got {dtype!r}")

    folds = _foldable_pairs(model)  # id(conv layer) -> its BN layer
    folded_bns = {id(bn) for bn in folds.values()}
    new = {}  # str(id(old KerasTensor)) -> new KerasTensor
    inputs = []
    for old in model.inputs:
        new_input = keras.Input(type_spec=old.type_spec, name=old.name.split(":")[0])
        new[str(id(old))] = new_input
        inputs.append(new_input)

    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            layer = node.layer
            if node.is_input:
                continue
            args, kwargs = tf.nest.map_structure(
                lambda t: new.get(str(id(t)), t),  # Keras tensors of the old graph -> new graph
                (node.call_args, node.call_kwargs),
            )
            if id(layer) in folded_bns:
                outputs = args[0]  # the folded conv already computed conv + BN
            elif id(layer) in folds:
                outputs = _folded_conv(layer, folds[id(layer)], dtype)(*args, **kwargs)
            else:
                outputs = _copy_layer(layer, dtype)(*args, **kwargs)
            for old_t, new_t in zip(tf.nest.flatten(node.outputs), tf.nest.flatten(outputs)):
                new[str(id(old_t))] = new_t

    outputs = tf.nest.pack_sequence_as(model._nested_outputs, [new[str(id(t))] for t in model.outputs])
    return keras.Model(inputs, outputs, name=name or f"{model.name}_inference")


def _foldable_pairs(model: keras.Model) -> dict:
    """``{id(conv): bn}`` for every channels-last BatchNormalization fed only by a Conv2D used once."""
    pairs = {}
    usage = model._tensor_usage_count
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:
            continue
        axis = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        if list(axis) not in ([-1], [3]):
            continue
        source = layer._inbound_nodes[0].input_tensors
        if isinstance(source, (list, tuple)):
            continue
        conv = source._keras_history.layer
        if (
            type(conv) is keras.layers.Conv2D
            and conv.data_format == "channels_last"
            and conv.activation is keras.activations.linear
            and len(conv._inbound_nodes) == 1
            and usage.get(str(id(source)), 0) == 1
        ):
            pairs[id(conv)] = layer
    return pairs


def fold_batch_norm(kernel, bias, gamma, beta, mean, variance, epsilon: float):
    """Folds ``BN(conv(x) + bias)`` (inference mode) into one conv: returns ``(kernel', bias')`` in float64.

    ``kernel`` has the output channels last (Keras ``Conv2D`` layout ``[kh, kw, in, out]``); ``bias``,
    ``gamma`` and ``beta`` may be ``None`` (no bias, ``scale=False``, ``center=False``).
    """
    kernel = np.asarray(kernel, np.float64)
    out = kernel.shape[-1]
    scale = np.ones(out) if gamma is None else np.asarray(gamma, np.float64)
    scale = scale / np.sqrt(np.asarray(variance, np.float64) + epsilon)
    shift = np.zeros(out) if beta is None else np.asarray(beta, np.float64)
    b = np.zeros(out) if bias is None else np.asarray(bias, np.float64)
    return kernel * scale, (b - np.asarray(mean, np.float64)) * scale + shift


def _folded_conv(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization, dtype: str):
    config = conv.get_config()
    config.update(use_bias=True, dtype=dtype, name=conv.name)
    layer = keras.layers.Conv2D.from_config(config)
    layer.build(conv.input_shape)
    kernel, bias = fold_batch_norm(
        conv.kernel.numpy(),
        conv.bias.numpy() if conv.use_bias else None,
        bn.gamma.numpy() if bn.scale else None,
        bn.beta.numpy() if bn.center else None,
        bn.moving_mean.numpy(),
        bn.moving_variance.numpy(),
        bn.epsilon,
    )
    layer.set_weights([kernel.astype(layer.kernel.dtype.as_numpy_dtype), bias.astype(layer.bias.dtype.as_numpy_dtype)])
    return layer


def _copy_layer(layer: keras.layers.Layer, dtype: str):
    config = layer.get_config()
    if dtype == "float32" or isinstance(layer, _FLOAT32_LAYERS) or layer.dtype_policy.compute_dtype == "float32" and _is_output_cast(layer):
        config["dtype"] = "float32"
    else:
        config["dtype"] = dtype
    copy = type(layer).from_config(config)
    weights = layer.get_weights()
    if weights:
        copy.build(layer.input_shape)
        copy.set_weights([w.astype(v.dtype.as_numpy_dtype) for w, v in zip(weights, copy.weights)])
    return copy


def _is_output_cast(layer: keras.layers.Layer) -> bool:
    """The backbone's float32 ``Activation("linear")`` outputs (``features.i``) stay float32."""
    return isinstance(layer, keras.layers.Activation) and layer.get_config().get("activation") == "linear"

