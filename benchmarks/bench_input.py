"""Input-pipeline throughput per CPU core: our training input vs plain ``tf.io.decode_jpeg``, same run.

Generates (once, cached under --cache-dir) a set of ImageNet-like JPEGs (500x375, ~105 KB, quality 95,
4:2:0) in TFRecord shards with the hrnet-tfx feature keys, then times, on ONE core (tf.data private thread
pool of 1, intra-op parallelism 1), batches of 224x224 training inputs from:

* ``make_dataset``: our pipeline (``decode_and_crop_jpeg`` of the random-resized-crop window, antialiased
  resize, flip, normalise, in the full tf.data pipeline with interleave / shuffle / batch / prefetch);
* ``full decode + same crop``: the same tf.data skeleton and augmentation, but ``tf.io.decode_jpeg`` of the
  whole image before cropping (isolates what window-only decoding saves);
* ``plain decode_jpeg + resize``: ``tf.io.decode_jpeg`` with default options + bilinear resize to 224, the
  simplest input a port writes (no crop, so it resizes the whole image), flip, and ``(x / 255 - mean) /
  std`` written as a port writes it (:func:`naive_normalize`; ours is one multiply-add per value along
  contiguous rows, 0.5 ms per image cheaper on one core).

Each pipeline is measured --repeats times, round robin, and the median is reported as images per second
of wall time and per CPU-second used by the process (robust when the machine is shared). Then the CPU
cost of each stage of the transform (decode whole / window, resize with / without antialias) explains
the ratios.

    python benchmarks/bench_input.py [--num-images 512] [--batches 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.data import features  # noqa: E402
from hrnet_tfx.data import preprocessing as P  # noqa: E402
from hrnet_tfx.data.input import make_dataset  # noqa: E402

DATA_VERSION = "v1"  # bump when the generator changes, to invalidate the cache
NUM_SHARDS = 8
SHUFFLE_BUFFER = 256


def realistic_jpeg(seed: int, width: int = 500, height: int = 375) -> bytes:
    """An ImageNet-sized JPEG with photo-like statistics: shapes with edges, gradients, texture, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.random(3) * 6
    base = (rng.random(3) * 120 + 60) + 50 * np.sin(
        x[..., None] / rng.uniform(30, 90) + y[..., None] / rng.uniform(40, 120) + phase
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(25):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(10, 200)), y0 + int(rng.integers(10, 150))]
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    a = np.asarray(img.filter(ImageFilter.GaussianBlur(1.2)), np.float32)
    for scale in (2, 6):
        small = rng.normal(0, 1, (height // scale, width // scale, 3)).astype(np.float32)
        layers = [np.asarray(Image.fromarray(small[..., c]).resize((width, height), Image.BILINEAR)) for c in range(3)]
        a += np.stack(layers, -1) * 28.0 / scale**0.5
    a += rng.normal(0, 4.0, a.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def prepare_shards(cache_dir: str, num_images: int) -> tuple[str, dict]:
    """Writes (or reuses) the TFRecord shards; returns their glob pattern and a summary."""
    out = os.path.join(cache_dir, f"shards-{DATA_VERSION}-{num_images}")
    manifest = os.path.join(out, "manifest.json")
    if os.path.exists(manifest):
        with open(manifest) as f:
            return os.path.join(out, "train-*"), json.load(f)
    os.makedirs(out, exist_ok=True)
    t0 = time.time()
    sizes = []
    writers = [tf.io.TFRecordWriter(os.path.join(out, f"train-{i:05d}-of-{NUM_SHARDS:05d}")) for i in range(NUM_SHARDS)]
    for i in range(num_images):
        data = realistic_jpeg(i)
        sizes.append(len(data))
        feature = {
            features.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[data])),
            features.IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
            features.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 10])),
            features.HEIGHT: tf.train.Feature(int64_list=tf.train.Int64List(value=[375])),
            features.WIDTH: tf.train.Feature(int64_list=tf.train.Int64List(value=[500])),
        }
        writers[i % NUM_SHARDS].write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    for w in writers:
        w.close()
    summary = {"images": num_images, "mean_kb": float(np.mean(sizes)) / 1024, "generate_s": time.time() - t0}
    with open(manifest, "w") as f:
        json.dump(summary, f)
    return os.path.join(out, "train-*"), summary


def naive_normalize(pixels: tf.Tensor) -> tf.Tensor:
    """torchvision's ``ToTensor`` + ``Normalize`` written the way a port writes it (three broadcasts)."""
    return (tf.cast(pixels, tf.float32) / 255.0 - tf.constant(P.MEAN_RGB)) / tf.constant(P.STD_RGB)


def _flip_and_normalize(image: tf.Tensor, seed: tf.Tensor, normalize=P.normalize) -> tf.Tensor:
    flip = tf.random.stateless_uniform([], seed) < P.FLIP_PROBABILITY
    return normalize(tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image))


def full_decode_same_crop(image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Like ``train_transform`` but decoding the whole JPEG before cropping the same window."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    image = tf.io.decode_jpeg(image_bytes, channels=3, dct_method=P.JPEG_DCT_METHOD)
    shape = tf.shape(image)
    top, left, h, w = P.sample_crop_window(shape[0], shape[1], crop_seed)
    crop = tf.cast(image[top : top + h, left : left + w], tf.float32)
    resized = tf.image.resize(crop, [P.IMAGE_SIZE, P.IMAGE_SIZE], method=P.RESIZE_METHOD, antialias=P.RESIZE_ANTIALIAS)
    return _flip_and_normalize(resized, flip_seed)


def plain_decode_resize(image_bytes: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``tf.io.decode_jpeg`` with default options, bilinear resize of the whole image, flip, normalise
    (:func:`naive_normalize`)."""
    image = tf.io.decode_jpeg(image_bytes, channels=3)
    resized = tf.image.resize(image, [P.IMAGE_SIZE, P.IMAGE_SIZE], method="bilinear")
    return _flip_and_normalize(resized, tf.cast(seed, tf.int64), naive_normalize)


def skeleton(pattern: str, fn, batch_size: int, options: tf.data.Options) -> tf.data.Dataset:
    """The same tf.data structure as ``make_dataset(training=True)`` around a different transform."""
    files = sorted(tf.io.gfile.glob(pattern))
    spec = {
        features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        features.LABEL: tf.io.FixedLenFeature([], tf.int64),
    }

    def transform(index, record):
        ex = tf.io.parse_single_example(record, spec)
        return fn(ex[features.IMAGE_ENCODED], tf.stack([tf.constant(1, tf.int64), index])), tf.cast(
            ex[features.LABEL], tf.int32
        )

    ds = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=0).repeat()
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(files), num_parallel_calls=tf.data.AUTOTUNE,
                       deterministic=False)
    ds = ds.shuffle(SHUFFLE_BUFFER, seed=0).enumerate()
    ds = ds.map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE).with_options(options)


def measure(ds: tf.data.Dataset, batches: int, batch_size: int) -> tuple[float, float]:
    """(images per wall second, images per CPU second) over ``batches`` batches after a 2-batch warm-up."""
    it = iter(ds)
    for _ in range(2):
        next(it)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(batches):
        x, _ = next(it)
        x.numpy()  # make sure the batch is materialised
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    n = batches * batch_size
    return n / wall, n / max(cpu, 1e-9)


def stage_costs(pattern: str, n: int = 64, repeats: int = 3) -> dict[str, float]:
    """CPU milliseconds per image of the transform's stages on ``n`` of the JPEGs (one thread, no tf.data)."""
    records = list(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern))).take(n))
    spec = {features.IMAGE_ENCODED: tf.io.FixedLenFeature([], tf.string)}
    images = tf.stack([tf.io.parse_single_example(r, spec)[features.IMAGE_ENCODED] for r in records])
    seeds = tf.stack([tf.zeros([n], tf.int64), tf.range(n, dtype=tf.int64)], axis=1)
    size = [P.IMAGE_SIZE, P.IMAGE_SIZE]

    def window(b, s):
        return tf.cast(P.decode_random_crop(b, s), tf.float32)

    stages = {
        "decode_jpeg, whole image": lambda b, s: tf.io.decode_jpeg(b, channels=3, dct_method=P.JPEG_DCT_METHOD),
        "decode_and_crop_jpeg, RRC window": window,
        "  + bilinear resize, antialias": lambda b, s: tf.image.resize(window(b, s), size, antialias=True),
        "  + bilinear resize, no antialias": lambda b, s: tf.image.resize(window(b, s), size, antialias=False),
        "train_transform (all of it)": lambda b, s: P.train_transform(b, seed=s),
        "eval_transform": lambda b, s: P.eval_transform(b),
    }
    costs = {}
    for name, fn in stages.items():
        run = tf.function(
            lambda b, s, fn=fn: tf.map_fn(
                lambda a: tf.reduce_sum(tf.cast(fn(a[0], a[1]), tf.float32)[:1, :1]), (b, s), fn_output_signature=tf.float32
            )
        )
        run(images, seeds)
        best = min(_cpu_seconds(run, images, seeds) for _ in range(repeats))
        costs[name] = 1000 * best / n
    return costs


def _cpu_seconds(fn, *args) -> float:
    t = time.process_time()
    fn(*args).numpy()
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="tf.data threads (1 = per core)")
    parser.add_argument("--cache-dir", default="/tmp/hrnet_tfx_bench")
    args = parser.parse_args()

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    options = tf.data.Options()
    options.threading.private_threadpool_size = args.threads
    options.threading.max_intra_op_parallelism = 1

    pattern, summary = prepare_shards(args.cache_dir, args.num_images)
    print(f"data: {summary['images']} JPEGs 500x375, mean {summary['mean_kb']:.1f} KB, {NUM_SHARDS} shards "
          f"({pattern}); threads={args.threads}, batch={args.batch_size}, image_size={P.IMAGE_SIZE}")

    ours = make_dataset(pattern, training=True, batch_size=args.batch_size, seed=0, shuffle_buffer=SHUFFLE_BUFFER,
                        threadpool_size=args.threads).with_options(options)
    pipelines = {
        "make_dataset (decode_and_crop_jpeg)": ours,
        "full decode_jpeg + same crop": skeleton(pattern, full_decode_same_crop, args.batch_size, options),
        "plain decode_jpeg + resize": skeleton(pattern, plain_decode_resize, args.batch_size, options),
    }
    results = {name: [] for name in pipelines}
    for _ in range(args.repeats):
        for name, ds in pipelines.items():
            results[name].append(measure(ds, args.batches, args.batch_size))

    print(f"{'pipeline':38} {'img/s (wall)':>12} {'img/CPU-s':>10}   runs (wall img/s)")
    med = {}
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        med[name] = (wall, cpu)
        print(f"{name:38} {wall:12.1f} {cpu:10.1f}   {', '.join(f'{r[0]:.0f}' for r in runs)}")
    ours_wall, ours_cpu = med["make_dataset (decode_and_crop_jpeg)"]
    for base in ("plain decode_jpeg + resize", "full decode_jpeg + same crop"):
        w, c = med[base]
        print(f"ratio ours / {base}: {ours_wall / w:.2f}x wall, {ours_cpu / c:.2f}x per CPU-second")
    print("\nstage costs, CPU ms per image (one thread, best of 3):")
    for name, ms in stage_costs(pattern).items():
        print(f"  {name:38} {ms:6.2f}")
    print(f"load average at end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
