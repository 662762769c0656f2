"""TF Serving's gRPC services over a :class:`~hrnet_tfx.serving.dev.core.ServingCore`, with
tensorflow-serving-api's messages: PredictionService (Predict, Classify, GetModelMetadata; Regress and
MultiInference answer UNIMPLEMENTED) and ModelService (GetModelStatus).
"""

from __future__ import annotations

import contextlib
import logging

import grpc

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)

from hrnet_tfx.serving.dev.core import ServingCore, internal
from hrnet_tfx.serving.dev.servable import input_to_serialized_examples
from hrnet_tfx.serving.errors import ServingError, invalid
from hrnet_tfx.serving.export import SIGNATURE_CLASSIFY
from hrnet_tfx.serving.tensors import to_tensor_proto

log = logging.getLogger(__name__)

SIGNATURE_DEF_FIELD = "signature_def"


def _spec(model_spec) -> tuple[str, int | None, str | None]:
    version = model_spec.version.value if model_spec.HasField("version") else None
    label = model_spec.version_label if model_spec.WhichOneof("version_choice") == "version_label" else None
    return model_spec.name, version, label


def _fill_spec(out, name: str, version: int, signature_name: str | None = None) -> None:
    out.name = name
    out.version.value = version
    if signature_name is not None:
        out.signature_name = signature_name


def metadata_response(name: str, servable):
    """``(GetModelMetadataResponse, SignatureDefMap)``: every signature of the servable's MetaGraph, as TF
    Serving reports it, packed into the response's ``metadata["signature_def"]``."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, signature in servable.signature_defs.items():
        signatures.signature_def[key].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    _fill_spec(response.model_spec, name, servable.version)
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signatures)
    return response, signatures


@contextlib.contextmanager
def _handle(context, api: str):
    """Runs a handler body: ServingError -> that gRPC status; anything else -> INTERNAL with a generic
    message (the details are logged, never sent)."""
    try:
        yield
    except ServingError as e:
        log.debug("gRPC %s failed: %s", api, e)
        context.abort(grpc.StatusCode[e.code.name], e.message)
    except Exception:  # a bug, or memory ran out: tell the caller little, log the rest, keep serving
        e = internal(f"gRPC {api}")
        context.abort(grpc.StatusCode[e.code.name], e.message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService``."""

    def __init__(self, core: ServingCore):
        self._core = core

    def Predict(self, request, context):
        """Runs the requested signature on ``request.inputs`` (TF Serving's Predict). The model is looked up
        first, then the inputs are checked against its signature, and only then converted."""
        with _handle(context, "Predict"):
            name, version, label = _spec(request.model_spec)
            with self._core.lease(name, version, label) as servable:
                signature_name = request.model_spec.signature_name or SIGNATURE_CLASSIFY
                outputs = servable.predict_protos(signature_name, dict(request.inputs), list(request.output_filter))
                response = predict_pb2.PredictResponse()
                _fill_spec(response.model_spec, name, servable.version, signature_name)
                for alias, value in outputs.items():
                    response.outputs[alias].CopyFrom(to_tensor_proto(value))
                return response

    def Classify(self, request, context):
        """Classifies tf.Examples with a ``classes``/``scores`` signature (TF Serving's Classify). The model is
        looked up, and the example count and merged size checked, before the context is merged in."""
        with _handle(context, "Classify"):
            name, version, label = _spec(request.model_spec)
            with self._core.lease(name, version, label) as servable:
                signature_name = request.model_spec.signature_name or SIGNATURE_CLASSIFY
                examples = input_to_serialized_examples(request.input, servable.max_items,
                                                        self._core.max_request_bytes)
                classes, scores = servable.classify(signature_name, examples)
                response = classification_pb2.ClassificationResponse()
                _fill_spec(response.model_spec, name, servable.version, signature_name)
                num_classes = (classes if classes is not None else scores).shape[1]
                for i in range(len(examples)):
                    result = response.result.classifications.add()
                    for c in range(num_classes):
                        item = result.classes.add()
                        if classes is not None:
                            item.label = classes[i, c].decode("utf-8", "replace")
                        if scores is not None:
                            item.score = float(scores[i, c])
                return response

    def GetModelMetadata(self, request, context):
        """The model's SignatureDefs (``metadata["signature_def"]``, a packed ``SignatureDefMap``)."""
        with _handle(context, "GetModelMetadata"):
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            if not request.metadata_field:
                raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
            for field in request.metadata_field:
                if field != SIGNATURE_DEF_FIELD:
                    raise invalid(f"Metadata field {field} is not supported")
            name, version, label = _spec(request.model_spec)
            with self._core.lease(name, version, label) as servable:
                return metadata_response(name, servable)[0]


def model_status_response(statuses) -> get_model_status_pb2.GetModelStatusResponse:
    """A GetModelStatusResponse for :class:`~hrnet_tfx.serving.model_base.VersionStatus` es."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        item = response.model_version_status.add()
        item.version = status.version
        item.state = int(status.state)
        item.status.error_code = int(status.error_code)
        item.status.error_message = status.error_message
    return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService``: GetModelStatus (config reloads are not supported)."""

    def __init__(self, core: ServingCore):
        self._core = core

    def GetModelStatus(self, request, context):
        """Version states of a model (all versions seen, or the one asked for)."""
        with _handle(context, "GetModelStatus"):
            if not request.HasField("model_spec"):
                raise invalid("Missing ModelSpec")
            name, version, _ = _spec(request.model_spec)
            return model_status_response(self._core.status(name, version))


def add_services(server: grpc.Server, core: ServingCore) -> None:
    """Registers both services on a ``grpc.Server``."""
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(core), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(core), server)

