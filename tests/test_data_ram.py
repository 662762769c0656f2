"""The data conversion on a file system other than the local disk: TensorFlow's in-process ``ram://``, which
goes through the same tf.io.gfile calls as ``gs://``. Discovery of every layout, a Beam conversion (in-process
FnApiRunner) with input and output on ram://, and the ImageExampleGen driver and executor on ram://."""

import os
import uuid

import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
from tfx.dsl.components.base import base_beam_executor  # noqa: E402
from tfx.types import standard_artifacts  # noqa: E402

from hrnet_tfx.components.image_example_gen import Driver, Executor  # noqa: E402
from hrnet_tfx.data import layout as L  # noqa: E402
from hrnet_tfx.data.convert import ConvertOptions, convert  # noqa: E402
from hrnet_tfx.data.labels import read_label_map  # noqa: E402
from hrnet_tfx.data.sample import make_sample  # noqa: E402
from hrnet_tfx.data.sources import discover  # noqa: E402

import test_data_sources as S  # noqa: E402  (the local layout builders)

BEAM = ["--runner=FnApiRunner"]


def to_ram(local_root) -> str:
    """Copies a local tree to a fresh ram:// directory (directories made explicitly, as an object store
    lists them) and returns its URL."""
    root = f"ram://{uuid.uuid4().hex}/input"
    tf.io.gfile.makedirs(root)
    for dirpath, dirnames, filenames in os.walk(local_root):
        rel = os.path.relpath(dirpath, local_root)
        target = root if rel == "." else f"{root}/{rel}"
        for d in dirnames:
            tf.io.gfile.makedirs(f"{target}/{d}")
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as src, tf.io.gfile.GFile(f"{target}/{name}", "wb") as dst:
                dst.write(src.read())
    return root


def _sorted_val(root):
    S._train(root)
    for w in S.WNIDS:
        S._touch(os.path.join(root, "val", w, f"ILSVRC2012_val_{w}.JPEG"))


def _kaggle_flat(root):
    S._train(root)
    S._flat_val(root, S.VAL_LABELS)
    S._kaggle_csv(root, S.VAL_LABELS)
    S._synset_mapping(root)


def _devkit_flat(root):
    S._train(root)
    S._flat_val(root, S.VAL_LABELS)
    S._devkit(root, S.VAL_LABELS)


def _kaggle_nested(root):
    nested = os.path.join(root, "ILSVRC", "Data", "CLS-LOC")
    S._train(nested)
    S._flat_val(nested, S.VAL_LABELS)
    S._kaggle_csv(root, S.VAL_LABELS)
    with open(os.path.join(root, "LOC_train_solution.csv"), "w") as f:
        f.write("ImageId,PredictionString\nn01443537_1,n01443537 1 1 4 4 \n")


def _imagefolder(root):
    S._train(root, ["Zebra", "cat"], per_class=1)
    S._touch(os.path.join(root, "train", "cat", "more", "deep.png"))
    S._touch(os.path.join(root, "train", "cat", ".DS_Store"), b"junk")
    S._touch(os.path.join(root, "validation", "cat", "x.jpg"))


def _tfrecords(root):
    os.makedirs(root, exist_ok=True)
    for name in ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001", "README"]:
        S._touch(os.path.join(root, name), b"")


LAYOUTS = {"imagenet_sorted_val": ("imagenet", _sorted_val), "imagenet_kaggle_csv": ("imagenet", _kaggle_flat),
           "imagenet_devkit": ("imagenet", _devkit_flat), "imagenet_kaggle_nested": ("imagenet", _kaggle_nested),
           "imagefolder": ("imagefolder", _imagefolder), "tfrecords": ("tfrecords", _tfrecords)}


def _summary(ds, root):
    """Everything discovery found, with the root replaced so local and ram:// compare equal."""
    return (ds.layout, [(c.index, c.id, c.name) for c in ds.classes],
            {name: (s.kind, s.root.replace(root, "ROOT"), [(it.relpath, it.label, it.boxes) for it in s.items],
                    s.files) for name, s in ds.splits.items()})


@pytest.mark.parametrize("case", sorted(LAYOUTS))
def test_every_layout_is_discovered_on_ram_as_on_local_disk(case, tmp_path):
    expected_layout, build = LAYOUTS[case]
    local = str(tmp_path / "data")
    build(local)
    ram = to_ram(local)
    on_disk, on_ram = discover(local), discover(ram)
    assert on_ram.layout == expected_layout
    assert on_ram.input_dir == ram
    assert _summary(on_ram, ram) == _summary(on_disk, local)
    assert discover(ram).fingerprint == on_ram.fingerprint  # stable


def test_ram_fingerprint_changes_when_a_file_is_added_or_renamed(tmp_path):
    local = str(tmp_path / "data")
    _imagefolder(local)
    ram = to_ram(local)
    fp = discover(ram).fingerprint
    tf.io.gfile.copy(f"{ram}/train/cat/cat_0.JPEG", f"{ram}/train/cat/new.JPEG")
    added = discover(ram).fingerprint
    tf.io.gfile.rename(f"{ram}/train/cat/new.JPEG", f"{ram}/train/cat/renamed.JPEG")
    renamed = discover(ram).fingerprint
    assert len({fp, added, renamed}) == 3


@pytest.fixture(scope="module")
def ram_sample(tmp_path_factory):
    local = tmp_path_factory.mktemp("sample")
    make_sample(str(local), num_classes=3, train_per_class=6, val_per_class=2, image_size=16, corrupt=True)
    return str(local), to_ram(str(local))


def _shards(out, split):
    return {os.path.basename(p): [r.numpy() for r in tf.data.TFRecordDataset(p)]
            for p in sorted(tf.io.gfile.glob(L.split_file_pattern(out, split)))}


def test_conversion_with_input_and_output_on_ram_matches_local(ram_sample, tmp_path):
    local, ram = ram_sample
    options = ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.2)
    out_ram = ram.replace("/input", "/converted")
    result = convert(discover(ram), out_ram, options, beam_args=BEAM)
    local_out = str(tmp_path / "local")
    convert(discover(local), local_out, options, beam_args=BEAM)
    assert sorted(tf.io.gfile.listdir(out_ram)) == sorted(
        ["Split-train", "Split-eval", "labels.tsv", "bad_files.tsv", "fixed_files.tsv", "manifest.json"])
    assert L.load_manifest(out_ram) == result.manifest
    assert result.manifest["splits"]["train"]["num_examples"] == 18
    assert result.manifest["splits"]["train"]["num_bad"] == 3
    for split in L.SPLITS:
        assert _shards(out_ram, split) == _shards(local_out, split)  # the same records, byte for byte
    assert read_label_map(out_ram) == read_label_map(local_out)
    with tf.io.gfile.GFile(f"{out_ram}/bad_files.tsv") as f:
        assert sorted(line.split("\t")[2] for line in f.read().splitlines()[1:]) == ["empty", "not_an_image",
                                                                                        "truncated"]


def _exec_properties(input_base):
    return dict(input_base=input_base, layout="auto", fingerprint="dirs", train_shards=2, eval_shards=1,
                compression="none", max_bad_fraction=0.2, verify="markers", label_offset=1, seed="hrnet-tfx",
                max_image_bytes=ConvertOptions.max_image_bytes)


def test_example_gen_driver_and_executor_on_ram(ram_sample):
    _, ram = ram_sample
    props = Driver(None).resolve_exec_properties(_exec_properties(ram), None, None)
    assert props["input_fingerprint"] == discover(ram).fingerprint
    examples = standard_artifacts.Examples()
    examples.uri = ram.replace("/input", "/artifact")
    executor = Executor(base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=BEAM))
    executor.Do({}, {"examples": [examples]}, props)
    assert examples.get_int_custom_property("num_classes") == 3
    assert sorted(tf.io.gfile.listdir(f"{examples.uri}/Split-train")) == ["train-00000-of-00002",
                                                                          "train-00001-of-00002"]
    assert sum(len(v) for v in _shards(examples.uri, "train").values()) == 18


def test_tfrecord_import_on_ram_plain_and_gzip(tmp_path):
    """Inception-style shards on ram://, one of them GZIP and one cut short: counted, imported and reported
    through tf.io.gfile as on local disk."""
    import gzip

    from test_data_convert import SYNSETS, _inception_example, _write_records

    local = tmp_path / "records"
    local.mkdir()
    jpeg = S.JPEG
    examples = [_inception_example(1 + i % 3, *SYNSETS[i % 3], jpeg, f"{i}.JPEG") for i in range(20)]
    _write_records(local / "train-00000-of-00003", examples)
    _write_records(local / "plain", examples)
    (local / "train-00001-of-00003.gz").write_bytes(gzip.compress((local / "plain").read_bytes()))
    _write_records(local / "plain", examples[:15])
    fifteen = (local / "plain").read_bytes()
    _write_records(local / "plain", examples[:16])
    sixteen = (local / "plain").read_bytes()
    cut = sixteen[:(len(fifteen) + len(sixteen)) // 2]  # 15 records, then half of the 16th
    (local / "train-00002-of-00003").write_bytes(cut)
    (local / "plain").unlink()
    _write_records(local / "validation-00000-of-00001", examples[:5])
    ram = to_ram(str(local))
    out = ram.replace("/input", "/out")
    result = convert(discover(ram), out, ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.1),
                     beam_args=BEAM)
    train = result.manifest["splits"]["train"]
    assert (train["num_examples"], train["num_bad"], train["num_inputs"]) == (55, 5, 60)
    with tf.io.gfile.GFile(f"{out}/bad_files.tsv") as f:
        (row,) = [line.split("\t") for line in f.read().splitlines()[1:]]
    assert row[1:3] == ["train-00002-of-00003", "lost_records"] and "about 5 lost" in row[3]
    assert read_label_map(out)[0].id == SYNSETS[0][0]


def test_make_sample_writes_to_ram_what_it_writes_to_local_disk(tmp_path):
    """``hrnet-tfx data make-sample`` with a ram:// (bucket-like) directory: the same files, byte for byte,
    as on local disk; discovered like it; a second run into the now non-empty directory is refused."""
    from click.testing import CliRunner

    from hrnet_tfx.cli.data import data

    ram = f"ram://{uuid.uuid4().hex}/sample"
    args = ["--classes", "2", "--train-per-class", "3", "--val-per-class", "2", "--image-size", "16", "--corrupt"]
    r = CliRunner().invoke(data, ["make-sample", ram] + args)
    assert r.exit_code == 0, r.output
    local = tmp_path / "sample"
    assert CliRunner().invoke(data, ["make-sample", str(local)] + args).exit_code == 0
    files = sorted(os.path.relpath(os.path.join(d, f), local) for d, _, fs in os.walk(local) for f in fs)
    assert len(files) == 2 * 3 + 3 + 2 * 2 + 2
    for rel in files:
        with tf.io.gfile.GFile(f"{ram}/{rel}", "rb") as f:
            assert f.read() == (local / rel).read_bytes(), rel
    ds = discover(ram)
    assert (ds.layout, len(ds.splits["train"].items), len(ds.splits["eval"].items)) == ("imagenet", 9, 4)
    r = CliRunner().invoke(data, ["make-sample", ram] + args)
    assert r.exit_code == 1 and "not empty" in r.output
