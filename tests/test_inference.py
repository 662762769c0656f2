"""The folded inference model (hrnet_tfx.models.inference): same logits as the training graph, bfloat16 close."""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx import models
from hrnet_tfx.data import preprocessing as P
from hrnet_tfx.data.sample import synthetic_photo
from hrnet_tfx.models.inference import fold_batch_norm, inference_model


def randomise_batch_norms(model, seed=0):
    """Gives every BN non-trivial statistics, so a fold that drops gamma, beta, the mean, the variance or
    epsilon changes the logits: variances down to 0.01 make epsilon (1e-5) a 5e-4 relative effect."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.3, n), rng.normal(0, 0.5, n),
                               rng.uniform(0.01, 2.0, n)])
    return model


def relative_error(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def tiny(tiny_config_path):
    keras.backend.clear_session()
    return randomise_batch_norms(models.build_model(tiny_config_path, num_classes=7, image_size=64))


def test_folded_model_gives_the_training_graphs_logits(tiny):
    x = tf.random.stateless_normal([4, 64, 64, 3], seed=[1, 2])
    folded = inference_model(tiny)
    expected = tiny(x, training=False).numpy()
    got = folded(x).numpy()
    assert got.dtype == np.float32 and got.shape == (4, 7)
    assert relative_error(got, expected) < 1e-4
    kinds = [type(layer).__name__ for layer in folded.layers]
    assert "BatchNormalization" not in kinds
    assert kinds.count("Conv2D") == [type(layer).__name__ for layer in tiny.layers].count("Conv2D")
    assert all(layer.use_bias for layer in folded.layers if isinstance(layer, keras.layers.Conv2D))
    # the trained model is untouched and the folded one owns new weights
    assert len(tiny.non_trainable_weights) == 2 * 86 and len(folded.non_trainable_weights) == 0  # BN mean, variance
    np.testing.assert_array_equal(tiny(x, training=False).numpy(), expected)


def test_fold_batch_norm_formula():
    kernel = np.arange(12.0).reshape(1, 1, 4, 3)
    k, b = fold_batch_norm(kernel, [1.0, 2.0, 3.0], [2.0, 1.0, 0.5], [0.1, 0.2, 0.3], [1.0, 0.0, -1.0],
                           [3.0, 0.25, 1.0], 1.0)
    scale = np.array([2.0 / 2.0, 1.0 / np.sqrt(1.25), 0.5 / np.sqrt(2.0)])
    np.testing.assert_allclose(k, kernel * scale)
    np.testing.assert_allclose(b, (np.array([1.0, 2.0, 3.0]) - [1.0, 0.0, -1.0]) * scale + [0.1, 0.2, 0.3])
    k, b = fold_batch_norm(kernel, None, None, None, [0.0, 1.0, 2.0], [1.0, 1.0, 1.0], 0.0)
    np.testing.assert_allclose(k, kernel)
    np.testing.assert_allclose(b, [0.0, -1.0, -2.0])


def test_backbone_and_mixed_policy_models_fold(tiny_config_path):
    keras.backend.clear_session()
    x = tf.random.stateless_normal([2, 64, 64, 3], seed=[3, 4])
    backbone = randomise_batch_norms(models.build_model(tiny_config_path, image_size=64, include_head=False), 1)
    expected = backbone(x, training=False)
    got = inference_model(backbone)(x)
    assert len(got) == len(expected) == 4
    for g, e in zip(got, expected):
        assert g.dtype == tf.float32 and relative_error(g.numpy(), e.numpy()) < 1e-4

    mixed = randomise_batch_norms(
        models.build_model(tiny_config_path, num_classes=5, image_size=64, dtype_policy="mixed_bfloat16"), 2)
    as_float32 = inference_model(mixed, dtype="float32")
    reference = models.build_model(tiny_config_path, num_classes=5, image_size=64)
    reference.set_weights(mixed.get_weights())
    assert relative_error(as_float32(x).numpy(), reference(x, training=False).numpy()) < 1e-4
    default = inference_model(mixed)  # follows the policy: bfloat16 compute, float32 logits
    assert default.get_layer("conv1").compute_dtype == "bfloat16"
    assert default.get_layer("conv1").kernel.dtype == tf.bfloat16
    assert default.get_layer("classifier").compute_dtype == "float32"
    assert default(x).dtype == tf.float32


def test_refuses_subclassed_models_and_unknown_dtypes(tiny):
    class Plain(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional Keras model"):
        inference_model(Plain())
    with pytest.raises(ValueError, match="dtype must be one of"):
        inference_model(tiny, dtype="float16")


def natural_images(size: int, count: int) -> tuple[np.ndarray, str]:
    """``count`` photo-like eval inputs: crops of the real photographs scikit-learn ships (if installed),
    topped up with :func:`synthetic_photo` images, through the eval transform."""
    photos, source = [], "synthetic"
    try:
        import sklearn.datasets

        folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        for path in sorted(glob.glob(os.path.join(folder, "*.jpg"))):
            photos.append(tf.io.decode_jpeg(tf.io.read_file(path), channels=3))
        source = "scikit-learn photos + synthetic"
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        if photos and i % 2 == 0:
            photo = photos[(i // 2) % len(photos)]
            h, w = int(photo.shape[0]), int(photo.shape[1])
            side = int(rng.integers(size * 2, min(h, w)))
            top, left = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            image = photo[top : top + side, left : left + side]
        else:
            image = synthetic_photo(int(rng.integers(80, 200)), int(rng.integers(80, 200)), seed=i)
        images.append(P.normalize(P.resize_and_center_crop(image, size)))
    return np.stack(images), source


def test_bfloat16_inference_stays_close_to_float32(tiny_config_path):
    """bfloat16 keeps 8 significant bits: on 48 photo-like images the logits stay within 5% of their
    spread and the top-1 class agrees on at least 90% of the images (measured: 97.9%, max error 2.0%)."""
    keras.backend.clear_session()
    model = randomise_batch_norms(models.build_model(tiny_config_path, num_classes=100, image_size=64), 3)
    images, _ = natural_images(64, 48)
    exact = inference_model(model)(images).numpy()
    approx = inference_model(model, dtype="bfloat16")(images).numpy()
    assert approx.dtype == np.float32
    spread = exact.max(axis=1, keepdims=True) - exact.min(axis=1, keepdims=True)
    assert np.max(np.abs(approx - exact) / spread) < 0.05
    agreement = np.mean(approx.argmax(1) == exact.argmax(1))
    assert agreement >= 0.9, agreement
    assert not np.array_equal(approx, exact)  # really computed in bfloat16
