"""Conversions between TF Serving's protos and numpy: TensorProto <-> ndarray, Input -> serialized Examples.

Output tensors are written the way ``tensorflow_model_server`` writes them (``Tensor::AsProtoField``: the
typed repeated fields ``float_val``, ``int_val``, ``string_val``, ...), so client code that reads
``response.outputs["scores"].float_val`` works against either server. Inputs are read in any valid
encoding (typed fields or ``tensor_content``).
"""

from __future__ import annotations

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from hrnet_tfx.serving.errors import invalid

_NUMPY_TO_DTYPE = {
    np.dtype(np.float32): types_pb2.DT_FLOAT,
    np.dtype(np.float64): types_pb2.DT_DOUBLE,
    np.dtype(np.float16): types_pb2.DT_HALF,
    np.dtype(np.int8): types_pb2.DT_INT8,
    np.dtype(np.int16): types_pb2.DT_INT16,
    np.dtype(np.int32): types_pb2.DT_INT32,
    np.dtype(np.int64): types_pb2.DT_INT64,
    np.dtype(np.uint8): types_pb2.DT_UINT8,
    np.dtype(np.uint16): types_pb2.DT_UINT16,
    np.dtype(np.uint32): types_pb2.DT_UINT32,
    np.dtype(np.uint64): types_pb2.DT_UINT64,
    np.dtype(np.bool_): types_pb2.DT_BOOL,
}

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
    if dtype == types_pb2.DT_STRING:
        return np.dtype(object)
    for np_dtype, dt in _NUMPY_TO_DTYPE.items():
        if dt == dtype:
            return np_dtype
    raise invalid(f"tensors of type {dtype_name(dtype)} are not supported")


def datatype_of(array: np.ndarray) -> int:
    """The ``DT_*`` enum for a numpy array (object/bytes/str arrays are ``DT_STRING``)."""
    if array.dtype.kind in "OSU":
        return types_pb2.DT_STRING
    try:
        return _NUMPY_TO_DTYPE[array.dtype]
    except KeyError:
        raise invalid(f"arrays of dtype {array.dtype} cannot be sent as tensors") from None


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


def to_ndarray(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """A TensorProto as a numpy array (``DT_STRING`` -> object array of bytes).

    Raises:
      ServingError: INVALID_ARGUMENT if the proto is malformed (wrong number of values for its shape).
    """
    import tensorflow as tf

    if proto.dtype == types_pb2.DT_STRING:  # the common case here, done without TensorFlow
        shape = tuple(d.size for d in proto.tensor_shape.dim)
        values = list(proto.string_val)
        count = int(np.prod(shape)) if shape else 1
        if len(values) != count:
            raise invalid(f"{name}: a string tensor of shape {list(shape)} needs {count} values, got {len(values)}")
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)
    try:
        return tf.make_ndarray(proto)
    except Exception as e:
        raise invalid(f"{name}: cannot read the tensor ({dtype_name(proto.dtype)}): {e}") from None


def input_to_serialized_examples(request_input) -> list[bytes]:
    """The serialized ``tf.Example`` s of a ``tensorflow.serving.Input`` (Classify/Regress request input).

    With ``example_list_with_context`` the context's features are merged into every example (an example's
    own feature wins on a name clash), which is what TF Serving does by concatenating the two serialized
    messages.
    """
    kind = request_input.WhichOneof("kind")
    if kind == "example_list":
        return [e.SerializeToString() for e in request_input.example_list.examples]
    if kind == "example_list_with_context":
        context = request_input.example_list_with_context.context.SerializeToString()
        return [context + e.SerializeToString() for e in request_input.example_list_with_context.examples]
    return []
