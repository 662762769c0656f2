"""A Python client for a served HRNet classifier, over TF Serving's gRPC or REST API (``tensorflow_model_server``
and the development server alike)::

    with Client("localhost:8500", model_name="hrnet") as client:            # gRPC
        for ranking in client.predict_images(["cat.jpg", "dog.jpg"], top_k=5):
            print(ranking)                                                   # [("tabby", 0.71), ...]
    Client("localhost:8501", rest=True).predict_images([jpeg_bytes])        # REST

A server that cannot be reached raises :class:`~hrnet_tfx.serving.errors.ServerUnavailableError` naming the
address (and which port it probably is when it speaks the other protocol); an error answer raises
:class:`~hrnet_tfx.serving.errors.ServingError` with the server's code and message.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.parse
from typing import Any, Mapping, Sequence

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from hrnet_tfx.serving import rest_json
from hrnet_tfx.serving.errors import Code, ServerUnavailableError, ServingError, code_from_http
from hrnet_tfx.serving.export import (INPUT_IMAGES, OUTPUT_TOP_K_LABELS, OUTPUT_TOP_K_SCORES, SIGNATURE_CLASSIFY,
                                      SIGNATURE_IMAGES, SIGNATURE_TOP_K)
from hrnet_tfx.serving.images import read_images
from hrnet_tfx.serving.tensors import to_ndarray, to_tensor_proto

log = logging.getLogger(__name__)


def _example(item: Any):
    """A tf.train.Example from an Example, its serialized bytes, or a ``{feature: value(s)}`` dict."""
    from tensorflow.core.example import example_pb2

    if isinstance(item, example_pb2.Example):
        return item
    if isinstance(item, (bytes, bytearray)):
        return example_pb2.Example.FromString(bytes(item))
    if isinstance(item, Mapping):
        example = example_pb2.Example()
        for name, value in item.items():
            values = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value]
            feature = example.features.feature[name]
            if all(isinstance(v, (bytes, str)) for v in values):
                feature.bytes_list.value.extend(v.encode() if isinstance(v, str) else v for v in values)
            elif all(isinstance(v, (bool, int, np.integer)) for v in values):
                feature.int64_list.value.extend(int(v) for v in values)
            elif all(isinstance(v, (int, float, np.number)) for v in values):
                feature.float_list.value.extend(float(v) for v in values)
            else:
                raise TypeError(f"feature {name!r}: values must be all bytes/str, all ints or all floats")
        return example
    raise TypeError(f"cannot make a tf.Example from {type(item).__name__}")


def _as_array(value: Any) -> np.ndarray:
    """``value`` as an array; sequences of bytes/str become object arrays (numpy's fixed-width bytes dtype
    would drop trailing NUL bytes of binary data)."""
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (bytes, str)):
        array = np.empty(len(value), dtype=object)
        array[:] = [v.encode("utf-8") if isinstance(v, str) else v for v in value]
        return array
    if isinstance(value, (bytes, str)):
        return np.array(value.encode("utf-8") if isinstance(value, str) else value, dtype=object)
    return np.asarray(value)


class Client:
    """A client for one model on a TF Serving (or development) server.

    Args:
      host_port: ``HOST:PORT`` of the gRPC endpoint, or of the REST endpoint with ``rest=True``
        (``http://HOST:PORT`` is accepted too).
      rest: use the REST API instead of gRPC.
      model_name: the served model's name.
      version: ask for this version (default: the latest being served).
      timeout: seconds to wait for each answer.
    """

    def __init__(self, host_port: str, *, rest: bool = False, model_name: str = "hrnet", version: int | None = None,
                 timeout: float = 30.0):
        address = host_port.strip()
        if address.startswith(("http://", "https://")):
            rest = True
            parsed = urllib.parse.urlsplit(address)
            self._scheme, address = parsed.scheme, parsed.netloc
        else:
            self._scheme = "http"
        host, sep, port = address.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"server address must be HOST:PORT, got {host_port!r}")
        self.address, self.rest, self.model_name = address, rest, model_name
        self.version, self.timeout = version, timeout
        self._channel = self._session = None
        self._top_k_signature = SIGNATURE_TOP_K
        if rest:
            import requests

            self._session = requests.Session()
        else:
            import grpc
            from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

            self._channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", -1),
                                                                    ("grpc.max_send_message_length", -1)])
            self._predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
            self._model_stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # -- transport ---------------------------------------------------------------------------------------
    def _spec(self, model_spec, signature_name: str | None = None) -> None:
        model_spec.name = self.model_name
        if self.version is not None:
            model_spec.version.value = self.version
        if signature_name is not None:
            model_spec.signature_name = signature_name

    def _grpc(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
            if code == grpc.StatusCode.UNAVAILABLE and "HTTP/2" in details:
                raise ServerUnavailableError(
                    f"{self.address} does not speak gRPC (it answered in HTTP/1.x): is this the REST port? use "
                    "--rest (Client(..., rest=True)), or the gRPC port (TF Serving's default is 8500)") from None
            if code == grpc.StatusCode.UNAVAILABLE and ("connect" in details.lower() or "DNS" in details):
                reason = "connection refused" if "refused" in details.lower() else details
                raise ServerUnavailableError(
                    f"cannot reach a model server at {self.address} over gRPC: {reason}") from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServingError(Code.DEADLINE_EXCEEDED,
                                   f"no answer from {self.address} within {self.timeout:g} s") from None
            raise ServingError(Code[code.name], details) from None

    def _url(self, suffix: str = "") -> str:
        url = f"{self._scheme}://{self.address}/v1/models/{urllib.parse.quote(self.model_name, safe='')}"
        if self.version is not None:
            url += f"/versions/{self.version}"
        return url + suffix

    def _http(self, method: str, suffix: str, body: dict | bytes | None = None) -> dict:
        import requests

        url = self._url(suffix)
        try:
            data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode("utf-8")
            response = self._session.request(method, url, data=data, timeout=self.timeout,
                                             headers={"Content-Type": "application/json"} if data else None)
        except requests.ConnectionError as e:
            reason = getattr(e.args[0], "reason", e) if e.args else e
            if "BadStatusLine" in str(e) and "\\x00" in str(e):  # an HTTP/2 frame where a status line should be
                raise ServerUnavailableError(
                    f"{self.address} does not speak HTTP/1.1 REST (it answered in HTTP/2): is this the gRPC port? "
                    "drop --rest (rest=False), or use the REST port (TF Serving's default is 8501)") from None
            text = "connection refused" if "refused" in str(reason).lower() else str(reason)
            raise ServerUnavailableError(f"cannot reach a model server at {self.address} over REST ({url}): {text}") \
                from None
        except requests.Timeout:
            raise ServingError(Code.DEADLINE_EXCEEDED, f"no answer from {url} within {self.timeout:g} s") from None
        try:
            doc = response.json()
        except ValueError:
            doc = None
        if response.status_code != 200:
            message = doc.get("error") if isinstance(doc, dict) and "error" in doc else response.text[:500]
            raise ServingError(code_from_http(response.status_code), message, http_status=response.status_code)
        if not isinstance(doc, dict):
            raise ServingError(Code.INTERNAL, f"{url} answered something that is not a JSON object: "
                               f"{response.text[:200]!r}")
        return doc

    # -- API ---------------------------------------------------------------------------------------------
    def predict(self, inputs: Mapping[str, Any], signature_name: str = SIGNATURE_CLASSIFY,
                output_filter: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Calls any signature with the Predict API: ``{input: array}`` -> ``{output: array}``.

        Inputs: arrays, nested lists, or lists of bytes/str for string inputs. Strings come back as object
        arrays of bytes. Over REST, numbers come back as float64/int64 arrays (JSON carries no dtype),
        ``output_filter`` is applied on the client, and the output of a single-output signature is keyed
        ``"output"`` (TF Serving's columnar answer does not name it).
        """
        if not self.rest:
            from tensorflow_serving.apis import predict_pb2

            request = predict_pb2.PredictRequest()
            self._spec(request.model_spec, signature_name)
            for name, value in inputs.items():
                request.inputs[name].CopyFrom(to_tensor_proto(_as_array(value)))
            request.output_filter.extend(output_filter)
            response = self._grpc(self._predict_stub.Predict, request)
            return {name: to_ndarray(tensor, name) for name, tensor in response.outputs.items()}
        body = {"signature_name": signature_name,
                "inputs": {n: rest_json.array_to_json(_as_array(v)) for n, v in inputs.items()}}
        outputs = self._http("POST", ":predict", body)["outputs"]
        if not isinstance(outputs, dict):  # a single-output signature answers the bare tensor, without its name
            return {output_filter[0] if output_filter else "output": rest_json.json_to_untyped_array(outputs)}
        return {k: rest_json.json_to_untyped_array(v) for k, v in outputs.items()
                if not output_filter or k in output_filter}

    def predict_images(self, images: Sequence[bytes | str | os.PathLike],
                       top_k: int = 5) -> list[list[tuple[str, float]]]:
        """The ``top_k`` labels and scores of each image (encoded bytes, or files read by
        :func:`hrnet_tfx.serving.images.read_images`, whose ImageFileError comes before anything is sent), best
        first. Asks ``predict_images_top_k`` (the export-time top 5; ``predict_images`` for models exported
        without it), or the Classify API for a larger ``top_k``."""
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        data = read_images(images)
        if not data:
            return []
        try:
            labels, scores = self._top_k(self._top_k_signature, data)
        except ServingError as e:
            if self._top_k_signature != SIGNATURE_TOP_K or f'"{SIGNATURE_TOP_K}" not found' not in e.message:
                raise
            log.info("%s: the model has no %s signature (exported before it existed); using %s", self.address,
                     SIGNATURE_TOP_K, SIGNATURE_IMAGES)
            self._top_k_signature = SIGNATURE_IMAGES
            labels, scores = self._top_k(SIGNATURE_IMAGES, data)
        if labels and top_k > len(labels[0]):
            from hrnet_tfx.serving.warmup import image_example

            full = self.classify_examples([image_example(d) for d in data])
            return [sorted(ranking, key=lambda pair: -pair[1])[:top_k] for ranking in full]
        return [[(label, float(score)) for label, score in zip(ls[:top_k], ss[:top_k])]
                for ls, ss in zip(labels, scores)]

    def _top_k(self, signature: str, data: list[bytes]) -> tuple[list[list[str]], list[list[float]]]:
        """``(labels, scores)`` of the export-time top k of each image, from ``signature``. Every output is
        asked for, as in the warm-up requests: an ``output_filter`` makes the server build another pruned graph
        on its first use (~5 s for the tiny test network in the development server, 2 loaded cores)."""
        if self.rest:
            rows = self._http("POST", ":predict", rest_json.b64_instances(signature, data))["predictions"]
            return [row[OUTPUT_TOP_K_LABELS] for row in rows], [row[OUTPUT_TOP_K_SCORES] for row in rows]
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        self._spec(request.model_spec, signature)
        request.inputs[INPUT_IMAGES].CopyFrom(to_tensor_proto(np.array(data, dtype=object)))
        response = self._grpc(self._predict_stub.Predict, request)
        labels = [[v.decode("utf-8", "replace") for v in row]
                  for row in to_ndarray(response.outputs[OUTPUT_TOP_K_LABELS]).tolist()]
        return labels, to_ndarray(response.outputs[OUTPUT_TOP_K_SCORES]).tolist()

    def classify_examples(self, examples: Sequence[Any], signature_name: str = SIGNATURE_CLASSIFY,
                          context: Any = None) -> list[list[tuple[str, float]]]:
        """Classify API: one list of ``(label, score)`` per example, in the model's class order.

        Args:
          examples: ``tf.train.Example`` s, their serialized bytes, or ``{feature: value(s)}`` dicts
            (bytes/str -> bytes_list, ints -> int64_list, floats -> float_list), e.g.
            ``{"image/encoded": jpeg_bytes}``.
          signature_name: a classification signature (``classes``/``scores`` outputs).
          context: features shared by every example (same forms), merged into each by the server.
        """
        items = [_example(e) for e in examples]
        if self.rest:
            body = {"signature_name": signature_name, "examples": [rest_json.example_to_json(e) for e in items]}
            if context is not None:
                body["context"] = rest_json.example_to_json(_example(context))
            results = self._http("POST", ":classify", body)["results"]
            return [[(str(label), float(score)) for label, score in ranking] for ranking in results]
        from tensorflow_serving.apis import classification_pb2

        request = classification_pb2.ClassificationRequest()
        self._spec(request.model_spec, signature_name)
        if context is not None:
            request.input.example_list_with_context.context.CopyFrom(_example(context))
            request.input.example_list_with_context.examples.extend(items)
        else:
            request.input.example_list.examples.extend(items)
        response = self._grpc(self._predict_stub.Classify, request)
        return [[(c.label, float(c.score)) for c in result.classes] for result in response.result.classifications]

    def metadata(self) -> dict:
        """The model's signatures, shaped like TF Serving's REST metadata answer over either protocol:
        ``{"model_spec": {...}, "metadata": {"signature_def": {"signature_def": {name: {...}}}}}``."""
        if self.rest:
            return self._http("GET", "/metadata")
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        self._spec(request.model_spec)
        request.metadata_field.append("signature_def")
        response = self._grpc(self._predict_stub.GetModelMetadata, request)
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        return rest_json.format_metadata(response, signatures)

    def status(self) -> list[dict]:
        """The model's version states, e.g. ``[{"version": "2", "state": "AVAILABLE", "status": {...}}]``."""
        if self.rest:
            return self._http("GET", "")["model_version_status"]
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._spec(request.model_spec)
        return rest_json.format_status(self._grpc(self._model_stub.GetModelStatus, request))["model_version_status"]

    def close(self) -> None:
        """Closes the connection."""
        if self._channel is not None:
            self._channel.close()
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
