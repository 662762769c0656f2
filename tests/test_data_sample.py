"""The synthetic sample: ImageNet layout, deterministic, odd files, learnable classes."""

import filecmp
import os

import numpy as np
import pytest
from PIL import Image

from hrnet_tfx.data.labels import DataError
from hrnet_tfx.data.sample import make_sample
from hrnet_tfx.data.sources import discover


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_layout_and_discovery(tmp_path):
    info = make_sample(str(tmp_path), num_classes=3, train_per_class=4, val_per_class=2, image_size=16)
    ds = discover(str(tmp_path))
    assert ds.layout == "imagenet"
    assert [c.id for c in ds.classes] == ["n01440764", "n01443537", "n01484850"]
    assert ds.classes[1].name == "goldfish, Carassius auratus"
    assert len(ds.splits["train"].items) == 12 and len(ds.splits["eval"].items) == 6
    assert sorted(os.listdir(tmp_path)) == ["LOC_synset_mapping.txt", "LOC_val_solution.csv", "train", "val"]
    assert {k for _, k in info["odd_files"]} == {"cmyk", "png", "gray", "progressive"}
    assert info["corrupt_files"] == []


def test_odd_files_are_what_they_claim(tmp_path):
    info = make_sample(str(tmp_path), num_classes=2, train_per_class=3, val_per_class=1, image_size=16)
    kinds = dict(info["odd_files"])
    opened = {rel: Image.open(tmp_path / rel) for rel in kinds}
    assert all(rel.endswith(".JPEG") for rel in kinds)
    assert [(im.format, im.mode) for rel, im in opened.items() if kinds[rel] == "cmyk"] == [("JPEG", "CMYK")]
    assert [im.format for rel, im in opened.items() if kinds[rel] == "png"] == ["PNG"]
    assert {im.mode for rel, im in opened.items() if kinds[rel] == "gray"} == {"L"}
    assert [im.info.get("progressive") for rel, im in opened.items() if kinds[rel] == "progressive"] == [1]


def test_deterministic(tmp_path):
    for name in ("a", "b"):
        make_sample(str(tmp_path / name), num_classes=3, train_per_class=3, val_per_class=2, image_size=16,
                    seed=7, corrupt=True)
    files = _files(tmp_path / "a")
    assert files == _files(tmp_path / "b")
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", files, shallow=False)
    assert not mismatch and not errors
    make_sample(str(tmp_path / "c"), num_classes=3, train_per_class=3, val_per_class=2, image_size=16, seed=8)
    assert (tmp_path / "a" / "train/n01440764/n01440764_1.JPEG").read_bytes() != (
        tmp_path / "c" / "train/n01440764/n01440764_1.JPEG").read_bytes()


def test_more_classes_than_known_wnids(tmp_path):
    info = make_sample(str(tmp_path), num_classes=12, train_per_class=1, val_per_class=1, image_size=8,
                       odd=False)
    ids = [w for w, _ in info["classes"]]
    assert len(set(ids)) == 12 and ids == sorted(ids) and ids[-1] == "n99000011"
    assert info["odd_files"] == []


def test_classes_are_learnable(tmp_path):
    """A nearest-centroid classifier on mean chromaticity, fit on train, is perfect on val (the
    grayscale odd file aside: it has no colour to go by)."""
    info = make_sample(str(tmp_path), num_classes=6, train_per_class=8, val_per_class=5, image_size=24)
    ds = discover(str(tmp_path))
    gray = {rel.split("/", 1)[1] for rel, kind in info["odd_files"] if kind == "gray"}

    def feature(split, rel):
        rgb = np.asarray(Image.open(os.path.join(ds.splits[split].root, rel)).convert("RGB"), np.float32)
        mean = rgb.mean(axis=(0, 1))
        return mean / mean.sum()

    train = ds.splits["train"].items
    centroids = np.stack([np.mean([feature("train", it.relpath) for it in train
                                   if it.label == k and it.relpath not in gray], axis=0)
                          for k in range(6)])
    val = [it for it in ds.splits["eval"].items if it.relpath not in gray]
    assert len(val) == 29
    predicted = [int(np.argmin(((centroids - feature("eval", it.relpath)) ** 2).sum(1))) for it in val]
    assert predicted == [it.label for it in val]


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "x").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        make_sample(str(tmp_path))
