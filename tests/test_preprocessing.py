"""Fast tests of hrnet_tfx.data.preprocessing: constants, eval parity with PIL/torchvision, train transform."""

import glob
import io
import math
import os

import numpy as np
import pytest
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow: Keras 2)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.data import preprocessing as P  # noqa: E402
from hrnet_tfx.data.reference import pil_reference  # noqa: E402
from hrnet_tfx.data.sample import synthetic_photo  # noqa: E402

# Mean |ours - PIL| in [0, 255] units that the eval transform must stay under. Measured when written:
# 0.0006-0.0024 on four real photographs, 0-0.0027 on the synthetic images below; plausible regressions
# (no rounding 0.24-0.28, TF's default fast IDCT ~1, antialias off 1.1-3.1, floored crop offset 2.9-3.7)
# are far above it (see test_parity_check_catches_known_preprocessing_mistakes).
PARITY_MEAN_THRESHOLD = 0.01
PARITY_MAX_THRESHOLD = 1.0  # no pixel may differ by more than one grey level


def encode(array, fmt="JPEG"):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


# Sizes chosen to exercise: landscape/portrait, only one side resized (256 x 259), odd offsets that round
# half to even (259 -> 35/2), a long side whose floor and round differ (403 x 300 -> 343.89), upscaling.
PARITY_SIZES = [(500, 375), (375, 500), (256, 259), (403, 300), (333, 517), (180, 120)]


def parity_images():
    images = [(f"synthetic {w}x{h}", encode(synthetic_photo(w, h, seed=i))) for i, (w, h) in enumerate(PARITY_SIZES)]
    try:
        import sklearn.datasets

        photo_dir = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
        for path in sorted(glob.glob(os.path.join(photo_dir, "*.jpg"))):
            with open(path, "rb") as f:
                images.append((os.path.basename(path), f.read()))
    except ImportError:  # real photographs are a bonus; the synthetic ones always run
        pass
    return images


@pytest.fixture(scope="module")
def parity_set():
    images = parity_images()
    return [(name, data, pil_reference(data)) for name, data in images]


def parity_error(parity_set):
    """(mean, max) |ours - reference| over all images, [0, 255] units, with the module as patched now."""
    diffs = [np.abs(P.resize_and_center_crop(P.decode_image(data)).numpy() - ref) for _, data, ref in parity_set]
    return float(np.mean([d.mean() for d in diffs])), float(max(d.max() for d in diffs))


# --- constants and sizes -------------------------------------------------------------------------------


def test_constants_follow_the_official_recipe():
    assert P.MEAN_RGB == (0.485, 0.456, 0.406) and P.STD_RGB == (0.229, 0.224, 0.225)
    assert P.IMAGE_SIZE == 224 and P.RESIZE_SIZE == 256
    assert P.RRC_AREA_RANGE == (0.08, 1.0) and P.RRC_ASPECT_RANGE == (0.75, 4 / 3)


@pytest.mark.parametrize("size", [32, 64, 224, 256, 288, 320, 384])
def test_resize_size_is_the_official_floor(size):
    assert P.resize_size_for(size) == int(size / 0.875)


@pytest.mark.parametrize("bad", [0, -32, 100, 225, 224.0, True, "224"])
def test_image_size_must_be_a_positive_multiple_of_32(bad):
    with pytest.raises(ValueError, match="image_size"):
        P.check_image_size(bad)


def test_eval_resize_size_and_crop_offset_match_torchvision_rules():
    rng = np.random.default_rng(0)
    hs = np.concatenate([rng.integers(1, 3000, 3000), np.arange(1, 600)])
    ws = np.concatenate([rng.integers(1, 3000, 3000), np.arange(600, 1, -1)])
    new_h, new_w = (t.numpy() for t in P.eval_resize_size(hs, ws, 256))
    for h, w, nh, nw in zip(hs, ws, new_h, new_w):
        short, long = (w, h) if w <= h else (h, w)
        long_new = int(256 * long / short)
        assert (nw, nh) == ((256, long_new) if w <= h else (long_new, 256)), (h, w)
    sizes = np.arange(224, 700)
    offsets = P.center_crop_offset(sizes, 224).numpy()
    assert offsets.tolist() == [int(round((s - 224) / 2.0)) for s in sizes]


# --- normalisation -------------------------------------------------------------------------------------


def test_normalize_matches_torchvision_and_denormalize_inverts_it():
    pixels = np.random.default_rng(1).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    expected = (pixels.astype(np.float32) / np.float32(255) - np.float32(P.MEAN_RGB)) / np.float32(P.STD_RGB)
    out = P.normalize(pixels).numpy()
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(P.denormalize(out).numpy(), pixels, atol=1e-4)


def test_normalize_handles_any_rank_and_keeps_static_shapes():
    """normalize works along rows of width * 3 values (rank >= 2) or broadcasts (rank 1); same numbers."""
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (2, 4, 6, 3)).astype(np.float32)
    expected = (batch / np.float32(255) - np.float32(P.MEAN_RGB)) / np.float32(P.STD_RGB)
    np.testing.assert_allclose(P.normalize(batch).numpy(), expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(P.normalize(batch[0, 0, 0]).numpy(), expected[0, 0, 0], rtol=0, atol=1e-6)

    @tf.function(input_signature=[tf.TensorSpec([None, None, 6, 3], tf.float32)])
    def f(x):
        y = P.normalize(x)
        assert y.shape.as_list() == [None, None, 6, 3]
        return y

    np.testing.assert_allclose(f(batch).numpy(), expected, rtol=0, atol=1e-6)
    assert P.normalize(tf.zeros([5, 224, 224, 3])).shape == (5, 224, 224, 3)


def test_eval_output_of_a_flat_image_is_the_normalised_colour():
    colour = np.array([200, 30, 100], np.uint8)
    data = encode(np.broadcast_to(colour, (90, 120, 3)).copy(), "PNG")
    out = P.eval_transform(data, image_size=64).numpy()
    expected = (colour / 255.0 - np.array(P.MEAN_RGB)) / np.array(P.STD_RGB)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-5)


# --- eval transform ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "width,height,fmt", [(100, 80, "JPEG"), (40, 90, "JPEG"), (20, 30, "JPEG"), (64, 64, "PNG"), (50, 70, "PNG")]
)
def test_eval_transform_shape_dtype_and_determinism(width, height, fmt):
    data = encode(synthetic_photo(width, height), fmt)
    a = P.eval_transform(data, image_size=64)
    b = P.eval_transform(tf.constant(data), image_size=64)
    assert a.shape == (64, 64, 3) and a.dtype == tf.float32
    assert np.array_equal(a.numpy(), b.numpy())
    pixels = P.denormalize(a).numpy()
    assert pixels.min() > -0.01 and pixels.max() < 255.01


def test_eval_transform_handles_grayscale_jpeg():
    gray = synthetic_photo(80, 60)[..., 0]
    buf = io.BytesIO()
    Image.fromarray(gray, "L").save(buf, "JPEG")
    out = P.denormalize(P.eval_transform(buf.getvalue(), image_size=32)).numpy()
    assert out.shape == (32, 32, 3)
    np.testing.assert_allclose(out[..., 0], out[..., 1], atol=1e-3)
    np.testing.assert_allclose(out[..., 0], out[..., 2], atol=1e-3)


def test_eval_transform_matches_pil_torchvision(parity_set):
    mean, worst = parity_error(parity_set)
    assert mean < PARITY_MEAN_THRESHOLD, f"mean |ours - PIL| = {mean:.4f} levels"
    assert worst <= PARITY_MAX_THRESHOLD, f"max |ours - PIL| = {worst} levels"
    normalised = [np.abs(P.eval_transform(d).numpy() - P.normalize(r).numpy()).max() for _, d, r in parity_set]
    assert max(normalised) < 1.01 / 255 / min(P.STD_RGB)


@pytest.mark.parametrize(
    "regression",
    ["no antialias", "fast IDCT", "no rounding", "floor crop offset"],
)
def test_parity_check_catches_known_preprocessing_mistakes(parity_set, monkeypatch, regression):
    """The parity threshold is tight enough that each of these plausible mistakes fails it."""
    if regression == "no antialias":
        monkeypatch.setattr(P, "RESIZE_ANTIALIAS", False)
    elif regression == "fast IDCT":
        monkeypatch.setattr(P, "JPEG_DCT_METHOD", "INTEGER_FAST")
    elif regression == "no rounding":
        monkeypatch.setattr(P, "_round_like_pil", lambda x: x)
    else:
        monkeypatch.setattr(P, "center_crop_offset", lambda size, crop: tf.cast((size - crop) // 2, tf.int32))
    mean, worst = parity_error(parity_set)
    assert mean > PARITY_MEAN_THRESHOLD or worst > PARITY_MAX_THRESHOLD


def test_eval_transform_batch_and_savedmodel_roundtrip(tmp_path):
    """The serving signature can embed the eval transform and gives the same result after reloading."""
    images = [encode(synthetic_photo(w, h, seed=w)) for w, h in [(90, 70), (50, 80)]]

    class Preprocess(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, image_bytes):
            return P.eval_transform_batch(image_bytes, image_size=32)

    tf.saved_model.save(Preprocess(), str(tmp_path))
    loaded = tf.saved_model.load(str(tmp_path))
    out = loaded(tf.constant(images)).numpy()
    assert out.shape == (2, 32, 32, 3)
    for i, data in enumerate(images):
        # graph optimisations may reorder the normalisation arithmetic: equal to float32 rounding
        np.testing.assert_allclose(out[i], P.eval_transform(data, image_size=32).numpy(), rtol=0, atol=2e-6)


# --- train transform -----------------------------------------------------------------------------------


def _windows(height, width, n, seed0=0):
    @tf.function
    def sample(seeds):
        return tf.map_fn(
            lambda s: tf.stack(P.sample_crop_window(height, width, s)), seeds, fn_output_signature=tf.int32
        )

    seeds = tf.stack([tf.fill([n], seed0), tf.range(n)], axis=1)
    return sample(seeds).numpy()


@pytest.mark.parametrize("height,width", [(375, 500), (500, 375), (7, 5), (1, 1), (30, 600), (600, 30)])
def test_crop_windows_stay_inside_the_image(height, width):
    w = _windows(height, width, 300)
    top, left, ch, cw = w.T
    assert (top >= 0).all() and (left >= 0).all() and (ch >= 1).all() and (cw >= 1).all()
    assert (top + ch <= height).all() and (left + cw <= width).all()


def test_crop_windows_follow_torchvision_distribution():
    """Area ~ U(0.08, 1), log-aspect ~ U(log 3/4, log 4/3): the means torchvision's sampler gives.

    For a 375x500 image torchvision's RandomResizedCrop gives a mean area fraction of ~0.43 (rejected
    candidates that do not fit bias it below 0.54); tf.image.sample_distorted_bounding_box gives ~0.37.
    """
    top, left, ch, cw = _windows(375, 500, 3000).T.astype(np.float64)
    area = ch * cw / (375 * 500)
    aspect = cw / ch
    assert area.min() >= 0.075 and area.max() <= 1.0
    assert 0.40 < area.mean() < 0.46
    assert aspect.min() >= 0.74 and aspect.max() <= 1.36
    assert abs(np.log(aspect).mean() - 0.03) < 0.02  # log-uniform, clipped by the image's 4:3 shape
    assert 0.4 < (left / np.maximum(500 - cw, 1)).mean() < 0.6  # positions spread uniformly


def test_crop_window_fallback_is_a_centre_crop_clamped_to_the_aspect_range():
    # A 20x400 strip: every candidate is taller than 20, so torchvision falls back to h=20, w=round(20*4/3).
    for top, left, ch, cw in _windows(20, 400, 20):
        assert (ch, cw) == (20, 27) and top == 0 and left == (400 - 27) // 2
    for top, left, ch, cw in _windows(400, 20, 20):
        assert (ch, cw) == (27, 20) and left == 0 and top == (400 - 27) // 2


def test_decode_random_crop_decodes_exactly_the_window():
    array = synthetic_photo(120, 90, seed=3)
    jpeg = encode(array)
    png = encode(array, "PNG")
    full = P.decode_image(jpeg).numpy()
    for i in range(5):
        seed = tf.constant([i, 11])
        top, left, ch, cw = (int(v) for v in P.sample_crop_window(90, 120, seed))
        window = P.decode_random_crop(jpeg, seed).numpy()
        assert window.shape == (ch, cw, 3)
        # libjpeg decodes a window without the rows below it; chroma upsampling near its edges may differ
        diff = np.abs(window.astype(int) - full[top : top + ch, left : left + cw].astype(int))
        assert diff.mean() < 0.5, diff.mean()
        np.testing.assert_array_equal(P.decode_random_crop(png, seed).numpy(), array[top : top + ch, left : left + cw])


def test_train_transform_is_crop_resize_flip_normalise():
    """Rebuilds each output from the sampled window: equal to the unflipped or the flipped version, both seen."""
    array = synthetic_photo(96, 72, seed=5)
    data = encode(array, "PNG")
    flips = []
    for i in range(16):
        seed = tf.constant([7, i])
        out = P.train_transform(data, seed=seed, image_size=32).numpy()
        assert out.shape == (32, 32, 3) and out.dtype == np.float32
        crop_seed, _ = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
        top, left, ch, cw = (int(v) for v in P.sample_crop_window(72, 96, crop_seed))
        crop = array[top : top + ch, left : left + cw].astype(np.float32)
        plain = P.normalize(tf.image.resize(crop, [32, 32], method="bilinear", antialias=True)).numpy()
        if np.allclose(out, plain, atol=1e-5):
            flips.append(False)
        else:
            np.testing.assert_allclose(out, plain[:, ::-1], atol=1e-5)
            flips.append(True)
    assert any(flips) and not all(flips)


def test_train_transform_seeded_is_reproducible_and_seeds_differ():
    data = encode(synthetic_photo(120, 100, seed=9))
    a = P.train_transform(data, seed=[1, 2], image_size=64).numpy()
    b = P.train_transform(data, seed=tf.constant([1, 2], tf.int64), image_size=64).numpy()
    c = P.train_transform(data, seed=[1, 3], image_size=64).numpy()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    unseeded = [P.train_transform(data, image_size=64).numpy() for _ in range(3)]
    assert not (np.allclose(unseeded[0], unseeded[1]) and np.allclose(unseeded[1], unseeded[2]))


@pytest.mark.parametrize("width,height,fmt", [(300, 200, "JPEG"), (10, 12, "JPEG"), (1, 1, "PNG"), (40, 30, "GIF")])
def test_train_transform_handles_small_and_non_jpeg_images(width, height, fmt):
    array = synthetic_photo(width, height)
    data = encode(array, fmt)
    out = P.train_transform(data, seed=[0, 0], image_size=32)
    assert out.shape == (32, 32, 3)
    assert np.isfinite(out.numpy()).all()


def test_train_transform_works_inside_tf_function():
    data = encode(synthetic_photo(80, 60))

    @tf.function
    def f(b, s):
        return P.train_transform(b, seed=s, image_size=32)

    np.testing.assert_allclose(
        f(tf.constant(data), tf.constant([4, 4])).numpy(),
        P.train_transform(data, seed=[4, 4], image_size=32).numpy(),
        rtol=0,
        atol=2e-6,  # graph optimisations may reorder the normalisation arithmetic
    )
    assert math.isfinite(float(tf.reduce_sum(f(tf.constant(data), tf.constant([5, 5])))))
