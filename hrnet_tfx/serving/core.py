"""The model registry and request counters behind both of the development server's protocols.

:class:`ServingCore` owns one :class:`~hrnet_tfx.serving.model_base.ModelWatcher` per served model, hands
out leased servables for requests (TF Serving's NOT_FOUND messages when a model or version is not being
served), and counts requests so a long-running server can log its rates.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from typing import Iterator

from hrnet_tfx.serving.errors import Code, ServingError
from hrnet_tfx.serving.image_guard import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS, ImageGuard
from hrnet_tfx.serving.model_base import ModelWatcher, VersionStatus

log = logging.getLogger(__name__)


DEFAULT_MAX_ITEMS = 128
"""Default cap on images/examples per request (TF Serving's batching refuses tasks over its batch size)."""
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
"""Default cap on a request's size (gRPC message or REST body). Parsing costs up to ~20x the bytes in
memory (a protobuf of a million empty strings, a JSON list of empty objects), so this bounds that too."""
DEFAULT_MAX_CONCURRENT_REQUESTS = 32
"""Default cap on requests in flight (being received, processed or waiting for a thread) per protocol: with
:data:`DEFAULT_MAX_REQUEST_BYTES`, at most 512 MiB of request bodies held at once per protocol."""
DEFAULT_MAX_CONNECTIONS = 128
"""Default cap on open REST connections."""
DEFAULT_REQUEST_TIMEOUT = 30.0
"""Default seconds a REST client has to send a request's headers, and again its body."""


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """How versions are loaded and what their requests may hold: image checks, images/examples per request,
    TF threads and warm-up (TF Serving's ``--enable_model_warmup``, on by default)."""

    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO
    max_items: int | None = DEFAULT_MAX_ITEMS
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    warmup: bool = True


class RequestStats:
    """Thread-safe counters: requests, items (images/examples), errors and busy time per interval."""

    def __init__(self):
        self._lock = threading.Lock()
        self.total_requests = self.total_errors = 0
        self._reset()

    def _reset(self) -> None:
        self._requests = self._items = self._errors = 0
        self._seconds = 0.0
        self._since = time.monotonic()

    def record(self, items: int, seconds: float, ok: bool) -> None:
        """Counts one finished request."""
        with self._lock:
            self._requests += 1
            self._items += items
            self._seconds += seconds
            self.total_requests += 1
            if not ok:
                self._errors += 1
                self.total_errors += 1

    def take(self) -> dict:
        """The counts since the last call (and the interval's length), then starts a new interval."""
        with self._lock:
            out = {"requests": self._requests, "items": self._items, "errors": self._errors,
                   "busy_seconds": self._seconds, "interval": time.monotonic() - self._since}
            self._reset()
            return out


class ServingCore:
    """Serves the latest version of each model in ``models`` (``{model_name: model_dir}``).

    Args:
      models: model names and their directories (see :func:`~hrnet_tfx.serving.model_base.resolve_model`).
      poll_seconds: seconds between scans for new versions.
      load_options: see :class:`LoadOptions`.
      max_request_bytes: the request size limit, which also bounds a Classify request's examples once
        its context is merged into each.
    """

    def __init__(self, models: dict[str, str], *, poll_seconds: float = 1.0, load_options: LoadOptions = LoadOptions(),
                 max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        if not models:
            raise ValueError("ServingCore needs at least one model")
        self.load_options = load_options
        self.max_request_bytes = max_request_bytes
        self._guard = ImageGuard(load_options.max_image_pixels, load_options.max_aspect_ratio)
        self.watchers = {name: ModelWatcher(name, path, self._loader(name), poll_seconds=poll_seconds)
                         for name, path in models.items()}
        self.stats = RequestStats()

    def _loader(self, name: str):
        def load(version: int, path: str):
            from hrnet_tfx.serving.servable import SavedModelServable

            opts = self.load_options
            servable = SavedModelServable(name, version, path, image_guard=self._guard, max_items=opts.max_items,
                                          intra_op_threads=opts.intra_op_threads,
                                          inter_op_threads=opts.inter_op_threads)
            if opts.warmup:
                try:
                    servable.warm_up()
                except Exception:
                    servable.close()
                    raise
            return servable

        return load

    def start(self) -> None:
        """Loads the latest version of every model (blocking), then watches for new ones."""
        for watcher in self.watchers.values():
            watcher.start()

    def stop(self, grace: float = 30.0) -> None:
        """Stops watching and unloads every model (requests still running get up to ``grace`` seconds)."""
        for watcher in self.watchers.values():
            watcher.stop(grace=grace)

    def _watcher(self, name: str, version: int | None) -> ModelWatcher:
        watcher = self.watchers.get(name)
        if watcher is None:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request} (this server serves "
                               f"{', '.join(sorted(self.watchers))})")
        return watcher

    @contextlib.contextmanager
    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Iterator:
        """The servable for a model spec, held for the ``with`` block (NOT_FOUND if not served)."""
        if label:
            raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label} (version "
                               "labels are not configured; ask for a version number or the latest)")
        with self._watcher(name, version).lease(version) as servable:
            yield servable

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states of a model, newest first (NOT_FOUND as TF Serving's GetModelStatus says it)."""
        watcher = self.watchers.get(name)
        statuses = watcher.statuses(version) if watcher else []
        if not statuses:
            if version is not None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return statuses
