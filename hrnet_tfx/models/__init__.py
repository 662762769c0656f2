"""The HRNet-C model library (Keras 2 / tf_keras), usable without TFX.

Stable API::

    from hrnet_tfx import models
    models.list_models()                       # the nine official variants
    model = models.build_model("hrnet_w18", num_classes=1000)
    models.load_pytorch_weights(model, "hrnet_w18.safetensors")   # or an official .pth

Custom variants: pass a YAML/JSON network config file (see ``configs/tiny.yaml``) instead of a name.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from hrnet_tfx.models.config import ConfigError, HRNetConfig, StageConfig, regular_config
from hrnet_tfx.models.registry import get_config, list_models, register
from hrnet_tfx.models.weights import WeightImportError, WeightsFileError, load_pytorch_weights, read_state_dict

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")

__all__ = [
    "ConfigError",
    "DTYPE_POLICIES",
    "HRNetConfig",
    "StageConfig",
    "WeightImportError",
    "WeightsFileError",
    "build_model",
    "get_config",
    "list_models",
    "load_pytorch_weights",
    "model_summary",
    "read_state_dict",
    "regular_config",
    "register",
]


def build_model(
    name: str | os.PathLike | HRNetConfig,
    num_classes: int = 1000,
    *,
    image_size: int | tuple[int, int] | None = 224,
    include_head: bool = True,
    dtype_policy: str = "float32",
    jit_compile: bool = False,
    weights: str | os.PathLike | None = None,
):
    """Builds an HRNet-C classifier as a ``tf_keras.Model``.

    Args:
      name: a registered variant (see :func:`list_models`), a network config file (.yaml/.json), or an
        :class:`HRNetConfig`.
      num_classes: size of the classifier (any positive number; 1000 for ImageNet).
      image_size: input height/width (an int, an (h, w) pair, each divisible by 32), or None for any
        size divisible by 32 at call time.
      include_head: False returns the backbone: one feature map per resolution, highest first.
      dtype_policy: ``"float32"``, ``"mixed_float16"`` (GPUs) or ``"mixed_bfloat16"`` (TPUs, recent
        CPUs). Variables stay float32; the logits are always float32.
      jit_compile: compile ``predict``/``fit``/``evaluate`` steps with XLA.
      weights: optional official/timm PyTorch weights to import (see :func:`load_pytorch_weights`).

    Input: float images, NHWC, RGB normalised with the ImageNet mean and std. Output: logits.

    Reference: Wang et al., "Deep High-Resolution Representation Learning for Visual Recognition",
    TPAMI 2020 (arXiv:1908.07919).
    """
    from hrnet_tfx.models.hrnet import build_hrnet

    if dtype_policy not in DTYPE_POLICIES:
        raise ValueError(f"dtype_policy must be one of {DTYPE_POLICIES}, got {dtype_policy!r}")
    config = get_config(name)
    label = name if isinstance(name, str) and name in list_models() else "hrnet"
    model = build_hrnet(
        config,
        num_classes=num_classes,
        image_size=image_size,
        include_head=include_head,
        dtype_policy=None if dtype_policy == "float32" else dtype_policy,
        name=label,
    )
    model.jit_compile = bool(jit_compile)
    if weights is not None:
        load_pytorch_weights(model, weights)
    return model


def model_summary(name: str | os.PathLike | HRNetConfig, image_size: int = 224, num_classes: int = 1000) -> dict[str, Any]:
    """Parameters, multiply-adds, the official "GFLOPs" (MACs / 1024**3) and layer counts of a variant."""
    from hrnet_tfx.models.hrnet import count_macs

    model = build_model(name, num_classes=num_classes, image_size=image_size)
    trainable = sum(int(w.shape.num_elements()) for w in model.trainable_weights)
    non_trainable = sum(int(w.shape.num_elements()) for w in model.non_trainable_weights)
    macs = count_macs(model)
    layers = collections.Counter(type(layer).__name__ for layer in model.layers)
    return {
        "name": str(name if not isinstance(name, HRNetConfig) else "custom"),
        "image_size": image_size,
        "num_classes": num_classes,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "macs": macs,
        "gflops_official": round(macs / 1024**3, 3),
        "layers": dict(sorted(layers.items())),
        "num_layers": len(model.layers),
    }
