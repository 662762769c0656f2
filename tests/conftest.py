"""Shared test setup: Keras 2 everywhere, quiet TensorFlow, and the tiny network config."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import base64  # noqa: E402
import io  # noqa: E402
import pathlib  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402

import pytest  # noqa: E402

import hrnet_tfx  # noqa: E402,F401

REPO = pathlib.Path(__file__).resolve().parent.parent
TINY_CONFIG = REPO / "hrnet_tfx" / "configs" / "tiny.yaml"
FIXTURES = REPO / "tests" / "fixtures"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (free when asked; tests bind it soon after)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def jpeg_claiming(width: int, height: int) -> bytes:
    """A valid 16x16 JPEG whose frame header (SOF0) claims ``width`` x ``height`` pixels: a decoder that
    trusts the header would allocate for the claimed size."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(out, format="JPEG")
    data = bytearray(out.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def b64(data: bytes) -> dict:
    """``{"b64": ...}``: binary data in TF Serving's REST JSON."""
    return {"b64": base64.b64encode(data).decode("ascii")}


@pytest.fixture(scope="session")
def tiny_config_path() -> pathlib.Path:
    """Path of the packaged tiny network config (64x64 inputs in tests)."""
    return TINY_CONFIG


def write_color_records(root: pathlib.Path, train: int = 48, eval_: int = 12, shards=(4, 2), seed: int = 0):
    """Tiny learnable TFRecords: class ``c`` images are noisy shades of one colour (red/green/blue).

    Writes ``root/train/train-*``, ``root/eval/eval-*`` and ``root/labels.tsv``; returns ``root``.
    """
    import io

    import numpy as np
    import tensorflow as tf
    from PIL import Image

    from hrnet_tfx.data import features as F

    rng = np.random.RandomState(seed)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]

    def example(label: int) -> bytes:
        h, w = rng.randint(64, 97, size=2)
        pixels = np.clip(np.array(colors[label])[None, None] + rng.randn(h, w, 3) * 30, 0, 255).astype("uint8")
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        feature = {
            F.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[buf.getvalue()])),
            F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        }
        return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()

    for split, count, num_shards in (("train", train, shards[0]), ("eval", eval_, shards[1])):
        (root / split).mkdir(parents=True, exist_ok=True)
        for s in range(num_shards):
            with tf.io.TFRecordWriter(str(root / split / f"{split}-{s:05d}-of-{num_shards:05d}")) as writer:
                for i in range(s, count, num_shards):
                    writer.write(example(i % 3))
    (root / "labels.tsv").write_text("0\tr\tred\n1\tg\tgreen\n2\tb\tblue\n")
    return root


@pytest.fixture(scope="session")
def color_records(tmp_path_factory) -> pathlib.Path:
    """Session-wide tiny colour dataset (see :func:`write_color_records`)."""
    return write_color_records(tmp_path_factory.mktemp("color_records"))
