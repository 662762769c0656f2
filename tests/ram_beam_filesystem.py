"""Beam file system for TF's in-memory ``ram://`` scheme, so that Beam IO (``ReadFromTFRecord`` in TFMA's
Evaluator, ``WriteToTFRecord``) reaches the same files as ``tf.io.gfile`` in one test process.

Beam picks a file system by URI scheme among the subclasses of ``FileSystem`` that are imported; importing
this module registers ``ram``. It delegates every call to ``tf.io.gfile``, exactly as Beam's own
``gs://`` file system delegates to the GCS client, so a pipeline with ``root``/``input_base`` on ``ram://``
exercises the same code paths as one on a bucket (in-process runner only: ``ram://`` lives in one process).
"""

from __future__ import annotations

import posixpath

import tensorflow as tf
from apache_beam.io.filesystem import BeamIOError, CompressedFile, CompressionTypes, FileMetadata, FileSystem


class RamFileSystem(FileSystem):
    """``ram://`` through ``tf.io.gfile``."""

    @classmethod
    def scheme(cls):
        return "ram"

    def join(self, basepath, *paths):
        return posixpath.join(basepath, *paths)

    def split(self, path):
        head, tail = posixpath.split(path.rstrip("/"))
        return head, tail

    def mkdirs(self, path):
        tf.io.gfile.makedirs(path)

    def has_dirs(self):
        return True

    def _list(self, dir_or_prefix):
        # ram:// lists by name prefix, so a walk may report names that are not files: keep real files only.
        root = dir_or_prefix if dir_or_prefix.endswith("/") else posixpath.dirname(dir_or_prefix) + "/"
        if not tf.io.gfile.exists(root):
            return
        for dirpath, _, names in tf.io.gfile.walk(root):
            for name in names:
                path = posixpath.join(dirpath, name)
                if path.startswith(dir_or_prefix) and tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
                    stat = tf.io.gfile.stat(path)
                    yield FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        handle = tf.io.gfile.GFile(path, mode)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return handle
        return CompressedFile(handle, compression_type=compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        tf.io.gfile.makedirs(posixpath.dirname(path))
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        return self._open(path, "rb", compression_type)

    def copy(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            try:
                tf.io.gfile.copy(src, dst, overwrite=True)
            except tf.errors.OpError as e:
                errors[(src, dst)] = e
        if errors:
            raise BeamIOError("Copy operation failed", errors)

    def rename(self, source_file_names, destination_file_names):
        errors = {}
        for src, dst in zip(source_file_names, destination_file_names):
            try:
                tf.io.gfile.makedirs(posixpath.dirname(dst))
                tf.io.gfile.rename(src, dst, overwrite=True)
            except tf.errors.OpError as e:
                errors[(src, dst)] = e
        if errors:
            raise BeamIOError("Rename operation failed", errors)

    def exists(self, path):
        return tf.io.gfile.exists(path)

    def size(self, path):
        return tf.io.gfile.stat(path).length

    def last_updated(self, path):
        return tf.io.gfile.stat(path).mtime_nsec / 1e9

    def checksum(self, path):
        return str(tf.io.gfile.stat(path).length)

    def metadata(self, path):
        stat = tf.io.gfile.stat(path)
        return FileMetadata(path, stat.length, stat.mtime_nsec / 1e9)

    def delete(self, paths):
        errors = {}
        for path in paths:
            try:
                if tf.io.gfile.isdir(path):
                    tf.io.gfile.rmtree(path)
                else:
                    tf.io.gfile.remove(path)
            except tf.errors.OpError as e:
                errors[path] = e
        if errors:
            raise BeamIOError("Delete operation failed", errors)
