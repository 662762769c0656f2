"""Learning-rate schedules over the global step: linear warm-up, then step decay or cosine."""

from __future__ import annotations

import math
from typing import Sequence

import hrnet_tfx  # noqa: F401
import tensorflow as tf
import tf_keras as keras


class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``peak_lr`` reached linearly over ``warmup_epochs``, then ``"step"`` (x``decay_rate`` at each of
    ``decay_epochs``) or ``"cosine"`` (to 0 at ``total_epochs``). Epochs are fractional: step /
    ``steps_per_epoch``. A pure function of the step, so a resumed run continues exactly."""

    def __init__(
        self,
        peak_lr: float,
        steps_per_epoch: int,
        total_epochs: float,
        warmup_epochs: float = 0.0,
        kind: str = "step",
        decay_epochs: Sequence[float] = (30.0, 60.0, 90.0),
        decay_rate: float = 0.1,
    ):
        super().__init__()
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = float(total_epochs)
        self.warmup_epochs = float(warmup_epochs)
        self.kind = kind
        self.decay_epochs = [float(e) for e in decay_epochs]
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        epoch = tf.cast(step, tf.float32) / float(self.steps_per_epoch)
        if self.kind == "cosine":
            span = max(self.total_epochs - self.warmup_epochs, 1e-8)
            progress = tf.clip_by_value((epoch - self.warmup_epochs) / span, 0.0, 1.0)
            lr = 0.5 * self.peak_lr * (1.0 + tf.cos(math.pi * progress))
        else:
            passed = tf.add_n([tf.cast(epoch >= e, tf.float32) for e in self.decay_epochs]) if self.decay_epochs else 0.0
            lr = self.peak_lr * tf.pow(self.decay_rate, passed)
        if self.warmup_epochs > 0:
            warm = self.peak_lr * (epoch + 1.0 / self.steps_per_epoch) / self.warmup_epochs
            lr = tf.where(epoch < self.warmup_epochs, tf.minimum(warm, self.peak_lr), lr)
        return lr

    def get_config(self):
        return {
            "peak_lr": self.peak_lr,
            "steps_per_epoch": self.steps_per_epoch,
            "total_epochs": self.total_epochs,
            "warmup_epochs": self.warmup_epochs,
            "kind": self.kind,
            "decay_epochs": self.decay_epochs,
            "decay_rate": self.decay_rate,
        }
