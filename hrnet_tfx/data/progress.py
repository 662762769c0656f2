"""Progress of a Beam conversion (images/s, done, ETA) that works on any runner with a shared file system.

Each worker's DoFn writes its running count to its own small file now and then (:class:`ProgressWriter`);
the launching process polls the directory in a background thread and shows a tqdm bar on a terminal, or a
log line every ``log_every`` seconds otherwise (:class:`ProgressMonitor`). The DirectRunner runs
``pipeline.run()`` synchronously in the launching process, so Beam's own metrics are only available at
the end; the files give live numbers for every direct running mode (in-memory, threads, processes).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
import uuid

log = logging.getLogger(__name__)


class ProgressWriter:
    """Worker side: counts items and rewrites ``<dir>/<random id>`` at most every ``interval`` seconds."""

    def __init__(self, directory: str, interval: float = 2.0):
        self._dir, self._interval = directory, interval
        self._path = None
        self._count = 0
        self._last: float | None = None  # the first add writes

    def add(self, n: int = 1, force: bool = False) -> None:
        """Counts ``n`` more items; writes the file when due (or ``force``)."""
        self._count += n
        now = time.monotonic()
        if force or self._last is None or now - self._last >= self._interval:
            self._last = now
            import tensorflow as tf

            if self._path is None:
                self._path = os.path.join(self._dir, uuid.uuid4().hex)
            try:
                with tf.io.gfile.GFile(self._path, "w") as f:
                    f.write(str(self._count))
            except Exception as e:  # progress is best effort; never fail the conversion for it
                log.debug("cannot write progress file %s: %s", self._path, e)


def read_progress(directory: str) -> int:
    """Sum of the counts in a progress directory (0 if none yet)."""
    import tensorflow as tf

    total = 0
    try:
        names = tf.io.gfile.listdir(directory)
    except Exception:
        return 0
    for name in names:
        try:
            with tf.io.gfile.GFile(os.path.join(directory, name)) as f:
                total += int(f.read() or 0)
        except Exception:  # a file being rewritten right now; next poll gets it
            pass
    return total


class ProgressMonitor:
    """Launcher side: a context manager polling a progress directory while the pipeline runs."""

    def __init__(self, directory: str, total: int | None, desc: str = "converting", unit: str = "img",
                 poll: float = 1.0, log_every: float = 30.0):
        self._dir, self._total, self._desc, self._unit = directory, total, desc, unit
        self._poll, self._log_every = poll, log_every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ProgressMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        start = time.monotonic()
        bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=self._total, desc=self._desc, unit=self._unit, dynamic_ncols=True)
        last_log, done = start, 0
        while True:
            stopping = self._stop.wait(self._poll)
            done = read_progress(self._dir)
            if bar is not None:
                bar.update(done - bar.n)
            elif time.monotonic() - last_log >= self._log_every or stopping:
                last_log = time.monotonic()
                log.info("%s", format_progress(done, self._total, last_log - start, self._unit))
            if stopping:
                break
        if bar is not None:
            bar.close()


def format_duration(seconds: float) -> str:
    """``0:00:42``, ``23:59:59``, ``1d 03:46:40``, ``15d 00:00:00``; ``?`` for NaN, infinity or a negative
    value. The one duration format of the package (progress lines and ETAs)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{days}d {hours:02d}:{minutes:02d}:{secs:02d}" if days else f"{hours}:{minutes:02d}:{secs:02d}"


def format_progress(done: int, total: int | None, elapsed: float, unit: str = "img") -> str:
    """``1234/5000 img (24.7%), 812.3 img/s, ETA 0:00:04``."""
    rate = done / elapsed if elapsed > 0 else 0.0
    if not total:
        return f"{done} {unit}, {rate:.1f} {unit}/s"
    eta = (total - done) / rate if rate > 0 else float("nan")
    return f"{done}/{total} {unit} ({100.0 * done / total:.1f}%), {rate:.1f} {unit}/s, ETA {format_duration(eta)}"
