"""What both protocols of the development server share: :class:`ServingCore` keeps the latest version of one
model loaded and leases it to requests (TF Serving's NOT_FOUND messages for anything else), and
:func:`internal` is what a client is told when something fails that is not its request's fault.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Iterator

from hrnet_tfx.serving.dev.image_guard import ImageGuard
from hrnet_tfx.serving.dev.watcher import ModelWatcher, VersionStatus
from hrnet_tfx.serving.errors import Code, ServingError

if TYPE_CHECKING:
    from hrnet_tfx.serving.dev.server import DevServerOptions

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal error in the model server; the details are in its log"
"""What a client is told about a failure that is not its request's fault (details never leave the server)."""


def internal(where: str) -> ServingError:
    """An ``INTERNAL`` error with the generic message; logs the exception being handled, with ``where``."""
    log.exception("%s: internal error", where)
    return ServingError(Code.INTERNAL, INTERNAL_MESSAGE)


class ServingCore:
    """Serves the latest version of the model ``model_name`` (the name clients ask for) in ``model_dir`` (its
    versions' directory), with the server's ``options`` (poll interval, image checks, request caps, warm-up)."""

    def __init__(self, model_name: str, model_dir: str, options: "DevServerOptions"):
        self.model_name = model_name
        self.options = options
        self.max_request_bytes = options.max_request_bytes
        self._guard = ImageGuard(options.max_image_pixels, options.max_aspect_ratio)
        self.watcher = ModelWatcher(model_name, model_dir, self._load, poll_seconds=options.poll_seconds)

    def _load(self, version: int, path: str):
        from hrnet_tfx.serving.dev.servable import SavedModelServable

        servable = SavedModelServable(self.model_name, version, path, image_guard=self._guard,
                                      max_items=self.options.max_items_per_request)
        if self.options.warmup:
            try:
                servable.warm_up()
            except Exception:
                servable.close()
                raise
        return servable

    def start(self) -> None:
        """Loads the latest version (blocking), then watches for new ones."""
        self.watcher.start()

    def stop(self, grace: float = 30.0) -> None:
        """Stops watching and unloads the model (requests still running get up to ``grace`` seconds)."""
        self.watcher.stop(grace=grace)

    @contextlib.contextmanager
    def lease(self, name: str, version: int | None = None, label: str | None = None) -> Iterator:
        """The servable for a model spec, held for the ``with`` block (NOT_FOUND if not served)."""
        if label:
            raise ServingError(Code.INVALID_ARGUMENT, f"Unrecognized servable version label: {label} (version "
                               "labels are not configured; ask for a version number or the latest)")
        if name != self.model_name:
            request = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request} (this server serves "
                               f"{self.model_name})")
        with self.watcher.lease(version) as servable:
            yield servable

    def status(self, name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states of a model, newest first (NOT_FOUND as TF Serving's GetModelStatus says it)."""
        statuses = self.watcher.statuses(version) if name == self.model_name else []
        if not statuses:
            if version is not None:
                raise ServingError(Code.NOT_FOUND, f"Could not find version {version} of model {name}")
            raise ServingError(Code.NOT_FOUND, f"Could not find any versions of model {name}")
        return statuses
