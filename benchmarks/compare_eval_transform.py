"""Measures how far our TF eval transform is from torchvision's Resize + CenterCrop on PIL images.

The reference is written with PIL only (no torch): ``img.resize((new_w, new_h), Image.BILINEAR)`` with
torchvision's ``Resize(int)`` size rule (long side ``int(size * long / short)``), then ``CenterCrop``
(offset ``int(round((size - crop) / 2))``), then ``/ 255`` and mean/std -- exactly what
torchvision 0.8+ does on a PIL image (checked against torchvision 0.29 once: identical numbers).

Inputs: real photographs found on this machine (scikit-learn's china.jpg / flower.jpg, any files or globs
given with --photos) and synthetic photo-like JPEGs. Output: per image max / mean |difference| in [0, 255]
pixel units and after normalisation, then the same mean for plausible mistakes (each one changed alone),
to show which choices matter.

    python benchmarks/compare_eval_transform.py [--photos 'dir/*.jpg' ...] [--image-size 224]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import io
import os

import numpy as np
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.data import preprocessing as P  # noqa: E402
from hrnet_tfx.data.reference import pil_reference  # noqa: E402
from hrnet_tfx.data.sample import synthetic_photo  # noqa: E402


def synthetic_jpeg(width: int, height: int, seed: int) -> bytes:
    """A photo-like JPEG (quality 90, 4:2:0) from :func:`hrnet_tfx.data.sample.synthetic_photo`."""
    buf = io.BytesIO()
    Image.fromarray(synthetic_photo(width, height, seed, shapes=6)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def default_photos() -> list[str]:
    """Real photographs that ship with packages on this machine (none are downloaded)."""
    paths = []
    try:
        import sklearn.datasets

        paths += sorted(glob.glob(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "*.jpg")))
    except ImportError:
        pass
    # The Rust embedded book ships two photographs of a development board (720x477).
    paths += sorted(glob.glob(os.path.expanduser("~/.rustup/toolchains/*/share/doc/rust/html/embedded-book/assets/*.jp*g")))[:2]
    return paths


@contextlib.contextmanager
def patched(**attrs):
    """Temporarily replaces attributes of the preprocessing module (one ablation at a time)."""
    saved = {k: getattr(P, k) for k in attrs}
    for k, v in attrs.items():
        setattr(P, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(P, k, v)


def ours_pixels(image_bytes: bytes, image_size: int) -> np.ndarray:
    return P.resize_and_center_crop(P.decode_image(image_bytes), image_size).numpy()


ABLATIONS = {
    "ours (as shipped)": {},
    "TF default JPEG IDCT (INTEGER_FAST)": {"JPEG_DCT_METHOD": "INTEGER_FAST"},
    "no rounding between/after passes": {"_round_like_pil": lambda x: x},
    "antialias=False": {"RESIZE_ANTIALIAS": False},
    "crop offset floor instead of round": {
        "center_crop_offset": lambda size, crop: tf.cast((tf.convert_to_tensor(size) - crop) // 2, tf.int32)
    },
    "naive TF port (fast IDCT, no antialias, no rounding)": {
        "JPEG_DCT_METHOD": "INTEGER_FAST",
        "RESIZE_ANTIALIAS": False,
        "_round_like_pil": lambda x: x,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", nargs="*", default=[], help="extra photo files or glob patterns")
    parser.add_argument("--image-size", type=int, default=P.IMAGE_SIZE)
    parser.add_argument("--synthetic", type=int, default=6, help="number of synthetic JPEGs")
    args = parser.parse_args()
    size = P.check_image_size(args.image_size)

    photos = default_photos() + [p for pattern in args.photos for p in sorted(glob.glob(pattern))]
    images = []
    for path in photos:
        with open(path, "rb") as f:
            images.append(("photo", os.path.basename(path), f.read()))
    synthetic_sizes = [(500, 375), (375, 500), (256, 259), (403, 300), (333, 517), (180, 120), (640, 480), (1024, 683)]
    for i, (w, h) in enumerate(synthetic_sizes[: args.synthetic]):
        images.append(("synthetic", f"{w}x{h}", synthetic_jpeg(w, h, seed=i)))
    if not images:
        raise SystemExit("no images to compare")

    print(f"eval transform vs PIL reference: Resize({P.resize_size_for(size)}) + CenterCrop({size})")
    print(f"{'kind':9} {'image':16} {'size':>9} | {'[0,255] max':>11} {'mean':>7} {'px != %':>7} | "
          f"{'normalised max':>14} {'mean':>9}")
    refs = {}
    for kind, name, data in images:
        ref = pil_reference(data, size)
        refs[name] = ref
        ours = ours_pixels(data, size)
        diff = np.abs(ours - ref)
        norm = np.abs(P.eval_transform(data, size).numpy() - P.normalize(ref).numpy())
        w, h = Image.open(io.BytesIO(data)).size
        print(f"{kind:9} {name:16} {w:>4}x{h:<4} | {diff.max():11.2f} {diff.mean():7.4f} "
              f"{100 * (diff > 0).mean():7.3f} | {norm.max():14.5f} {norm.mean():9.6f}")

    print("\nablations: mean |diff| in [0,255] units (max in parentheses), photos | synthetic")
    for label, attrs in ABLATIONS.items():
        stats = {"photo": [], "synthetic": []}
        with patched(**attrs):
            for kind, name, data in images:
                d = np.abs(ours_pixels(data, size) - refs[name])
                stats[kind].append((d.mean(), d.max()))
        cells = []
        for kind in ("photo", "synthetic"):
            if stats[kind]:
                arr = np.array(stats[kind])
                cells.append(f"{arr[:, 0].mean():7.4f} ({arr[:, 1].max():5.1f})")
            else:
                cells.append(f"{'-':>15}")
        print(f"  {label:54} {cells[0]} | {cells[1]}")


if __name__ == "__main__":
    main()
