"""Reads PyTorch ``.pth`` state_dicts into NumPy without PyTorch.

Both of ``torch.save``'s formats are understood: the zip archive (PyTorch >= 1.6) and the legacy
sequence of pickles that older releases wrote (the official HRNet ImageNet checkpoints date from 2019).
The unpickler only resolves the handful of globals a tensor state_dict needs (ordered dicts, tensor
rebuild functions and storage types) and refuses any other, so a malicious file cannot run code,
unlike a plain ``torch.load``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from typing import Any, Callable

import numpy as np

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class TorchFileError(ValueError):
    """The file is not a PyTorch checkpoint this reader understands; the message says why."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    @property
    def itemsize(self) -> int:
        return 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize


class _Storage:
    """A storage whose bytes are fetched on demand by ``loader(key)``."""

    def __init__(self, stype: _StorageType, key: str, loader: Callable[[str], bytes]):
        self.stype, self.key, self._loader, self._array = stype, key, loader, None

    def array(self) -> np.ndarray:
        if self._array is None:
            raw = self._loader(self.key)
            if self.stype.dtype == "bfloat16":
                bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
                self._array = bits.view(np.float32)
            else:
                self._array = np.frombuffer(raw, dtype=np.dtype(self.stype.dtype).newbyteorder("<"))
        return self._array


class _View:
    """A legacy-format view into a root storage (offset in elements)."""

    def __init__(self, root: _Storage, offset: int, size: int):
        self.root, self.offset, self.size = root, offset, size

    def array(self) -> np.ndarray:
        return self.root.array()[self.offset : self.offset + self.size]


class _LazyTensor:
    def __init__(self, storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        flat = self.storage.array()
        if not self.size:
            return np.array(flat[self.offset])
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * itemsize for s in self.stride]
        )
        return np.array(view)  # copy: owns its memory, native byte order


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch", "Size"): tuple,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, persistent_load: Callable[[Any], Any]):
        super().__init__(file, encoding="utf-8")
        self._persistent_load = persistent_load

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        raise TorchFileError(
            f"refusing to load {module}.{name}: only plain tensor state_dicts are read without PyTorch"
        )

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str):
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise TorchFileError(f"{path}: zip archive without data.pkl; not a torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and zf.read(byteorder).strip() != b"little":
            raise TorchFileError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}

        def load(pid):
            kind, stype, key, _location, _numel = pid[:5]
            if kind != "storage" or not isinstance(stype, _StorageType):
                raise TorchFileError(f"{path}: unexpected persistent id {pid!r}")
            if key not in storages:
                storages[key] = _Storage(stype, key, lambda k: zf.read(f"{prefix}data/{k}"))
            return storages[key]

        obj = _Unpickler(io.BytesIO(zf.read(pkl[0])), load).load()
        return _materialize(obj)


def _load_legacy(path: str):
    with open(path, "rb") as f:
        try:
            magic = pickle.load(f)
        except Exception as e:  # noqa: BLE001
            raise TorchFileError(f"{path}: not a PyTorch checkpoint ({e})") from None
        if magic != _LEGACY_MAGIC:
            raise TorchFileError(f"{path}: not a PyTorch checkpoint (bad magic number)")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        raw: dict[str, bytes] = {}
        roots: dict[str, _Storage] = {}

        def load(pid):
            kind, stype, key, _location, size, view = pid
            if kind != "storage" or not isinstance(stype, _StorageType):
                raise TorchFileError(f"{path}: unexpected persistent id {pid!r}")
            if key not in roots:
                roots[key] = _Storage(stype, key, raw.__getitem__)
            if view is not None:
                _view_key, offset, view_size = view
                return _View(roots[key], offset, view_size)
            return roots[key]

        obj = _Unpickler(f, load).load()
        keys = pickle.load(f)
        for key in keys:
            (numel,) = struct.unpack("<q", f.read(8))
            nbytes = numel * roots[key].stype.itemsize
            data = f.read(nbytes)
            if len(data) != nbytes:
                raise TorchFileError(f"{path}: truncated (storage {key} has {len(data)} of {nbytes} bytes)")
            raw[key] = data
        return _materialize(obj)


def load_torch_file(path: str) -> Any:
    """Loads a ``torch.save`` file holding tensors (a state_dict, or a dict around one) as NumPy arrays."""
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)
