"""Trained-like BatchNorm statistics for the benchmarks' freshly built models.

A fresh model's BatchNorms have mean 0, variance 1, gamma 1 and beta 0, so every bias that folding makes
is exactly 0. Once the served weights are graph constants (``hrnet_tfx.serving.export``), grappler deletes
each ``BiasAdd`` of constant zeros, and a convolution without its bias matches none of the remapper's
fusions (measured on hrnet_w18: 292 plain convolutions and 280 separate ReLUs instead of 325 fused). No
trained model has that, so the benchmarks give their served models random non-zero statistics first.
"""

import numpy as np


def with_trained_like_batch_norms(model, seed: int = 0):
    """Sets every BatchNormalization of ``model`` to random non-zero statistics (gamma, beta, moving mean
    and variance) and returns ``model``."""
    import tf_keras as keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.5, 2.0, n)])
    return model
