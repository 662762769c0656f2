"""Conversion throughput: hrnet-tfx's Beam converter vs a naive per-image TensorFlow converter.

Generates (once, cached) a set of photo-like JPEGs (default 500x375, ~110 KB like ImageNet's average, from
smooth blobs + gradients + noise) in the image-folder layout, then in the same run times:

* ``ours``: ``hrnet_tfx.data.convert`` (discovery, planning, Beam FnApiRunner; valid JPEGs kept as bytes,
  header + end-marker check);
* ``naive``: a plain loop that fully decodes and re-encodes every image with TensorFlow
  (``tf.io.decode_jpeg`` + ``tf.io.encode_jpeg``), builds the tf.Example and writes one TFRecord, as the
  old inception conversion scripts' per-image work does;
* ``naive-decode``: the same loop decoding every image but keeping its bytes (what the inception scripts
  do for ordinary JPEGs; they re-encode only PNG/CMYK files).

Both sides use one worker (the DirectRunner's in-process mode vs a single Python loop); the file cache is
warmed first so disk speed does not decide, and the best of ``--repeat`` interleaved rounds counts. Ours
is timed end to end (discovery, planning, Beam start-up, publishing), so its rate grows with the set size.
Prints images/s and the ratios, and how much GZIP would save on the written shards.

    python benchmarks/bench_convert.py --images 2000
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import shutil
import sys
import tempfile
import time
import zlib

import numpy as np

import hrnet_tfx  # noqa: F401  (before TensorFlow)


def generate(cache: str, n: int, width: int, height: int, classes: int = 10, seed: int = 0) -> str:
    """Writes ``n`` photo-like JPEGs to ``cache/train/<class>/`` (+ a few in val/); reuses a finished set."""
    from PIL import Image

    done = os.path.join(cache, ".done")
    if os.path.exists(done):
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    n_val = max(classes, n // 20)
    for i in range(n + n_val):
        split = "train" if i < n else "val"
        k = i % classes
        blobs = np.asarray(Image.fromarray(rng.randint(0, 255, (9, 12, 3), dtype=np.uint8)).resize(
            (width, height), Image.BICUBIC), np.float32)
        angle = rng.uniform(0, 2 * np.pi)
        gradient = (xx * np.cos(angle) + yy * np.sin(angle)) / max(width, height) * 255
        img = 0.65 * blobs + 0.35 * gradient[..., None] + rng.normal(0, 28, (height, width, 3))
        path = os.path.join(cache, split, f"class{k:02d}", f"img{i:06d}.JPEG")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, format="JPEG", quality=90)
    open(done, "w").close()
    return cache


def _files(root: str) -> list[str]:
    return sorted(glob.glob(os.path.join(root, "*", "*", "*.JPEG")))


def naive_convert(files: list[str], output: str, reencode: bool) -> None:
    """The per-image loop of the old inception scripts, done with TensorFlow ops."""
    import tensorflow as tf

    def feature(v):
        if isinstance(v, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    with tf.io.TFRecordWriter(output) as writer:
        for i, path in enumerate(files):
            with open(path, "rb") as f:
                data = f.read()
            image = tf.io.decode_jpeg(data, channels=3)
            if reencode:
                data = tf.io.encode_jpeg(image, quality=95).numpy()
            h, w = int(image.shape[0]), int(image.shape[1])
            example = tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": feature(data), "image/format": feature(b"JPEG"),
                "image/class/label": feature(i % 10), "image/height": feature(h), "image/width": feature(w),
                "image/channels": feature(3), "image/colorspace": feature(b"RGB"),
                "image/filename": feature(os.path.basename(path).encode())}))
            writer.write(example.SerializeToString())


def ours_convert(root: str, output: str, beam_args: list[str]) -> dict:
    from hrnet_tfx.data.convert import ConvertOptions, convert
    from hrnet_tfx.data.sources import discover

    result = convert(discover(root), output, ConvertOptions(train_shards=16, eval_shards=4),
                     beam_args=beam_args)
    return result.manifest


def timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2000, help="train images (val adds 5%%)")
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "hrnet_tfx_bench_convert"))
    p.add_argument("--workers", type=int, default=1,
                   help="Beam workers for ours (>1 uses direct_running_mode=multi_processing)")
    p.add_argument("--repeat", type=int, default=2, help="interleaved rounds; the best time of each counts")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cache = generate(os.path.join(args.cache, f"v2_{args.images}_{args.width}x{args.height}"), args.images,
                     args.width, args.height)
    files = _files(cache)
    sizes = [os.path.getsize(f) for f in files]
    for f in files:  # warm the page cache so both sides read from memory
        with open(f, "rb") as fh:
            fh.read()
    print(f"{len(files)} JPEGs, {args.width}x{args.height}, mean {np.mean(sizes) / 1024:.1f} KB "
          f"(cached in {cache}); best of {args.repeat} interleaved rounds, load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    import tensorflow as tf  # noqa: F401  (import cost outside the timings)

    beam_args = ["--runner=FnApiRunner"]
    if args.workers > 1:
        beam_args += [f"--direct_num_workers={args.workers}", "--direct_running_mode=multi_processing"]
    work = tempfile.mkdtemp(prefix="bench_convert_")
    naive_s = decode_s = ours_s = float("inf")
    try:
        for r in range(args.repeat):  # interleaved rounds, best of each: other jobs on the machine add noise
            naive_s = min(naive_s, timed(naive_convert, files, os.path.join(work, "naive.tfrecord"), True))
            decode_s = min(decode_s, timed(naive_convert, files, os.path.join(work, "decode.tfrecord"), False))
            out = os.path.join(work, f"ours{r}")
            ours_s = min(ours_s, timed(ours_convert, cache, out, beam_args))
        shards = sorted(glob.glob(os.path.join(out, "Split-train", "*")))[:4]
        raw = sum(os.path.getsize(s) for s in shards)
        gz = sum(len(zlib.compress(open(s, "rb").read(), 6)) for s in shards)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    n = len(files)
    rows = [("ours (Beam, %d worker%s, end to end)" % (args.workers, "s" if args.workers > 1 else ""), ours_s),
            ("naive TF decode+encode per image", naive_s),
            ("naive TF decode per image (keep bytes)", decode_s)]
    for name, seconds in rows:
        print(f"  {name:<42} {n / seconds:8.1f} img/s  ({seconds:6.1f} s)")
    print(f"ratio ours / naive decode+encode: {naive_s / ours_s:.1f}x")
    print(f"ratio ours / naive decode-only:   {decode_s / ours_s:.1f}x")
    print(f"GZIP (zlib level 6) on {len(shards)} shards: {gz / raw * 100:.1f}% of the uncompressed size")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
