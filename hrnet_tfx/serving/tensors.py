"""Conversions between TF Serving's TensorProto and numpy arrays (the client and the development server).

Outputs are written as ``tensorflow_model_server`` writes them (``Tensor::AsProtoField``: the typed
repeated fields ``float_val``, ``int_val``, ``string_val``, ...), so code that reads
``response.outputs["scores"].float_val`` works against either server. Inputs are read in any valid
encoding (typed fields or ``tensor_content``).
"""

from __future__ import annotations

import math

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from hrnet_tfx.serving.errors import invalid

_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}


def dtype_name(dtype: int) -> str:
    """``types_pb2`` enum -> its name, e.g. ``DT_STRING``."""
    try:
        return types_pb2.DataType.Name(dtype)
    except ValueError:
        return f"DataType({dtype})"


def numpy_dtype(dtype: int) -> np.dtype:
    """The numpy dtype for a ``DT_*`` enum (``object`` for ``DT_STRING``)."""
    if dtype not in _FIELD and dtype not in (types_pb2.DT_HALF, types_pb2.DT_STRING):
        raise invalid(f"tensors of type {dtype_name(dtype)} are not supported")
    return np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)


def datatype_of(array: np.ndarray) -> int:
    """The ``DT_*`` enum for a numpy array (object/bytes/str arrays are ``DT_STRING``)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        dtype = tf.dtypes.as_dtype(array.dtype).as_datatype_enum
    except TypeError:
        dtype = None
    if dtype not in _FIELD and dtype != types_pb2.DT_HALF:
        raise invalid(f"arrays of dtype {array.dtype} cannot be sent as tensors")
    return dtype


def shape_proto(shape) -> tensor_shape_pb2.TensorShapeProto:
    """A ``TensorShapeProto`` for a tuple of ints."""
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(d)) for d in shape])


def _as_bytes(value) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytearray, memoryview, np.bytes_)):
        return bytes(value)
    raise invalid(f"string tensors take bytes or str values, got {type(value).__name__}")


def to_tensor_proto(array) -> tensor_pb2.TensorProto:
    """A numpy array (or nested list / bytes) as a TensorProto with typed repeated fields, like TF Serving."""
    array = np.asarray(array, dtype=object if isinstance(array, (bytes, str)) else None)
    dtype = datatype_of(array)
    proto = tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape_proto(array.shape))
    flat = array.ravel()
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend([_as_bytes(v) for v in flat])
    elif dtype == types_pb2.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())
    else:
        getattr(proto, _FIELD[dtype]).extend(flat.tolist())
    return proto


MAX_RANK = 32
"""Most dimensions a tensor may declare (numpy's limit)."""


def declared_shape(proto: tensor_pb2.TensorProto, name: str = "tensor") -> tuple[int, ...]:
    """The shape a TensorProto declares, checked: known rank (at most :data:`MAX_RANK`), no negative size.

    Raises:
      ServingError: INVALID_ARGUMENT naming the tensor.
    """
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"{name}: the tensor's shape has an unknown rank; send its dimensions")
    dims = proto.tensor_shape.dim
    if len(dims) > MAX_RANK:
        raise invalid(f"{name}: {len(dims)} dimensions, more than {MAX_RANK}")
    shape = tuple(int(d.size) for d in dims)
    if any(size < 0 for size in shape):
        raise invalid(f"{name}: shape {list(shape)} has a negative dimension")
    return shape


def value_count(proto: tensor_pb2.TensorProto) -> int:
    """How many values a TensorProto carries (without converting them)."""
    if proto.dtype == types_pb2.DT_STRING:
        return len(proto.string_val)
    if proto.tensor_content:
        return len(proto.tensor_content) // numpy_dtype(proto.dtype).itemsize
    field = "half_val" if proto.dtype == types_pb2.DT_HALF else _FIELD.get(proto.dtype)
    return len(getattr(proto, field)) if field else 0


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """A TensorProto as a numpy array (``DT_STRING`` -> object array of bytes).

    The declared shape is checked against the values the proto carries *before* anything is allocated:
    TensorFlow fills a short tensor with its last value, so a 40-byte proto could declare a 1 GiB tensor;
    here every element must be sent. INVALID_ARGUMENT for an unsupported dtype, a bad shape or a value count
    that does not match the shape.
    """
    shape = declared_shape(proto, name)
    count = math.prod(shape)
    np_dtype = numpy_dtype(proto.dtype)
    if proto.dtype != types_pb2.DT_STRING and proto.tensor_content:
        if len(proto.tensor_content) != count * np_dtype.itemsize:
            raise invalid(f"{name}: a {dtype_name(proto.dtype)} tensor of shape {list(shape)} needs "
                          f"{count * np_dtype.itemsize:,} bytes of tensor_content, got {len(proto.tensor_content):,}")
    elif value_count(proto) != count:
        raise invalid(f"{name}: a {dtype_name(proto.dtype)} tensor of shape {list(shape)} needs {count:,} values, "
                      f"got {value_count(proto):,}")
    if proto.dtype == types_pb2.DT_STRING:
        out = np.empty(count, dtype=object)
        out[:] = list(proto.string_val)
        return out.reshape(shape)
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype=np_dtype.newbyteorder("<")).astype(np_dtype).reshape(shape)
    if proto.dtype == types_pb2.DT_HALF:
        return np.array(proto.half_val, dtype=np.uint16).view(np.float16).reshape(shape)
    return np.array(getattr(proto, _FIELD[proto.dtype]), dtype=np_dtype).reshape(shape)
