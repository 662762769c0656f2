"""The one owner of HRNet's image preprocessing: constants and the train/eval transforms.

Every consumer (the tf.data training and evaluation input, the Trainer's exported serving signature, the
benchmarks) imports the constants and functions from here; nothing else in the package may spell out a
mean, a crop fraction or a resize method.

The recipe is the official HRNet-Image-Classification one (torchvision on PIL images):

* train: ``RandomResizedCrop(224)`` (area 0.08-1 of the image, aspect ratio 3/4-4/3 sampled log-uniformly,
  10 attempts, then a centre-crop fallback), bilinear resize, ``RandomHorizontalFlip()``;
* eval: ``Resize(int(224 / 0.875))`` = shorter side to 256, ``CenterCrop(224)``;
* both: ``ToTensor()`` (RGB / 255) then ``Normalize(mean, std)``.

Here it is written with TensorFlow ops only (no ``tf.py_function``), so the same code runs inside
``tf.data`` and inside a SavedModel serving signature.

Why the eval transform looks the way it does. Imported official weights were trained and evaluated on
PIL-decoded, PIL-resized images; a TF2 port that fed them TF-decoded, TF-resized images lost 0.6-0.8 top-1
points. Measured against a PIL/torchvision reference on four real photographs
(``benchmarks/compare_eval_transform.py``; mean / max |difference| of the 224x224 output in grey levels),
four things matter:

1. JPEG decoding. ``tf.io.decode_jpeg``'s default IDCT is libjpeg's fast integer one (``JDCT_IFAST``);
   PIL uses the accurate one (``JDCT_ISLOW``). The fast one costs 1.2 / 12 levels; with
   ``dct_method="INTEGER_ACCURATE"`` TF's decode is bit-identical to PIL's, at no measurable extra cost.
2. Antialiasing. PIL's "bilinear" downscaling is a triangle filter whose support grows with the scale
   factor (it averages every source pixel under the output pixel). ``tf.image.resize`` does the same only
   with ``antialias=True``; without it, it samples 4 pixels and aliases: 3.1 / 80 levels.
3. Crop offsets. torchvision's offset is ``int(round((size - crop) / 2))`` (round half to even); flooring
   it shifts many images by one pixel: 3.7 / 147 levels.
4. Rounding. PIL resizes separably, horizontal pass first, and stores each pass as uint8 (rounding half up).
   Doing the same two passes with the same rounding leaves 0.0013 / 1 levels: >99.7% of output pixels are
   bit-identical to PIL (the rest differ by one level, from PIL's fixed-point weights). One float pass
   without rounding is off by 0.28 levels on almost every pixel.

The other sizes follow torchvision and the official code too: the long side becomes
``int(resize * long / short)`` (floor), and the resize size is ``int(image_size / CROP_FRACTION)`` as in the
official ``valid.py`` (floor; 224 -> 256, 288 -> 329).

The training transform decodes only the sampled crop window (``tf.image.decode_and_crop_jpeg``). On
ImageNet-like JPEGs that saves only 10-20% of the decode time (entropy decoding of the file still happens;
``benchmarks/bench_input.py``), while the antialiased resize costs ~1.5 ms per image per core more than a
plain bilinear one; it is kept because the official recipe (PIL) antialiases, in training as in eval. The
window is sampled with torchvision's algorithm (area uniform, log-aspect uniform, first of 10 attempts
that fits, else centre crop clamped to the aspect range), not with ``tf.image.sample_distorted_bounding_box``,
which samples differently and gives smaller crops (measured on a 500x375 image: mean area 0.37 instead of
torchvision's 0.43; 46% instead of 33% of crops under 0.3 of the image), i.e. a stronger augmentation than
the recipe the published accuracies come from. The resized crop is not rounded to uint8 (a <=0.5 level
difference is irrelevant for training and costs time).

Randomness is stateless: ``train_transform`` takes a ``seed`` (a shape-[2] integer tensor), so a tf.data
pipeline that derives one seed per element gets the same augmentation regardless of how many parallel
calls run the map.
"""

from __future__ import annotations

import math

import tensorflow as tf

MEAN_RGB = (0.485, 0.456, 0.406)
"""Per-channel mean of RGB values scaled to [0, 1] (ImageNet statistics, as in the official code)."""
STD_RGB = (0.229, 0.224, 0.225)
"""Per-channel standard deviation of RGB values scaled to [0, 1]."""
PIXEL_SCALE = 255.0
"""Pixel values are divided by this before normalising (torchvision's ``ToTensor``)."""

IMAGE_SIZE = 224
"""Default network input size (square)."""
SIZE_DIVISOR = 32
"""HRNet downsamples by 32 (stem x4, three more stride-2 branches); input sizes must be multiples of it."""
CROP_FRACTION = 0.875
"""Eval centre crop as a fraction of the resized shorter side: 224 / 0.875 = 256."""

RRC_AREA_RANGE = (0.08, 1.0)
"""Random-resized-crop: fraction of the image area covered by the crop."""
RRC_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)
"""Random-resized-crop: crop width / height, sampled log-uniformly."""
RRC_MAX_ATTEMPTS = 10
"""Random-resized-crop: samples tried before falling back to a centre crop."""
FLIP_PROBABILITY = 0.5
"""Probability of a horizontal flip in training (torchvision ``RandomHorizontalFlip()``)."""

RESIZE_METHOD = "bilinear"
"""``tf.image.resize`` method, the counterpart of PIL's ``Image.BILINEAR`` (torchvision's default)."""
RESIZE_ANTIALIAS = True
"""PIL's bilinear filter widens its support when downscaling; ``antialias=True`` is TF's equivalent."""
JPEG_DCT_METHOD = "INTEGER_ACCURATE"
"""libjpeg's accurate integer IDCT (``JDCT_ISLOW``), PIL's default; TF's default (fast IDCT) differs."""


def resize_size_for(image_size: int) -> int:
    """The eval resize (shorter side) for a network input size: ``int(image_size / CROP_FRACTION)``.

    Floor, as the official ``tools/valid.py`` computes it: 224 -> 256, 256 -> 292, 288 -> 329.
    """
    return int(check_image_size(image_size) / CROP_FRACTION)


def check_image_size(image_size: int) -> int:
    """Returns ``image_size`` if it is a positive multiple of :data:`SIZE_DIVISOR`, else raises ValueError."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise ValueError(f"image_size must be an int, got {image_size!r}")
    if image_size <= 0 or image_size % SIZE_DIVISOR:
        raise ValueError(
            f"image_size must be a positive multiple of {SIZE_DIVISOR} (HRNet downsamples by "
            f"{SIZE_DIVISOR}), got {image_size}"
        )
    return image_size


RESIZE_SIZE = resize_size_for(IMAGE_SIZE)
"""Eval resize of the shorter side for the default input size (256)."""


def normalize(pixels: tf.Tensor) -> tf.Tensor:
    """Maps RGB pixel values in [0, 255] (any real or integer dtype, channels last) to the network input.

    ``(pixels / 255 - MEAN_RGB) / STD_RGB`` in float32, computed as one multiply-add per value,
    ``pixels * (1 / (255 * STD_RGB)) - MEAN_RGB / STD_RGB`` (constants rounded once from float64; within
    5e-7 of torchvision's ``ToTensor`` + ``Normalize`` order of operations). Inputs of rank >= 2 are
    viewed as rows of ``width * 3`` values so the per-channel constants broadcast along contiguous rows:
    TensorFlow's CPU kernels broadcast a [3] vector over the last axis at ~1/5 of that speed (0.65 vs
    0.14 ms for a 224x224 image on one core).
    """
    x = tf.cast(pixels, tf.float32)
    scale = [1.0 / (PIXEL_SCALE * s) for s in STD_RGB]
    offset = [-m / s for m, s in zip(MEAN_RGB, STD_RGB)]
    if x.shape.rank is None or x.shape.rank < 2:
        return x * tf.constant(scale, tf.float32) + tf.constant(offset, tf.float32)
    shape = tf.shape(x)
    row = shape[-2] * 3
    rows = tf.reshape(x, [-1, row])
    rows = rows * tf.tile(tf.constant(scale, tf.float32), shape[-2:-1]) + tf.tile(
        tf.constant(offset, tf.float32), shape[-2:-1]
    )
    out = tf.reshape(rows, shape)
    out.set_shape(x.shape)
    return out


def denormalize(images: tf.Tensor) -> tf.Tensor:
    """Inverse of :func:`normalize`: network inputs back to float32 RGB values in [0, 255] (not clipped)."""
    x = tf.cast(images, tf.float32) * tf.constant(STD_RGB, tf.float32) + tf.constant(MEAN_RGB, tf.float32)
    return x * PIXEL_SCALE


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes an encoded image (scalar string tensor) to uint8 RGB ``[height, width, 3]``.

    JPEG goes through ``tf.io.decode_jpeg`` with :data:`JPEG_DCT_METHOD` (bit-identical to PIL's decode);
    PNG, GIF (first frame), BMP and WebP through ``tf.io.decode_image``. Grayscale becomes RGB.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=JPEG_DCT_METHOD),
        lambda: _decode_non_jpeg(image_bytes),
    )


def _decode_non_jpeg(image_bytes: tf.Tensor) -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _round_like_pil(x: tf.Tensor) -> tf.Tensor:
    """Rounds half up and clips to [0, 255], as PIL does when it stores a resampling pass as uint8."""
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


def eval_resize_size(height: tf.Tensor, width: tf.Tensor, resize: int) -> tuple[tf.Tensor, tf.Tensor]:
    """torchvision ``Resize(int)``'s output size: shorter side ``resize``, longer ``int(resize*long/short)``.

    Integer floor division gives exactly Python's ``int(resize * long / short)`` for any realistic size.
    Returns ``(new_height, new_width)`` as int32 tensors.
    """
    height = tf.cast(height, tf.int64)
    width = tf.cast(width, tf.int64)
    resize = tf.constant(resize, tf.int64)
    short = tf.minimum(height, width)
    long = tf.maximum(height, width)
    new_long = (resize * long) // short
    portrait = width <= height  # torchvision: the width is the short side when w <= h
    new_height = tf.where(portrait, new_long, resize)
    new_width = tf.where(portrait, resize, new_long)
    return tf.cast(new_height, tf.int32), tf.cast(new_width, tf.int32)


def center_crop_offset(size: tf.Tensor, crop: int) -> tf.Tensor:
    """torchvision ``CenterCrop``'s offset ``int(round((size - crop) / 2.0))`` (round half to even), int32."""
    half = tf.cast(tf.convert_to_tensor(size) - crop, tf.float64) / 2.0
    return tf.cast(tf.round(half), tf.int32)  # tf.round rounds half to even, like Python's round()


def resize_and_center_crop(image: tf.Tensor, image_size: int = IMAGE_SIZE) -> tf.Tensor:
    """The eval geometry on a decoded image: shorter side to ``resize_size_for(image_size)``, centre crop.

    Args:
      image: uint8 (or float in [0, 255]) RGB ``[height, width, 3]``.
      image_size: output side, a multiple of :data:`SIZE_DIVISOR`.

    Returns:
      float32 ``[image_size, image_size, 3]`` with integer values in [0, 255] (not normalised), matching
      PIL's ``img.resize((w, h), Image.BILINEAR)`` + crop to within one level on a few pixels in a thousand.

    Two antialiased 1-D passes, horizontal first, each rounded to uint8 values like PIL's. Each pass is a
    ``tf.image.resize`` of a reshaped tensor whose other spatial dimension is 1, so TF does not also run
    an identity pass over the other dimension (20% faster than two 2-D resizes; identical output). Columns
    outside the crop are dropped between the passes: the vertical pass treats each column independently.
    """
    image_size = check_image_size(image_size)
    resize = resize_size_for(image_size)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    new_height, new_width = eval_resize_size(height, width, resize)
    top = center_crop_offset(new_height, image_size)
    left = center_crop_offset(new_width, image_size)

    x = tf.cast(image, tf.float32)
    # Horizontal pass: each row as a 1-pixel-high image of a batch, so only the width is resampled.
    x = _resize(x[:, tf.newaxis], tf.stack([1, new_width]))[:, 0]
    x = _round_like_pil(x)
    x = x[:, left : left + image_size, :]
    # Vertical pass: the crop's columns and channels folded into channels of a 1-pixel-wide image.
    x = _resize(tf.reshape(x, [height, 1, image_size * 3]), tf.stack([new_height, 1]))
    x = _round_like_pil(tf.reshape(x, [new_height, image_size, 3]))
    x = x[top : top + image_size, :, :]
    return tf.ensure_shape(x, [image_size, image_size, 3])


def _resize(images: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(images, size, method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS)


def eval_transform(image_bytes: tf.Tensor, image_size: int = IMAGE_SIZE) -> tf.Tensor:
    """Encoded image (scalar string) -> normalised float32 ``[image_size, image_size, 3]`` eval input.

    torchvision ``Resize(int(image_size / 0.875))`` + ``CenterCrop(image_size)`` + ``ToTensor`` +
    ``Normalize`` on a PIL image, reproduced with TF ops (see the module docstring for the measured
    difference). Deterministic. Works on JPEG, PNG, GIF, BMP, WebP; images smaller than the crop are
    upscaled like torchvision does.
    """
    return normalize(resize_and_center_crop(decode_image(image_bytes), image_size))


def eval_transform_batch(image_bytes: tf.Tensor, image_size: int = IMAGE_SIZE) -> tf.Tensor:
    """:func:`eval_transform` over a 1-D string tensor (e.g. a serving signature's input), ``[N, S, S, 3]``."""
    image_size = check_image_size(image_size)
    return tf.map_fn(
        lambda b: eval_transform(b, image_size),
        tf.convert_to_tensor(image_bytes, tf.string),
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def _as_seed(seed) -> tf.Tensor:
    """A stateless-RNG seed as int64: the same numbers give the same stream whatever their dtype was."""
    return tf.cast(tf.ensure_shape(tf.convert_to_tensor(seed), [2]), tf.int64)


def sample_crop_window(
    height: tf.Tensor,
    width: tf.Tensor,
    seed: tf.Tensor,
    area_range: tuple[float, float] = RRC_AREA_RANGE,
    aspect_range: tuple[float, float] = RRC_ASPECT_RANGE,
    max_attempts: int = RRC_MAX_ATTEMPTS,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Samples a random-resized-crop window with torchvision's ``RandomResizedCrop.get_params`` algorithm.

    All ``max_attempts`` candidates are drawn at once: area uniform in ``area_range`` times the image area,
    aspect ratio (width / height) log-uniform in ``aspect_range``, sides rounded (half to even); the first
    candidate that fits the image is used, at a uniformly random position. If none fits, the fallback is a
    centre crop of the whole image, narrowed to the nearest aspect ratio in ``aspect_range`` if the image's
    own is outside it.

    Args:
      height, width: image size (integer scalar tensors).
      seed: shape-[2] integers (any int dtype; used as int64) for the stateless random ops.

    Returns:
      ``(top, left, crop_height, crop_width)`` int32 scalars, always inside the image.
    """
    seeds = tf.random.experimental.stateless_split(_as_seed(seed), num=3)
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    lo, hi = aspect_range

    area = h * w * tf.random.stateless_uniform(
        [max_attempts], seeds[0], area_range[0], area_range[1], dtype=tf.float64
    )
    ratio = tf.exp(
        tf.random.stateless_uniform([max_attempts], seeds[1], math.log(lo), math.log(hi), dtype=tf.float64)
    )
    cand_w = tf.cast(tf.round(tf.sqrt(area * ratio)), tf.int32)
    cand_h = tf.cast(tf.round(tf.sqrt(area / ratio)), tf.int32)
    fits = (cand_w > 0) & (cand_w <= width) & (cand_h > 0) & (cand_h <= height)
    found = tf.reduce_any(fits)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)  # index of the first fit (0 if none)

    in_ratio = w / h
    fallback_h = tf.where(in_ratio < lo, tf.cast(tf.round(w / lo), tf.int32), height)
    fallback_w = tf.where(in_ratio > hi, tf.cast(tf.round(h * hi), tf.int32), width)
    crop_h = tf.where(found, cand_h[first], fallback_h)
    crop_w = tf.where(found, cand_w[first], fallback_w)

    offset_seeds = tf.random.experimental.stateless_split(seeds[2], num=2)
    # maxval is at least 1 so the op is valid even when `found` is false (its result is then unused).
    rand_top = tf.random.stateless_uniform(
        [], offset_seeds[0], minval=0, maxval=tf.maximum(height - crop_h + 1, 1), dtype=tf.int32
    )
    rand_left = tf.random.stateless_uniform(
        [], offset_seeds[1], minval=0, maxval=tf.maximum(width - crop_w + 1, 1), dtype=tf.int32
    )
    top = tf.where(found, rand_top, (height - crop_h) // 2)
    left = tf.where(found, rand_left, (width - crop_w) // 2)
    return top, left, crop_h, crop_w


def decode_random_crop(image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Decodes only a random-resized-crop window of an encoded image: uint8 RGB ``[crop_h, crop_w, 3]``.

    JPEG: the size comes from the header (``tf.image.extract_jpeg_shape``) and only the window is decoded
    (``tf.image.decode_and_crop_jpeg``). Other formats are decoded fully and sliced. The window is
    :func:`sample_crop_window`'s for ``seed``, identical in both branches.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def jpeg():
        shape = tf.image.extract_jpeg_shape(image_bytes)
        top, left, crop_h, crop_w = sample_crop_window(shape[0], shape[1], seed)
        return tf.image.decode_and_crop_jpeg(
            image_bytes, tf.stack([top, left, crop_h, crop_w]), channels=3, dct_method=JPEG_DCT_METHOD
        )

    def other():
        image = _decode_non_jpeg(image_bytes)
        shape = tf.shape(image)
        top, left, crop_h, crop_w = sample_crop_window(shape[0], shape[1], seed)
        return image[top : top + crop_h, left : left + crop_w, :]

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)


def train_transform(
    image_bytes: tf.Tensor, seed: tf.Tensor | None = None, image_size: int = IMAGE_SIZE
) -> tf.Tensor:
    """Encoded image (scalar string) -> augmented, normalised float32 ``[image_size, image_size, 3]``.

    torchvision ``RandomResizedCrop(image_size)`` + ``RandomHorizontalFlip()`` + ``ToTensor`` +
    ``Normalize``: :func:`decode_random_crop`, antialiased bilinear resize to ``image_size``, a horizontal
    flip with probability :data:`FLIP_PROBABILITY`, :func:`normalize`.

    Args:
      image_bytes: encoded image; JPEG is decoded window-only, other formats fully.
      seed: shape-[2] integers (any int dtype; used as int64); the output is a pure function of
        ``(image_bytes, seed values)``. ``None``
        draws one from TF's global (stateful) generator: random, reproducible only under a global seed.
      image_size: output side, a multiple of :data:`SIZE_DIVISOR`.
    """
    image_size = check_image_size(image_size)
    if seed is None:
        seed = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(_as_seed(seed), 2))
    crop = decode_random_crop(image_bytes, crop_seed)
    x = tf.image.resize(
        tf.cast(crop, tf.float32), [image_size, image_size], method=RESIZE_METHOD, antialias=RESIZE_ANTIALIAS
    )
    flip = tf.random.stateless_uniform([], flip_seed) < FLIP_PROBABILITY
    x = tf.cond(flip, lambda: tf.reverse(x, axis=[1]), lambda: x)
    return tf.ensure_shape(normalize(x), [image_size, image_size, 3])
