"""Training step with and without XLA (``jit_compile``), side by side in one process.

The step is the trainer's: forward + gradient under one ``tf.function`` (jit-compiled or not), weight
decay added to the gradients, SGD Nesterov update outside. Rounds alternate between the two so load
from other jobs hits both alike; the median of each side is reported with its spread and the ratio.

    .venv/bin/python benchmarks/bench_xla.py                       # tiny@64
    .venv/bin/python benchmarks/bench_xla.py --models hrnet_w18 --batch 8 --rounds 5   # for GPU machines

On a CPU this says little about GPUs, where XLA fuses HRNet's many small elementwise ops (BN, ReLU,
adds) around cuDNN convolutions; run it on a GPU machine for the number that matters. On the 2-core
CPU here XLA's CPU compiler had not finished compiling hrnet_w18's training step after 20 minutes.
"""

import argparse
import statistics
import time

import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx import models
from hrnet_tfx.training.optimizer import MomentumSGD

SIZES = {"tiny.yaml": 64, "hrnet_w18": 224}


def make_step(model, jit: bool, num_classes: int):
    optimizer = MomentumSGD(0.01, momentum=0.9, nesterov=True)  # the trainer's optimizer
    variables = model.trainable_variables
    forward = tf.function(lambda x: model(x, training=True), jit_compile=jit, autograph=False)

    @tf.function(autograph=False)
    def step(images, labels):
        with tf.GradientTape() as tape:
            logits = forward(images)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        grads = tape.gradient(loss, variables)
        grads = [g + 1e-4 * v for g, v in zip(grads, variables)]
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny.yaml", help="comma-separated: tiny.yaml, hrnet_w18, ...")
    p.add_argument("--batch", type=int, default=0, help="per-step batch (default: 32 tiny, 8 hrnet_w18)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds per side")
    p.add_argument("--steps", type=int, default=3, help="steps per round (tiny: x10)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads")
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(2)

    for name in args.models.split(","):
        size = SIZES.get(name, 224)
        batch = args.batch or (32 if name == "tiny.yaml" else 8)
        steps = args.steps * (10 if name == "tiny.yaml" else 1)
        rng = np.random.RandomState(0)
        images = tf.constant(rng.randn(batch, size, size, 3).astype("float32"))
        labels = tf.constant(rng.randint(0, 1000, batch))
        sides = {}
        for jit in (False, True):
            keras.utils.set_random_seed(0)
            model = models.build_model(name, num_classes=1000, image_size=size)
            step = make_step(model, jit, 1000)
            t0 = time.perf_counter()
            step(images, labels).numpy()  # trace (+ XLA compile)
            sides[jit] = {"step": step, "first": time.perf_counter() - t0, "times": []}
            step(images, labels).numpy()  # warm-up
        for _ in range(args.rounds):
            for jit in (False, True):
                t0 = time.perf_counter()
                for _ in range(steps):
                    loss = sides[jit]["step"](images, labels)
                loss.numpy()
                sides[jit]["times"].append(batch * steps / (time.perf_counter() - t0))
        print(f"\n{name} @ {size}, batch {batch}, {args.threads} threads, {args.rounds} rounds x {steps} steps")
        for jit in (False, True):
            t = sides[jit]["times"]
            print(f"  {'XLA  ' if jit else 'plain'}: {statistics.median(t):8.1f} img/s (min {min(t):.1f}, max "
                  f"{max(t):.1f}); first step incl. tracing/compile {sides[jit]['first']:.1f} s")
        ratio = statistics.median(sides[True]["times"]) / statistics.median(sides[False]["times"])
        print(f"  XLA / plain: {ratio:.2f}x")


if __name__ == "__main__":
    main()
