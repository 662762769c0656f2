"""HRNet training and evaluation, usable without TFX (the Trainer component calls it).

``launch(TrainConfig(...), num_workers=N)`` runs N Horovod workers on this machine (or one in-process
worker); ``hrnet_tfx.training.worker`` is the per-process entry point for outside launchers.
"""

from hrnet_tfx.training.config import TrainConfig
from hrnet_tfx.training.launcher import default_num_workers, launch, worker_command

__all__ = ["TrainConfig", "default_num_workers", "launch", "worker_command"]
