"""The development server: TF Serving's gRPC and REST protocols for one model, for development, tests and
the demo when ``tensorflow_model_server`` is not installed (deployments run TF Serving). The README's Serving
section lists what it bounds; it lacks batching, version labels, several models, Regress/MultiInference,
REST inputs other than strings and monitoring.

Example::

    from hrnet_tfx.serving.dev.server import DevServer, DevServerOptions

    with DevServer("/models", "hrnet", DevServerOptions(host="127.0.0.1", grpc_port=0, rest_port=0)) as server:
        print(server.grpc_address, server.rest_address)   # the ports picked
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import threading
import time
from concurrent import futures

from hrnet_tfx.serving.dev.core import ServingCore
from hrnet_tfx.serving.dev.image_guard import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS
from hrnet_tfx.serving.model_base import resolve_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DevServerOptions:
    """Development server settings (most are ``hrnet-tfx serve`` flags of the same names).

    Attributes:
      host: address to bind (``0.0.0.0``: every interface, like TF Serving; ``127.0.0.1``: this machine).
      grpc_port, rest_port: the ports (0: pick a free one; ``rest_port=None``: no REST endpoint).
      poll_seconds: seconds between scans for new versions (``--file_system_poll_wait_seconds``).
      threads: worker threads, shared by gRPC and REST (requests processed at once).
      max_image_pixels, max_aspect_ratio: largest width x height, long side / short side accepted per image
        (None/0: no limit).
      max_items_per_request: most images/examples in one request (None: no limit). TF Serving's batching
        refuses requests larger than its batch size; 128 is four of its default batches.
      max_request_bytes: largest request accepted (gRPC message or REST body); parsing may cost ~20x this.
      max_concurrent_requests: requests being received (REST), processed or waiting for a thread, per
        protocol; more get RESOURCE_EXHAUSTED (HTTP 429). With the default request size, at most 512 MiB of
        request bodies are held at once per protocol.
      max_connections: open REST connections; more are answered 503 and closed.
      request_timeout: seconds a REST client has to send a request's headers, and again its body (also how
        long an idle keep-alive connection stays open).
      warmup: replay ``assets.extra/tf_serving_warmup_requests`` when a version loads.
    """

    host: str = "0.0.0.0"
    grpc_port: int = 8500
    rest_port: int | None = 8501
    poll_seconds: float = 1.0
    threads: int = max(4, 2 * (os.cpu_count() or 1))
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO
    max_items_per_request: int | None = 128
    max_request_bytes: int = 16 * 1024 * 1024
    max_concurrent_requests: int = 32
    max_connections: int = 128
    request_timeout: float = 30.0
    warmup: bool = True


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DevServer:
    """The development server for one model (see the module docstring) on a model base
    (``<base>/<model_name>/<version>/``) or one model's directory; ``model_name`` defaults to the one
    :func:`~hrnet_tfx.serving.model_base.resolve_model` infers."""

    def __init__(self, model_base: str, model_name: str | None = None, options: DevServerOptions = DevServerOptions()):
        self.model_name, self.model_dir = resolve_model(model_base, model_name)
        self.options = options
        self.core = ServingCore(self.model_name, self.model_dir, options)
        self._executor: futures.ThreadPoolExecutor | None = None
        self._grpc = self._rest = None
        self.grpc_port: int | None = None
        self.rest_port: int | None = None
        self._stopped = threading.Event()

    @property
    def grpc_address(self) -> str:
        """``host:port`` of the gRPC endpoint (loopback when bound to every interface)."""
        return _host_port(self._client_host(), self.grpc_port)

    @property
    def rest_address(self) -> str:
        """``host:port`` of the REST endpoint."""
        return _host_port(self._client_host(), self.rest_port)

    def _client_host(self) -> str:
        host = self.options.host
        return "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host

    def start(self) -> "DevServer":
        """Binds both ports (OSError naming the address if one is taken), loads the latest version (if
        any; later versions are picked up as they appear), then starts answering."""
        opts = self.options
        start = time.monotonic()
        try:
            self._bind()
            self.core.start()
            self._grpc.start()
            if self._rest is not None:
                self._rest.start()
        except BaseException:
            self._close_endpoints(0)
            self._grpc = self._rest = None
            self.core.stop(grace=0)
            raise
        rest = f"REST at http://{_host_port(opts.host, self.rest_port)}" if self._rest else "no REST endpoint"
        log.info("development server for model '%s' (%s): gRPC at %s, %s; started in %.1f s", self.model_name,
                 self.model_dir, _host_port(opts.host, self.grpc_port), rest, time.monotonic() - start)
        return self

    def _bind(self) -> None:
        import grpc  # here, not at the top: the CLI imports this module for DevServerOptions

        from hrnet_tfx.serving.dev.grpc_service import add_services
        from hrnet_tfx.serving.dev.rest_server import RestServer

        opts = self.options
        self._executor = futures.ThreadPoolExecutor(max_workers=opts.threads, thread_name_prefix="serving")
        self._grpc = grpc.server(
            self._executor, maximum_concurrent_rpcs=opts.max_concurrent_requests,
            options=[("grpc.max_receive_message_length", opts.max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     ("grpc.so_reuseport", 0)])  # with reuse, a second server would share a taken port silently
        add_services(self._grpc, self.core)
        address = _host_port(opts.host, opts.grpc_port)
        try:
            self.grpc_port = self._grpc.add_insecure_port(address)
        except RuntimeError as e:
            raise OSError(f"cannot bind gRPC to {address} (port in use?): {e}") from None
        if not self.grpc_port:
            raise OSError(f"cannot bind gRPC to {address} (port in use?)")
        if opts.rest_port is not None:
            address = _host_port(opts.host, opts.rest_port)
            try:
                self._rest = RestServer((opts.host, opts.rest_port), self.core, self._executor)
            except OSError as e:
                raise OSError(f"cannot bind REST to {address}: {e.strerror or e}") from None
            self.rest_port = self._rest.server_address[1]

    def _close_endpoints(self, grace: float) -> None:
        waiters = []
        if self._grpc is not None:
            waiters.append(self._grpc.stop(grace))  # stops accepting now; in-flight RPCs get `grace` seconds
        if self._rest is not None:
            self._rest.stop(grace)
        for event in waiters:
            event.wait(grace + 1)
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    def stop(self, grace: float = 10.0) -> None:
        """Stops accepting requests, lets in-flight ones finish (up to ``grace`` s), unloads the model."""
        if self._stopped.is_set():
            return
        log.info("development server: shutting down (finishing requests in flight, up to %.0f s)", grace)
        self._close_endpoints(grace)
        self.core.stop(grace=grace)
        self._stopped.set()
        log.info("development server: stopped")

    def __enter__(self) -> "DevServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_dev_server(model_base: str, model_name: str | None = None, options: DevServerOptions = DevServerOptions(),
                   grace: float = 10.0) -> int:
    """Runs a :class:`DevServer` until SIGINT or SIGTERM, then shuts it down cleanly; returns 0."""
    server = DevServer(model_base, model_name, options)
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        server.start()
        while not stop.wait(1.0):
            pass
        log.info("received a stop signal")
    finally:
        server.stop(grace)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
