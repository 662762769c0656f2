"""Server-side batching: TF Serving's batching parameters, and a small batcher for the development server.

``tensorflow_model_server --enable_batching --batching_parameters_file=F`` merges concurrent requests to
the same signature into one graph run. :class:`BatchingOptions` holds the common parameters and writes that
file (:meth:`BatchingOptions.to_text_proto`). :class:`Batcher` does the same job in the development
server: requests with the same feeds layout and fetches wait up to ``batch_timeout_micros`` for company,
are concatenated along the first dimension up to ``max_batch_size`` rows, run once, and split back. A
request larger than ``max_batch_size`` runs on its own. If a merged run fails, each request is retried on
its own, so one bad request never fails its neighbours.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
from concurrent import futures
from typing import Callable, Sequence

import numpy as np

from hrnet_tfx.serving.errors import Code, ServingError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters (``BatchingParameters`` in its batching_parameters_file).

    Attributes:
      max_batch_size: most rows in one merged run.
      batch_timeout_micros: how long the first request of a batch waits for others.
      num_batch_threads: merged runs executing at once (0: the number of CPUs).
      max_enqueued_batches: batches allowed to wait; beyond that requests get UNAVAILABLE.
      allowed_batch_sizes: batch sizes the real server pads to (passed to ``tensorflow_model_server`` only;
        the development server runs batches unpadded).
    """

    max_batch_size: int = 32
    batch_timeout_micros: int = 1000
    num_batch_threads: int = 0
    max_enqueued_batches: int = 100
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.batch_timeout_micros < 0 or self.num_batch_threads < 0 or self.max_enqueued_batches < 1:
            raise ValueError("batch_timeout_micros and num_batch_threads must be >= 0, max_enqueued_batches >= 1")
        sizes = tuple(self.allowed_batch_sizes)
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size or sizes[0] < 1):
            raise ValueError("allowed_batch_sizes must increase and end with max_batch_size "
                             f"({self.max_batch_size}), got {list(sizes)}")

    @property
    def threads(self) -> int:
        """``num_batch_threads``, with 0 resolved to the number of CPUs."""
        return self.num_batch_threads or (os.cpu_count() or 1)

    def to_text_proto(self) -> str:
        """The ``--batching_parameters_file`` contents (text-format ``BatchingParameters``)."""
        lines = [
            f"max_batch_size {{ value: {self.max_batch_size} }}",
            f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
            f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
            f"num_batch_threads {{ value: {self.threads} }}",
        ]
        lines += [f"allowed_batch_sizes: {size}" for size in self.allowed_batch_sizes]
        return "\n".join(lines) + "\n"


class _Task:
    __slots__ = ("feeds", "rows", "done", "result", "error", "enqueued")

    def __init__(self, feeds: dict, rows: int):
        self.feeds, self.rows = feeds, rows
        self.done = threading.Event()
        self.result = None
        self.error: BaseException | None = None
        self.enqueued = time.monotonic()


class _Queue:
    def __init__(self):
        self.tasks: collections.deque[_Task] = collections.deque()
        self.rows = 0
        self.thread: threading.Thread | None = None


RunFn = Callable[[dict, Sequence[str]], list]


class Batcher:
    """Merges concurrent calls of ``run(feeds, fetches)`` (see the module docstring).

    ``run`` takes ``{tensor name: ndarray}`` feeds whose first dimension is the batch and a list of fetch
    names, and returns one array per fetch, each with the same first dimension.
    """

    def __init__(self, run: RunFn, options: BatchingOptions):
        self._run = run
        self.options = options
        self._cond = threading.Condition()
        self._queues: dict[tuple, _Queue] = {}
        self._executor = futures.ThreadPoolExecutor(options.threads, thread_name_prefix="batch")
        self._pending_batches = 0
        self._closed = False
        self._batches = self._requests = 0

    def run(self, feeds: dict, fetches: Sequence[str]) -> list:
        """Runs one request, possibly merged with others; returns its outputs (one array per fetch)."""
        rows = {arr.shape[0] if arr.ndim else -1 for arr in feeds.values()}
        if len(rows) != 1 or -1 in rows or next(iter(rows)) > self.options.max_batch_size or not feeds:
            return self._run(feeds, fetches)  # not batchable, or too big to share a batch
        key = (tuple(fetches), tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in feeds.items())))
        task = _Task(feeds, rows.pop())
        with self._cond:
            if self._closed:
                raise ServingError(Code.UNAVAILABLE, "the server is shutting down")
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = _Queue()
                queue.thread = threading.Thread(target=self._schedule, args=(key, queue), daemon=True,
                                                name="batch-scheduler")
                queue.thread.start()
            if self._pending_batches >= self.options.max_enqueued_batches:
                raise ServingError(Code.UNAVAILABLE, "The batch scheduling queue to which this task was "
                                   f"submitted is full ({self.options.max_enqueued_batches} batches waiting)")
            queue.tasks.append(task)
            queue.rows += task.rows
            self._cond.notify_all()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.result

    def _schedule(self, key: tuple, queue: _Queue) -> None:
        timeout = self.options.batch_timeout_micros / 1e6
        limit = self.options.max_batch_size
        while True:
            with self._cond:
                while not queue.tasks and not self._closed:
                    self._cond.wait()
                if not queue.tasks and self._closed:
                    return
                deadline = queue.tasks[0].enqueued + timeout
                while queue.rows < limit and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                batch, rows = [], 0
                while queue.tasks and rows + queue.tasks[0].rows <= limit:
                    task = queue.tasks.popleft()
                    batch.append(task)
                    rows += task.rows
                queue.rows -= rows
                self._pending_batches += 1
            self._executor.submit(self._execute, batch, key[0])

    def stats(self) -> dict:
        """``{"batches": runs, "requests": requests}`` that went through the batch queues so far."""
        with self._cond:
            return {"batches": self._batches, "requests": self._requests}

    def _execute(self, batch: list[_Task], fetches: Sequence[str]) -> None:
        with self._cond:
            self._batches += 1
            self._requests += len(batch)
        try:
            if len(batch) == 1:
                self._finish_one(batch[0], fetches)
                return
            names = list(batch[0].feeds)
            feeds = {n: np.concatenate([t.feeds[n] for t in batch]) for n in names}
            try:
                outputs = self._run(feeds, fetches)
                total = sum(t.rows for t in batch)
                if any(np.ndim(o) == 0 or np.shape(o)[0] != total for o in outputs):
                    raise ValueError("an output has no batch dimension")
            except Exception:
                for task in batch:  # isolate the failing request(s)
                    self._finish_one(task, fetches)
                return
            start = 0
            for task in batch:
                task.result = [o[start : start + task.rows] for o in outputs]
                start += task.rows
                task.done.set()
        finally:
            with self._cond:
                self._pending_batches -= 1

    def _finish_one(self, task: _Task, fetches: Sequence[str]) -> None:
        try:
            task.result = self._run(task.feeds, fetches)
        except BaseException as e:
            task.error = e
        task.done.set()

    def close(self) -> None:
        """Runs what is queued, then stops the scheduler threads."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            threads = [q.thread for q in self._queues.values() if q.thread]
        for thread in threads:
            thread.join()
        self._executor.shutdown(wait=True)
