"""Paths that may name a bucket as well as a local directory: the one rule telling them apart.

Every path a user may point at a bucket (inputs, pipeline root, model and export directories, the serving
base) goes through ``tf.io.gfile``; what differs between the two kinds is how names are joined (``/`` on a
URI, ``os.sep`` locally), whether a directory can be renamed into place in one step, and whether a relative
path must be made absolute first.
"""

from __future__ import annotations


def is_uri(path: str) -> bool:
    """Whether ``path`` names a file system by scheme (``gs://b/x``, ``s3://b/x``, TF's in-memory ``ram://x``)
    rather than a local path."""
    return "://" in path

