"""Imports official PyTorch HRNet weights (official or timm key names) into a Keras HRNet.

Because every Keras layer with weights carries its PyTorch module path as its name, the mapping is a
name lookup plus a layout change: conv kernels OIHW -> HWIO, Linear (out, in) -> (in, out), BatchNorm
weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance. The whole source is
checked first, and an error names every missing, unexpected or mis-shaped key; weights are assigned
only when everything matches, so a model is never half loaded.

Weights files are hostile input: they are read through ``tf.io.gfile`` (local paths or buckets), every
read is bounded by the file's size, and anything wrong with a file raises :class:`WeightsFileError`
naming the file and the reason (see :mod:`hrnet_tfx.models.torch_pickle` for ``.pth`` files).
"""

from __future__ import annotations

import collections
import contextlib
import json
import math
import os
import struct
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

_IGNORED_SUFFIXES = ("num_batches_tracked",)
_WRAPPER_KEYS = ("state_dict", "model", "model_state", "net")

MAX_TENSOR_BYTES = 4 << 30
"""Most tensor bytes one weights file may hold: hrnet_w64 (the largest variant, 128M parameters) is
~512 MB in float32; the limit leaves room for training checkpoints that also carry optimizer state."""

MAX_METADATA_BYTES = 16 << 20
"""Most bytes of a weights file's non-tensor part: one pickle of a ``.pth``, or a ``.safetensors``
JSON header. hrnet_w64's state_dict pickle is ~0.3 MB, its safetensors header ~0.2 MB."""

_MAX_REASON_CHARS = 2000
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


class WeightImportError(ValueError):
    """The weights do not fit the model; the message lists every offending key."""


class WeightsFileError(WeightImportError):
    """A weights file is missing, malformed, hostile or over a limit.

    Attributes:
      path: the file (set by the function that opened it).
      reason: what is wrong with it.
    """

    def __init__(self, reason: str, path: str | None = None):
        # One printable line of bounded length, whatever names the file puts into the reason.
        reason = "".join(c if c.isprintable() else repr(c)[1:-1] for c in reason[:_MAX_REASON_CHARS])
        super().__init__(reason)
        self.reason, self.path = reason, path

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}" if self.path else self.reason


class _BoundedFile:
    """A seekable view of an open ``tf.io.gfile.GFile`` that never reads past the size the file had
    when it was opened, whatever a caller (e.g. :mod:`zipfile`) asks for."""

    def __init__(self, raw, size: int):
        self._raw, self.size, self._pos = raw, size, 0

    def read(self, n: int = -1) -> bytes:
        n = self.size - self._pos if n is None or n < 0 else min(n, self.size - self._pos)
        data = self._raw.read(n) if n > 0 else b""
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = offset + (0, self._pos, self.size)[whence]
        if pos < 0:
            raise OSError(f"seek to {pos}")
        if pos != self._pos:  # GFile.seek is slow (a deprecation wrapper inspects every call)
            self._raw.seek(min(pos, self.size))
            self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def seekable(self) -> bool:
        return True

    def close(self) -> None:
        """The file is closed by :func:`open_weights_file`."""


@contextlib.contextmanager
def open_weights_file(path: str) -> Iterator[_BoundedFile]:
    """Opens a weights file (local path or ``tf.io.gfile`` URI such as ``gs://``) for bounded reading."""
    import tensorflow as tf

    try:
        if not tf.io.gfile.exists(path):
            raise WeightsFileError("weights file not found", path)
        if tf.io.gfile.isdir(path):
            raise WeightsFileError("is a directory, not a weights file", path)
        size = tf.io.gfile.stat(path).length
        with tf.io.gfile.GFile(path, "rb") as raw:
            yield _BoundedFile(raw, size)
    except tf.errors.OpError as e:
        raise WeightsFileError(f"cannot read: {e.message}", path) from None


def read_weights_file(path: str | os.PathLike, reader: Callable[[_BoundedFile], Any] | None = None) -> Any:
    """Everything in a weights file, tensors as NumPy arrays; any failure is a :class:`WeightsFileError`
    naming ``path``.

    Args:
      path: a ``.safetensors`` file, or a ``torch.save`` file (any other name).
      reader: the parser (default: chosen by the name).
    """
    path = os.fspath(path)
    if reader is None:
        from hrnet_tfx.models.torch_pickle import read_torch

        reader = _read_safetensors if path.endswith(".safetensors") else read_torch
    try:
        with open_weights_file(path) as f:
            return reader(f)
    except WeightsFileError as e:
        e.path = e.path or path
        raise
    except Exception as e:  # noqa: BLE001 - a hostile file must not surface as some other error type
        raise WeightsFileError(f"unreadable ({type(e).__name__}: {e})", path) from e


def _read_safetensors(f: _BoundedFile) -> dict[str, np.ndarray]:
    """A ``.safetensors`` file: the header is bounded and checked here; the safetensors library checks
    that dtypes, shapes and offsets tile the data exactly; BF16 is widened to float32."""
    from safetensors import SafetensorError, deserialize

    if f.size < 8:
        raise WeightsFileError(f"truncated: {f.size} bytes, a safetensors file starts with 8")
    (header_bytes,) = struct.unpack("<Q", f.read(8))
    if header_bytes > min(MAX_METADATA_BYTES, f.size - 8):
        raise WeightsFileError(
            f"header of {header_bytes} bytes is over the {MAX_METADATA_BYTES >> 20} MiB limit or the file size"
        )
    if f.size - 8 - header_bytes > MAX_TENSOR_BYTES:
        raise WeightsFileError(f"holds {f.size} bytes, over the {MAX_TENSOR_BYTES >> 20} MiB limit for weights")
    f.seek(0)
    data = f.read()
    try:
        header = json.loads(data[8 : 8 + header_bytes], object_pairs_hook=_unique_keys)
    except WeightsFileError:
        raise
    except (ValueError, RecursionError) as e:
        raise WeightsFileError(f"header is not valid JSON: {e}") from None
    if not isinstance(header, dict):
        raise WeightsFileError("header is not a JSON object")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape = (info.get("dtype"), info.get("shape")) if isinstance(info, dict) else (None, None)
        if dtype not in _SAFETENSORS_DTYPES:
            raise WeightsFileError(f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(_SAFETENSORS_DTYPES)}")
        if not isinstance(shape, list) or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
            raise WeightsFileError(f"tensor {name!r}: shape {shape!r} is not a list of at most 32 sizes")
        itemsize = 4 if dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES[dtype]).itemsize
        if math.prod(n for n in shape if n) * itemsize >= 1 << 63:  # NumPy's limit for an array
            raise WeightsFileError(f"tensor {name!r}: shape {shape} is too large")
    try:
        tensors = deserialize(data)
    except SafetensorError as e:
        raise WeightsFileError(str(e)) from None
    del data
    out = {name: None for name in header if name != "__metadata__"}  # the file's order
    for name, info in tensors:
        dtype, raw = _SAFETENSORS_DTYPES[info["dtype"]], info.pop("data")
        if dtype == "bfloat16":
            flat = bfloat16_as_float32(raw)
        else:
            flat = np.frombuffer(raw, np.dtype(dtype).newbyteorder("<"))
        out[name] = flat.reshape(info["shape"])
    return out


def bfloat16_as_float32(raw: bytes) -> np.ndarray:
    """Little-endian bfloat16 values, widened exactly to float32 (NumPy has no bfloat16)."""
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        repeated = [k for k, n in collections.Counter(k for k, _ in pairs).items() if n > 1]
        raise WeightsFileError(f"duplicate key(s) in the header: {repeated[:5]}")
    return out


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Reads a PyTorch state_dict as NumPy arrays.

    Args:
      source: a ``.safetensors`` file (checked here, decoded by the safetensors library), a
        ``.pth``/``.pt``/``.pth.tar``/``.bin`` file written by ``torch.save`` (read without PyTorch, see
        :mod:`hrnet_tfx.models.torch_pickle`), or a mapping of names to arrays. Files may be local or
        ``tf.io.gfile`` URIs (``gs://...``). A checkpoint that wraps the state_dict
        (``{"state_dict": ...}``) and DataParallel's ``module.`` prefix are unwrapped;
        ``num_batches_tracked`` entries are dropped.

    Raises:
      WeightsFileError: the file is missing, malformed or hostile, or holds no state_dict of arrays
        with string keys; the message names the file and the problem.
      WeightImportError: a mapping ``source`` that is not a state_dict of arrays.
    """
    if isinstance(source, Mapping):
        return _state_dict(source, WeightImportError)
    path = os.fspath(source)
    state = read_weights_file(path)
    return _state_dict(state, lambda reason: WeightsFileError(reason, path))


def _state_dict(state: Any, error: Callable[[str], Exception]) -> dict[str, np.ndarray]:
    if not isinstance(state, Mapping):
        raise error(f"holds a {type(state).__name__}, not a state_dict")
    for key in _WRAPPER_KEYS:
        if isinstance(state.get(key), Mapping) and not any(isinstance(v, np.ndarray) for v in state.values()):
            state = state[key]
            break
    not_str = [k for k in state if not isinstance(k, str)]
    if not_str:
        raise error(f"state_dict keys must be strings, found {[repr(k) for k in not_str[:5]]}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    bad = sorted(k for k, v in state.items() if not hasattr(v, "shape"))
    if bad:
        raise error(f"not arrays: {bad[:20]}{' ...' if len(bad) > 20 else ''}")
    return {k: np.asarray(v) for k, v in state.items() if not k.endswith(_IGNORED_SUFFIXES)}


def _torch_layout(layer) -> dict[str, tuple[int, Any]]:
    """PyTorch key suffix -> (index into layer.weights, function from the torch array to Keras layout)."""
    import tf_keras as keras

    ident = lambda a: a  # noqa: E731
    if isinstance(layer, keras.layers.Conv2D):
        out = {"weight": (0, lambda a: np.transpose(a, (2, 3, 1, 0)))}
        if layer.use_bias:
            out["bias"] = (1, ident)
        return out
    if isinstance(layer, keras.layers.Dense):
        return {"weight": (0, np.transpose), "bias": (1, ident)}
    if isinstance(layer, keras.layers.BatchNormalization):
        return {"weight": (0, ident), "bias": (1, ident), "running_mean": (2, ident), "running_var": (3, ident)}
    return {}


def torch_key_map(model) -> dict[str, tuple[Any, int, Any]]:
    """Every PyTorch state_dict key the model expects -> (layer, weight index, layout converter)."""
    keys = {}
    for layer in model.layers:
        for suffix, (index, convert) in _torch_layout(layer).items():
            keys[f"{layer.name}.{suffix}"] = (layer, index, convert)
    return keys


def load_pytorch_weights(
    model,
    source: str | os.PathLike | Mapping[str, Any],
    exclude: Sequence[str] = (),
) -> int:
    """Loads official/timm PyTorch HRNet weights into ``model`` (built by ``build_model``).

    Args:
      model: the ``tf_keras.Model`` to fill.
      source: see :func:`read_state_dict`.
      exclude: key prefixes to skip on both sides, e.g. ``("classifier",)`` to fine-tune ImageNet
        weights on another number of classes.

    Returns:
      The number of tensors loaded.

    Raises:
      WeightsFileError: the file cannot be read safely (see :func:`read_state_dict`).
      WeightImportError: naming every key that is missing from the source, not used by the model, or
        of the wrong shape. Nothing is assigned in either case.
    """
    state = read_state_dict(source)
    excluded = tuple(exclude)

    def keep(key: str) -> bool:
        return not any(key == p or key.startswith(p + ".") for p in excluded)

    expected = {k: v for k, v in torch_key_map(model).items() if keep(k)}
    given = {k: v for k, v in state.items() if keep(k)}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    values: dict[str, np.ndarray] = {}
    mismatched = []
    for key in sorted(set(expected) & set(given)):
        layer, index, convert = expected[key]
        array = convert(given[key])
        want = tuple(layer.weights[index].shape)
        if tuple(array.shape) != want:
            mismatched.append(f"{key}: file {tuple(given[key].shape)} -> {tuple(array.shape)}, model {want}")
            continue
        values[key] = array
    problems = _describe(missing, "missing from the weights")
    if any(k.startswith(("downsamp_modules", "final_layer")) and k.endswith(".bias") for k in missing):
        problems.append("  (weights without head conv biases, e.g. Paddle's 'ssld', need head_conv_bias: false)")
    problems += _describe(unexpected, "not used by the model")
    problems += _describe(mismatched, "shape mismatch")
    if problems:
        raise WeightImportError(
            f"weights do not fit model {model.name!r} ({len(expected)} tensors expected, {len(given)} given); "
            "nothing was loaded:\n" + "\n".join(problems)
        )
    import tf_keras as keras

    assignments = [(layer.weights[index], values[key]) for key, (layer, index, _) in expected.items()]
    keras.backend.batch_set_value(assignments)
    return len(assignments)


def _describe(keys: Iterable[str], what: str) -> list[str]:
    keys = list(keys)
    return [f"{len(keys)} key(s) {what}:"] + [f"  {k}" for k in keys] if keys else []
