"""``hrnet-tfx data make-sample`` and ``hrnet-tfx data convert`` through click."""

import io
import os

from click.testing import CliRunner
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402

from hrnet_tfx.cli.data import data  # noqa: E402
from hrnet_tfx.data import layout as L  # noqa: E402


def test_make_sample_then_convert(tmp_path):
    runner = CliRunner()
    sample, out = str(tmp_path / "sample"), str(tmp_path / "out")
    r = runner.invoke(data, ["make-sample", sample, "--classes", "3", "--train-per-class", "4",
                             "--val-per-class", "2", "--image-size", "16", "--corrupt"])
    assert r.exit_code == 0, r.output
    assert "wrote 15 train and 6 val images of 3 classes" in r.output
    args = ["convert", sample, out, "--train-shards", "2", "--eval-shards", "1", "--compression", "gzip"]
    r = runner.invoke(data, args + ["--", "--runner=FnApiRunner"])
    assert r.exit_code != 0 and "3 of 15 inputs (20.00%) are unusable" in r.output
    r = runner.invoke(data, args + ["--max-bad-fraction", "0.25", "--", "--runner=FnApiRunner",
                                    "--direct_num_workers=1"])
    assert r.exit_code == 0, r.output
    assert "train: 12 examples in 2 shards (3 re-encoded, 3 skipped)" in r.output
    assert sorted(os.listdir(L.split_dir(out, "train"))) == ["train-00000-of-00002.gz",
                                                             "train-00001-of-00002.gz"]
    assert L.load_manifest(out)["options"]["compression"] == "gzip"
    r = runner.invoke(data, args + ["--max-bad-fraction", "0.25"])
    assert r.exit_code == 0 and "already holds this conversion" in r.output


def test_convert_errors_are_clean_messages(tmp_path):
    runner = CliRunner()
    r = runner.invoke(data, ["convert", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert r.exit_code == 1 and "Error: input directory does not exist" in r.output
    r = runner.invoke(data, ["convert", str(tmp_path), str(tmp_path / "out"), "--layout", "coco"])
    assert r.exit_code == 2 and "'coco' is not one of" in r.output
    r = runner.invoke(data, ["convert", str(tmp_path), str(tmp_path / "out"), "--direct_num_workers=2"])
    assert r.exit_code == 2 and "No such option" in r.output  # Beam options go after --


def test_make_sample_refuses_non_empty_output(tmp_path):
    (tmp_path / "x").write_text("x")
    r = CliRunner().invoke(data, ["make-sample", str(tmp_path)])
    assert r.exit_code == 1 and "not empty" in r.output


def test_convert_max_image_mb_skips_larger_files_before_reading(tmp_path):
    runner = CliRunner()
    sample, out = str(tmp_path / "sample"), str(tmp_path / "out")
    assert runner.invoke(data, ["make-sample", sample, "--classes", "2", "--train-per-class", "2",
                                "--val-per-class", "1", "--image-size", "16", "--no-odd"]).exit_code == 0
    r = runner.invoke(data, ["convert", sample, out, "--train-shards", "1", "--eval-shards", "1",
                             "--max-image-mb", "0.0001", "--", "--runner=FnApiRunner"])  # 104 bytes
    assert r.exit_code == 1 and "train: 4 of 4 inputs (100.00%) are unusable" in r.output
    with open(os.path.join(out, L.STAGING_DIRNAME, L.BAD_FILES_FILENAME)) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    assert {r[2] for r in rows} == {"too_large"} and len(rows) == 6
    assert all(r[3].endswith("above the limit of 104 bytes") for r in rows)


def test_convert_help_describes_the_layouts_before_pointing_at_them():
    r = CliRunner().invoke(data, ["convert", "--help"])
    assert r.exit_code == 0 and "see below" not in r.output
    text = " ".join(r.output.split())
    assert text.index("Layouts: imagenet") < text.index("--layout") < text.index("the layouts are described above")


def _inception_records(path, labels):
    with tf.io.TFRecordWriter(str(path)) as w:
        for label in labels:
            out = io.BytesIO()
            Image.new("RGB", (8, 8), (40 * label, 0, 0)).save(out, format="JPEG")
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[out.getvalue()])),
                "image/class/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
            })).SerializeToString())


def test_convert_describes_tfrecord_input_in_files(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ["train-00000-of-00002", "train-00001-of-00002"]:
        _inception_records(src / name, [1, 2])
    _inception_records(src / "validation-00000-of-00001", [1, 2])
    r = CliRunner().invoke(data, ["convert", str(src), str(tmp_path / "out"), "--train-shards", "1",
                                  "--eval-shards", "1", "--", "--runner=FnApiRunner"])
    assert r.exit_code == 0, r.output
    assert "tfrecords layout: classes from the records; train 2 TFRecord files, eval 1 TFRecord file\n" in r.output
    assert "train: 4 examples in 1 shards (0 re-encoded, 0 skipped)" in r.output
