"""HRNet-C in Keras 2 (tf_keras), layer for layer the official PyTorch network.

The network is assembled from small functional building blocks (:func:`basic_block`,
:func:`bottleneck`, :func:`transition`, :func:`hr_module`, :func:`classification_head`) out of stock
Keras layers plus two subclasses with the parent's config, variables and results: a weightless
``UpSampling2D`` (:class:`NearestUpSampling2D`, XLA-trainable, cheaper gradient) and a
``BatchNormalization`` whose training step avoids oneDNN's generic kernel for narrow channel counts
(:class:`BatchNormalization`); :func:`count_weights` runs the same description on shapes to count
the weights and multiply-adds of a full-size variant without building it. The model serialises
(``get_config``, SavedModel, checkpoints); a Keras SavedModel loads without custom objects, and exports for
TFMA/TF Serving are plain SavedModels.

Every layer that holds weights is named by its PyTorch module path in the official code and in timm
(``layer1.0.conv1``, ``stage3.2.fuse_layers.1.0.0.0``, ``classifier`` ...): importing official weights is
a name lookup (see :mod:`hrnet_tfx.models.weights`).

Fidelity to the official network: BatchNorm momentum 0.9 (PyTorch 0.1) and epsilon 1e-5; stride-2 3x3
convs pad 1 pixel on every side (``ZeroPadding2D`` + ``valid``, not TF's asymmetric ``same``); nearest
upsampling; convs have no bias except the four head convs; conv kernels are kaiming-normal (fan-out,
ReLU gain); the classifier uses PyTorch's default Linear init; no dropout.

Reference: Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition",
TPAMI 2020 (arXiv:1908.07919).
"""

from __future__ import annotations

import math
from typing import Sequence

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx.models.config import BLOCK_EXPANSION, HRNetConfig, StageConfig

BN_MOMENTUM = 0.9  # PyTorch momentum 0.1
BN_EPSILON = 1e-5

BF16_BN_CHANNEL_MULTIPLE = 16
"""Under ``mixed_bfloat16``, a BatchNormalization computes in bfloat16 only when its channel count is a
multiple of this, and in float32 otherwise (Keras casts its input up and the next layer's input back
down; the variables are float32 either way). TensorFlow 2.16's oneDNN (3.3) has a jit bfloat16 BN kernel
only for channel counts that are multiples of 16 and runs the others (256 of HRNet-W18's 325 BNs: 18, 36
and 72 channels) in its generic kernel, 1.9x the float32 BN time; the wide stem, stage-1, head and
144-channel BNs get the jit kernel and skip two casts of large activations. hrnet_w18 ``mixed_bfloat16``,
interleaved A/B runs in one process on an AMD EPYC (Zen 4): float32 BN everywhere beat bfloat16 BN
everywhere by 17% (training step and inference), and this rule beat float32 BN everywhere by 6% (training
step) and 10% (inference) (``benchmarks/README.md``)."""


def _bn_dtype(dtype_policy: str | None, channels: int) -> str | None:
    """The dtype policy of a BatchNormalization over ``channels`` under the model's ``dtype_policy``."""
    if dtype_policy == "mixed_bfloat16" and channels % BF16_BN_CHANNEL_MULTIPLE:
        return "float32"
    return dtype_policy


@keras.saving.register_keras_serializable(package="hrnet_tfx")
class NearestUpSampling2D(keras.layers.UpSampling2D):
    """Nearest-neighbour upsampling by integer factors, written as reshape + broadcast.

    The same layer and config as ``UpSampling2D(interpolation="nearest")`` (NHWC) with the same output,
    but its gradient is a sum over each window of copies (an average pool times the window size) instead of
    ``ResizeNearestNeighborGrad``, which XLA has no kernel for: training with ``jit_compile`` works, and on
    the CPU the forward is no slower (both are memory copies) and the gradient is one pooling pass.
    """

    def __init__(self, size=(2, 2), **kwargs):
        kwargs.pop("interpolation", None)
        super().__init__(size=size, interpolation="nearest", **kwargs)
        if self.data_format != "channels_last":
            raise ValueError("NearestUpSampling2D supports channels_last only")

    def call(self, inputs):
        x = _nearest_upsample(inputs, *self.size)
        # Keep the static shape Keras computed (tf.reshape with a dynamic shape loses it).
        x.set_shape(self.compute_output_shape(inputs.shape))
        return x


def _nearest_upsample(inputs, sh: int, sw: int):
    """Nearest upsampling of NHWC ``inputs`` by ``(sh, sw)``. Its gradient sums each ``sh x sw`` window of
    the incoming gradient as an average pool times ``sh * sw``: one oneDNN pooling pass, 3-5x less CPU
    than the ``Sum`` over the broadcast axes that autodiff of the broadcast runs (HRNet-W18's 31
    upsamplings spent ~2% of a float32 training step there; ``benchmarks/README.md``). Exact up to the
    float32 summation order (bit-identical for 2x2 windows)."""

    @tf.custom_gradient
    def upsample(x):
        shape = tf.shape(x)
        n, h, w, c = shape[0], shape[1], shape[2], shape[3]
        y = tf.reshape(x, tf.stack([n, h, 1, w, 1, c]))
        y = tf.broadcast_to(y, tf.stack([n, h, sh, w, sw, c]))
        y = tf.reshape(y, tf.stack([n, h * sh, w * sw, c]))

        def grad(dy):
            pooled = tf.nn.avg_pool2d(dy, (sh, sw), (sh, sw), "VALID")
            return pooled * tf.cast(sh * sw, dy.dtype)

        return y, grad

    return upsample(inputs)


_VIEW_ROWS = (16, 8, 4, 2)


def _view_rows(shape) -> int:
    """How many pixels :func:`_batch_norm_train` folds into one row (0: the shape does not suit it)."""
    if len(shape) != 4 or None in shape[1:] or shape[-1] % 4 == 0:
        return 0
    return next((k for k in _VIEW_ROWS if shape[1] * shape[2] % k == 0), 0)


def _batch_norm_train(x, gamma, beta, epsilon: float, k: int):
    """Training-mode batch norm of float32 NHWC ``x`` over (N, H, W), with its gradient written out.

    The sums run on a ``[N*H*W/k, k*C]`` view (``k`` pixels per row), so a narrow channel axis (HRNet-W18's
    18) still gives long vectorized rows. oneDNN 3.3 runs a BN whose channel count is not a multiple of 4
    in its generic kernel: for [8, 56, 56, 18], forward + gradient took 13.7 ms of CPU fused and 4.5 ms
    here (``benchmarks/README.md``). The variance is taken around the batch mean (two passes), so a large
    mean does not cancel it away. Returns (output, batch mean, biased batch variance).
    """
    c = x.shape[-1]

    def channel_sum(t):
        return tf.reduce_sum(tf.reshape(tf.reduce_sum(tf.reshape(t, [-1, k * c]), 0), [k, c]), 0)

    @tf.custom_gradient
    def bn(x, gamma, beta):
        n = tf.cast(tf.size(x) // c, x.dtype)
        mean = channel_sum(x) / n
        centered = x - mean
        variance = channel_sum(centered * centered) / n
        inv = tf.math.rsqrt(variance + epsilon)
        scale = gamma * inv
        y = centered * scale + beta

        def grad(dy, dmean, dvariance):
            del dmean, dvariance  # the statistics only feed the moving averages
            dbeta = channel_sum(dy)
            dgamma = channel_sum(dy * centered) * inv
            # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)), x_hat = centered * inv
            dx = (dy - dbeta / n - centered * (inv * dgamma / n)) * scale
            return dx, dgamma, dbeta

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return bn(x, gamma, beta)


@keras.saving.register_keras_serializable(package="hrnet_tfx")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization`` (same variables, config, results and moving-average rule), except that
    a float32 channels-last training step whose channel count is not a multiple of 4 runs
    :func:`_batch_norm_train` instead of oneDNN's generic kernel. Everything else (inference, other
    dtypes and widths, frozen layers) is the parent's code."""

    def call(self, inputs, training=None, mask=None):
        training = self._get_training_value(training)
        k = _view_rows(inputs.shape)
        if (training is not True or mask is not None or not k or inputs.dtype != tf.float32
                or self.compute_dtype != "float32" or list(self.axis) != [len(inputs.shape) - 1]
                or not (self.center and self.scale) or self.renorm or self.virtual_batch_size is not None):
            return super().call(inputs, training=training, mask=mask)
        y, mean, variance = _batch_norm_train(inputs, self.gamma, self.beta, self.epsilon, k)
        n = tf.cast(tf.size(inputs) // inputs.shape[-1], variance.dtype)
        self._assign_moving_average(self.moving_mean, mean, self.momentum, None)
        self._assign_moving_average(self.moving_variance, variance * n / tf.maximum(n - 1.0, 1.0),
                                    self.momentum, None)
        return y

    def get_build_config(self):
        """None, as for Keras' own layers: a model rebuilt from its config builds this layer when it calls
        it, inside the layer's name scope, so the weights keep their names (``bn1/gamma:0``)."""
        return None


def _kaiming_fan_out() -> keras.initializers.Initializer:
    """PyTorch's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``: N(0, 2 / fan_out).

    A new instance per layer: an unseeded Keras initializer instance returns the same values on every call.
    """
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def _torch_default_uniform(fan_in: int) -> keras.initializers.Initializer:
    """PyTorch's default init for Linear weights and conv/linear biases: U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)
    return keras.initializers.RandomUniform(-bound, bound)


class _Builder:
    """Creates every layer of one model, with a shared dtype policy. The network description (the functions
    below) makes layers only through it, so :class:`_Counter` can run the same description on shapes."""

    def __init__(self, dtype_policy: str | None):
        self.dtype = dtype_policy

    def conv(self, x, filters: int, kernel: int, stride: int, name: str, bias: bool = False):
        """Conv2D named ``name``; stride-2 convs pad symmetrically like PyTorch's ``padding=k//2``."""
        pad = kernel // 2
        if pad and stride > 1:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}.pad", dtype=self.dtype)(x)
            padding = "valid"
        else:
            padding = "same" if pad else "valid"  # stride 1, odd kernel: 'same' is symmetric
        fan_in = kernel * kernel * x.shape[-1]
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=bias,
            kernel_initializer=_kaiming_fan_out(),
            bias_initializer=_torch_default_uniform(fan_in),
            name=name,
            dtype=self.dtype,
        )(x)

    def bn(self, x, name: str):
        return BatchNormalization(
            momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name, dtype=_bn_dtype(self.dtype, x.shape[-1])
        )(x)

    def relu(self, x, name: str):
        return keras.layers.ReLU(name=name, dtype=self.dtype)(x)

    def add(self, xs, name: str):
        return keras.layers.Add(name=name, dtype=self.dtype)(list(xs))

    def upsample(self, x, factor: int, name: str):
        return NearestUpSampling2D(factor, name=name, dtype=self.dtype)(x)

    def global_pool(self, x, name: str):
        return keras.layers.GlobalAveragePooling2D(name=name, dtype=self.dtype)(x)

    def dense(self, x, units: int, name: str):
        """The classifier: float32 whatever the policy (the logits), PyTorch's default Linear init."""
        fan_in = x.shape[-1]
        return keras.layers.Dense(units, kernel_initializer=_torch_default_uniform(fan_in),
                                  bias_initializer=_torch_default_uniform(fan_in), name=name, dtype="float32")(x)

    def output(self, x, name: str):
        """A named float32 model output (the backbone's feature maps)."""
        return keras.layers.Activation("linear", dtype="float32", name=name)(x)

    def conv_bn(self, x, filters, kernel, stride, conv_name, bn_name, relu_name=None, bias=False):
        """conv -> BN (-> ReLU when ``relu_name`` is given)."""
        x = self.bn(self.conv(x, filters, kernel, stride, conv_name, bias=bias), bn_name)
        return self.relu(x, relu_name) if relu_name else x


def _shortcut(b: _Builder, x, out_channels: int, stride: int, name: str):
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    return b.conv_bn(x, out_channels, 1, stride, f"{name}.downsample.0", f"{name}.downsample.1")


def basic_block(b: _Builder, x, planes: int, stride: int, name: str):
    """ResNet v1 BasicBlock: 3x3-BN-ReLU-3x3-BN + shortcut, ReLU (expansion 1)."""
    shortcut = _shortcut(b, x, planes, stride, name)
    y = b.conv_bn(x, planes, 3, stride, f"{name}.conv1", f"{name}.bn1", f"{name}.relu1")
    y = b.conv_bn(y, planes, 3, 1, f"{name}.conv2", f"{name}.bn2")
    return b.relu(b.add([y, shortcut], f"{name}.add"), f"{name}.relu")


def bottleneck(b: _Builder, x, planes: int, stride: int, name: str):
    """ResNet v1 Bottleneck: 1x1-BN-ReLU-3x3(stride)-BN-ReLU-1x1-BN + shortcut, ReLU (expansion 4)."""
    out = planes * BLOCK_EXPANSION["BOTTLENECK"]
    shortcut = _shortcut(b, x, out, stride, name)
    y = b.conv_bn(x, planes, 1, 1, f"{name}.conv1", f"{name}.bn1", f"{name}.relu1")
    y = b.conv_bn(y, planes, 3, stride, f"{name}.conv2", f"{name}.bn2", f"{name}.relu2")
    y = b.conv_bn(y, out, 1, 1, f"{name}.conv3", f"{name}.bn3")
    return b.relu(b.add([y, shortcut], f"{name}.add"), f"{name}.relu")


_BLOCKS = {"BASIC": basic_block, "BOTTLENECK": bottleneck}


def blocks(b: _Builder, x, block: str, planes: int, count: int, name: str):
    """``count`` blocks in a row named ``name.0`` .. ``name.{count-1}`` (a PyTorch ``Sequential``)."""
    for k in range(count):
        x = _BLOCKS[block](b, x, planes, 1, f"{name}.{k}")
    return x


def transition(b: _Builder, xs: Sequence, out_channels: Sequence[int], name: str) -> list:
    """Adapts the previous stage's branches to the next stage.

    An existing branch whose width changes gets a 3x3 conv-BN-ReLU (else passes through); each new
    branch is made from the lowest-resolution input by 3x3 stride-2 conv-BN-ReLUs.
    """
    outs = []
    n_prev = len(xs)
    for i, c in enumerate(out_channels):
        if i < n_prev:
            x = xs[i]
            if x.shape[-1] != c:
                x = b.conv_bn(x, c, 3, 1, f"{name}.{i}.0", f"{name}.{i}.1", f"{name}.{i}.2")
        else:
            x = xs[-1]
            steps = i + 1 - n_prev
            for j in range(steps):
                filters = c if j == steps - 1 else xs[-1].shape[-1]
                x = b.conv_bn(x, filters, 3, 2, f"{name}.{i}.{j}.0", f"{name}.{i}.{j}.1", f"{name}.{i}.{j}.2")
        outs.append(x)
    return outs


def hr_module(b: _Builder, xs: Sequence, stage: StageConfig, name: str) -> list:
    """One HighResolutionModule: a stack of blocks per branch, then sum-fusion across resolutions.

    Output ``i`` is ``ReLU(sum_j f_ij(x_j))``: identity for ``j == i``; for a lower resolution
    (``j > i``) 1x1 conv + BN + nearest upsampling by ``2**(j-i)``; for a higher resolution (``j < i``)
    ``i-j`` chained 3x3 stride-2 conv + BN, with ReLU on all but the last.
    """
    ys = [
        blocks(b, x, stage.block, planes, count, f"{name}.branches.{i}")
        for i, (x, planes, count) in enumerate(zip(xs, stage.num_channels, stage.num_blocks))
    ]
    if len(ys) == 1:
        return ys
    outs = []
    for i, yi in enumerate(ys):
        terms = []
        for j, yj in enumerate(ys):
            f = f"{name}.fuse_layers.{i}.{j}"
            if j == i:
                terms.append(yj)
            elif j > i:
                z = b.conv_bn(yj, yi.shape[-1], 1, 1, f"{f}.0", f"{f}.1")
                terms.append(b.upsample(z, 2 ** (j - i), f"{f}.2"))
            else:
                z = yj
                for k in range(i - j):
                    last = k == i - j - 1
                    z = b.conv_bn(
                        z,
                        yi.shape[-1] if last else yj.shape[-1],
                        3,
                        2,
                        f"{f}.{k}.0",
                        f"{f}.{k}.1",
                        None if last else f"{f}.{k}.2",
                    )
                terms.append(z)
        outs.append(b.relu(b.add(terms, f"{name}.fuse.{i}"), f"{name}.fuse_act.{i}"))
    return outs


def backbone(b: _Builder, x, config: HRNetConfig) -> list:
    """Stem and stages; returns one feature map per branch, highest resolution first."""
    s1, s2 = config.stem_channels
    x = b.conv_bn(x, s1, 3, 2, "conv1", "bn1", "relu1")
    x = b.conv_bn(x, s2, 3, 2, "conv2", "bn2", "relu2")
    first = config.stages[0]
    xs = [blocks(b, x, first.block, first.num_channels[0], first.num_blocks[0], "layer1")]
    for k, stage in enumerate(config.stages[1:], start=1):
        xs = transition(b, xs, stage.out_channels, f"transition{k}")
        for m in range(stage.num_modules):
            xs = hr_module(b, xs, stage, f"stage{k + 1}.{m}")
    return xs


def classification_head(b: _Builder, xs: Sequence, config: HRNetConfig, num_classes: int):
    """Incre Bottleneck per branch, stride-2 downsampling merges from high to low resolution, 1x1 conv to
    ``num_features``, global average pooling and the float32 classifier (logits)."""
    y = None
    for i, (x, planes) in enumerate(zip(xs, config.head_channels)):
        z = bottleneck(b, x, planes, 1, f"incre_modules.{i}.0")
        if y is not None:
            d = f"downsamp_modules.{i - 1}"
            y = b.conv_bn(y, z.shape[-1], 3, 2, f"{d}.0", f"{d}.1", f"{d}.2", bias=config.head_conv_bias)
            z = b.add([z, y], f"head.add.{i}")
        y = z
    y = b.conv_bn(y, config.num_features, 1, 1, "final_layer.0", "final_layer.1", "final_layer.2",
                  bias=config.head_conv_bias)
    return b.dense(b.global_pool(y, "global_pool"), num_classes, "classifier")


def build_hrnet(
    config: HRNetConfig,
    num_classes: int = 1000,
    image_size: int | tuple[int, int] | None = 224,
    include_head: bool = True,
    dtype_policy: str | None = None,
    name: str = "hrnet",
) -> keras.Model:
    """Builds a functional HRNet-C from a config (see :func:`hrnet_tfx.models.build_model`)."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if image_size is None:
        hw = (None, None)
    else:
        hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        factor = config.downsample_factor
        if len(hw) != 2 or any(not isinstance(s, int) or s <= 0 or s % factor for s in hw):
            raise ValueError(f"image_size must be positive and divisible by {factor}, got {image_size!r}")
    b = _Builder(dtype_policy)
    inputs = keras.Input(shape=(*hw, 3), name="image")
    xs = backbone(b, inputs, config)
    if include_head:
        outputs = classification_head(b, xs, config, num_classes)
    else:
        outputs = [b.output(x, f"features.{i}") for i, x in enumerate(xs)]
    return keras.Model(inputs, outputs, name=name)


def count_macs(model: keras.Model) -> int:
    """Multiply-adds of the Conv2D and Dense layers for one image, as the official counter counts them
    (``prod(kernel shape) * output H * W`` per conv, ``in * out`` per Dense; biases not counted).

    The model needs a static input size. ``macs / 1024**3`` is the "GFLOPs" column of the official
    HRNet tables.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output_shape
            if h is None or w is None:
                raise ValueError("count_macs needs a model built with a fixed image_size")
            total += int(tf.size(layer.kernel)) * h * w
        elif isinstance(layer, keras.layers.Dense):
            total += int(tf.size(layer.kernel))
    return total


class _Shape:
    """A symbolic NHWC tensor for :class:`_Counter`: only its static shape."""

    def __init__(self, h: int, w: int, c: int):
        self.shape = (None, h, w, c)


class _Counter(_Builder):
    """Runs the same network description as :func:`build_hrnet` on shapes instead of tensors, adding up the
    weights and multiply-adds each layer would have: the count of a full-size variant without building it
    (milliseconds instead of up to half a minute of Keras graph construction)."""

    def __init__(self):
        super().__init__(None)
        self.trainable = self.non_trainable = self.macs = 0

    def conv(self, x, filters: int, kernel: int, stride: int, name: str, bias: bool = False):
        _, h, w, c = x.shape
        out = _Shape(-(-h // stride), -(-w // stride), filters)
        self.trainable += kernel * kernel * c * filters + (filters if bias else 0)
        self.macs += kernel * kernel * c * filters * out.shape[1] * out.shape[2]
        return out

    def bn(self, x, name: str):
        self.trainable += 2 * x.shape[-1]  # gamma, beta
        self.non_trainable += 2 * x.shape[-1]  # moving mean and variance
        return x

    def relu(self, x, name: str):
        return x

    def add(self, xs, name: str):
        return list(xs)[0]

    def upsample(self, x, factor: int, name: str):
        _, h, w, c = x.shape
        return _Shape(h * factor, w * factor, c)

    def global_pool(self, x, name: str):
        return _Shape(1, 1, x.shape[-1])

    def dense(self, x, units: int, name: str):
        self.trainable += x.shape[-1] * units + units
        self.macs += x.shape[-1] * units
        return _Shape(1, 1, units)

    def output(self, x, name: str):
        return x


def count_weights(config: HRNetConfig, num_classes: int = 1000, image_size: int = 224) -> dict[str, int]:
    """Trainable and non-trainable weights and multiply-adds (as :func:`count_macs` counts them) of the
    classifier :func:`build_hrnet` builds from ``config``, computed from the same network description
    without creating a layer: ``{"trainable_params", "non_trainable_params", "macs"}``."""
    counter = _Counter()
    classification_head(counter, backbone(counter, _Shape(image_size, image_size, 3), config), config, num_classes)
    return {"trainable_params": counter.trainable, "non_trainable_params": counter.non_trainable,
            "macs": counter.macs}
