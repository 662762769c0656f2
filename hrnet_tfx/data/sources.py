"""Input discovery: find the images (or TFRecords) of a dataset, their labels and class names, and fail
early with a clear error when the input is unusable.

Layouts understood (``layout='auto'`` picks one; the first match wins):

``tfrecords``
    Existing inception/TF-slim shards directly in INPUT: ``train-*-of-*`` and ``validation-*-of-*``.
    Records are imported as they are (their images are checked like image files; valid RGB JPEGs keep
    their bytes); their labels are 1-based (1001 classes, 0 = background) and are shifted to our 0-based
    labels by the converter (``label_offset``).
``imagenet``
    ILSVRC2012 as extracted: ``train/<wnid>/*.JPEG`` and ``val/`` (or ``validation/``) either sorted into
    ``<wnid>/`` folders, or flat with Kaggle's ``LOC_val_solution.csv`` (boxes included) or with the
    devkit's ``ILSVRC2012_validation_ground_truth.txt`` + ``meta.mat``. Class names from
    ``LOC_synset_mapping.txt`` or ``meta.mat``. Kaggle's nested root ``ILSVRC/Data/CLS-LOC/`` is found too,
    and ``LOC_train_solution.csv`` adds train boxes. Chosen by ``auto`` when these label files exist or
    all train folders are WordNet ids.
``imagefolder``
    Any image-folder dataset: ``INPUT/train/<class>/...`` and ``INPUT/val/<class>/...`` (``validation/``
    or ``eval/`` also accepted), any number of classes, nested folders allowed inside a class folder.
    Class ids (and names) are the train folder names.

In every layout labels are 0-based in sorted class-id order. Hidden files (names starting with '.') are
ignored; every other file in a class folder is an input (non-images are reported as bad, never dropped
silently).

The returned :class:`Dataset` carries a cheap fingerprint of the input (see :func:`discover`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import os
import re

from hrnet_tfx.data import labels as labels_lib
from hrnet_tfx.data import storage
from hrnet_tfx.data.labels import Box, ClassInfo, DataError
from hrnet_tfx.data.layout import EVAL, TRAIN
from hrnet_tfx.data.options import DEFAULT_FINGERPRINT, DEFAULT_LAYOUT, FINGERPRINTS, LAYOUTS
from hrnet_tfx.fs import unreadable_scheme

log = logging.getLogger(__name__)

EVAL_DIRNAMES = ("val", "validation", "eval")
TFRECORD_PATTERNS = {TRAIN: "train-*-of-*", EVAL: "validation-*-of-*"}
KAGGLE_ROOT = os.path.join("ILSVRC", "Data", "CLS-LOC")
DEVKIT_DIRS = ("", "data", os.path.join("ILSVRC2012_devkit_t12", "data"), os.path.join("devkit", "data"))
SYNSET_MAPPING = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
TRAIN_SOLUTION = "LOC_train_solution.csv"
DEVKIT_GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
DEVKIT_META = "meta.mat"
_WNID = re.compile(r"n\d{8}$")
_DEVKIT_VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG$")


@dataclasses.dataclass(frozen=True)
class ImageItem:
    """One input image: its path relative to the split root ('/'-separated; also the record's
    ``image/filename``), its 0-based label and optional boxes (pixels of the original image)."""

    relpath: str
    label: int
    boxes: tuple[Box, ...] = ()


@dataclasses.dataclass
class SplitSource:
    """The inputs of one split: ``kind='images'`` with ``items``, or ``kind='tfrecords'`` with ``files``
    (names relative to ``root``)."""

    name: str
    kind: str
    root: str
    items: list[ImageItem] = dataclasses.field(default_factory=list)
    files: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Dataset:
    """A discovered dataset. ``classes`` is empty for ``tfrecords`` (the records carry their classes)."""

    layout: str
    input_dir: str
    classes: list[ClassInfo]
    splits: dict[str, SplitSource]
    fingerprint: str


class _Fingerprint:
    """Collects what the fingerprint covers: the names in every directory and the size and mtime of every
    label or TFRecord file; in ``files`` mode also the size and mtime of every image."""

    def __init__(self, root: str, mode: str):
        if mode not in FINGERPRINTS:
            raise ValueError(f"fingerprint must be one of {FINGERPRINTS}, got {mode!r}")
        self.root, self.mode, self._h = root, mode, hashlib.sha256()

    def _add(self, kind: str, path: str, *values) -> None:
        rel = os.path.relpath(path, self.root) if storage.is_local(path) else path[len(self.root):]
        self._h.update(f"{kind}\0{rel}\0{values}\n".encode("utf-8", "surrogateescape"))

    def directory(self, path: str, names: list[str]) -> None:
        self._add("d", path, hashlib.sha256("\0".join(names).encode("utf-8", "surrogateescape")).hexdigest())

    def file(self, path: str) -> None:
        try:
            self._add("f", path, *storage.stat(path))
        except Exception:  # unreadable here: the converter reports it; the fingerprint notes its absence
            self._add("f", path, "unreadable")

    def image(self, path: str) -> None:
        if self.mode == "files":
            self.file(path)

    def hexdigest(self) -> str:
        return f"{self.mode}:{self._h.hexdigest()}"


def _require_dir(path: str, what: str) -> None:
    problem = unreadable_scheme(path)
    if problem:
        raise DataError(f"{what} {path}: {problem}")
    if not storage.is_dir(path):
        raise DataError(f"{what} does not exist or is not a directory: {path}")


def _scan(path: str, fp: _Fingerprint) -> tuple[list[str], list[str]]:
    """Sorted (subdirectories, files) of ``path`` from one listing, hidden names skipped; recorded in the
    fingerprint."""
    dirs, files = storage.list_dir(path)
    dirs = [d for d in dirs if not d.startswith(".")]
    files = [f for f in files if not f.startswith(".")]
    fp.directory(path, [d + "/" for d in dirs] + files)
    return dirs, files


def _class_files(class_dir: str, fp: _Fingerprint) -> list[str]:
    """All files under one class folder (recursively), relative to it, sorted. Empty -> DataError; a local
    symlink back to a folder it is in -> DataError (it would list the same images again and again)."""
    out = []
    local = storage.is_local(class_dir)

    def walk(path: str, prefix: str, ancestors: tuple[str, ...]) -> None:
        if local:
            real = os.path.realpath(path)
            if real in ancestors:
                raise DataError(f"symbolic link loop: {path} is the folder {real} again; remove the link")
            ancestors += (real,)
        dirs, files = _scan(path, fp)
        for name in files:
            fp.image(storage.join(path, name))
            out.append(prefix + name)
        for d in dirs:
            walk(storage.join(path, d), prefix + d + "/", ancestors)

    walk(class_dir, "", ())
    if not out:
        raise DataError(f"empty class folder (no files): {class_dir}")
    return out


def _folder_items(split_root: str, class_index: dict[str, int], class_dirs: list[str],
                  fp: _Fingerprint) -> list[ImageItem]:
    unknown = [d for d in class_dirs if d not in class_index]
    if unknown:
        raise DataError(f"{split_root}: class folders not among the train classes: {unknown[:5]}"
                        f"{' ...' if len(unknown) > 5 else ''} ({len(unknown)} in all)")
    items = []
    for d in class_dirs:
        for rel in _class_files(os.path.join(split_root, d), fp):
            items.append(ImageItem(f"{d}/{rel}", class_index[d]))
    return items


def _listing(path: str) -> tuple[list[str], list[str]]:
    """(directories, files) of ``path``; empty if it does not exist. Probing by listing the parent is one
    call per directory on object stores and exact everywhere (``ram://``'s isdir matches name prefixes)."""
    try:
        return storage.list_dir(path)
    except DataError:
        return [], []


def _find(dirs: list[str], name: str) -> str | None:
    for d in dirs:
        if name in _listing(d)[1]:
            return os.path.join(d, name)
    return None


def _check_same_names(labelled: set[str], present: set[str], label_file: str, image_dir: str) -> None:
    unknown = sorted(labelled - present)
    if unknown:
        raise DataError(f"{label_file} names {len(unknown)} images that are not in {image_dir}, "
                        f"e.g. {unknown[:3]}")
    unlabelled = sorted(present - labelled)
    if unlabelled:
        raise DataError(f"{len(unlabelled)} images in {image_dir} have no label in {label_file}, "
                        f"e.g. {unlabelled[:3]}")


def _flat_val_items(val_dir: str, files: list[str], class_index: dict[str, int], search: list[str],
                    fp: _Fingerprint) -> list[ImageItem]:
    """Labels for a flat ImageNet validation folder: Kaggle's CSV (preferred: it has boxes), else the
    devkit's ground truth mapped through meta.mat."""
    for name in files:
        fp.image(os.path.join(val_dir, name))
    csv_path = _find(search, VAL_SOLUTION)
    if csv_path:
        fp.file(csv_path)
        solution = labels_lib.read_loc_solution(csv_path)
        stems = {os.path.splitext(n)[0]: n for n in files}
        _check_same_names(set(solution), set(stems), csv_path, val_dir)
        items = []
        for stem, boxes in sorted(solution.items(), key=lambda kv: stems[kv[0]]):
            for b in boxes:
                if b.class_id not in class_index:
                    raise DataError(f"{csv_path}: image {stem} is labelled {b.class_id!r}, which is not "
                                    "a train class")
            items.append(ImageItem(stems[stem], class_index[boxes[0].class_id], tuple(boxes)))
        log.info("validation labels from %s", csv_path)
        return items
    devkit = [os.path.join(d, sub) for d in search for sub in DEVKIT_DIRS]
    gt_path = _find(devkit, DEVKIT_GROUND_TRUTH)
    if not gt_path:
        raise DataError(f"validation folder {val_dir} is flat (no class folders) but no labels were found: "
                        f"expected {VAL_SOLUTION} or the devkit's {DEVKIT_GROUND_TRUTH} (with {DEVKIT_META})"
                        f" in {search[0]}")
    meta_path = os.path.join(os.path.dirname(gt_path), DEVKIT_META)
    if not _find([os.path.dirname(gt_path)], DEVKIT_META):
        raise DataError(f"{gt_path} needs the devkit's {DEVKIT_META} beside it to map its ILSVRC2012_IDs "
                        f"to WordNet ids (the IDs are not in sorted wnid order): {meta_path} is missing")
    fp.file(gt_path)
    fp.file(meta_path)
    id_to_wnid = labels_lib.read_devkit_meta(meta_path)
    truth = labels_lib.read_devkit_ground_truth(gt_path)
    named = {f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, len(truth) + 1)}
    _check_same_names(named, set(files), gt_path, val_dir)
    items = []
    for name in files:
        ilsvrc_id = truth[int(_DEVKIT_VAL_NAME.match(name).group(1)) - 1]
        if ilsvrc_id not in id_to_wnid:
            raise DataError(f"{gt_path}: {name} has ILSVRC2012_ID {ilsvrc_id}, which {meta_path} does not "
                            "define as a leaf class")
        wnid = id_to_wnid[ilsvrc_id][0]
        if wnid not in class_index:
            raise DataError(f"{gt_path}: {name} is labelled {wnid} (ID {ilsvrc_id}), not a train class")
        items.append(ImageItem(name, class_index[wnid]))
    log.info("validation labels from %s mapped through %s", gt_path, meta_path)
    return items


def _class_names(search: list[str], fp: _Fingerprint) -> dict[str, str]:
    path = _find(search, SYNSET_MAPPING)
    if path:
        fp.file(path)
        return labels_lib.read_synset_mapping(path)
    meta = _find([os.path.join(d, sub) for d in search for sub in DEVKIT_DIRS], DEVKIT_META)
    if meta:
        fp.file(meta)
        return dict(labels_lib.read_devkit_meta(meta).values())
    return {}


def _add_train_boxes(items: list[ImageItem], search: list[str], class_index: dict[str, int],
                     fp: _Fingerprint) -> list[ImageItem]:
    path = _find(search, TRAIN_SOLUTION)
    if not path:
        return items
    fp.file(path)
    solution = labels_lib.read_loc_solution(path)
    by_stem = {os.path.splitext(it.relpath.rsplit("/", 1)[-1])[0]: i for i, it in enumerate(items)}
    unknown = sorted(set(solution) - set(by_stem))
    if unknown:
        raise DataError(f"{path} names {len(unknown)} images that are not in the train folders, "
                        f"e.g. {unknown[:3]}")
    items = list(items)
    for stem, boxes in solution.items():
        for b in boxes:
            if b.class_id not in class_index:
                raise DataError(f"{path}: image {stem} has a box of unknown class {b.class_id!r}")
        items[by_stem[stem]] = dataclasses.replace(items[by_stem[stem]], boxes=tuple(boxes))
    return items


def _image_root(input_dir: str) -> str:
    kaggle = os.path.join(input_dir, KAGGLE_ROOT)
    if TRAIN not in _listing(input_dir)[0] and TRAIN in _listing(kaggle)[0]:
        return kaggle
    return input_dir


def _eval_dir(root: str) -> str:
    dirs = _listing(root)[0]
    found = [os.path.join(root, n) for n in EVAL_DIRNAMES if n in dirs]
    if not found:
        raise DataError(f"no validation folder in {root}: expected one of {', '.join(EVAL_DIRNAMES)}/")
    if len(found) > 1:
        raise DataError(f"ambiguous validation folders in {root}: {found}; keep exactly one")
    return found[0]


def _discover_folders(input_dir: str, imagenet: bool, fp: _Fingerprint) -> Dataset:
    root = _image_root(input_dir)
    train_dir = os.path.join(root, TRAIN)
    if TRAIN not in _listing(root)[0]:
        raise DataError(f"train folder does not exist or is not a directory: {train_dir}")
    eval_dir = _eval_dir(root)
    search = list(dict.fromkeys([input_dir, root]))
    class_dirs, stray = _scan(train_dir, fp)
    if not class_dirs:
        raise DataError(f"train folder {train_dir} has no class folders")
    if stray:
        raise DataError(f"train folder {train_dir} holds files outside class folders, e.g. {stray[:3]}")
    names = _class_names(search, fp) if imagenet else {}
    classes = labels_lib.make_classes(class_dirs, names)
    class_index = {c.id: c.index for c in classes}
    train_items = _folder_items(train_dir, class_index, class_dirs, fp)
    if imagenet:
        train_items = _add_train_boxes(train_items, search, class_index, fp)
    eval_class_dirs, eval_files = _scan(eval_dir, fp)
    if eval_class_dirs and eval_files:
        raise DataError(f"validation folder {eval_dir} mixes class folders and loose files "
                        f"(e.g. {eval_files[:3]}); use one or the other")
    if eval_class_dirs:
        eval_items = _folder_items(eval_dir, class_index, eval_class_dirs, fp)
    elif not eval_files:
        raise DataError(f"validation folder {eval_dir} is empty")
    elif imagenet:
        eval_items = _flat_val_items(eval_dir, eval_files, class_index, search, fp)
    else:
        raise DataError(f"validation folder {eval_dir} has no class folders (image-folder layout needs "
                        f"{os.path.basename(eval_dir)}/<class>/...)")
    splits = {TRAIN: SplitSource(TRAIN, "images", train_dir, items=train_items),
              EVAL: SplitSource(EVAL, "images", eval_dir, items=eval_items)}
    return Dataset("imagenet" if imagenet else "imagefolder", input_dir, classes, splits, fp.hexdigest())


def _discover_tfrecords(input_dir: str, fp: _Fingerprint) -> Dataset:
    _, files = _scan(input_dir, fp)
    splits = {}
    for split, pattern in TFRECORD_PATTERNS.items():
        matched = [f for f in files if fnmatch.fnmatch(f, pattern) or fnmatch.fnmatch(f, pattern + ".gz")]
        if not matched:
            raise DataError(f"no {pattern} TFRecord files in {input_dir}")
        for f in matched:
            fp.file(os.path.join(input_dir, f))
        splits[split] = SplitSource(split, "tfrecords", input_dir, files=matched)
    return Dataset("tfrecords", input_dir, [], splits, fp.hexdigest())


def _detect(input_dir: str) -> str:
    _, files = storage.list_dir(input_dir)
    if any(fnmatch.fnmatch(n, TFRECORD_PATTERNS[TRAIN] + "*") for n in files):
        return "tfrecords"
    root = _image_root(input_dir)
    if TRAIN not in _listing(root)[0]:
        raise DataError(f"cannot tell the layout of {input_dir}: expected train/ and val/ folders "
                        f"(ImageNet or image folders) or train-*-of-* TFRecords")
    search = [input_dir, root]
    label_files = [SYNSET_MAPPING, VAL_SOLUTION, DEVKIT_META, DEVKIT_GROUND_TRUTH]
    if any(_find([os.path.join(d, s) for d in search for s in DEVKIT_DIRS], n) for n in label_files):
        return "imagenet"
    class_dirs = [d for d in storage.list_dir(os.path.join(root, TRAIN))[0] if not d.startswith(".")]
    return "imagenet" if class_dirs and all(_WNID.match(d) for d in class_dirs) else "imagefolder"


def discover(input_dir: str, layout: str = DEFAULT_LAYOUT, fingerprint: str = DEFAULT_FINGERPRINT) -> Dataset:
    """Finds the inputs of a dataset and their labels. Raises :class:`DataError` (naming the problem and
    the path) for a missing directory, an empty class folder, label files that name unknown images or
    classes, and images without labels.

    Args:
      input_dir: the dataset's root directory: a local path or a URL of any TensorFlow file system
        (``gs://bucket/ILSVRC2012``), see :mod:`hrnet_tfx.data.storage`.
      layout: one of :data:`LAYOUTS`; ``auto`` detects it (see the module docstring).
      fingerprint: what the returned ``Dataset.fingerprint`` covers. ``dirs`` (default): the names in
        every directory plus the size and mtime of label files and TFRecords, which changes whenever a file
        is added, removed or renamed and costs nothing beyond the listings discovery makes anyway (object
        stores keep no directory mtimes, so names are what every file system can tell). It misses an image
        overwritten under the same name (in place, or by renaming another file over it); ``files`` also
        stats every image (ImageNet: 1.33M stats) and catches that too.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    input_dir = os.fspath(input_dir)
    input_dir = os.path.abspath(input_dir) if storage.is_local(input_dir) else input_dir.rstrip("/")
    _require_dir(input_dir, "input directory")
    if layout == "auto":
        layout = _detect(input_dir)
        log.info("detected the %s layout in %s", layout, input_dir)
    fp = _Fingerprint(input_dir, fingerprint)
    if layout == "tfrecords":
        return _discover_tfrecords(input_dir, fp)
    return _discover_folders(input_dir, layout == "imagenet", fp)
