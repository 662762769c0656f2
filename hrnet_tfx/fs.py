"""Paths that may name a bucket as well as a local directory: the one rule telling them apart, and the
directory operations (walk, copy, remove) that work on both.

Every path a user may point at a bucket (inputs, pipeline root, model and export directories, the serving
base) goes through ``tf.io.gfile``; what differs between the two kinds is how names are joined (``/`` on a
URI, ``os.sep`` locally), whether a directory can be renamed into place in one step, and whether a relative
path must be made absolute first.
"""

from __future__ import annotations

import os
import posixpath
from typing import Sequence


def is_uri(path: str) -> bool:
    """Whether ``path`` names a file system by scheme (``gs://b/x``, TF's in-memory ``ram://x``)
    rather than a local path."""
    return "://" in path


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0]


SHARED_SCHEMES = ("gs://",)
"""The bucket file systems TensorFlow 2.16 and TF Serving 2.16 read by themselves, and so the only URIs that
pods (Kubeflow steps, MPIJob ranks, TF Serving replicas) can share. ``s3://`` and ``hdfs://`` left TensorFlow
for tensorflow-io (TF 2.6) and the stock TF Serving image (2.7); neither the pinned stack nor the Dockerfile
installs tensorflow-io."""


def shared_uri_problem(path: str) -> str | None:
    """Why the URI ``path`` cannot be storage that pods share, or None for a ``gs://`` URI and for any local
    path (whether a local path is visible from a pod is the caller's question)."""
    if not is_uri(path) or path.startswith(SHARED_SCHEMES):
        return None
    scheme = _scheme(path)
    if scheme == "ram":
        return "ram:// is TensorFlow's in-memory file system: it lives in one process, and no pod sees another's"
    if scheme == "file":
        return "file:// is the pod's own disk, which other pods do not see and a restart loses"
    return (f"{scheme}:// is not a file system TensorFlow 2.16 or TF Serving 2.16 reads by itself (of the buckets "
            "only gs:// is; s3:// and hdfs:// need tensorflow-io, which the image does not install)")


def unreadable_scheme(path: str) -> str | None:
    """Why TensorFlow here cannot reach the URI ``path`` at all (no file system is registered for its scheme,
    as for ``s3://`` and ``hdfs://`` without tensorflow-io), or None. ``tf.io.gfile.isdir`` and ``exists``
    answer False for such a URI, which would read as "does not exist"."""
    if not is_uri(path):
        return None
    scheme = _scheme(path)
    registered = gfile().get_registered_schemes()
    if scheme in registered:
        return None
    known = ", ".join(f"{s}://" for s in sorted(registered) if s and s != "file")
    return (f"TensorFlow here has no file system for {scheme}:// (it reads local paths and {known}; s3:// and "
            "hdfs:// need tensorflow-io, which is not installed)")


def gfile():
    """``tf.io.gfile`` (local paths, ``gs://``, ``ram://``...), imported when first needed: this
    module is imported where TensorFlow is not."""
    import tensorflow as tf

    return tf.io.gfile


def join(parent: str, name: str) -> str:
    """``parent/name``: ``/`` on a URI, ``os.sep`` locally."""
    return posixpath.join(parent, name) if is_uri(parent) else os.path.join(parent, name)


def parent_dir(path: str) -> str:
    """The directory holding ``path`` (made absolute first when local)."""
    path = path.rstrip("/")
    return posixpath.dirname(path) if is_uri(path) else os.path.dirname(os.path.abspath(path))


def walk_files(root: str):
    """``(directory, relative directory, file names)`` for every directory under ``root``, top-down
    (``tf.io.gfile.walk``, less names a listing reports that do not exist: TF's ``ram://`` lists by
    prefix, so ``assets/`` appears to hold ``.extra`` when ``assets.extra/`` is its sibling)."""
    for dirpath, _, filenames in gfile().walk(root):
        rel = posixpath.relpath(dirpath, root) if is_uri(root) else os.path.relpath(dirpath, root)
        names = [n for n in filenames if not is_uri(root) or gfile().exists(join(dirpath, n))]
        yield dirpath, rel.replace(os.sep, "/"), names


def remove_tree(path: str) -> None:
    """Deletes directory ``path`` and everything under it (``tf.io.gfile.rmtree``; on URIs file by file,
    deepest directory first, which also works around ``ram://``'s prefix listing, see :func:`walk_files`)."""
    if not is_uri(path):
        gfile().rmtree(path)
        return
    directories = []
    for dirpath, _, filenames in walk_files(path):
        directories.append(dirpath)
        for name in filenames:
            gfile().remove(join(dirpath, name))
    for directory in sorted(directories, key=lambda d: (d.count("/"), len(d)), reverse=True):
        if gfile().exists(directory):
            gfile().rmtree(directory)


def copy_tree(src: str, dst: str, last: Sequence[str] = ()) -> None:
    """Copies directory ``src`` into ``dst`` (created) with ``tf.io.gfile``; the files named in ``last``
    (paths relative to ``src``) are copied after every other file, in that order."""
    deferred = []
    for dirpath, rel, filenames in walk_files(src):
        target_dir = dst if rel == "." else join(dst, rel)
        gfile().makedirs(target_dir)
        for name in filenames:
            rel_file = posixpath.normpath(posixpath.join(rel, name))
            if rel_file in last:
                deferred.append(rel_file)
                continue
            gfile().copy(join(dirpath, name), join(target_dir, name), overwrite=True)
    for rel_file in sorted(deferred, key=list(last).index):
        gfile().copy(join(src, rel_file), join(dst, rel_file), overwrite=True)


def renames_atomically(path: str) -> bool:
    """Whether directories under ``path`` can be renamed into place in one step: local file systems yes;
    object stores (``gs://``, TF's in-memory ``ram://``) no."""
    return not is_uri(path)
