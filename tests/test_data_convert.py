"""The Beam conversion (real Beam, in-process FnApiRunner): records, labels, shards, determinism, reports,
bad-input tolerance, restart after a crash, inception TFRecord import."""

import dataclasses
import filecmp
import io
import json
import os

import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from hrnet_tfx.data import convert as convert_lib  # noqa: E402
from hrnet_tfx.data import features as F  # noqa: E402
from hrnet_tfx.data import layout as L  # noqa: E402
from hrnet_tfx.data.convert import BadFractionError, ConvertOptions, convert  # noqa: E402
from hrnet_tfx.data.labels import DataError, read_label_map  # noqa: E402
from hrnet_tfx.data.sample import make_sample  # noqa: E402
from hrnet_tfx.data.sources import discover  # noqa: E402

BEAM = ["--runner=FnApiRunner"]
SMALL = ConvertOptions(train_shards=3, eval_shards=2, max_bad_fraction=0.1)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A sample with odd (fixable) and corrupt (skipped) files: 4 classes, 15 train + 4 val each."""
    root = tmp_path_factory.mktemp("sample")
    info = make_sample(str(root), num_classes=4, train_per_class=15, val_per_class=4, image_size=32,
                       corrupt=True)
    return str(root), info


@pytest.fixture(scope="module")
def converted(sample, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out") / "data")
    result = convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    return out, result


def read_split(out, split):
    """{shard file name: [tf.train.Example, ...]} for a split."""
    shards = {}
    for path in sorted(tf.io.gfile.glob(L.split_file_pattern(out, split))):
        compression = "GZIP" if path.endswith(".gz") else ""
        shards[os.path.basename(path)] = [
            tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path, compression)]
    return shards


def feat(ex, key):
    f = ex.features.feature[key]
    return list(getattr(f, f.WhichOneof("kind")).value) if f.WhichOneof("kind") else []


def test_layout_and_manifest(converted):
    out, result = converted
    assert sorted(os.listdir(out)) == sorted(["Split-train", "Split-eval", "labels.tsv", "bad_files.tsv",
                                              "fixed_files.tsv", "manifest.json"])
    assert sorted(os.listdir(os.path.join(out, "Split-train"))) == [
        "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003"]
    assert sorted(os.listdir(os.path.join(out, "Split-eval"))) == [
        "validation-00000-of-00002", "validation-00001-of-00002"]
    manifest = L.load_manifest(out)
    assert manifest == result.manifest and not result.reused
    assert manifest["splits"]["train"]["num_examples"] == 60 and manifest["splits"]["train"]["num_bad"] == 3
    assert manifest["splits"]["eval"]["num_examples"] == 16 and manifest["num_classes"] == 4


def test_shard_sizes_differ_by_at_most_one(converted):
    sizes = [len(v) for v in read_split(converted[0], "train").values()]
    assert sum(sizes) == 60 and max(sizes) - min(sizes) <= 1


def test_records_labels_and_label_map(sample, converted):
    root, info = sample
    out, _ = converted
    classes = read_label_map(out)
    assert [(c.index, c.id, c.name) for c in classes] == [(i, w, n) for i, (w, n) in enumerate(info["classes"])]
    seen = set()
    for examples in read_split(out, "train").values():
        for ex in examples:
            name = feat(ex, F.FILENAME)[0].decode()
            wnid = name.split("/")[0]
            label = feat(ex, F.LABEL)[0]
            assert classes[label].id == wnid
            assert feat(ex, F.SYNSET) == [wnid.encode()]
            assert feat(ex, F.CLASS_TEXT) == [classes[label].name.encode()]
            assert feat(ex, F.IMAGE_FORMAT) == [b"JPEG"] and feat(ex, F.COLORSPACE) == [b"RGB"]
            assert feat(ex, F.CHANNELS) == [3] and feat(ex, F.HEIGHT) == [32] and feat(ex, F.WIDTH) == [32]
            seen.add(name)
    assert len(seen) == 60


def test_valid_jpegs_kept_byte_for_byte_and_odd_files_fixed(sample, converted):
    root, info = sample
    out, _ = converted
    odd = {rel: kind for rel, kind in info["odd_files"]}
    by_name = {feat(ex, F.FILENAME)[0].decode(): ex
               for split in L.SPLITS for exs in read_split(out, split).values() for ex in exs}
    for rel in ["train/n01440764/n01440764_3.JPEG", "train/n01491361/n01491361_0.JPEG"]:  # plain, progressive
        with open(os.path.join(root, rel), "rb") as f:
            assert feat(by_name[rel.split("/", 1)[1]], F.IMAGE_ENCODED)[0] == f.read()
    for rel, kind in odd.items():
        if kind == "progressive":
            continue
        encoded = feat(by_name[rel.split("/", 1)[1]], F.IMAGE_ENCODED)[0]
        img = Image.open(io.BytesIO(encoded))
        assert (img.format, img.mode) == ("JPEG", "RGB")
        decoded = tf.io.decode_jpeg(encoded)  # what training does
        assert decoded.shape == (32, 32, 3)
    with open(os.path.join(out, "fixed_files.tsv")) as f:
        fixed = [line.rstrip("\n").split("\t") for line in f][1:]
    assert sorted(p for _, p, _ in fixed) == sorted(
        r.split("/", 1)[1] for r, k in odd.items() if k != "progressive")


def test_val_boxes_normalised(sample, converted):
    root, _ = sample
    out, _ = converted
    with open(os.path.join(root, "LOC_val_solution.csv")) as f:
        rows = dict(line.strip().split(",") for line in f.readlines()[1:])
    for exs in read_split(out, "eval").values():
        for ex in exs:
            stem = feat(ex, F.FILENAME)[0].decode()[:-5]
            wnid, *coords = rows[stem].split()
            xmin, ymin, xmax, ymax = (float(v) / 32 for v in coords)
            assert feat(ex, F.BBOX_XMIN) == pytest.approx([xmin]) and feat(ex, F.BBOX_YMAX) == pytest.approx([ymax])
            assert feat(ex, F.BBOX_LABEL) == feat(ex, F.LABEL)
            assert feat(ex, F.SYNSET) == [wnid.encode()]


def test_bad_files_report(converted):
    out, _ = converted
    with open(os.path.join(out, "bad_files.tsv")) as f:
        lines = [line.rstrip("\n").split("\t") for line in f]
    assert lines[0] == ["split", "path", "reason", "detail"]
    assert sorted((s, p, r) for s, p, r, _ in lines[1:]) == [
        ("train", "n01440764/n01440764_empty.JPEG", "empty"),
        ("train", "n01440764/n01440764_notimage.JPEG", "not_an_image"),
        ("train", "n01440764/n01440764_truncated.JPEG", "truncated")]


def test_deterministic_byte_identical_output(sample, converted, tmp_path):
    out2 = str(tmp_path / "again")
    convert(discover(sample[0]), out2, SMALL, beam_args=BEAM)
    out, _ = converted
    for split in L.SPLITS:
        names = sorted(os.listdir(L.split_dir(out, split)))
        assert names == sorted(os.listdir(L.split_dir(out2, split)))
        match, mismatch, errors = filecmp.cmpfiles(L.split_dir(out, split), L.split_dir(out2, split), names,
                                                   shallow=False)
        assert not mismatch and not errors
    for name in ["labels.tsv", "manifest.json", "bad_files.tsv"]:
        assert filecmp.cmp(os.path.join(out, name), os.path.join(out2, name), shallow=False)


def test_seed_changes_the_order(sample, converted, tmp_path):
    out2 = str(tmp_path / "seeded")
    convert(discover(sample[0]), out2, ConvertOptions(train_shards=3, eval_shards=2, max_bad_fraction=0.1,
                                                      seed="other"), beam_args=BEAM)
    a = [feat(e, F.FILENAME) for exs in read_split(converted[0], "train").values() for e in exs]
    b = [feat(e, F.FILENAME) for exs in read_split(out2, "train").values() for e in exs]
    assert sorted(a) == sorted(b) and a != b


def test_gzip_shards_and_more_shards_than_images(sample, tmp_path):
    out = str(tmp_path / "gz")
    convert(discover(sample[0]), out, ConvertOptions(train_shards=2, eval_shards=20, compression="gzip",
                                                     max_bad_fraction=0.1), beam_args=BEAM)
    shards = read_split(out, "eval")
    assert sorted(shards) == [f"validation-{i:05d}-of-00020.gz" for i in range(20)]
    assert sum(len(v) for v in shards.values()) == 16 and min(len(v) for v in shards.values()) == 0
    with open(os.path.join(L.split_dir(out, "train"), "train-00000-of-00002.gz"), "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # really gzip
    again = str(tmp_path / "gz2")
    convert(discover(sample[0]), again, ConvertOptions(train_shards=2, eval_shards=20, compression="gzip",
                                                       max_bad_fraction=0.1), beam_args=BEAM)
    names = sorted(os.listdir(L.split_dir(out, "train")))
    assert not filecmp.cmpfiles(L.split_dir(out, "train"), L.split_dir(again, "train"), names,
                                shallow=False)[1]  # GZIP output is deterministic too


def test_reusing_a_complete_output_and_refusing_another(sample, converted, tmp_path):
    out, _ = converted
    before = os.stat(os.path.join(out, "manifest.json")).st_mtime_ns
    again = convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    assert again.reused and os.stat(os.path.join(out, "manifest.json")).st_mtime_ns == before
    with pytest.raises(DataError, match="already holds a complete conversion"):
        convert(discover(sample[0]), out, ConvertOptions(train_shards=2, eval_shards=2, max_bad_fraction=0.1),
                beam_args=BEAM)


def test_output_directory_with_foreign_files_is_refused(sample, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds files that are not from a conversion.*notes.txt"):
        convert(discover(sample[0]), str(tmp_path), SMALL, beam_args=BEAM)


def test_bad_fraction_failure_publishes_nothing_then_rerun_with_higher_limit(sample, tmp_path):
    out = str(tmp_path / "strict")
    strict = ConvertOptions(train_shards=3, eval_shards=2)  # default max_bad_fraction 0.001
    with pytest.raises(BadFractionError, match=r"train: 3 of 63 inputs \(4.76%\) are unusable.*bad_files.tsv"):
        convert(discover(sample[0]), out, strict, beam_args=BEAM)
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    assert not os.path.exists(L.split_dir(out, "train"))
    with pytest.raises(L.IncompleteOutputError):
        L.load_manifest(out)
    assert not os.path.exists(os.path.join(out, "bad_files.tsv"))  # the report stays in staging
    with open(os.path.join(out, L.STAGING_DIRNAME, "bad_files.tsv")) as f:
        assert len(f.readlines()) == 4
    result = convert(discover(sample[0]), out, SMALL, beam_args=BEAM)  # finished shards are reused
    assert result.manifest["splits"]["train"]["num_examples"] == 60


class _Crash(RuntimeError):
    pass


def test_restart_after_a_crash(sample, converted, tmp_path, monkeypatch):
    out = str(tmp_path / "crashy")
    calls = {"n": 0}
    real = convert_lib.prepare_image

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 40:  # dies in the middle of a shard, after some shards are finished
            raise _Crash("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_lib, "prepare_image", crashing)
    with pytest.raises(_Crash, match="simulated kill"):
        convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    monkeypatch.setattr(convert_lib, "prepare_image", real)

    staging = os.path.join(out, L.STAGING_DIRNAME)
    assert sorted(os.listdir(out)) == [L.STAGING_DIRNAME]  # nothing a reader could take for complete
    with pytest.raises(L.IncompleteOutputError):
        L.load_manifest(out)
    finished = sorted(os.listdir(os.path.join(staging, "results")))
    assert 0 < len(finished) < 5
    partial = [n for s in L.SPLITS for n in os.listdir(os.path.join(staging, L.split_dirname(s)))
               if ".inprogress-" in n]
    assert partial  # the shard being written when it died
    os.makedirs(L.split_dir(out, "train"))  # as if killed while publishing: must not be trusted
    with open(os.path.join(L.split_dir(out, "train"), "train-00000-of-00003"), "w") as f:
        f.write("half")

    convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    assert not os.path.exists(staging)
    assert calls["n"] > 40
    ref, _ = converted
    for split in L.SPLITS:
        names = sorted(os.listdir(L.split_dir(ref, split)))
        assert sorted(os.listdir(L.split_dir(out, split))) == names  # no temporary files published
        _, mismatch, errors = filecmp.cmpfiles(L.split_dir(ref, split), L.split_dir(out, split), names,
                                               shallow=False)
        assert not mismatch and not errors


def test_restart_redoes_only_unfinished_shards(sample, tmp_path, monkeypatch):
    out = str(tmp_path / "resume")
    real = convert_lib.prepare_image
    state = {"n": 0}

    def crashing(*args, **kwargs):
        state["n"] += 1
        if state["n"] > 40:
            raise _Crash("simulated kill")
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_lib, "prepare_image", crashing)
    with pytest.raises(_Crash, match="simulated kill"):
        convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    done = len(os.listdir(os.path.join(out, L.STAGING_DIRNAME, "results")))

    planned = []
    real_run = convert_lib._run_beam
    monkeypatch.setattr(convert_lib, "prepare_image", real)
    monkeypatch.setattr(convert_lib, "_run_beam", lambda pending, *a: (planned.extend(pending),
                                                                        real_run(pending, *a)))
    convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    assert len(planned) == 5 - done


def test_changed_input_discards_the_unfinished_run(sample, tmp_path, monkeypatch):
    out = str(tmp_path / "changed")
    real = convert_lib.prepare_image
    monkeypatch.setattr(convert_lib, "prepare_image",
                        lambda *a, **k: (_ for _ in ()).throw(_Crash("simulated kill")))
    with pytest.raises(_Crash, match="simulated kill"):
        convert(discover(sample[0]), out, SMALL, beam_args=BEAM)
    monkeypatch.setattr(convert_lib, "prepare_image", real)
    config = json.load(open(os.path.join(out, L.STAGING_DIRNAME, "config.json")))
    other = ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.1)
    result = convert(discover(sample[0]), out, other, beam_args=BEAM)
    assert result.manifest["config_hash"] != config["config_hash"]
    assert len(os.listdir(L.split_dir(out, "train"))) == 2


# --- inception/TF-slim TFRecords import -------------------------------------------------------------

def _inception_example(label, synset, text, jpeg, name, box_labels=()):
    feature = {
        F.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[jpeg])),
        F.IMAGE_FORMAT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"JPEG"])),
        F.LABEL: tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
        F.SYNSET: tf.train.Feature(bytes_list=tf.train.BytesList(value=[synset.encode()])),
        F.CLASS_TEXT: tf.train.Feature(bytes_list=tf.train.BytesList(value=[text.encode()])),
        F.FILENAME: tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
    }
    if box_labels:
        feature[F.BBOX_LABEL] = tf.train.Feature(int64_list=tf.train.Int64List(value=list(box_labels)))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


SYNSETS = [("n01440764", "tench"), ("n01443537", "goldfish"), ("n01484850", "great white shark")]


@pytest.fixture(scope="module")
def inception_dir(tmp_path_factory):
    """Inception-format shards: labels 1..3 (1-based, 0 = background), 2 train files, 1 validation."""
    root = tmp_path_factory.mktemp("inception")
    out = io.BytesIO()
    Image.new("RGB", (12, 10), (1, 2, 3)).save(out, format="JPEG")
    jpeg = out.getvalue()
    n = 0
    for split, files, per_file in [("train", 2, 7), ("validation", 1, 6)]:
        for f in range(files):
            path = str(root / f"{split}-{f:05d}-of-{files:05d}")
            with tf.io.TFRecordWriter(path) as w:
                for i in range(per_file):
                    k = n % 3
                    n += 1
                    w.write(_inception_example(k + 1, *SYNSETS[k], jpeg + bytes([n]), f"{split}_{n}.JPEG",
                                               box_labels=[k + 1]))
    return str(root), jpeg


def test_inception_tfrecords_import(inception_dir, tmp_path):
    root, jpeg = inception_dir
    out = str(tmp_path / "imported")
    result = convert(discover(root), out, ConvertOptions(train_shards=4, eval_shards=2), beam_args=BEAM)
    assert result.manifest["layout"] == "tfrecords"
    assert [(c.index, c.id, c.name) for c in read_label_map(out)] == [(i, s, t) for i, (s, t) in enumerate(SYNSETS)]
    train = read_split(out, "train")
    assert sorted(train) == [f"train-{i:05d}-of-00004" for i in range(4)]
    examples = [e for exs in train.values() for e in exs]
    assert len(examples) == 14 and sum(len(v) for v in read_split(out, "eval").values()) == 6
    for ex in examples:
        label = feat(ex, F.LABEL)[0]
        assert SYNSETS[label][0].encode() == feat(ex, F.SYNSET)[0]  # 1-based -> 0-based
        assert feat(ex, F.BBOX_LABEL) == [label]
        assert feat(ex, F.IMAGE_ENCODED)[0][:-1] == jpeg  # image bytes untouched
    again = str(tmp_path / "again")
    convert(discover(root), again, ConvertOptions(train_shards=4, eval_shards=2), beam_args=BEAM)
    names = sorted(os.listdir(L.split_dir(out, "train")))
    assert not filecmp.cmpfiles(L.split_dir(out, "train"), L.split_dir(again, "train"), names,
                                shallow=False)[1]


def test_inception_import_bad_records_and_cut_short_file(inception_dir, tmp_path):
    root, jpeg = inception_dir
    src = tmp_path / "src"
    src.mkdir()
    for name in os.listdir(root):
        with open(os.path.join(root, name), "rb") as f:
            data = f.read()
        if name.startswith("train-00001"):
            data = data[:-30]  # cut short inside its last record
        (src / name).write_bytes(data)
    with tf.io.TFRecordWriter(str(src / "validation-00001-of-00002")) as w:
        w.write(_inception_example(0, "background", "", jpeg, "bg.JPEG"))  # label 0: nothing in 0-based
        w.write(b"not a proto at all \xff\xff")
    os.rename(src / "validation-00000-of-00001", src / "validation-00000-of-00002")
    out = str(tmp_path / "out")
    with pytest.raises(BadFractionError, match="unusable"):
        convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1), beam_args=BEAM)
    with open(os.path.join(out, L.STAGING_DIRNAME, "bad_files.tsv")) as f:
        bad = sorted((s, p, r) for s, p, r, _ in (line.rstrip("\n").split("\t") for line in f.readlines()[1:]))
    assert bad == [("eval", "validation-00001-of-00002#0", "bad_label"),
                   ("eval", "validation-00001-of-00002#1", "bad_record"),
                   ("train", "train-00001-of-00002", "lost_records")]
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1,
                                                             max_bad_fraction=0.5), beam_args=BEAM)
    assert result.manifest["splits"]["train"]["num_examples"] == 13
    assert result.manifest["splits"]["eval"]["num_examples"] == 6


def test_imagefolder_conversion_with_unreadable_and_oddly_named_files(tmp_path):
    src = tmp_path / "folders"
    for split, per in [("train", 3), ("val", 1)]:
        for k, cls in enumerate(["cats", "dogs"]):
            d = src / split / cls
            d.mkdir(parents=True)
            for i in range(per):
                Image.new("RGB", (10, 8), (80 * k, 40, 200 - 80 * k)).save(d / f"{i}.jpg")
    (src / "train" / "dogs" / "gone.jpg").symlink_to(src / "nowhere.jpg")  # listed, cannot be read
    odd_name = os.fsdecode(b"caf\xe9.jpg")  # not valid UTF-8
    Image.new("RGB", (10, 8)).save(os.path.join(os.fsencode(src / "train" / "cats"), b"caf\xe9.jpg"))
    out = str(tmp_path / "out")
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1,
                                                             max_bad_fraction=0.2), beam_args=BEAM)
    assert result.manifest["layout"] == "imagefolder"
    assert [(c.index, c.id) for c in read_label_map(out)] == [(0, "cats"), (1, "dogs")]
    with open(os.path.join(out, "bad_files.tsv")) as f:
        assert [line.split("\t")[:3] for line in f.readlines()[1:]] == [["train", "dogs/gone.jpg", "unreadable"]]
    names = {feat(e, F.FILENAME)[0]: feat(e, F.LABEL)[0]
             for exs in read_split(out, "train").values() for e in exs}
    assert names[b"cats/caf\xe9.jpg"] == 0 and names[b"dogs/2.jpg"] == 1 and len(names) == 7
    assert odd_name.encode("utf-8", "surrogateescape") == b"caf\xe9.jpg"


# --- damaged TFRecords: lost records count, corrupt records are skipped one by one ----------------------

def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in examples:
            w.write(e)


def _inception_shards(root, jpeg, files=2, per_file=100):
    examples = [_inception_example(1 + i % 3, *SYNSETS[i % 3], jpeg, f"{i}.JPEG") for i in range(per_file)]
    for f in range(files):
        _write_records(root / f"train-{f:05d}-of-{files:05d}", examples)
    _write_records(root / "validation-00000-of-00001", examples[:10])
    return examples


def test_truncated_tfrecord_counts_its_lost_records_against_the_limit(inception_dir, tmp_path):
    """Half of a shard cut off: 50 records lost of 200 fails a 1% limit (it used to count as 1 bad input)."""
    _, jpeg = inception_dir
    src = tmp_path / "src"
    src.mkdir()
    _inception_shards(src, jpeg)
    path = src / "train-00001-of-00002"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    out = str(tmp_path / "out")
    with pytest.raises(BadFractionError, match=r"train: 50 of 200 inputs \(25.00%\) are unusable"):
        convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.01),
                beam_args=BEAM)
    with open(os.path.join(out, L.STAGING_DIRNAME, "bad_files.tsv")) as f:
        (row,) = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    assert row[:3] == ["train", "train-00001-of-00002", "lost_records"]
    assert "50 records read, about 50 lost after them (estimated from the undamaged files' median count 100" \
        in row[3]
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.3),
                     beam_args=BEAM)
    assert result.manifest["splits"]["train"]["num_examples"] == 150
    assert result.manifest["splits"]["train"]["num_bad"] == 50


def test_corrupt_record_in_the_middle_is_skipped_alone(inception_dir, tmp_path):
    """A record whose data fails its CRC while the length headers after it are intact: only that record is
    lost (TF's own reader stops at the first corrupt record and would lose the other 96)."""
    _, jpeg = inception_dir
    src = tmp_path / "src"
    src.mkdir()
    _inception_shards(src, jpeg)
    path = src / "train-00000-of-00002"
    data = bytearray(path.read_bytes())
    record_bytes = len(data) // 100  # equal-sized records
    data[3 * record_bytes + 12 + 40] ^= 0xFF  # inside the data of record 3
    path.write_bytes(bytes(data))
    out = str(tmp_path / "out")
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.01),
                     beam_args=BEAM)
    assert result.manifest["splits"]["train"]["num_examples"] == 199
    with open(os.path.join(out, "bad_files.tsv")) as f:
        rows = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    assert rows == [["train", "train-00000-of-00002#3", "bad_record", "corrupt record data (CRC mismatch)"]]


def test_record_with_two_images_is_refused(inception_dir, tmp_path):
    _, jpeg = inception_dir
    src = tmp_path / "src"
    src.mkdir()
    two = tf.train.Example.FromString(_inception_example(1, *SYNSETS[0], jpeg, "two.JPEG"))
    two.features.feature[F.IMAGE_ENCODED].bytes_list.value.append(jpeg)
    _write_records(src / "train-00000-of-00001", [_inception_example(1, *SYNSETS[0], jpeg, "a.JPEG"),
                                                  two.SerializeToString()])
    _write_records(src / "validation-00000-of-00001", [_inception_example(1, *SYNSETS[0], jpeg, "v.JPEG")])
    out = str(tmp_path / "out")
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=1, eval_shards=1, max_bad_fraction=0.5),
                     beam_args=BEAM)
    assert result.manifest["splits"]["train"]["num_examples"] == 1
    with open(os.path.join(out, "bad_files.tsv")) as f:
        assert f.readlines()[1].split("\t")[1:3] == ["train-00000-of-00001#1", "bad_record"]


# --- overwrite keeps the old conversion until the new one is complete --------------------------------

def test_overwrite_keeps_the_old_conversion_until_the_new_one_is_complete(sample, tmp_path, monkeypatch):
    out = str(tmp_path / "out")
    old = convert(discover(sample[0]), out, SMALL, beam_args=BEAM).manifest
    old_shards = read_split(out, "train")
    other = ConvertOptions(train_shards=2, eval_shards=1, max_bad_fraction=0.1)

    with pytest.raises(BadFractionError):  # a new conversion that fails leaves the old one as it was
        convert(discover(sample[0]), out, dataclasses.replace(other, seed="x", max_bad_fraction=0.0),
                beam_args=BEAM, overwrite=True)
    assert L.load_manifest(out) == old and read_split(out, "train") == old_shards

    seen = []
    real = convert_lib.prepare_image

    def watching(*args, **kwargs):  # while the new shards are written, the old conversion is intact
        seen.append(L.load_manifest(out)["config_hash"])
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_lib, "prepare_image", watching)
    new = convert(discover(sample[0]), out, other, beam_args=BEAM, overwrite=True).manifest
    assert set(seen) == {old["config_hash"]} and len(seen) == 79
    assert L.load_manifest(out) == new != old
    assert sorted(os.listdir(L.split_dir(out, "train"))) == ["train-00000-of-00002", "train-00001-of-00002"]
    assert sorted(os.listdir(out)) == sorted(["Split-train", "Split-eval", "labels.tsv", "bad_files.tsv",
                                              "fixed_files.tsv", "manifest.json"])


def test_report_cells_escape_tabs_newlines_and_undecodable_bytes():
    assert L.tsv_cell("cats/a\tb\nc.jpg") == "cats/a\\tb\\nc.jpg"
    assert L.tsv_cell("back\\slash") == "back\\\\slash"
    assert L.tsv_cell(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert L.tsv_cell("plain café 1.jpg") == "plain café 1.jpg"


def test_label_map_cells_are_escaped_like_the_reports(tmp_path):
    """One cell writer for every TSV: a class id with a tab or a byte that is not UTF-8 reads the same in
    labels.tsv as in bad_files.tsv, and every class stays one line of three columns."""
    from hrnet_tfx.data.labels import ClassInfo, write_label_map

    path = str(tmp_path / "labels.tsv")
    write_label_map(path, [ClassInfo(0, "a\tb", "x\ny"), ClassInfo(1, "c\udcff", "z  w")])
    assert open(path, encoding="utf-8").read().split("\n") == ["0\ta\\tb\tx\\ny", "1\tc\\xff\tz  w", ""]
    assert L.tsv_cell("c\udcff") == "c\\xff"
    classes = [ClassInfo(0, "a\tb", "x\ny"), ClassInfo(1, "AC\\DC", "back\\slash\\t \u2028 caf\u00e9")]
    write_label_map(path, classes)
    assert read_label_map(path) == classes  # read back as written, escapes undone


def test_imported_record_images_are_checked_like_image_files(inception_dir, tmp_path):
    """A record whose JPEG header claims 60000x60000 pixels is refused before any decoding (training would
    decode it), a CMYK JPEG is re-encoded as RGB, a valid RGB JPEG keeps its bytes."""
    import struct

    _, jpeg = inception_dir
    bomb = bytearray(jpeg)
    sof = bomb.find(b"\xff\xc0")
    bomb[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    cmyk = io.BytesIO()
    Image.new("RGB", (12, 10), (200, 40, 40)).convert("CMYK").save(cmyk, format="JPEG")
    src = tmp_path / "src"
    src.mkdir()
    _write_records(src / "train-00000-of-00001", [_inception_example(1, *SYNSETS[0], jpeg, "ok.JPEG"),
                                                  _inception_example(1, *SYNSETS[0], bytes(bomb), "bomb.JPEG"),
                                                  _inception_example(2, *SYNSETS[1], cmyk.getvalue(), "cmyk.JPEG")])
    _write_records(src / "validation-00000-of-00001", [_inception_example(1, *SYNSETS[0], jpeg, "v.JPEG")])
    out = str(tmp_path / "out")
    result = convert(discover(str(src)), out, ConvertOptions(train_shards=1, eval_shards=1, max_bad_fraction=0.5),
                     beam_args=BEAM)
    assert result.manifest["splits"]["train"]["num_fixed"] == 1
    with open(os.path.join(out, "bad_files.tsv")) as f:
        (bad,) = [line.rstrip("\n").split("\t") for line in f.readlines()[1:]]
    assert bad[1:3] == ["train-00000-of-00001#1", "too_large"] and "3600000000 pixels" in bad[3]
    with open(os.path.join(out, "fixed_files.tsv")) as f:
        assert f.readlines()[1].rstrip("\n").split("\t") == ["train", "train-00000-of-00001#2", "JPEG CMYK"]
    by_name = {feat(e, F.FILENAME)[0]: e for exs in read_split(out, "train").values() for e in exs}
    assert feat(by_name[b"ok.JPEG"], F.IMAGE_ENCODED) == [jpeg]
    fixed = by_name[b"cmyk.JPEG"]
    assert Image.open(io.BytesIO(feat(fixed, F.IMAGE_ENCODED)[0])).mode == "RGB"
    assert (feat(fixed, F.HEIGHT), feat(fixed, F.WIDTH), feat(fixed, F.COLORSPACE)) == ([10], [12], [b"RGB"])
