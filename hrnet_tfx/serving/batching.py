"""TF Serving's server-side batching parameters (``tensorflow_model_server --enable_batching
--batching_parameters_file=F``). The development server does not batch: it runs each request on its own."""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters (``BatchingParameters`` in its ``--batching_parameters_file``):
    ``tensorflow_model_server --enable_batching`` merges concurrent requests to a signature into one run.

    Attributes:
      max_batch_size: most rows in one merged run (larger requests are refused).
      batch_timeout_micros: how long the first request of a batch waits for others.
      num_batch_threads: merged runs executing at once (0: the number of CPUs).
      max_enqueued_batches: batches allowed to wait; beyond that requests get UNAVAILABLE.
      allowed_batch_sizes: batch sizes to pad to (must increase and end with ``max_batch_size``).
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

    def to_text_proto(self) -> str:
        """The ``--batching_parameters_file`` contents (text-format ``BatchingParameters``)."""
        lines = [
            f"max_batch_size {{ value: {self.max_batch_size} }}",
            f"batch_timeout_micros {{ value: {self.batch_timeout_micros} }}",
            f"max_enqueued_batches {{ value: {self.max_enqueued_batches} }}",
            f"num_batch_threads {{ value: {self.num_batch_threads or (os.cpu_count() or 1)} }}",
        ]
        lines += [f"allowed_batch_sizes: {size}" for size in self.allowed_batch_sizes]
        return "\n".join(lines) + "\n"
