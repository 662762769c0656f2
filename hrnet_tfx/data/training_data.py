"""What a data directory tells the trainer: file patterns, label map, class and example counts.

One mapping from converted data (``hrnet-tfx data convert`` output or an Examples artifact, see
:mod:`hrnet_tfx.data.layout`) or inception/TF-slim TFRecords to :class:`~hrnet_tfx.training.TrainConfig`
fields, used by ``hrnet-tfx train``/``hrnet-tfx mpijob`` and the HorovodTrainer component.
"""

from __future__ import annotations

import logging
import os

from hrnet_tfx.data import layout
from hrnet_tfx.data.features import LABEL_MAP_FILENAME
from hrnet_tfx.data.options import INCEPTION_LABEL_OFFSET

log = logging.getLogger(__name__)

INCEPTION_PATTERNS = {layout.TRAIN: "train-*-of-*", layout.EVAL: "validation-*-of-*"}
"""Shard names of inception/TF-slim TFRecords (1-based labels), read as they are."""


class NotTrainingDataError(ValueError):
    """A directory holds neither converted data nor inception-format TFRecords."""


def training_data_settings(data_dir: str, require_manifest: bool = True) -> dict:
    """Training-config fields for ``data_dir``.

    Converted data (``Split-train/``): the split file patterns, ``label_map`` when ``labels.tsv`` exists,
    and ``num_classes``/``num_train_examples`` from ``manifest.json``, so nothing is counted. Without a
    complete manifest this raises :class:`~hrnet_tfx.data.layout.IncompleteOutputError` (an unfinished
    conversion), unless ``require_manifest`` is false (Examples from another ExampleGen): then every file
    of each ``Split-*`` directory is read and the trainer counts the records.

    Inception/TF-slim TFRecords (``train-*-of-*``, ``validation-*-of-*``): those patterns and
    ``label_offset`` 1 (their labels are 1-based).

    Raises:
      NotTrainingDataError: neither layout is found.
    """
    import tensorflow as tf

    if tf.io.gfile.isdir(layout.split_dir(data_dir, layout.TRAIN)):
        try:
            manifest = layout.load_manifest(data_dir)
        except layout.IncompleteOutputError:
            if require_manifest:
                raise
            return {"train_files": os.path.join(layout.split_dir(data_dir, layout.TRAIN), "*"),
                    "eval_files": os.path.join(layout.split_dir(data_dir, layout.EVAL), "*")}
        label_map = os.path.join(data_dir, LABEL_MAP_FILENAME)
        return {
            "train_files": layout.split_file_pattern(data_dir, layout.TRAIN),
            "eval_files": layout.split_file_pattern(data_dir, layout.EVAL),
            "label_map": label_map if tf.io.gfile.exists(label_map) else "",
            "num_classes": manifest["num_classes"],
            "num_train_examples": manifest["splits"][layout.TRAIN]["num_examples"],
        }
    if tf.io.gfile.glob(os.path.join(data_dir, INCEPTION_PATTERNS[layout.TRAIN])):
        log.info("%s holds inception-format TFRecords: reading them as they are, labels shifted from 1-based",
                 data_dir)
        return {
            "train_files": os.path.join(data_dir, INCEPTION_PATTERNS[layout.TRAIN]),
            "eval_files": os.path.join(data_dir, INCEPTION_PATTERNS[layout.EVAL]),
            "label_offset": INCEPTION_LABEL_OFFSET,
        }
    raise NotTrainingDataError(
        f"{data_dir}: neither 'hrnet-tfx data convert' output (Split-train/) nor inception-format "
        "TFRecords (train-*-of-*)"
    )
