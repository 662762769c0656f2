"""TF Serving's REST API over a :class:`~hrnet_tfx.serving.dev.core.ServingCore`, served by tornado.

Routes (case-insensitive, as in TF Serving; see :mod:`hrnet_tfx.serving.dev.rest_requests` for the bodies)::

    GET  /v1/models/NAME[/versions/V]               version status
    GET  /v1/models/NAME[/versions/V]/metadata      signature metadata
    POST /v1/models/NAME[/versions/V]:predict       Predict
    POST /v1/models/NAME[/versions/V]:classify      Classify

Errors are ``{"error": "..."}`` with TF Serving's status mapping; a request under ``/v1/`` that matches no
route is a 400 "Malformed request", as TF Serving answers it. Tornado was chosen over aiohttp because it
bounds the time to receive a request's headers and its body, so a client dripping a byte every few seconds
is disconnected (aiohttp's server has neither timeout). The bounds (headers, body, time, connections,
requests in flight) are the README's Serving table; requests run on the worker pool shared with gRPC.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import logging
import re
import threading
import time
import urllib.parse
from concurrent import futures

import tornado.httpserver
import tornado.iostream
import tornado.netutil
import tornado.web

from hrnet_tfx.serving import rest_json
from hrnet_tfx.serving.dev import rest_requests
from hrnet_tfx.serving.dev.core import ServingCore, internal
from hrnet_tfx.serving.dev.grpc_service import metadata_response, model_status_response
from hrnet_tfx.serving.errors import Code, ServingError, invalid
from hrnet_tfx.serving.model_base import parse_version

log = logging.getLogger(__name__)

_VERSION = r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
PREDICT_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)" + _VERSION + r":(?P<method>classify|predict)",
                          re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/(?P<name>[^/:]+))?" + _VERSION + r"(?:/(?P<sub>metadata))?", re.IGNORECASE)
MAX_HEADER_BYTES = 64 * 1024


class RestApi:
    """Routes a REST call to the core: ``respond(method, path, body) -> (HTTP status, JSON bytes)``."""

    def __init__(self, core: ServingCore):
        self.core = core

    def respond(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """``(HTTP status, JSON body)`` for one call; never raises (errors become ``{"error": ...}``)."""
        try:
            if not path.lower().startswith("/v1/"):
                return 404, rest_requests.error_body(f"Not found: {path[:200]} (the API is under /v1/models/)")
            return 200, self.dispatch(method, path, body)
        except ServingError as e:
            log.debug("REST %s %s failed: %s", method, path[:200], e)
            return e.http_status, rest_requests.error_body(e.message)
        except Exception:  # a bug, or memory ran out: tell the caller little, log the rest, keep serving
            error = internal(f"REST {method} {path[:200]}")
            return error.http_status, rest_requests.error_body(error.message)

    def dispatch(self, method: str, path: str, body: bytes) -> bytes:
        """Handles one call (raises :class:`ServingError` for an error response)."""
        match = PREDICT_PATH.fullmatch(path) if method == "POST" else None
        if match:
            name, version, label = self._spec(match)
            if match["method"].lower() == "predict":
                return self._predict(name, version, label, body)
            return self._classify(name, version, label, body)
        match = STATUS_PATH.fullmatch(path) if method == "GET" else None
        if match:
            name, version, label = self._spec(match)
            if not name:
                raise invalid("Missing model name in request.")
            if match["sub"]:
                return self._metadata(name, version, label)
            if label:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            return rest_requests.dumps(rest_json.format_status(model_status_response(self.core.status(name, version))))
        raise invalid(f"Malformed request: {method} {path[:200]}")

    @staticmethod
    def _spec(match) -> tuple[str, int | None, str | None]:
        name = urllib.parse.unquote(match["name"]) if match["name"] else ""
        version = None
        if match["version"]:
            version = parse_version(match["version"])
            if version is None:
                raise invalid(f"version {match['version'][:30]}{'...' if len(match['version']) > 30 else ''} is not "
                              "a version number (a non-negative 64-bit integer)")
        label = urllib.parse.unquote(match["label"]) if match["label"] else None
        return name, version, label

    def _predict(self, name, version, label, body) -> bytes:
        doc = rest_requests.parse_json(body)
        with self.core.lease(name, version, label) as servable:
            def input_infos(signature_name: str):
                return servable.signature(signature_name, code=Code.INVALID_ARGUMENT).inputs

            signature_name, inputs, row_format = rest_requests.parse_predict(doc, input_infos, servable.max_items)
            outputs = servable.predict(signature_name, inputs)
        return rest_requests.predict_json(outputs, row_format)

    def _classify(self, name, version, label, body) -> bytes:
        doc = rest_requests.parse_json(body)
        with self.core.lease(name, version, label) as servable:
            signature_name, examples = rest_requests.parse_classify(doc, servable.max_items,
                                                                    self.core.max_request_bytes)
            classes, scores = servable.classify(signature_name, examples)
        return rest_requests.dumps(rest_requests.format_classify(classes, scores))

    def _metadata(self, name, version, label) -> bytes:
        with self.core.lease(name, version, label) as servable:
            return rest_requests.dumps(rest_json.format_metadata(*metadata_response(name, servable)))


@dataclasses.dataclass
class _Limits:
    """What the handlers share: the API, the worker pool, the limits and the in-flight count (touched only
    on the event-loop thread)."""

    api: RestApi
    executor: futures.Executor
    max_request_bytes: int
    max_concurrent: int
    active: int = 0
    stopping: bool = False


@tornado.web.stream_request_body
class _Handler(tornado.web.RequestHandler):
    SUPPORTED_METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")

    def initialize(self, limits: _Limits) -> None:
        self.limits = limits
        self._chunks: list[bytes] = []

    def compute_etag(self):  # answers are not cacheable
        return None

    def _reply(self, status: int, body: bytes):
        self.set_status(status, http.client.responses.get(status, "Error"))
        self.set_header("Content-Type", "application/json")
        return self.finish(body)

    def write_error(self, status_code: int, **kwargs) -> None:  # tornado's own errors (e.g. 405), as JSON
        self.set_header("Content-Type", "application/json")
        self.finish(rest_requests.error_body(self._reason))

    async def prepare(self) -> None:
        limits = self.limits
        self._counted = self._working = False
        if limits.stopping:
            await self._reply(503, rest_requests.error_body("the server is shutting down"))
            return
        length = self.request.headers.get("Content-Length", "")
        if length.isascii() and length.isdigit() and int(length) > limits.max_request_bytes:
            # Answered before the body is read; the connection is then closed.
            await self._reply(413, rest_requests.error_body(
                f"request body of {int(length):,} bytes is larger than this server's limit of "
                f"{limits.max_request_bytes:,} bytes (--max-request-bytes)"))
            return
        if limits.active >= limits.max_concurrent:  # counted from here: bodies being received hold memory too
            await self._reply(429, rest_requests.error_body(
                f"the server is busy: {limits.active} requests in flight (--max-concurrent-requests); retry later"))
            return
        limits.active += 1
        self._counted = True

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            self.limits.active -= 1

    def on_connection_close(self) -> None:
        super().on_connection_close()
        if not self._working:  # a request being processed is released when it ends, not when its client leaves
            self._release()

    def on_finish(self) -> None:
        self._release()

    def data_received(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    async def _handle(self, *args) -> None:
        limits = self.limits
        self._working = True
        try:
            body, self._chunks = b"".join(self._chunks), []
            loop = asyncio.get_running_loop()
            status, answer = await loop.run_in_executor(limits.executor, limits.api.respond, self.request.method,
                                                        self.request.path, body)
        finally:
            self._working = False
            self._release()
        try:
            await self._reply(status, answer)
        except tornado.iostream.StreamClosedError:  # the client left before its answer
            pass

    get = post = put = delete = patch = _handle


class _HTTPServer(tornado.httpserver.HTTPServer):
    """tornado's HTTP server with a cap on open connections (``max_connections``, set before it listens)."""

    max_connections: int
    open_connections: int
    _REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s")

    def handle_stream(self, stream, address) -> None:
        if self.open_connections >= self.max_connections:
            body = rest_requests.error_body(f"too many open connections ({self.max_connections}); retry later")
            stream.write(self._REFUSED % (len(body), body)).add_done_callback(lambda _: stream.close())
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn) -> None:
        self.open_connections -= 1
        super().on_close(server_conn)


class RestServer:
    """The REST endpoint: bound at construction (``server_address``), ``start()`` serves in a thread, ``stop()``.

    Args:
      address: ``(host, port)``; port 0 picks a free port.
      core: the model; its ``options`` set the limits (:class:`~hrnet_tfx.serving.dev.server.DevServerOptions`).
      executor: the worker pool that runs requests (shared with gRPC).
    """

    def __init__(self, address: tuple[str, int], core: ServingCore, executor: futures.Executor):
        host, port = address
        opts = core.options
        self._sockets = tornado.netutil.bind_sockets(port, address=host or None, backlog=128)
        self.server_address = self._sockets[0].getsockname()[:2]
        self._limits = _Limits(RestApi(core), executor, opts.max_request_bytes, opts.max_concurrent_requests)
        self._settings = dict(max_header_size=MAX_HEADER_BYTES, max_body_size=opts.max_request_bytes,
                              idle_connection_timeout=opts.request_timeout, body_timeout=opts.request_timeout)
        self._max_connections = opts.max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> "RestServer":
        """Serves in a background thread (returns once it accepts connections)."""
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def listen():
            app = tornado.web.Application([(r"/.*", _Handler, {"limits": self._limits})],
                                          log_function=lambda handler: log.debug(
                                              "%s %s %d", handler.request.method, handler.request.path[:200],
                                              handler.get_status()))
            self._server = _HTTPServer(app, **self._settings)
            self._server.max_connections, self._server.open_connections = self._max_connections, 0
            self._server.add_sockets(self._sockets)
            ready.set()

        def run():
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(listen)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="rest", daemon=True)
        self._thread.start()
        ready.wait()
        return self

    async def _shutdown(self, grace: float) -> None:
        self._server.stop()  # no new connections
        self._limits.stopping = True  # new requests on open connections get 503
        deadline = time.monotonic() + grace
        while self._limits.active and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._limits.active:
            log.warning("REST: %d requests still running after %.0f s; closing their connections",
                        self._limits.active, grace)
        await self._server.close_all_connections()

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets requests in flight finish (up to ``grace`` s), closes every connection."""
        if self._thread is None:
            for sock in self._sockets:
                sock.close()
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(grace), self._loop).result(grace + 10)
        except futures.TimeoutError:
            log.warning("REST: connections did not close in time; abandoning them")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
        self._thread = None
