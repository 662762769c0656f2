"""torchvision's ImageNet eval transform written with PIL only: the yardstick that
:func:`hrnet_tfx.data.preprocessing.eval_transform` is measured against (tests, and
benchmarks/compare_eval_transform.py). Deliberately independent of :mod:`preprocessing`: it spells out
torchvision's own rules (crop fraction 0.875, ``int()`` sizes, rounded crop offsets) instead of
importing our constants, so a wrong constant there shows up as a parity failure.
"""

import io

import numpy as np
from PIL import Image


def pil_reference(image_bytes: bytes, image_size: int = 224) -> np.ndarray:
    """``Resize(int(size / 0.875))`` (PIL bilinear) + ``CenterCrop(size)``; float32 ``[size, size, 3]`` in
    [0, 255] (before normalisation)."""
    resize = int(image_size / 0.875)
    im = Image.open(io.BytesIO(image_bytes)).convert("RGB")
    w, h = im.size
    if w <= h:
        new_w, new_h = resize, int(resize * h / w)
    else:
        new_w, new_h = int(resize * w / h), resize
    im = im.resize((new_w, new_h), Image.BILINEAR)
    top = int(round((new_h - image_size) / 2.0))
    left = int(round((new_w - image_size) / 2.0))
    return np.asarray(im.crop((left, top, left + image_size, top + image_size)), np.float32)
