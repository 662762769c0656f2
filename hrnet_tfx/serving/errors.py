"""Status codes and the errors the client raises (and the development server answers with).

The codes are gRPC's (the same numbers TensorFlow's ``tf.errors`` use), and the HTTP mapping is TF
Serving's REST one (``INVALID_ARGUMENT`` and ``FAILED_PRECONDITION`` -> 400, ``NOT_FOUND`` -> 404, ...), so a
client sees the same code and status from the development server as from ``tensorflow_model_server``.
"""

from __future__ import annotations

import enum

import grpc

Code = enum.IntEnum("Code", {code.name: code.value[0] for code in grpc.StatusCode})
Code.__doc__ = "gRPC status codes (``grpc.StatusCode`` by name, ``tf.errors`` by number)."

_HTTP_STATUS = {
    Code.OK: 200, Code.CANCELLED: 499, Code.UNKNOWN: 500, Code.INVALID_ARGUMENT: 400, Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404, Code.ALREADY_EXISTS: 409, Code.PERMISSION_DENIED: 403, Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400, Code.ABORTED: 409, Code.OUT_OF_RANGE: 400, Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500, Code.UNAVAILABLE: 503, Code.DATA_LOSS: 500, Code.UNAUTHENTICATED: 401,
}
_FROM_HTTP = {400: Code.INVALID_ARGUMENT, 401: Code.UNAUTHENTICATED, 403: Code.PERMISSION_DENIED,
              404: Code.NOT_FOUND, 409: Code.ABORTED, 413: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED,
              499: Code.CANCELLED, 500: Code.INTERNAL, 501: Code.UNIMPLEMENTED, 503: Code.UNAVAILABLE,
              504: Code.DEADLINE_EXCEEDED}


def http_status_for(code: Code) -> int:
    """The HTTP status TF Serving's REST API answers for a status ``code``."""
    return _HTTP_STATUS.get(Code(code), 500)


def code_from_http(status: int) -> Code:
    """The closest status code for an HTTP status (400 -> INVALID_ARGUMENT, 404 -> NOT_FOUND, ...)."""
    return _FROM_HTTP.get(status, Code.UNKNOWN if status >= 500 else Code.INVALID_ARGUMENT)


class ServingError(Exception):
    """A request failed with a status ``code`` and a message for the caller.

    Raised by the development server's request handling (and turned into a gRPC status or an HTTP error
    response) and by :class:`hrnet_tfx.serving.client.Client` when a server answered with an error.
    ``http_status`` is the REST status the code maps to (or the one the server actually sent).
    """

    MAX_MESSAGE = 2000
    """Longer messages are cut (they may quote what a client sent: names, lists of inputs)."""

    def __init__(self, code: Code, message: str, http_status: int | None = None):
        if len(message) > self.MAX_MESSAGE:
            message = message[: self.MAX_MESSAGE] + "..."
        super().__init__(message)
        self.code = Code(code)
        self.message = message
        self.http_status = http_status if http_status is not None else http_status_for(self.code)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class ServerUnavailableError(ServingError):
    """The client could not reach the server (connection refused, name not resolved, reset)."""

    def __init__(self, message: str):
        super().__init__(Code.UNAVAILABLE, message)


def invalid(message: str) -> ServingError:
    """An ``INVALID_ARGUMENT`` error (HTTP 400)."""
    return ServingError(Code.INVALID_ARGUMENT, message)
