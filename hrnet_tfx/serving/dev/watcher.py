"""TF Serving's default version policy for the development server: serve the latest complete version.

:class:`ModelWatcher` loads a newer version while the current one keeps serving, switches over once it has
loaded, and unloads the old one once its in-flight requests have finished. A version that fails to load
(e.g. still being copied: rsync writes ``saved_model.pb`` before the variables) is retried with a back-off
doubling from the poll interval up to ``max_retry_seconds``, or at once if its ``saved_model.pb`` changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from typing import Any, Callable, Iterator

from hrnet_tfx.serving.errors import Code, ServingError
from hrnet_tfx.serving.model_base import saved_model_file, version_dirs

log = logging.getLogger(__name__)


class VersionState(enum.IntEnum):
    """A version's state, numbered like ``tensorflow.serving.ModelVersionStatus.State``."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One version's state and, if its load failed, the error (``error_code``/``error_message``)."""

    version: int
    state: VersionState
    error_code: Code = Code.OK
    error_message: str = ""


@dataclasses.dataclass
class _Loaded:
    """A loaded version and the number of requests using it."""

    version: int
    servable: Any
    inflight: int = 0


@dataclasses.dataclass
class _Failure:
    """A version that failed to load: when to try again (or sooner, if ``saved_model.pb`` changes)."""

    mtime: int
    attempts: int
    retry_at: float


class ModelWatcher:
    """Keeps the latest complete version of one model loaded, polling its directory for new versions.

    Args:
      name: the model name clients ask for.
      model_dir: the directory holding ``<version>/`` directories (see
        :func:`~hrnet_tfx.serving.model_base.resolve_model`).
      load: ``load(version, path)`` returns the servable (closed with its ``close()``, if any, when unloaded);
        if it raises, the version is reported END with the error and retried, and the previous one keeps serving.
      poll_seconds: seconds between scans (TF Serving's ``--file_system_poll_wait_seconds``).
      max_retry_seconds: the longest wait between two load attempts of a version that failed.
      unload_grace: seconds between warnings while an old version waits for its in-flight requests.

    :meth:`lease` gives a request its servable, which is never unloaded while leased.
    """

    def __init__(self, name: str, model_dir: str, load: Callable[[int, str], Any], *, poll_seconds: float = 1.0,
                 max_retry_seconds: float = 60.0, unload_grace: float = 30.0):
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
        self.name = name
        self.model_dir = model_dir
        self.poll_seconds = poll_seconds
        self._load = load
        self.max_retry_seconds = max(max_retry_seconds, poll_seconds)
        self._unload_grace = unload_grace
        self._cond = threading.Condition()
        self._current: _Loaded | None = None
        self._states: dict[int, VersionStatus] = {}
        self._failed: dict[int, _Failure] = {}
        self._unloading: list[threading.Thread] = []
        self._close_by: float | None = None  # set by stop(): unload even with requests still running
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()
        self._waiting_logged = False

    # -- state -----------------------------------------------------------------------------------------
    def _set_state(self, version: int, state: VersionState, error: ServingError | None = None) -> None:
        with self._cond:
            self._states[version] = VersionStatus(version, state, error.code if error else Code.OK,
                                                  error.message if error else "")
            self._cond.notify_all()

    def statuses(self, version: int | None = None) -> list[VersionStatus]:
        """Every version this watcher has seen, newest first (or just ``version``; [] if never seen)."""
        with self._cond:
            if version is not None:
                return [self._states[version]] if version in self._states else []
            return [self._states[v] for v in sorted(self._states, reverse=True)]

    @property
    def current_version(self) -> int | None:
        """The version being served, or None."""
        with self._cond:
            return self._current.version if self._current else None

    def wait_for_version(self, version: int | None = None, timeout: float = 60.0) -> bool:
        """Blocks until ``version`` (or any version, if None) is being served; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                current = self._current.version if self._current else None
                if current is not None and (version is None or current == version):
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.5))

    @contextlib.contextmanager
    def lease(self, version: int | None = None) -> Iterator[Any]:
        """The servable for ``version`` (None: the latest), held for the duration of the ``with`` block.

        Raises:
          ServingError: NOT_FOUND when that version is not being served (TF Serving's message).
        """
        with self._cond:
            loaded = self._current
            if loaded is None or (version is not None and loaded.version != version):
                request = f"Latest({self.name})" if version is None else f"Specific({self.name}, {version})"
                serving = f"version {loaded.version} is being served" if loaded else "no version is loaded yet"
                raise ServingError(Code.NOT_FOUND, f"Servable not found for request: {request} ({serving})")
            loaded.inflight += 1
        try:
            yield loaded.servable
        finally:
            with self._cond:
                loaded.inflight -= 1
                if loaded.inflight == 0:
                    self._cond.notify_all()

    # -- polling ---------------------------------------------------------------------------------------
    def poll(self) -> None:
        """One scan: loads the latest complete version if it is not the one being served."""
        import tensorflow as tf  # not at the top: the CLI imports this module without running a server

        with self._poll_lock:
            versions = version_dirs(self.model_dir)
            complete = {v: p for v, p in versions.items() if saved_model_file(p)}
            current = self.current_version
            if not complete:
                if current is not None:
                    log.info("%s: no complete version left under %s; unloading version %d", self.name,
                             self.model_dir, current)
                    self._swap(None)
                elif not self._waiting_logged:
                    log.info("%s: no complete version under %s yet; waiting for one", self.name, self.model_dir)
                    self._waiting_logged = True
                return
            # The newest version that loads (a broken push must not stop an older one from serving).
            for version in sorted(complete, reverse=True):
                if version == current:
                    return
                pb = saved_model_file(complete[version])
                try:
                    mtime = tf.io.gfile.stat(pb).mtime_nsec
                except Exception:  # removed between the scan and now
                    continue
                failure = self._failed.get(version)
                if failure and failure.mtime == mtime and time.monotonic() < failure.retry_at:
                    continue
                if self._load_version(version, complete[version], mtime):
                    return

    def _load_version(self, version: int, path: str, mtime: int) -> bool:
        log.info("%s: loading version %d from %s", self.name, version, path)
        self._set_state(version, VersionState.START)
        self._set_state(version, VersionState.LOADING)
        start = time.monotonic()
        try:
            servable = self._load(version, path)
        except Exception as e:  # a bad version must not take the server down
            error = e if isinstance(e, ServingError) else ServingError(Code.UNKNOWN, f"{type(e).__name__}: {e}")
            previous = self._failed.get(version)
            attempts = previous.attempts + 1 if previous and previous.mtime == mtime else 1
            delay = min(self.max_retry_seconds, self.poll_seconds * 2 ** min(attempts - 1, 30))
            self._failed[version] = _Failure(mtime, attempts, time.monotonic() + delay)
            log.error("%s: version %d failed to load (attempt %d; the previous version, if any, keeps serving; "
                      "retrying in %.0f s): %s", self.name, version, attempts, delay, error.message)
            self._set_state(version, VersionState.END, error)
            return False
        self._failed.pop(version, None)
        log.info("%s: version %d loaded in %.1f s; now serving it", self.name, version, time.monotonic() - start)
        self._swap(_Loaded(version, servable))
        return True

    def _swap(self, new: _Loaded | None) -> None:
        with self._cond:
            old, self._current = self._current, new
            if new is not None:
                self._states[new.version] = VersionStatus(new.version, VersionState.AVAILABLE)
            self._cond.notify_all()
        if old is not None:
            self._set_state(old.version, VersionState.UNLOADING)
            thread = threading.Thread(target=self._unload, args=(old,), name=f"unload-{self.name}-{old.version}",
                                      daemon=True)
            with self._cond:
                self._unloading = [t for t in self._unloading if t.is_alive()] + [thread]
            thread.start()

    def _unload(self, loaded: _Loaded) -> None:
        """Closes a version once its requests have finished (in its own thread: polling goes on meanwhile)."""
        start = warned = time.monotonic()
        with self._cond:
            while loaded.inflight > 0:
                now = time.monotonic()
                if self._close_by is not None and now >= self._close_by:
                    log.warning("%s: stopping: closing version %d with %d requests still running", self.name,
                                loaded.version, loaded.inflight)
                    break
                if now - warned >= self._unload_grace:
                    warned = now
                    log.warning("%s: version %d still has %d requests running after %.0f s; unloading it when "
                                "they finish", self.name, loaded.version, loaded.inflight, now - start)
                self._cond.wait(0.5)
        close = getattr(loaded.servable, "close", None)
        if close is not None:
            try:
                close()
            except Exception as e:  # unloading is best effort
                log.warning("%s: error while unloading version %d: %s", self.name, loaded.version, e)
        self._set_state(loaded.version, VersionState.END)
        log.info("%s: unloaded version %d", self.name, loaded.version)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # keep watching whatever the file system does
                log.exception("%s: error while scanning %s", self.name, self.model_dir)

    def start(self) -> "ModelWatcher":
        """Scans once (loading the latest version before returning), then keeps polling in a thread."""
        self._close_by = None
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace: float = 30.0) -> None:
        """Stops polling and unloads every version, waiting up to ``grace`` seconds for requests still running."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._poll_lock:
            self._swap(None)
        with self._cond:
            self._close_by = time.monotonic() + grace
            threads = list(self._unloading)
            self._cond.notify_all()
        for thread in threads:
            thread.join()
