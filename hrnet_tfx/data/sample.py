"""A small synthetic dataset in the ImageNet layout, for tests and the demo.

::

    OUTPUT/train/<wnid>/<wnid>_<i>.JPEG     class folders, like ILSVRC2012_img_train
    OUTPUT/val/ILSVRC2012_val_<8 digits>.JPEG   flat, like ILSVRC2012_img_val
    OUTPUT/LOC_val_solution.csv             Kaggle's validation labels with one box per image
    OUTPUT/LOC_synset_mapping.txt           Kaggle's class names

Each class has its own colour and stripe direction (plus noise, random phase and brightness), so a tiny
model learns the classes in a few steps. Like ImageNet, a few files are odd and must be fixed by the
converter: a CMYK JPEG, a PNG named .JPEG, grayscale JPEGs and a progressive JPEG. With ``corrupt=True``
three unusable files are added too (cut short, empty, not an image); the converter skips and reports
them, so convert such a sample with a ``max_bad_fraction`` above their share. The same arguments always
give the same bytes.
"""

from __future__ import annotations

import colorsys
import io

import numpy as np
from PIL import Image

from hrnet_tfx.data import storage
from hrnet_tfx.data.labels import DataError

IMAGENET_FIRST_CLASSES = (
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
    ("n01491361", "tiger shark, Galeocerdo cuvieri"),
    ("n01494475", "hammerhead, hammerhead shark"),
    ("n01496331", "electric ray, crampfish, numbfish, torpedo"),
    ("n01498041", "stingray"),
    ("n01514668", "cock"),
    ("n01514859", "hen"),
    ("n01518878", "ostrich, Struthio camelus"),
)
"""The first ten ILSVRC2012 classes (wnid, name); more classes get synthetic ids ``n99000010``, ..."""

CORRUPT_FILES = ("truncated", "empty", "notimage")


def sample_classes(num_classes: int) -> list[tuple[str, str]]:
    """(wnid, name) of the sample's classes, in sorted wnid order."""
    known = list(IMAGENET_FIRST_CLASSES[:num_classes])
    extra = [(f"n99{k:06d}", f"synthetic class {k}") for k in range(len(known), num_classes)]
    return sorted(known + extra)


def class_image(k: int, num_classes: int, size: int, rng: np.random.RandomState) -> np.ndarray:
    """An HxWx3 uint8 image of class ``k``: the class's hue, stripes at the class's angle, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = np.pi * k / num_classes
    period = size / rng.uniform(3.0, 5.0)
    stripes = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
                                 + rng.uniform(0, 2 * np.pi))
    colour = np.array(colorsys.hsv_to_rgb(k / num_classes, 0.85, 1.0), np.float32)
    brightness = rng.uniform(0.6, 1.0)
    img = 255.0 * brightness * colour * (0.45 + 0.55 * stripes)[..., None]
    img += rng.normal(0.0, 10.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_photo(width: int, height: int, seed: int = 0, shapes: int = 4) -> np.ndarray:
    """A photo-like RGB uint8 image (smooth gradients, soft discs, texture and sensor-like noise) for
    tests and benchmarks that need realistic JPEG statistics rather than flat colours."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack(
        [
            128 + 90 * np.sin(x / (7 + 5 * rng.random()) + y / 23.0),
            128 + 90 * np.cos(y / (5 + 9 * rng.random()) - x / 31.0),
            255 * (x + y) / (width + height),
        ],
        axis=-1,
    )
    for _ in range(shapes):
        cx, cy, r = rng.random() * width, rng.random() * height, 5 + rng.random() * min(width, height) / 3
        mask = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        img[mask] = img[mask] * 0.4 + rng.random(3) * 150
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, kind: str) -> bytes:
    img = Image.fromarray(array)
    out = io.BytesIO()
    if kind == "png":
        img.save(out, format="PNG")
    elif kind == "cmyk":
        img.convert("CMYK").save(out, format="JPEG", quality=90)
    elif kind == "gray":
        img.convert("L").save(out, format="JPEG", quality=90)
    elif kind == "progressive":
        img.save(out, format="JPEG", quality=90, progressive=True)
    else:
        img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def make_sample(output_dir: str, num_classes: int = 4, train_per_class: int = 20, val_per_class: int = 5,
                image_size: int = 64, seed: int = 0, odd: bool = True, corrupt: bool = False) -> dict:
    """Writes the sample dataset to ``output_dir`` (which must be empty or not exist).

    Args:
      output_dir: where to write: a local path or a URL of any TensorFlow file system (``gs://...``,
        ``ram://...``); files are written through :func:`hrnet_tfx.data.storage.write_file`.
      num_classes: number of classes (>= 1).
      train_per_class / val_per_class: images per class in train and val (>= 1).
      image_size: width and height in pixels (>= 8).
      seed: random seed; the same arguments give the same files.
      odd: include the odd-but-fixable files (CMYK, PNG named .JPEG, grayscale, progressive).
      corrupt: add three unusable files to the first train class (cut-short, empty, not an image).

    Returns:
      A summary: counts, the class table, and the relative paths of the odd and corrupt files.
    """
    if num_classes < 1 or train_per_class < 1 or val_per_class < 1 or image_size < 8:
        raise ValueError("need num_classes, train_per_class, val_per_class >= 1 and image_size >= 8")
    if storage.exists(output_dir):
        if not storage.is_dir(output_dir):
            raise DataError(f"output directory is a file: {output_dir}")
        if any(storage.list_dir(output_dir)):
            raise DataError(f"output directory is not empty: {output_dir}")
    rng = np.random.RandomState(seed)
    classes = sample_classes(num_classes)
    odd_kinds = ["cmyk", "png", "gray", "progressive"] if odd else []
    odd_files, corrupt_files = [], []

    for j, (wnid, _) in enumerate(c for c in classes for _ in range(train_per_class)):
        k, i = j // train_per_class, j % train_per_class
        # the first image of successive classes (wrapping to later images) gets an odd kind
        odd_index = (i * num_classes + k) if i * num_classes + k < len(odd_kinds) else None
        kind = odd_kinds[odd_index] if odd_index is not None else "jpeg"
        rel = f"train/{wnid}/{wnid}_{i}.JPEG"
        storage.write_file(storage.join(output_dir, rel), _encode(class_image(k, num_classes, image_size, rng), kind))
        if kind != "jpeg":
            odd_files.append((rel, kind))

    val_labels = [k for k in range(num_classes) for _ in range(val_per_class)]
    order = rng.permutation(len(val_labels))
    rows = []
    for n, idx in enumerate(order, 1):
        k = val_labels[idx]
        name = f"ILSVRC2012_val_{n:08d}"
        kind = "gray" if odd and n == 1 else "jpeg"
        storage.write_file(storage.join(output_dir, "val", name + ".JPEG"),
                           _encode(class_image(k, num_classes, image_size, rng), kind))
        if kind != "jpeg":
            odd_files.append((f"val/{name}.JPEG", kind))
        x0, y0 = rng.randint(0, image_size // 3, size=2)
        x1, y1 = rng.randint(2 * image_size // 3, image_size, size=2)
        rows.append(f"{name},{classes[k][0]} {x0} {y0} {x1} {y1} ")

    if corrupt:
        wnid = classes[0][0]
        good = _encode(class_image(0, num_classes, image_size, rng), "jpeg")
        for what, data in zip(CORRUPT_FILES, (good[: len(good) // 2], b"", b"this is not an image\n")):
            rel = f"train/{wnid}/{wnid}_{what}.JPEG"
            storage.write_file(storage.join(output_dir, rel), data)
            corrupt_files.append((rel, what))

    storage.write_file(storage.join(output_dir, "LOC_val_solution.csv"),
                       ("ImageId,PredictionString\n" + "".join(r + "\n" for r in sorted(rows))).encode("utf-8"))
    storage.write_file(storage.join(output_dir, "LOC_synset_mapping.txt"),
                       "".join(f"{wnid} {name}\n" for wnid, name in classes).encode("utf-8"))
    return {"classes": classes, "train_images": num_classes * train_per_class + len(corrupt_files),
            "val_images": num_classes * val_per_class, "odd_files": odd_files,
            "corrupt_files": corrupt_files}
