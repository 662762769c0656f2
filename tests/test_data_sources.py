"""Input discovery: every layout, labels and class names, early errors, the fingerprint."""

import io
import os
import shutil

import numpy as np
import pytest
import scipy.io
from PIL import Image

from hrnet_tfx.data.labels import DataError, read_devkit_meta
from hrnet_tfx.data.sources import discover

WNIDS = ["n01440764", "n01443537", "n01484850"]  # sorted; the devkit numbers them differently below
NAMES = {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
DEVKIT_IDS = {"n01484850": 1, "n01440764": 2, "n01443537": 3}  # deliberately not alphabetical


def _jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(out, format="JPEG")
    return out.getvalue()


JPEG = _jpeg()


def _touch(path, data=JPEG):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _train(root, classes=WNIDS, per_class=2):
    for c in classes:
        for i in range(per_class):
            _touch(os.path.join(root, "train", c, f"{c}_{i}.JPEG"))


def _flat_val(root, labels):
    """labels: list of wnids; image n (1-based) gets labels[n-1]."""
    for n in range(1, len(labels) + 1):
        _touch(os.path.join(root, "val", f"ILSVRC2012_val_{n:08d}.JPEG"))


def _kaggle_csv(root, labels, name="LOC_val_solution.csv"):
    with open(os.path.join(root, name), "w") as f:
        f.write("ImageId,PredictionString\n")
        for n, wnid in enumerate(labels, 1):
            f.write(f"ILSVRC2012_val_{n:08d},{wnid} 1 2 6 7 {wnid} 0 0 3 3 \n")


def _synset_mapping(root):
    with open(os.path.join(root, "LOC_synset_mapping.txt"), "w") as f:
        f.writelines(f"{w} {NAMES[w]}\n" for w in WNIDS)


def make_meta_mat(path, ids=DEVKIT_IDS):
    """A meta.mat shaped like the ILSVRC2012 devkit's: a (N, 1) struct array 'synsets' with leaf classes
    (num_children 0) and one non-leaf synset that must be ignored."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
              "num_train_images"]
    rows = [(i, w, NAMES[w], 0) for w, i in sorted(ids.items(), key=lambda kv: kv[1])]
    rows.append((len(rows) + 1, "n00000001", "entity", 2))
    synsets = np.zeros((len(rows), 1), dtype=[(f, object) for f in fields])
    for k, (i, wnid, words, nchild) in enumerate(rows):
        synsets[k, 0] = (np.array([[i]], np.uint16), np.array([wnid]), np.array([words]),
                         np.array(["a gloss"]), np.array([[nchild]], np.uint8), np.zeros((1, 0)),
                         np.array([[0]], np.uint8), np.array([[1300]], np.uint16))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, {"synsets": synsets})


def _devkit(root, labels):
    data = os.path.join(root, "ILSVRC2012_devkit_t12", "data")
    make_meta_mat(os.path.join(data, "meta.mat"))
    with open(os.path.join(data, "ILSVRC2012_validation_ground_truth.txt"), "w") as f:
        f.writelines(f"{DEVKIT_IDS[w]}\n" for w in labels)


def _labels(split):
    return {it.relpath: it.label for it in split.items}


VAL_LABELS = ["n01484850", "n01440764", "n01443537", "n01440764"]


def test_imagenet_sorted_val(tmp_path):
    _train(tmp_path)
    for w in WNIDS:
        _touch(os.path.join(tmp_path, "val", w, f"ILSVRC2012_val_{w}.JPEG"))
    ds = discover(str(tmp_path))
    assert ds.layout == "imagenet"  # train folders are WordNet ids
    assert [(c.index, c.id, c.name) for c in ds.classes] == [(i, w, w) for i, w in enumerate(WNIDS)]
    assert _labels(ds.splits["train"])["n01443537/n01443537_1.JPEG"] == 1
    assert len(ds.splits["train"].items) == 6
    assert _labels(ds.splits["eval"]) == {f"{w}/ILSVRC2012_val_{w}.JPEG": i for i, w in enumerate(WNIDS)}


def test_imagenet_flat_val_with_kaggle_csv_and_boxes(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _kaggle_csv(tmp_path, VAL_LABELS)
    _synset_mapping(tmp_path)
    ds = discover(str(tmp_path))
    assert [c.name for c in ds.classes] == ["tench", "goldfish", "great white shark"]
    items = ds.splits["eval"].items
    assert [it.label for it in items] == [WNIDS.index(w) for w in VAL_LABELS]
    assert items[0].relpath == "ILSVRC2012_val_00000001.JPEG"
    assert [(b.class_id, b.xmin, b.ymin, b.xmax, b.ymax) for b in items[0].boxes] == [
        ("n01484850", 1, 2, 6, 7), ("n01484850", 0, 0, 3, 3)]


def test_imagenet_flat_val_with_devkit_maps_ids_through_meta_mat(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _devkit(tmp_path, VAL_LABELS)
    ds = discover(str(tmp_path))
    assert ds.layout == "imagenet"
    # labels are positions in sorted wnid order, not the devkit's IDs minus one
    assert [it.label for it in ds.splits["eval"].items] == [2, 0, 1, 0]
    assert [c.name for c in ds.classes] == ["tench", "goldfish", "great white shark"]  # from meta.mat


def test_devkit_meta_reader_skips_non_leaf_synsets(tmp_path):
    make_meta_mat(str(tmp_path / "meta.mat"))
    assert read_devkit_meta(str(tmp_path / "meta.mat")) == {
        1: ("n01484850", "great white shark"), 2: ("n01440764", "tench"), 3: ("n01443537", "goldfish")}


def test_kaggle_nested_root_and_train_boxes(tmp_path):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    _train(root)
    _flat_val(root, VAL_LABELS)
    _kaggle_csv(tmp_path, VAL_LABELS)
    with open(tmp_path / "LOC_train_solution.csv", "w") as f:
        f.write("ImageId,PredictionString\nn01443537_1,n01443537 1 1 4 4 \n")
    ds = discover(str(tmp_path))
    assert ds.splits["train"].root == str(root / "train")
    boxed = [it for it in ds.splits["train"].items if it.boxes]
    assert [it.relpath for it in boxed] == ["n01443537/n01443537_1.JPEG"]


def test_imagefolder_any_classes_nested_and_split_names(tmp_path):
    classes = ["Zebra", "cat", "dog house"]  # sorted in Python string order: 'Z' < 'c'
    _train(tmp_path, classes, per_class=1)
    _touch(os.path.join(tmp_path, "train", "cat", "more", "deep.png"))
    _touch(os.path.join(tmp_path, "train", "cat", ".DS_Store"), b"junk")
    _touch(os.path.join(tmp_path, "validation", "dog house", "x.jpg"))
    ds = discover(str(tmp_path))
    assert ds.layout == "imagefolder"
    assert [(c.index, c.id, c.name) for c in ds.classes] == [(0, "Zebra", "Zebra"), (1, "cat", "cat"),
                                                              (2, "dog house", "dog house")]
    assert _labels(ds.splits["train"]) == {"Zebra/Zebra_0.JPEG": 0, "cat/cat_0.JPEG": 1,
                                           "cat/more/deep.png": 1, "dog house/dog house_0.JPEG": 2}
    assert _labels(ds.splits["eval"]) == {"dog house/x.jpg": 2}


@pytest.mark.parametrize("name", ["val", "validation", "eval"])
def test_imagefolder_eval_folder_names(tmp_path, name):
    _train(tmp_path, ["a", "b"], per_class=1)
    _touch(os.path.join(tmp_path, name, "b", "1.jpg"))
    assert _labels(discover(str(tmp_path)).splits["eval"]) == {"b/1.jpg": 1}


def test_tfrecords_layout(tmp_path):
    for name in ["train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001", "README"]:
        _touch(os.path.join(tmp_path, name), b"")
    ds = discover(str(tmp_path))
    assert ds.layout == "tfrecords" and ds.classes == []
    assert ds.splits["train"].files == ["train-00000-of-00002", "train-00001-of-00002"]
    assert ds.splits["eval"].files == ["validation-00000-of-00001"]


def _error(tmp_path, match, **kw):
    with pytest.raises(DataError, match=match):
        discover(str(tmp_path), **kw)


def test_missing_input_directory(tmp_path):
    _error(tmp_path / "nope", "input directory does not exist")


def test_missing_train_or_val(tmp_path):
    _error(tmp_path, "cannot tell the layout")
    _error(tmp_path, "train folder does not exist", layout="imagefolder")
    _train(tmp_path)
    _error(tmp_path, "no validation folder")


def test_empty_class_folder(tmp_path):
    _train(tmp_path)
    os.makedirs(tmp_path / "train" / "n01530575")
    os.makedirs(tmp_path / "val" / WNIDS[0])
    _error(tmp_path, r"empty class folder \(no files\): .*train/n01530575")
    shutil.rmtree(tmp_path / "train" / "n01530575")
    _error(tmp_path, f"empty class folder .*val/{WNIDS[0]}")


def test_empty_class_folder_only_hidden_files(tmp_path):
    _train(tmp_path, ["a", "b"], per_class=1)
    _touch(os.path.join(tmp_path, "train", "c", ".hidden"))
    _touch(os.path.join(tmp_path, "val", "a", "1.jpg"))
    _error(tmp_path, "empty class folder .*train/c")


def test_label_file_names_unknown_images(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS[:3])
    _kaggle_csv(tmp_path, VAL_LABELS)  # names ILSVRC2012_val_00000004, which does not exist
    _error(tmp_path, r"LOC_val_solution.csv names 1 images that are not in .*val.*ILSVRC2012_val_00000004")


def test_images_without_labels(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _kaggle_csv(tmp_path, VAL_LABELS[:3])
    _error(tmp_path, r"1 images in .*val have no label in .*LOC_val_solution.csv")


def test_devkit_ground_truth_names_unknown_images(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS[:2])
    _devkit(tmp_path, VAL_LABELS)
    _error(tmp_path, r"validation_ground_truth.txt names 2 images that are not in")


def test_devkit_ground_truth_without_meta_mat(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _devkit(tmp_path, VAL_LABELS)
    os.remove(tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat")
    _error(tmp_path, "needs the devkit's meta.mat")


def test_flat_val_without_any_labels(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _error(tmp_path, "is flat .* no labels were found", layout="imagenet")
    _error(tmp_path, "has no class folders", layout="imagefolder")


def test_label_naming_unknown_class(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, ["n09999999"])
    _kaggle_csv(tmp_path, ["n09999999"])
    _error(tmp_path, "labelled 'n09999999', which is not a train class")


def test_val_class_folder_not_in_train(tmp_path):
    _train(tmp_path, ["a", "b"], per_class=1)
    _touch(os.path.join(tmp_path, "val", "c", "1.jpg"))
    _error(tmp_path, r"class folders not among the train classes: \['c'\]")


def test_ambiguous_val_folders(tmp_path):
    _train(tmp_path, ["a"], per_class=1)
    _touch(os.path.join(tmp_path, "val", "a", "1.jpg"))
    _touch(os.path.join(tmp_path, "validation", "a", "1.jpg"))
    _error(tmp_path, "ambiguous validation folders")


def test_tfrecords_missing_split(tmp_path):
    _touch(os.path.join(tmp_path, "train-00000-of-00001"), b"")
    _error(tmp_path, r"no validation-\*-of-\* TFRecord files")


def test_unknown_layout_name(tmp_path):
    with pytest.raises(ValueError, match="layout must be one of"):
        discover(str(tmp_path), layout="coco")


def _tree(tmp_path):
    _train(tmp_path, ["a", "b"], per_class=2)
    _touch(os.path.join(tmp_path, "val", "a", "1.jpg"))


def test_fingerprint_stable_and_sensitive_to_added_removed_renamed_files(tmp_path):
    _tree(tmp_path)
    fp = discover(str(tmp_path)).fingerprint
    assert discover(str(tmp_path)).fingerprint == fp
    _touch(os.path.join(tmp_path, "train", "a", "new.jpg"))
    fp_added = discover(str(tmp_path)).fingerprint
    assert fp_added != fp
    os.rename(tmp_path / "train" / "a" / "new.jpg", tmp_path / "train" / "a" / "renamed.jpg")
    fp_renamed = discover(str(tmp_path)).fingerprint
    assert fp_renamed not in (fp, fp_added)
    os.remove(tmp_path / "train" / "a" / "renamed.jpg")
    assert discover(str(tmp_path)).fingerprint not in (fp_added, fp_renamed)


def test_fingerprint_sensitive_to_label_files(tmp_path):
    _train(tmp_path)
    _flat_val(tmp_path, VAL_LABELS)
    _kaggle_csv(tmp_path, VAL_LABELS)
    fp = discover(str(tmp_path)).fingerprint
    _kaggle_csv(tmp_path, list(reversed(VAL_LABELS)))
    os.utime(tmp_path / "LOC_val_solution.csv", ns=(1, 1))
    assert discover(str(tmp_path)).fingerprint != fp


def test_fingerprint_files_mode_catches_in_place_edits(tmp_path):
    _tree(tmp_path)
    target = tmp_path / "train" / "a" / "a_0.JPEG"
    before = {m: discover(str(tmp_path), fingerprint=m).fingerprint for m in ("dirs", "files")}
    dir_mtime = os.stat(target.parent).st_mtime_ns
    with open(target, "ab") as f:  # in place: the directory does not change
        f.write(b"\0")
    os.utime(target.parent, ns=(dir_mtime, dir_mtime))
    after = {m: discover(str(tmp_path), fingerprint=m).fingerprint for m in ("dirs", "files")}
    assert after["dirs"] == before["dirs"]  # the documented limit of the cheap fingerprint
    assert after["files"] != before["files"]
