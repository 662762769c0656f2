"""Known noise of TensorFlow, TFX, TFMA and Google's client libraries, kept out of hrnet-tfx's processes.

Every filter here names one message that is known to be harmless in this project and says why; nothing
silences a whole logger or a whole warning category, so real errors and unknown warnings still show.

* TensorFlow's C++ start-up lines (oneDNN notice, "Could not find cuda drivers", CPU features, and the
  cuFFT/cuDNN/cuBLAS "Unable to register ... factory" errors TensorFlow 2.16 prints on every import):
  ``TF_CPP_MIN_LOG_LEVEL=3`` before TensorFlow loads, unless the user set it. C++ errors that matter reach
  Python as exceptions; ``TF_CPP_MIN_LOG_LEVEL=0`` shows everything again.
* Log records in :data:`KNOWN_NOISE` (logger, message pattern).
* Python warnings in :data:`KNOWN_WARNINGS` (category, message start), also for child processes (Horovod
  workers, Beam workers) through ``PYTHONWARNINGS``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

KNOWN_NOISE: tuple[tuple[str, str, str], ...] = (
    ("absl", r"ArtifactQuery\.property_predicate is not supported",
     "TFX 1.16's resolver logs it for every input channel of every component; the local engine ignores it"),
    ("tensorflow", r"SavedModel saved prior to TF 2\.5 detected when loading Keras model",
     "TFMA tries the export with Keras first; it is a plain tf.Module SavedModel on purpose "
     "(hrnet_tfx.serving.export), which TFMA then loads by signature"),
    ("tensorflow", r"tf_record_iterator \(from tensorflow\.python\.lib\.io\.tf_record\) is deprecated",
     "TFMA 0.47's metrics writer uses it; nothing to do on our side"),
    ("absl", r"Function `\w+` contains input name\(s\) .* with unsupported characters",
     "tf.saved_model.save lists every captured variable of each signature (~9 KB per signature) because "
     "captured resources get numeric names; signature inputs themselves keep their names"),
)
"""(logger name, message regex, why it is harmless)."""

KNOWN_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, "You are using a non-supported Python version"),  # google.api_core on Python 3.10
    (FutureWarning, "Support for google-cloud-storage < 3.0.0 will be removed"),  # aiplatform, via TFX
)
"""(category, message start) of Python warnings raised while importing TFX's Google client libraries."""


class KnownNoiseFilter(logging.Filter):
    """Drops records whose message matches one of ``patterns``."""

    def __init__(self, patterns):
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to drop
            return True
        return not any(p.search(message) for p in self.patterns)


class OwnInfoOnly(logging.Filter):
    """Passes hrnet-tfx's own records at any level and everyone else's from WARNING up: TFX, Beam and
    TensorFlow log hundreds of INFO lines per pipeline run (and set their loggers' levels themselves, so
    the root logger's level alone does not hold them back). For the handlers of a command's root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == "hrnet_tfx"


def quiet_tensorflow_cpp() -> None:
    """``TF_CPP_MIN_LOG_LEVEL=3`` unless set; must run before TensorFlow is imported to take effect."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _filters() -> dict[str, KnownNoiseFilter]:
    by_logger: dict[str, list[str]] = {}
    for name, pattern, _ in KNOWN_NOISE:
        by_logger.setdefault(name, []).append(pattern)
    return {name: KnownNoiseFilter(patterns) for name, patterns in by_logger.items()}


def install() -> None:
    """Quiets the known noise in this process and its children (idempotent)."""
    quiet_tensorflow_cpp()
    for name, noise in _filters().items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, KnownNoiseFilter) for f in logger.filters):
            logger.addFilter(noise)
    specs = []
    for category, message in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
        specs.append(f"ignore:{message}:{category.__name__}")
    inherited = [s for s in os.environ.get("PYTHONWARNINGS", "").split(",") if s]
    os.environ["PYTHONWARNINGS"] = ",".join(inherited + [s for s in specs if s not in inherited])
