"""TF Serving's REST API over a :class:`~hrnet_tfx.serving.core.ServingCore` (standard library HTTP server).

Routes (case-insensitive, as in TF Serving; see :mod:`hrnet_tfx.serving.rest_json` for the bodies)::

    GET  /v1/models/NAME[/versions/V]               version status
    GET  /v1/models/NAME[/versions/V]/metadata      signature metadata
    POST /v1/models/NAME[/versions/V]:predict       Predict
    POST /v1/models/NAME[/versions/V]:classify      Classify

Errors are ``{"error": "..."}`` with TF Serving's status mapping (400 for INVALID_ARGUMENT and
FAILED_PRECONDITION, 404 for NOT_FOUND, ...); a request under ``/v1/`` that matches no route is a 400
"Malformed request", as TF Serving answers it. One thread per connection; HTTP/1.1 keep-alive; idle
connections are closed after ``idle_timeout`` seconds and at shutdown, while requests in flight finish.
"""

from __future__ import annotations

import logging
import re
import socket
import socketserver
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, HTTPServer

from hrnet_tfx.serving import rest_json
from hrnet_tfx.serving.core import ServingCore
from hrnet_tfx.serving.errors import Code, ServingError, invalid
from hrnet_tfx.serving.grpc_service import model_status_response, signature_def_map

log = logging.getLogger(__name__)

_VERSION = r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
PREDICT_PATH = re.compile(r"/v1/models/(?P<name>[^/:]+)" + _VERSION + r":(?P<method>classify|regress|predict)",
                          re.IGNORECASE)
STATUS_PATH = re.compile(r"/v1/models(?:/(?P<name>[^/:]+))?" + _VERSION + r"(?:/(?P<sub>metadata))?", re.IGNORECASE)
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "hrnet-tfx-dev-server"
    server: "RestServer"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.idle_timeout)
        # Headers and body go out in separate writes: without this, Nagle's algorithm holds the body back
        # until the client's delayed ACK (~40 ms per keep-alive request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection, busy=False)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def parse_request(self) -> bool:
        if not self.server.track(self.connection, busy=True):  # shutting down: refuse, then close
            self.close_connection = True
            if super().parse_request():
                self._reply(503, rest_json.error_body("the server is shutting down"))
            return False
        return super().parse_request()

    def log_message(self, fmt, *args) -> None:  # route http.server's access log to DEBUG
        log.debug("%s %s", self.address_string(), fmt % args)

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection or self.server.stopping:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._chunked_body()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise invalid(f"bad Content-Length: {length!r}") from None
        if size > self.server.max_request_bytes:
            self.close_connection = True
            raise ServingError(Code.INVALID_ARGUMENT, f"request body of {size:,} bytes is larger than this server's "
                               f"limit of {self.server.max_request_bytes:,} bytes", http_status=413)
        return self.rfile.read(size)

    def _chunked_body(self) -> bytes:
        chunks, total = [], 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise invalid("malformed chunked request body") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(chunks)
            total += size
            if total > self.server.max_request_bytes:
                self.close_connection = True
                raise ServingError(Code.INVALID_ARGUMENT, "request body is larger than this server's limit of "
                                   f"{self.server.max_request_bytes:,} bytes", http_status=413)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(2)

    def _handle(self, method: str) -> None:
        start, items, status = time.monotonic(), 0, 500
        try:
            request_body = self._body()  # always read, so a keep-alive connection stays in step
            path = urllib.parse.urlsplit(self.path).path
            if not path.lower().startswith("/v1/"):
                status, body = 404, rest_json.error_body(f"Not found: {path} (the API is under /v1/models/)")
            else:
                body, items = self.server.api.dispatch(method, path, request_body)
                status = 200
        except ServingError as e:
            status, body = e.http_status, rest_json.error_body(e.message)
            log.debug("REST %s %s failed: %s", method, self.path, e)
        except (ConnectionError, socket.timeout):
            self.close_connection = True
            return
        except Exception as e:  # a bug: answer 500 and keep serving
            log.exception("REST %s %s: internal error", method, self.path)
            status, body = 500, rest_json.error_body(f"{type(e).__name__}: {e}")
        finally:
            self.server.core.stats.record(items, time.monotonic() - start, status == 200)
        try:
            self._reply(status, body)
        finally:
            self.server.track(self.connection, busy=False)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")


class RestApi:
    """Routes a REST call to the core: ``dispatch(method, path, body) -> (json bytes, item count)``."""

    def __init__(self, core: ServingCore):
        self.core = core

    def dispatch(self, method: str, path: str, body: bytes) -> tuple[bytes, int]:
        """Handles one call (raises :class:`ServingError` for an error response)."""
        match = PREDICT_PATH.fullmatch(path) if method == "POST" else None
        if match:
            name, version, label = self._spec(match)
            verb = match["method"].lower()
            if verb == "predict":
                return self._predict(name, version, label, body)
            if verb == "classify":
                return self._classify(name, version, label, body)
            raise ServingError(Code.UNIMPLEMENTED, "regress is not supported by the development server (the HRNet "
                               "signatures are classifiers)")
        match = STATUS_PATH.fullmatch(path) if method == "GET" else None
        if match:
            name, version, label = self._spec(match)
            if not name:
                raise invalid("Missing model name in request.")
            if match["sub"]:
                return self._metadata(name, version, label), 0
            if label:
                raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label}")
            return rest_json.dumps(rest_json.format_status(model_status_response(self.core.status(name, version)))), 0
        raise invalid(f"Malformed request: {method} {path}")

    @staticmethod
    def _spec(match) -> tuple[str, int | None, str | None]:
        name = urllib.parse.unquote(match["name"]) if match["name"] else ""
        version = int(match["version"]) if match["version"] else None
        label = urllib.parse.unquote(match["label"]) if match["label"] else None
        return name, version, label

    def _predict(self, name, version, label, body) -> tuple[bytes, int]:
        doc = rest_json.parse_json(body)
        with self.core.lease(name, version, label) as servable:
            def input_infos(signature_name: str):
                signature = servable.signature(signature_name, code=Code.INVALID_ARGUMENT)
                return signature.inputs

            signature_name, inputs, row_format = rest_json.parse_predict(doc, input_infos)
            outputs = servable.predict(signature_name, inputs)
        items = len(next(iter(inputs.values()))) if inputs and next(iter(inputs.values())).ndim else 0
        return rest_json.predict_json(outputs, row_format), items

    def _classify(self, name, version, label, body) -> tuple[bytes, int]:
        signature_name, examples = rest_json.parse_classify(rest_json.parse_json(body))
        with self.core.lease(name, version, label) as servable:
            classes, scores = servable.classify(signature_name, examples)
        return rest_json.dumps(rest_json.format_classify(classes, scores)), len(examples)

    def _metadata(self, name, version, label) -> bytes:
        from tensorflow_serving.apis import get_model_metadata_pb2

        with self.core.lease(name, version, label) as servable:
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = name
            response.model_spec.version.value = servable.version
            return rest_json.dumps(rest_json.format_metadata(response, signature_def_map(servable)))


class RestServer(HTTPServer):
    """The REST endpoint: ``RestServer((host, port), core)``; ``serve_forever()`` in a thread, ``stop()``.

    Args:
      address: ``(host, port)``; port 0 picks a free port (see ``server_address`` after construction).
      core: the models.
      max_request_bytes: larger request bodies get HTTP 413.
      idle_timeout: seconds a keep-alive connection may stay idle (also bounds slow uploads).
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], core: ServingCore, *,
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, idle_timeout: float = 60.0):
        self.core = core
        self.api = RestApi(core)
        self.max_request_bytes = max_request_bytes
        self.idle_timeout = idle_timeout
        self.stopping = False
        self._lock = threading.Lock()
        self._connections: dict[socket.socket, bool] = {}
        self._threads: set[threading.Thread] = set()
        self._serve_thread: threading.Thread | None = None
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)  # HTTPServer's version does a reverse DNS lookup
        self.server_name, self.server_port = str(self.server_address[0]), self.server_address[1]

    def start(self) -> "RestServer":
        """Serves in a background thread."""
        self._serve_thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                              name="rest-accept", daemon=True)
        self._serve_thread.start()
        return self

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self._process, args=(request, client_address), daemon=True,
                                  name="rest-connection")
        with self._lock:
            self._threads.add(thread)
        thread.start()

    def _process(self, request, client_address) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self._lock:
                self._threads.discard(threading.current_thread())

    def handle_error(self, request, client_address) -> None:
        log.debug("REST connection from %s ended with an error", client_address, exc_info=True)

    def track(self, connection: socket.socket, busy: bool) -> bool:
        """Records whether a connection is mid-request; False if a new request arrives after ``stop``."""
        with self._lock:
            if busy and self.stopping:
                return False
            self._connections[connection] = busy
            return True

    def untrack(self, connection: socket.socket) -> None:
        """Forgets a closed connection."""
        with self._lock:
            self._connections.pop(connection, None)

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting, lets requests in flight finish (up to ``grace`` s), closes idle connections."""
        if self._serve_thread is not None:
            self.shutdown()
            self._serve_thread.join()
            self._serve_thread = None
        self.server_close()
        with self._lock:
            self.stopping = True
            idle = [conn for conn, busy in self._connections.items() if not busy]
            threads = list(self._threads)
        for conn in idle:
            try:
                conn.shutdown(socket.SHUT_RD)  # wakes the handler blocked reading the next request
            except OSError:
                pass
        deadline = time.monotonic() + grace
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            left = sum(1 for t in self._threads if t.is_alive())
        if left:
            log.warning("REST: %d connections still open after %.0f s; abandoning them", left, grace)
