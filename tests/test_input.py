"""Fast tests of hrnet_tfx.data.input: the tf.data pipeline over tiny TFRecord shards."""

import gzip
import io
import shutil

import numpy as np
import pytest
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow: Keras 2)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.data import features, preprocessing  # noqa: E402
from hrnet_tfx.data.input import list_files, make_dataset, resolve_compression  # noqa: E402

NUM_FILES = 4
PER_FILE = 5
NUM_RECORDS = NUM_FILES * PER_FILE
SIZE = 32  # network input side in these tests
SIZES = [(40, 30), (30, 50), (20, 20), (64, 48), (33, 17)]  # non-square, most smaller than the crop


def jpeg_bytes(width, height, value):
    """A small JPEG whose mean colour encodes ``value`` (so images can be told apart after transforms)."""
    rng = np.random.default_rng(value)
    array = np.clip(rng.normal(value * 10 % 200 + 20, 15, (height, width, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def example(label, image=None, with_label=True, with_image=True):
    feature = {}
    if with_image:
        w, h = SIZES[label % len(SIZES)]
        feature[features.IMAGE_ENCODED] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[image or jpeg_bytes(w, h, label)])
        )
        feature[features.IMAGE_FORMAT] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"]))
    if with_label:
        feature[features.LABEL] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_shards(directory, suffix="", gzip_compress=False, num_files=NUM_FILES, per_file=PER_FILE, **kw):
    """Writes ``num_files`` shards; record labels are unique: 0 .. num_files * per_file - 1."""
    directory.mkdir(parents=True, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP" if gzip_compress else "")
    for f in range(num_files):
        with tf.io.TFRecordWriter(str(directory / f"train-{f:05d}-of-{num_files:05d}{suffix}"), options) as w:
            for i in range(per_file):
                w.write(example(f * per_file + i, **kw))
    return str(directory / "train-*")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("plain"), suffix=".tfrecord")


def labels_of(ds):
    return np.concatenate([y.numpy() for _, y in ds]).tolist()


def first_batch(ds):
    return next(iter(ds))


def test_eval_dataset_shapes_dtypes_and_covers_every_record_once(shards):
    ds = make_dataset(shards, training=False, batch_size=6, image_size=SIZE)
    batches = list(ds)
    assert [b[0].shape[0] for b in batches] == [6, 6, 6, 2]  # no repeat, partial last batch kept
    x, y = batches[0]
    assert x.dtype == tf.float32 and x.shape[1:] == (SIZE, SIZE, 3)
    assert y.dtype == tf.int32
    assert sorted(labels_of(batches)) == list(range(NUM_RECORDS))


def test_eval_images_are_the_eval_transform_of_the_record(shards):
    ds = make_dataset(shards, training=False, batch_size=NUM_RECORDS, image_size=SIZE)
    x, y = first_batch(ds)
    for image, label in zip(x.numpy(), y.numpy()):
        w, h = SIZES[label % len(SIZES)]
        expected = preprocessing.eval_transform(jpeg_bytes(w, h, int(label)), image_size=SIZE).numpy()
        np.testing.assert_allclose(image, expected, atol=2e-6)


def test_eval_dataset_is_deterministic(shards):
    a = list(make_dataset(shards, training=False, batch_size=7, image_size=SIZE))
    b = list(make_dataset(shards, training=False, batch_size=7, image_size=SIZE))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya.numpy(), yb.numpy())
        np.testing.assert_array_equal(xa.numpy(), xb.numpy())


def test_training_dataset_repeats_shuffles_and_drops_remainder(shards):
    ds = make_dataset(shards, training=True, batch_size=8, image_size=SIZE, seed=3, shuffle_buffer=5)
    batches = list(ds.take(6))  # 48 > 20 records: only possible with repeat
    assert all(x.shape == (8, SIZE, SIZE, 3) for x, _ in batches)
    assert ds.element_spec[0].shape.as_list() == [8, SIZE, SIZE, 3]  # static batch for Horovod/XLA
    labels = np.concatenate([y.numpy() for _, y in batches])
    assert set(labels.tolist()) == set(range(NUM_RECORDS))
    assert labels[:NUM_RECORDS].tolist() != sorted(labels[:NUM_RECORDS].tolist())


def test_training_with_seed_and_deterministic_is_reproducible(shards):
    def run(seed):
        ds = make_dataset(
            shards, training=True, batch_size=5, image_size=SIZE, seed=seed, deterministic=True, shuffle_buffer=8
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(5)]

    a, b, c = run(7), run(7), run(8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert any(not np.array_equal(ya, yc) for (_, ya), (_, yc) in zip(a, c))


def test_training_augments_the_same_record_differently_across_epochs(tmp_path):
    pattern = write_shards(tmp_path, num_files=1, per_file=1)
    ds = make_dataset(pattern, training=True, batch_size=1, image_size=SIZE, seed=0, shuffle_buffer=2)
    images = [x.numpy() for x, _ in ds.take(4)]
    assert not all(np.array_equal(images[0], other) for other in images[1:])


@pytest.mark.parametrize("num_shards", [2, 3, 4])
def test_sharding_across_ranks_covers_every_record_exactly_once(shards, num_shards):
    per_rank = [
        labels_of(make_dataset(shards, training=False, batch_size=3, image_size=SIZE, num_shards=num_shards, shard_index=r))
        for r in range(num_shards)
    ]
    flat = sorted(label for labels in per_rank for label in labels)
    assert flat == list(range(NUM_RECORDS))
    # whole files go to ranks: rank r reads sorted files r, r + n, ...
    for r, labels in enumerate(per_rank):
        assert {label // PER_FILE for label in labels} == set(range(r, NUM_FILES, num_shards))


def test_training_shards_are_disjoint_too(shards):
    seen = []
    for r in range(2):
        ds = make_dataset(
            shards, training=True, batch_size=5, image_size=SIZE, num_shards=2, shard_index=r, seed=1, shuffle_buffer=4
        )
        seen.append(set(np.concatenate([y.numpy() for _, y in ds.take(6)]).tolist()))
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(range(NUM_RECORDS))


def test_fewer_files_than_ranks_is_a_clear_error(shards):
    with pytest.raises(ValueError, match=r"4 input file\(s\) cannot be split across 5 workers"):
        make_dataset(shards, training=True, batch_size=2, image_size=SIZE, num_shards=5, shard_index=0)
    with pytest.raises(ValueError, match="shard_index"):
        make_dataset(shards, training=True, batch_size=2, image_size=SIZE, num_shards=2, shard_index=2)


def test_no_matching_files_names_the_pattern(tmp_path, shards):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(FileNotFoundError, match="nothing-"):
        make_dataset(pattern, training=False, batch_size=2, image_size=SIZE)
    with pytest.raises(FileNotFoundError, match="nothing-"):
        list_files([shards, pattern])
    with pytest.raises(FileNotFoundError, match="empty"):
        list_files([])


def test_list_files_sorts_and_deduplicates(shards):
    files = list_files([shards, shards])
    assert files == sorted(files) and len(files) == NUM_FILES


def test_compression_detected_from_extension_and_from_content(tmp_path):
    by_ext = write_shards(tmp_path / "ext", suffix=".tfrecord.gz", gzip_compress=True)
    by_content = write_shards(tmp_path / "content", suffix=".tfrecord", gzip_compress=True)
    plain = write_shards(tmp_path / "plain", suffix=".tfrecord")
    assert resolve_compression(list_files(by_ext)) == "gzip"
    assert resolve_compression(list_files(by_content)) == "gzip"
    assert resolve_compression(list_files(plain)) == "none"
    for pattern in (by_ext, by_content, plain):
        ds = make_dataset(pattern, training=False, batch_size=NUM_RECORDS, image_size=SIZE)
        assert sorted(labels_of(ds)) == list(range(NUM_RECORDS))


def test_plain_records_whose_first_bytes_look_like_gzip_are_not_misdetected(tmp_path):
    # A TFRecord starts with its first record's length (uint64 LE). Length 0x088B1F = 559903 begins with
    # 1f 8b 08, the GZIP magic: content detection must still say "plain".
    path = tmp_path / "tricky.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(b"\0" * 0x088B1F)
    assert path.read_bytes()[:3] == b"\x1f\x8b\x08"
    assert resolve_compression([str(path)]) == "none"


def test_compression_options_are_validated(tmp_path, shards):
    gz = write_shards(tmp_path / "gz", suffix=".tfrecord", gzip_compress=True)
    with pytest.raises(tf.errors.DataLossError):  # told 'none' for GZIP data: TF refuses to read it
        labels_of(make_dataset(gz, training=False, batch_size=4, image_size=SIZE, compression="none"))
    with pytest.raises(ValueError, match="compression must be"):
        make_dataset(shards, training=False, batch_size=4, image_size=SIZE, compression="zlib")
    mixed = tmp_path / "mixed"
    shutil.copytree(tmp_path / "gz", mixed)
    (mixed / "train-00000-of-00004.tfrecord").rename(mixed / "train-00000-of-00004.tfrecord.gz")
    with pytest.raises(ValueError, match="some input files end in .gz"):
        make_dataset(str(mixed / "*"), training=False, batch_size=4, image_size=SIZE)
    assert resolve_compression(list_files(gz), "GZIP") == "gzip"
    assert resolve_compression(list_files(gz), "none") == "none"  # explicit choice is not second-guessed


def test_gzip_detection_skips_empty_files(tmp_path):
    (tmp_path / "a-empty").write_bytes(b"")
    (tmp_path / "b-data").write_bytes(gzip.compress(b"x" * 100))
    assert resolve_compression([str(tmp_path / "a-empty"), str(tmp_path / "b-data")]) == "gzip"
    assert resolve_compression([str(tmp_path / "a-empty")]) == "none"


@pytest.mark.parametrize("missing,key", [("label", features.LABEL), ("image", features.IMAGE_ENCODED)])
def test_missing_feature_key_names_the_key(tmp_path, missing, key):
    kw = {"with_label": False} if missing == "label" else {"with_image": False}
    pattern = write_shards(tmp_path, num_files=1, per_file=2, **kw)
    with pytest.raises(tf.errors.InvalidArgumentError, match=key):
        labels_of(make_dataset(pattern, training=False, batch_size=2, image_size=SIZE))


def test_label_out_of_range_fails_when_num_classes_given(shards):
    ds = make_dataset(shards, training=False, batch_size=4, image_size=SIZE, num_classes=10)
    with pytest.raises(tf.errors.InvalidArgumentError, match="out of range for num_classes=10"):
        labels_of(ds)
    ok = make_dataset(shards, training=False, batch_size=4, image_size=SIZE, num_classes=NUM_RECORDS)
    assert len(labels_of(ok)) == NUM_RECORDS


def test_bad_arguments_are_rejected(shards):
    with pytest.raises(ValueError, match="image_size"):
        make_dataset(shards, training=False, batch_size=4, image_size=50)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(shards, training=False, batch_size=0)


def test_private_threadpool_option_is_applied(shards):
    ds = make_dataset(shards, training=False, batch_size=4, image_size=SIZE, threadpool_size=1)
    assert ds.options().threading.private_threadpool_size == 1
    assert sorted(labels_of(ds)) == list(range(NUM_RECORDS))
