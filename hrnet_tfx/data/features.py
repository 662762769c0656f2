"""The tf.Example feature keys of hrnet-tfx image records (the widely used ImageNet/TF-slim keys).

Records written by the converter and read by the training input, TFMA and the serving signature all use
these names, so other ImageNet tooling (TF-slim, the inception scripts' readers) can read our shards and
we can read theirs.
"""

IMAGE_ENCODED = "image/encoded"  # bytes: the JPEG file
IMAGE_FORMAT = "image/format"  # bytes: b"JPEG"
LABEL = "image/class/label"  # int64: 0-based index in sorted class-id order
SYNSET = "image/class/synset"  # bytes: class id, e.g. b"n01440764"
CLASS_TEXT = "image/class/text"  # bytes: human-readable class name
HEIGHT = "image/height"  # int64
WIDTH = "image/width"  # int64
CHANNELS = "image/channels"  # int64: 3
COLORSPACE = "image/colorspace"  # bytes: b"RGB"
FILENAME = "image/filename"  # bytes: file name relative to the split's root
BBOX_XMIN = "image/object/bbox/xmin"  # float list, normalised to [0, 1]
BBOX_YMIN = "image/object/bbox/ymin"
BBOX_XMAX = "image/object/bbox/xmax"
BBOX_YMAX = "image/object/bbox/ymax"
BBOX_LABEL = "image/object/bbox/label"  # int64 list

LABEL_MAP_FILENAME = "labels.tsv"
"""Written beside the shards and shipped with the model: ``index<TAB>class id<TAB>name`` per line."""
