"""The conversion's settings and their defaults, owned here for the converter, the ``ImageExampleGen``
component, ``hrnet-tfx data convert`` and the pipeline config (which take them from
:class:`ConvertOptions`), and the choices each accepts. Nothing heavy is imported, so the command's
``--help`` stays instant.
"""

from __future__ import annotations

import dataclasses

from hrnet_tfx.data.layout import TRAIN

LAYOUTS = ("auto", "imagenet", "imagefolder", "tfrecords")
"""Input layouts (:mod:`hrnet_tfx.data.sources`); ``auto`` detects the layout."""
DEFAULT_LAYOUT = "auto"
FINGERPRINTS = ("dirs", "files")
"""What the input fingerprint covers (:func:`hrnet_tfx.data.sources.discover`)."""
DEFAULT_FINGERPRINT = "dirs"
COMPRESSIONS = ("none", "gzip")
VERIFY_MODES = ("markers", "decode")
"""How kept JPEGs are checked (:func:`hrnet_tfx.data.images.prepare_image`)."""
INCEPTION_LABEL_OFFSET = 1
"""Inception/TF-slim ImageNet records number classes 1..1000 (0 = background, 1001 outputs): subtract 1."""


@dataclasses.dataclass(frozen=True)
class ConvertOptions:
    """Conversion settings.

    Attributes:
      train_shards / eval_shards: fixed shard counts (inception's 1024 / 128 by default).
      compression: ``none`` (default) or ``gzip``. JPEG bytes are already entropy-coded: GZIP shrinks
        the shards by well under 1% (0.3% on benchmarks/bench_convert.py's photo-like JPEGs) while
        costing CPU on every write and on every read of every epoch, and a GZIP file can only be read
        sequentially; so uncompressed is the default.
      max_bad_fraction: fail when a split has more unusable inputs than this fraction (ImageNet's odd
        files are fixed, not counted).
      verify: how kept JPEGs are checked, see :func:`hrnet_tfx.data.images.prepare_image`.
      label_offset: subtracted from imported TFRecords' labels (1 for inception/TF-slim's 1-based
        labels); unused for image inputs.
      seed: the shuffle key; the same seed and input give byte-identical shards.
      max_image_bytes: the largest input file read (64 MiB by default; ImageNet's largest JPEG is a few
        MB), and the largest imported TFRecord record. Larger files are skipped and reported as
        ``too_large`` before they are read, so a huge or endless file cannot exhaust a worker's memory.
    """

    train_shards: int = 1024
    eval_shards: int = 128
    compression: str = "none"
    max_bad_fraction: float = 0.001
    verify: str = "markers"
    label_offset: int = INCEPTION_LABEL_OFFSET
    seed: str = "hrnet-tfx"
    max_image_bytes: int = 64 * 2**20

    def __post_init__(self):
        if self.train_shards < 1 or self.eval_shards < 1:
            raise ValueError(f"shard counts must be >= 1, got {self.train_shards}/{self.eval_shards}")
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {COMPRESSIONS}, got {self.compression!r}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {self.verify!r}")
        if self.max_image_bytes < 1:
            raise ValueError(f"max_image_bytes must be >= 1, got {self.max_image_bytes}")

    def num_shards(self, split: str) -> int:
        """The shard count of ``split``."""
        return self.train_shards if split == TRAIN else self.eval_shards

    def content_dict(self) -> dict:
        """The settings that change the shards' bytes (max_bad_fraction does not)."""
        d = dataclasses.asdict(self)
        del d["max_bad_fraction"]
        return d
