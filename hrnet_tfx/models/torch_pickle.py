"""Reads PyTorch ``.pth`` files into NumPy without PyTorch, treating every byte of the file as hostile.

Both of ``torch.save``'s formats are read: the zip archive (PyTorch >= 1.6) and the legacy sequence of
pickles (magic number, protocol, system info, data, storage keys, then the raw storages) that older
releases wrote (the official HRNet ImageNet weights date from 2019).

Every pickle of either format runs on :class:`_Unpickler`, a pickle machine written for tensor
state_dicts instead of :mod:`pickle`'s: it resolves only the globals a state_dict needs (ordered dicts,
the tensor rebuild functions, storage types), calls only those, mutates only the lists, dicts and sets
it built itself, and never recurses, so a file can neither run code, patch objects nor exhaust the
stack. Sizes are checked before anything is allocated:

- a zip archive's directory is at most 4 MiB (~50k members); a pickle is at most
  ``MAX_METADATA_BYTES`` long and runs at most ``MAX_PICKLE_OPS`` opcodes; the objects it builds nest
  at most ``MAX_DEPTH`` deep, without cycles;
- a tensor's view lies inside its storage by torch's own ``set_`` rule (``offset + sum((size_i - 1) *
  stride_i) + 1 <= storage numel`` unless the tensor is empty), with every size, stride and offset
  an integer in [0, 2**63);
- every storage the pickle declares is present in the file at exactly its declared size (a zip member
  of that size; in the legacy format, exactly the bytes after the pickles), so together they are at
  most the file's size; a storage declared twice must be declared the same way;
- the tensors built from the storages (identical views are built once and shared) total at most twice
  the storages' bytes plus 1 MiB, and at most ``MAX_TENSOR_BYTES``; each storage is read, turned into
  its tensors and released in turn, so reading takes about the tensors' size in memory.

Failures raise :class:`hrnet_tfx.models.weights.WeightsFileError`; use
:func:`hrnet_tfx.models.weights.read_state_dict` (or :func:`load_torch_file`) rather than
:func:`read_torch` directly, so the error names the file.
"""

from __future__ import annotations

import codecs
import collections
import math
import pickletools
import reprlib
import struct
import zipfile
from typing import Any, Callable

import numpy as np

from hrnet_tfx.models.weights import (
    MAX_METADATA_BYTES,
    MAX_TENSOR_BYTES,
    WeightsFileError,
    bfloat16_as_float32,
    read_weights_file,
)

MAX_PICKLE_OPS = 1 << 20  # ~32 per tensor: hrnet_w64's state_dict (1956 tensors) takes ~63k
MAX_DEPTH = 32  # a checkpoint nests ~5 deep (checkpoint -> optimizer -> state -> id -> tensor)
MAX_NDIM = 32  # NumPy's limit
# Distinct tensor views may overlap (a weight and its transpose saved together, small expanded
# tensors), but a state_dict reads each stored element about once: views may total at most twice the
# storage bytes plus 1 MiB. Identical views (tied weights) are built once and shared.
_VIEW_FACTOR, _VIEW_SLACK = 2, 1 << 20

_INT64_END = 1 << 63
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_ZIP_MAGIC = b"PK\x03\x04"
_MAX_KEY_CHARS = 256
_MAX_LINE = 1024  # text-protocol numbers, global names and persistent ids
_MAX_INT_BYTES = 256  # LONG4 operands; a weights file needs int64 plus torch's 10-byte magic number
_MAX_ZIP_DIRECTORY = 4 << 20  # ~50k members; hrnet_w64 with optimizer state has ~3.3k

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

_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlevel = 2


def _show(obj: Any) -> str:
    """A bounded repr for error messages (file contents can be huge or deeply nested)."""
    return _short.repr(obj)


def _name(value: Any) -> str:
    """A key or global name for a message: as it is if short and printable, else a bounded repr."""
    return value if type(value) is str and len(value) <= 80 and value.isprintable() else _show(value)


def _index(value: Any, what: str) -> int:
    if type(value) is not int or not 0 <= value < _INT64_END:
        raise WeightsFileError(f"{what} {_show(value)} is not an integer in [0, 2**63)")
    return value


# ---------------------------------------------------------------------------------------------------
# Storages and tensors


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]
        self.itemsize = 2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize
        self.array_itemsize = 4 if self.dtype == "bfloat16" else self.itemsize  # bfloat16 becomes float32

    def __repr__(self):
        return f"torch.{self.name}"

    def array(self, raw: bytes) -> np.ndarray:
        """The flat storage from its little-endian bytes (bfloat16 widened to float32)."""
        if self.dtype == "bfloat16":
            return bfloat16_as_float32(raw)
        if self.dtype is np.bool_:
            return np.frombuffer(raw, dtype=np.uint8) != 0  # any non-zero byte is True, as in torch
        return np.frombuffer(raw, dtype=np.dtype(self.dtype).newbyteorder("<"))


_STORAGE_TYPES = {name: _StorageType(name) for name in _STORAGE_DTYPES}


class _Storage:
    """A root storage: ``numel`` elements of ``stype`` saved under ``key`` (bytes read later)."""

    def __init__(self, key: str, stype: _StorageType, numel: int):
        self.key, self.stype, self.numel = key, stype, numel
        self.nbytes = numel * stype.itemsize
        self.root, self.offset = self, 0
        self.location: Any = None  # where the bytes are: a zip member, or a legacy-format file offset

    def __repr__(self):
        return f"storage {self.key!r} ({self.stype.name}, {self.numel} elements)"


class _View:
    """A legacy-format view: ``numel`` elements of ``root`` from element ``offset``."""

    def __init__(self, key: str, root: _Storage, offset: int, numel: int):
        self.key, self.root, self.offset, self.numel, self.stype = key, root, offset, numel, root.stype

    def __repr__(self):
        return f"view {self.key!r} of {self.root!r} ({self.numel} elements from {self.offset})"


class _Storages:
    """The storages one file declares, by key; a key declared twice must be declared the same way."""

    def __init__(self):
        self.roots: dict[str, _Storage] = {}
        self.views: dict[str, _View] = {}

    def root(self, stype: Any, key: Any, numel: Any) -> _Storage:
        if not isinstance(stype, _StorageType):
            raise WeightsFileError(f"storage type {_show(stype)} is not a torch storage type")
        if type(key) is not str or not 0 < len(key) <= _MAX_KEY_CHARS:
            raise WeightsFileError(f"storage key {_show(key)} is not a short string")
        numel = _index(numel, f"storage {key!r}: element count")
        old = self.roots.get(key)
        if old is None:
            if key in self.views:
                raise WeightsFileError(f"storage key {key!r} names both a storage and a view")
            old = self.roots[key] = _Storage(key, stype, numel)
        elif old.stype is not stype or old.numel != numel:
            raise WeightsFileError(
                f"storage {key!r} is declared twice differently: {old.stype.name} x {old.numel} "
                f"and {stype.name} x {numel}"
            )
        return old

    def view(self, root: _Storage, view: Any) -> _View:
        if type(view) is not tuple or len(view) != 3:
            raise WeightsFileError(f"storage view {_show(view)} is not (key, offset, size)")
        key, offset, numel = view
        if type(key) is not str or not 0 < len(key) <= _MAX_KEY_CHARS:
            raise WeightsFileError(f"storage view key {_show(key)} is not a short string")
        offset, numel = _index(offset, f"view {key!r}: offset"), _index(numel, f"view {key!r}: size")
        if offset + numel > root.numel:
            raise WeightsFileError(f"view {key!r} ({numel} elements from {offset}) lies outside {root!r}")
        old = self.views.get(key)
        if old is None:
            if key in self.roots:
                raise WeightsFileError(f"storage key {key!r} names both a storage and a view")
            old = self.views[key] = _View(key, root, offset, numel)
        elif (old.root, old.offset, old.numel) != (root, offset, numel):
            raise WeightsFileError(f"view {key!r} is declared twice differently")
        return old


class _LazyTensor:
    """A tensor as the pickle describes it; :meth:`check` validates it before anything is read."""

    def __init__(self, storage: Any, offset: Any, size: Any, stride: Any):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride
        self.numel = self.nbytes = 0

    def __repr__(self):
        return f"tensor{tuple(self.size) if isinstance(self.size, (tuple, list)) else ''}"

    def check(self) -> None:
        storage = self.storage
        if not isinstance(storage, (_Storage, _View)):
            raise WeightsFileError(f"tensor is built on {_show(storage)}, not on a storage")
        self.offset = _index(self.offset, "storage offset")
        if not isinstance(self.size, (tuple, list)) or not isinstance(self.stride, (tuple, list)):
            raise WeightsFileError(f"size {_show(self.size)} / stride {_show(self.stride)} are not tuples")
        if len(self.size) != len(self.stride) or len(self.size) > MAX_NDIM:
            raise WeightsFileError(
                f"size {_show(self.size)} and stride {_show(self.stride)} are not one to {MAX_NDIM} equal-length tuples"
            )
        self.size = tuple(_index(n, "size") for n in self.size)
        self.stride = tuple(_index(s, "stride") for s in self.stride)
        if math.prod(n for n in self.size if n) * storage.stype.array_itemsize >= _INT64_END:  # NumPy's limit
            raise WeightsFileError(f"size {self.size} is too large")
        self.numel = math.prod(self.size)
        self.nbytes = self.numel * storage.stype.itemsize
        if self.numel:
            end = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
            if end > storage.numel:
                raise WeightsFileError(
                    f"view out of bounds: offset {self.offset}, size {self.size}, stride {self.stride} "
                    f"reach element {end - 1} of {storage!r}"
                )

    @property
    def root(self) -> _Storage:
        return self.storage.root

    def view_key(self) -> tuple:
        """Identifies the elements this tensor reads: identical views are built once."""
        stride = tuple(s if n > 1 else 0 for n, s in zip(self.size, self.stride))  # unused strides
        return (id(self.root), self.storage.offset + self.offset, self.size, stride)

    def copy_from(self, flat: np.ndarray) -> np.ndarray:
        if not self.numel:
            return np.zeros(self.size, flat.dtype)
        _, start, size, stride = self.view_key()
        view = np.lib.stride_tricks.as_strided(
            flat[start:], shape=size, strides=[s * flat.itemsize for s in stride], writeable=False
        )
        return np.array(view)  # a copy: owns its memory, native byte order


# ---------------------------------------------------------------------------------------------------
# The globals a state_dict may use: each resolves to a function of ours that checks its arguments.


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    if not isinstance(data, _LazyTensor):
        raise WeightsFileError(f"parameter wraps {_show(data)}, not a tensor")
    return data


def _torch_size(sizes=()):
    if type(sizes) not in (tuple, list):
        raise WeightsFileError(f"torch.Size of {_show(sizes)}")
    return tuple(_index(n, "size") for n in sizes)


def _ordered_dict(items=()):
    out: collections.OrderedDict = collections.OrderedDict()
    if type(items) not in (tuple, list):
        raise WeightsFileError(f"OrderedDict of {_show(items)}")
    for pair in items:
        if type(pair) not in (tuple, list) or len(pair) != 2:
            raise WeightsFileError(f"OrderedDict item {_show(pair)} is not a pair")
        _set_item(out, *pair)
    return out


_GLOBALS: dict[tuple[str, str], Callable] = {
    ("collections", "OrderedDict"): _ordered_dict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): _torch_size,
}
_CALLABLE_NAMES = {id(f): f"{m}.{n}" for (m, n), f in _GLOBALS.items()}


def _find_class(module: Any, name: Any) -> Any:
    if type(module) is not str or type(name) is not str:
        raise WeightsFileError(f"global {_show(module)}.{_show(name)} is not named by strings")
    if module == "torch" and name in _STORAGE_TYPES:
        return _STORAGE_TYPES[name]
    if (module, name) in _GLOBALS:
        return _GLOBALS[(module, name)]
    raise WeightsFileError(
        f"refusing to load {_name(module)}.{_name(name)}: only tensor state_dicts are read, and no code runs"
    )


_KEY_TYPES = (str, bytes, int, bool, type(None))
_HASH_MODULUS = (1 << 61) - 1  # CPython hashes ints modulo this: smaller ints never collide


def _check_key(key: Any) -> Any:
    """Dict keys and set items: strings (their hashes are salted), and ints, bools and None whose hashes
    are distinct, so hashing never recurses, runs code, or degrades a dict with crafted collisions."""
    if type(key) in _KEY_TYPES and (type(key) is not int or -_HASH_MODULUS < key < _HASH_MODULUS):
        return key
    raise WeightsFileError(f"a dict key or set item {_show(key)} of type {type(key).__name__} is not allowed")


def _set_item(target: dict, key: Any, value: Any) -> None:
    if _check_key(key) in target:
        raise WeightsFileError(f"duplicate key {_show(key)}")
    target[key] = value


# ---------------------------------------------------------------------------------------------------
# The pickle machine


class _Stream:
    """Bytes consumed in order from a bounded file (or from memory), with a cap per pickle."""

    _CHUNK = 1 << 16

    def __init__(self, file=None, data: bytes = b"", size: int | None = None):
        self._file, self._buf, self._i = file, data, 0
        self.pos = 0
        self.size = len(data) if size is None else size
        self.cap = self.size  # end of the pickle being read

    def start_pickle(self) -> None:
        self.cap = min(self.size, self.pos + MAX_METADATA_BYTES)

    def _ensure(self, n: int) -> None:
        if n > self.cap - self.pos:
            if self.cap < self.size:
                raise WeightsFileError(f"a pickle is longer than the {MAX_METADATA_BYTES >> 20} MiB limit")
            raise WeightsFileError(f"truncated: {n} more bytes needed at offset {self.pos} of {self.size}")
        have = len(self._buf) - self._i
        if have < n:
            want = max(n - have, min(self._CHUNK, self.size - self.pos - have))
            more = self._file.read(want) if self._file is not None else b""
            if len(more) != want:
                raise WeightsFileError(f"truncated: the file ended at offset {self.pos + have + len(more)}")
            self._buf, self._i = self._buf[self._i :] + more, 0

    def read(self, n: int) -> bytes:
        self._ensure(n)
        out = self._buf[self._i : self._i + n]
        self._i += n
        self.pos += n
        return out

    def readline(self, limit: int) -> bytes:
        """One text-protocol line without its newline."""
        while True:
            end = self._buf.find(b"\n", self._i, self._i + limit + 1)
            if end >= 0:
                return self.read(end + 1 - self._i)[:-1]
            have = len(self._buf) - self._i
            if have > limit:
                raise WeightsFileError(f"a pickle text line at offset {self.pos} is longer than {limit} bytes")
            self._ensure(min(2 * have + self._CHUNK, self.cap - self.pos) if have < self.cap - self.pos else have + 1)


_OPNAMES = {op.code.encode("latin-1")[0]: op.name for op in pickletools.opcodes}
_STOP = object()


class _Unpickler:
    """Runs one pickle from ``stream``: only the opcodes and globals a tensor state_dict needs."""

    def __init__(self, stream: _Stream, persistent_load: Callable[[Any], Any]):
        self._in = stream
        self._persistent_load = persistent_load
        self._stack: list = []
        self._marks: list[int] = []
        self._memo: dict = {}

    def load(self) -> Any:
        self._in.start_pickle()
        dispatch = _DISPATCH
        for _ in range(MAX_PICKLE_OPS):
            at = self._in.pos
            code = self._in.read(1)[0]
            handler = dispatch.get(code)
            if handler is None:
                raise WeightsFileError(f"pickle opcode {_OPNAMES.get(code, hex(code))} at offset {at} is not allowed")
            try:
                if handler(self) is _STOP:
                    if len(self._stack) != 1 or self._marks:
                        raise WeightsFileError(f"malformed pickle: STOP at offset {at} with {len(self._stack)} objects")
                    return self._stack.pop()
            except WeightsFileError:
                raise
            except (ValueError, TypeError, OverflowError, struct.error, UnicodeError) as e:
                raise WeightsFileError(f"malformed pickle: {_OPNAMES[code]} at offset {at}: {e}") from None
        raise WeightsFileError(f"a pickle runs more than {MAX_PICKLE_OPS} opcodes")

    # stack helpers
    def _push(self, obj):
        self._stack.append(obj)

    def _floor(self) -> int:
        return self._marks[-1] if self._marks else 0

    def _pop(self):
        if len(self._stack) <= self._floor():
            raise WeightsFileError("malformed pickle: stack underflow")
        return self._stack.pop()

    def _top(self):
        if len(self._stack) <= self._floor():
            raise WeightsFileError("malformed pickle: stack underflow")
        return self._stack[-1]

    def _pop_mark(self) -> list:
        if not self._marks:
            raise WeightsFileError("malformed pickle: no MARK")
        start = self._marks.pop()
        items = self._stack[start:]
        del self._stack[start:]
        return items

    def _int(self, fmt: str) -> int:
        return struct.unpack(fmt, self._in.read(struct.calcsize(fmt)))[0]

    def _number_line(self) -> str:
        return self._in.readline(_MAX_LINE).decode("ascii")

    # opcodes
    def op_proto(self):
        if self._in.read(1)[0] > 5:
            raise WeightsFileError("unknown pickle protocol")

    def op_frame(self):
        self._int("<Q")

    def op_stop(self):
        return _STOP

    def op_mark(self):
        self._marks.append(len(self._stack))

    def op_pop(self):
        if self._marks and len(self._stack) == self._marks[-1]:
            self._marks.pop()
        else:
            self._pop()

    def op_pop_mark(self):
        self._pop_mark()

    def op_dup(self):
        self._push(self._top())

    def op_none(self):
        self._push(None)

    def op_newtrue(self):
        self._push(True)

    def op_newfalse(self):
        self._push(False)

    def op_int(self):
        line = self._number_line()
        self._push(False if line == "00" else True if line == "01" else int(line))

    def op_binint(self):
        self._push(self._int("<i"))

    def op_binint1(self):
        self._push(self._in.read(1)[0])

    def op_binint2(self):
        self._push(self._int("<H"))

    def op_long(self):
        line = self._number_line()
        self._push(int(line[:-1] if line.endswith("L") else line))

    def _long(self, n: int):
        if not 0 <= n <= _MAX_INT_BYTES:
            raise WeightsFileError(f"a pickled integer of {n} bytes is not allowed")
        self._push(int.from_bytes(self._in.read(n), "little", signed=True))

    def op_long1(self):
        self._long(self._in.read(1)[0])

    def op_long4(self):
        self._long(self._int("<i"))

    def op_float(self):
        self._push(float(self._number_line()))

    def op_binfloat(self):
        self._push(self._int(">d"))

    def _string(self, n: int) -> str:
        if n < 0:
            raise WeightsFileError("negative string length")
        return self._in.read(n).decode("utf-8", "surrogatepass")

    def op_string(self):
        line = self._in.readline(MAX_METADATA_BYTES)
        if len(line) < 2 or line[:1] not in (b"'", b'"') or line[-1:] != line[:1]:
            raise WeightsFileError("malformed pickle: STRING is not quoted")
        self._push(codecs.escape_decode(line[1:-1])[0].decode("utf-8", "surrogatepass"))

    def op_binstring(self):
        self._push(self._string(self._int("<i")))

    def op_short_binstring(self):
        self._push(self._string(self._in.read(1)[0]))

    def op_unicode(self):
        self._push(self._in.readline(MAX_METADATA_BYTES).decode("raw-unicode-escape"))

    def op_binunicode(self):
        self._push(self._string(self._int("<I")))

    def op_short_binunicode(self):
        self._push(self._string(self._in.read(1)[0]))

    def op_binunicode8(self):
        self._push(self._string(self._int("<Q")))

    def op_binbytes(self):
        self._push(self._in.read(self._int("<I")))

    def op_short_binbytes(self):
        self._push(self._in.read(self._in.read(1)[0]))

    def op_binbytes8(self):
        self._push(self._in.read(self._int("<Q")))

    def op_empty_tuple(self):
        self._push(())

    def op_tuple(self):
        self._push(tuple(self._pop_mark()))

    def op_tuple1(self):
        self._push((self._pop(),))

    def op_tuple2(self):
        b, a = self._pop(), self._pop()
        self._push((a, b))

    def op_tuple3(self):
        c, b, a = self._pop(), self._pop(), self._pop()
        self._push((a, b, c))

    def op_empty_list(self):
        self._push([])

    def op_list(self):
        self._push(self._pop_mark())

    def op_empty_dict(self):
        self._push({})

    def op_dict(self):
        items = self._pop_mark()
        self._push(self._set_items({}, items))

    def op_empty_set(self):
        self._push(set())

    def op_frozenset(self):
        self._push(frozenset(_check_key(k) for k in self._pop_mark()))

    def op_additems(self):
        items = self._pop_mark()
        target = self._top()
        if type(target) is not set:
            raise WeightsFileError(f"ADDITEMS on {type(target).__name__} is not allowed")
        target.update(_check_key(k) for k in items)

    def _list(self) -> list:
        target = self._top()
        if type(target) is not list:
            raise WeightsFileError(f"APPEND on {type(target).__name__} is not allowed")
        return target

    def op_append(self):
        value = self._pop()
        self._list().append(value)

    def op_appends(self):
        items = self._pop_mark()
        self._list().extend(items)

    def _set_items(self, target: Any, items: list) -> Any:
        if type(target) not in (dict, collections.OrderedDict):
            raise WeightsFileError(f"SETITEM on {type(target).__name__} is not allowed")
        if len(items) % 2:
            raise WeightsFileError("malformed pickle: odd number of SETITEMS items")
        for i in range(0, len(items), 2):
            _set_item(target, items[i], items[i + 1])
        return target

    def op_setitem(self):
        value, key = self._pop(), self._pop()
        self._set_items(self._top(), [key, value])

    def op_setitems(self):
        items = self._pop_mark()
        self._set_items(self._top(), items)

    def _memo_put(self, index: int):
        if not 0 <= index < 1 << 32:  # as LONG_BINPUT can say; keeps the memo's hashes distinct
            raise WeightsFileError(f"malformed pickle: memo index {_show(index)}")
        self._memo[index] = self._top()

    def op_put(self):
        self._memo_put(int(self._number_line()))

    def op_binput(self):
        self._memo_put(self._in.read(1)[0])

    def op_long_binput(self):
        self._memo_put(self._int("<I"))

    def op_memoize(self):
        self._memo_put(len(self._memo))

    def _memo_get(self, index: int):
        if index not in self._memo:
            raise WeightsFileError(f"malformed pickle: memo entry {index} is missing")
        self._push(self._memo[index])

    def op_get(self):
        self._memo_get(int(self._number_line()))

    def op_binget(self):
        self._memo_get(self._in.read(1)[0])

    def op_long_binget(self):
        self._memo_get(self._int("<I"))

    def op_global(self):
        module = self._in.readline(_MAX_LINE).decode("utf-8")
        name = self._in.readline(_MAX_LINE).decode("utf-8")
        self._push(_find_class(module, name))

    def op_stack_global(self):
        name, module = self._pop(), self._pop()
        self._push(_find_class(module, name))

    def op_reduce(self):
        args, func = self._pop(), self._pop()
        name = _CALLABLE_NAMES.get(id(func)) if callable(func) else None
        if name is None:
            raise WeightsFileError(f"refusing to call {_show(func)}: only tensor rebuild functions are called")
        if type(args) is not tuple:
            raise WeightsFileError(f"{name}: arguments {_show(args)} are not a tuple")
        try:
            self._push(func(*args))
        except TypeError:
            raise WeightsFileError(f"{name}: wrong arguments {_show(args)}") from None

    def op_build(self):
        state = self._pop()
        target = self._top()
        # OrderedDict.__reduce__ keeps instance attributes (a state_dict's ``_metadata``): read and dropped.
        if type(target) is not collections.OrderedDict:
            raise WeightsFileError(f"BUILD on {_show(target)} is not allowed")
        parts = state if type(state) is tuple and len(state) == 2 else (state,)
        if not all(s is None or type(s) is dict for s in parts):
            raise WeightsFileError(f"BUILD state {_show(state)} is not a dict")

    def op_binpersid(self):
        self._push(self._persistent_load(self._pop()))

    def op_persid(self):
        self._push(self._persistent_load(self._in.readline(_MAX_LINE).decode("ascii")))


_DISPATCH: dict[int, Callable[[_Unpickler], Any]] = {}
for _op in pickletools.opcodes:
    _handler = getattr(_Unpickler, "op_" + _op.name.lower(), None)
    if _handler is not None:
        _DISPATCH[_op.code.encode("latin-1")[0]] = _handler
del _op, _handler


# ---------------------------------------------------------------------------------------------------
# From the pickled object graph to the loaded one


_CONTAINERS = (dict, list, tuple)
_PLAIN = (str, bytes, int, float, bool, type(None), set, frozenset)  # values that are not containers


def _child_path(path: str, key: Any) -> str:
    label = _name(key)
    return f"{path}/{label}" if path else label


def _walk(root: Any, leaf: Callable[[Any, str], Any]) -> Any:
    """Copies the containers under ``root`` with ``leaf(obj, path)`` for every other object, without
    recursion; refuses nesting deeper than ``MAX_DEPTH`` and cycles; a shared container is copied once."""
    done: dict[int, Any] = {}
    active: set[int] = set()
    todo: list[tuple[Any, str, int, bool]] = [(root, "", 0, False)]
    while todo:
        obj, path, depth, children_done = todo.pop()
        key = id(obj)
        if not isinstance(obj, _CONTAINERS):
            done[key] = leaf(obj, path)
        elif children_done:
            active.discard(key)
            if isinstance(obj, dict):
                done[key] = type(obj)((k, done[id(v)]) for k, v in obj.items())
            else:
                done[key] = type(obj)(done[id(v)] for v in obj)
        elif key not in done:
            if key in active:
                raise WeightsFileError(f"{path or 'the top-level object'} contains itself")
            if depth >= MAX_DEPTH:
                raise WeightsFileError(f"objects nest deeper than {MAX_DEPTH} levels (at {path})")
            active.add(key)
            todo.append((obj, path, depth, True))
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            todo.extend((v, _child_path(path, k), depth + 1, False) for k, v in items)
    return done[id(root)]


def _resolve(obj: Any, file_size: int, read_storage: Callable[[_Storage], bytes], order: list[_Storage]) -> Any:
    """Checks every tensor under ``obj`` and the budgets, then reads each needed storage once, in
    ``order``, and returns ``obj`` with NumPy arrays in place of the tensors."""
    tensors: dict[int, _LazyTensor] = {}

    def check(leaf, path):
        if isinstance(leaf, _LazyTensor):
            if id(leaf) not in tensors:
                try:
                    leaf.check()
                except WeightsFileError as e:
                    raise WeightsFileError(f"tensor {path or '(top level)'}: {e}") from None
                tensors[id(leaf)] = leaf
        elif type(leaf) not in _PLAIN:
            raise WeightsFileError(f"{path or 'the top-level object'} is {_show(leaf)}, not a tensor or plain value")
        return leaf

    _walk(obj, check)
    groups: dict[int, list[_LazyTensor]] = collections.defaultdict(list)
    for tensor in tensors.values():
        groups[id(tensor.root)].append(tensor)
    needed = [root for root in order if id(root) in groups]
    _check_budget(needed, {t.view_key(): t.nbytes for t in tensors.values()}, file_size)
    arrays: dict[int, np.ndarray] = {}
    for root in needed:
        flat = root.stype.array(read_storage(root))
        built: dict[tuple, np.ndarray] = {}
        for tensor in groups[id(root)]:
            key = tensor.view_key()
            if key not in built:
                built[key] = tensor.copy_from(flat)
            arrays[id(tensor)] = built[key]
        del flat, built  # one storage in memory at a time
    return _walk(obj, lambda leaf, path: arrays[id(leaf)] if isinstance(leaf, _LazyTensor) else leaf)


def _check_budget(roots: list[_Storage], views: dict[tuple, int], file_size: int) -> None:
    storage_bytes = sum(root.nbytes for root in roots)
    tensor_bytes = sum(views.values())
    if storage_bytes > file_size:
        raise WeightsFileError(
            f"its storages declare {storage_bytes} bytes, more than the whole file ({file_size} bytes)"
        )
    if tensor_bytes > _VIEW_FACTOR * storage_bytes + _VIEW_SLACK:
        raise WeightsFileError(
            f"its tensors would take {tensor_bytes} bytes, over {_VIEW_FACTOR}x the {storage_bytes} bytes of "
            "storage they are read from (zero strides, or one storage read by many tensors)"
        )
    if max(storage_bytes, tensor_bytes) > MAX_TENSOR_BYTES:
        raise WeightsFileError(
            f"its tensors take {max(storage_bytes, tensor_bytes)} bytes, over the {MAX_TENSOR_BYTES >> 20} MiB "
            "limit for weights"
        )


# ---------------------------------------------------------------------------------------------------
# The two formats


def _no_persistent_ids(pid):
    raise WeightsFileError(f"persistent id {_show(pid)} outside the data pickle")


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A member's bytes: at most ``limit``, exactly its declared size (zipfile checks the CRC)."""
    if info.file_size > limit:
        raise WeightsFileError(f"zip member {info.filename} declares {info.file_size} bytes, over {limit}")
    with zf.open(info) as member:
        data = member.read(info.file_size)
    if len(data) != info.file_size:
        raise WeightsFileError(f"zip member {info.filename} has {len(data)} of its {info.file_size} bytes")
    return data


def _check_zip_directory(f) -> None:
    """Refuses a central directory over ``_MAX_ZIP_DIRECTORY`` bytes before :mod:`zipfile` parses it
    (each 46-byte entry becomes a ~500-byte object). Finds the end record as zipfile does; a damaged
    one is left for zipfile to report."""
    tail_bytes = min(f.size, 22 + 0xFFFF)
    f.seek(f.size - tail_bytes)
    tail = f.read(tail_bytes)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or at + 22 > len(tail):
        return
    (directory_bytes,) = struct.unpack("<I", tail[at + 12 : at + 16])
    if directory_bytes == 0xFFFFFFFF and tail[at - 20 : at - 16] == b"PK\x06\x07":  # zip64
        f.seek(struct.unpack("<Q", tail[at - 12 : at - 4])[0])
        record = f.read(56)
        if record[:4] == b"PK\x06\x06":
            (directory_bytes,) = struct.unpack("<Q", record[40:48])
    if directory_bytes > _MAX_ZIP_DIRECTORY:
        raise WeightsFileError(
            f"zip directory of {directory_bytes} bytes is over the {_MAX_ZIP_DIRECTORY >> 20} MiB limit"
        )


def _read_zip(f) -> Any:
    _check_zip_directory(f)
    f.seek(0)
    with zipfile.ZipFile(f) as zf:
        infos = zf.infolist()
        names = collections.Counter(info.filename for info in infos)
        repeated = sorted(name for name, count in names.items() if count > 1)
        if repeated:
            raise WeightsFileError(f"zip archive repeats member(s) {_show(repeated)}")
        pickles = [n for n in names if n == "data.pkl" or (n.endswith("/data.pkl") and n.count("/") == 1)]
        if len(pickles) != 1:
            raise WeightsFileError(f"zip archive with {len(pickles)} data.pkl members; not a torch.save file")
        prefix = pickles[0][: -len("data.pkl")]
        if prefix + "byteorder" in names:
            byteorder = _zip_member(zf, zf.getinfo(prefix + "byteorder"), 16)
            if byteorder.strip() != b"little":
                raise WeightsFileError(f"byte order {_show(byteorder)}: only little-endian checkpoints are read")
        storages = _Storages()

        def persistent_load(pid):
            if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage" or type(pid[3]) is not str:
                raise WeightsFileError(f"persistent id {_show(pid)} is not ('storage', type, key, location, numel)")
            return storages.root(pid[1], pid[2], pid[4])

        data = _zip_member(zf, zf.getinfo(pickles[0]), MAX_METADATA_BYTES)
        obj = _Unpickler(_Stream(data=data), persistent_load).load()
        del data
        for root in storages.roots.values():
            name = f"{prefix}data/{root.key}"
            if name not in names:
                raise WeightsFileError(f"{root!r} has no zip member {name}")
            info = root.location = zf.getinfo(name)
            if info.file_size != root.nbytes:
                raise WeightsFileError(f"{root!r} needs {root.nbytes} bytes, its zip member has {info.file_size}")
        return _resolve(obj, f.size, lambda root: _zip_member(zf, root.location, root.nbytes),
                        list(storages.roots.values()))


def _read_legacy(f) -> Any:
    stream = _Stream(file=f, size=f.size)
    try:
        magic = _Unpickler(stream, _no_persistent_ids).load()
    except WeightsFileError as e:
        raise WeightsFileError(
            f"not a PyTorch checkpoint (neither a zip archive nor torch's legacy format: {e})"
        ) from None
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise WeightsFileError("not a PyTorch checkpoint (bad magic number)")
    protocol = _Unpickler(stream, _no_persistent_ids).load()
    if type(protocol) is not int or protocol != _LEGACY_PROTOCOL:
        raise WeightsFileError(f"legacy format protocol {_show(protocol)} is not {_LEGACY_PROTOCOL}")
    sys_info = _Unpickler(stream, _no_persistent_ids).load()
    if type(sys_info) is not dict or sys_info.get("little_endian") is not True:
        raise WeightsFileError(f"system info {_show(sys_info)}: only little-endian checkpoints are read")
    storages = _Storages()

    def persistent_load(pid):
        if type(pid) is not tuple or len(pid) != 6 or pid[0] != "storage" or type(pid[3]) is not str:
            raise WeightsFileError(f"persistent id {_show(pid)} is not ('storage', type, key, location, numel, view)")
        root = storages.root(pid[1], pid[2], pid[4])
        return root if pid[5] is None else storages.view(root, pid[5])

    obj = _Unpickler(stream, persistent_load).load()
    keys = _Unpickler(stream, _no_persistent_ids).load()
    if type(keys) is not list or not all(type(k) is str for k in keys) or len(set(keys)) != len(keys):
        raise WeightsFileError(f"storage key list {_show(keys)} is not a list of distinct strings")
    if set(keys) != set(storages.roots):
        missing, extra = set(storages.roots) - set(keys), set(keys) - set(storages.roots)
        raise WeightsFileError(f"storage keys disagree with the data: missing {_show(missing)}, unknown {_show(extra)}")
    order = [storages.roots[k] for k in keys]
    offset = stream.pos
    for root in order:
        root.location = offset
        offset += 8 + root.nbytes
    if offset != f.size:
        declared, present = offset - stream.pos, f.size - stream.pos
        raise WeightsFileError(
            f"truncated: the storages declare {declared} bytes after the pickles, the file has {present}"
            if present < declared
            else f"{present - declared} unexpected bytes after the last storage (declared {declared} bytes)"
        )

    def read_storage(root: _Storage) -> bytes:
        f.seek(root.location)
        (numel,) = struct.unpack("<q", f.read(8))
        if numel != root.numel:
            raise WeightsFileError(f"{root!r}: the file says {numel} elements")
        raw = f.read(root.nbytes)
        if len(raw) != root.nbytes:
            raise WeightsFileError(f"truncated: {root!r} has {len(raw)} of {root.nbytes} bytes")
        return raw

    return _resolve(obj, f.size, read_storage, order)


def read_torch(f) -> Any:
    """Everything in a ``torch.save`` file, tensors as NumPy arrays.

    Args:
      f: an open weights file from :func:`hrnet_tfx.models.weights.open_weights_file` (seekable, reads
        bounded by its ``size``).

    Raises:
      WeightsFileError: without the file name (the caller adds it); see the module docstring for what
        is refused.
    """
    head = f.read(4)
    f.seek(0)
    if head != _ZIP_MAGIC:
        return _read_legacy(f)
    try:
        return _read_zip(f)
    except WeightsFileError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/zlib report damage with many exception types
        raise WeightsFileError(f"damaged zip archive ({type(e).__name__}: {e})") from None


def load_torch_file(path: str) -> Any:
    """Loads a ``torch.save`` file holding tensors (a state_dict, or a dict around one) as NumPy arrays.

    ``path`` may be local or any ``tf.io.gfile`` URI; failures raise ``WeightsFileError`` naming it."""
    return read_weights_file(path, read_torch)
