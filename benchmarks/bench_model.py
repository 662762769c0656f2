"""CPU throughput of our Keras HRNet, optionally side by side with timm's PyTorch HRNet.

Measures, for one variant (default hrnet_w18, 224x224, batch 8, random inputs, 1000 classes):

* inference: images/s of ``model(x, training=False)`` inside a ``tf.function``;
* training step: images/s of one SGD step inside a ``tf.function``: forward with ``training=True`` (BN
  statistics update), softmax cross-entropy, ``tf.GradientTape`` backward, SGD momentum 0.9 update with
  the trainer's optimizer (:class:`hrnet_tfx.training.optimizer.MomentumSGD`, one fused op per variable).

Each timed run is ``--steps`` calls; after ``--warmup`` untimed rounds, ``--repeats`` rounds are timed
and the median images/s is printed with the min-max spread. ``--jit-compile`` adds an XLA row and
``--dtype-policy mixed_bfloat16`` a bfloat16 row (both need extra compile time).

Rows: ``keras float32`` is the training graph (``model(x, training=False)`` for inference);
``keras float32 served`` is what an export serves (:class:`hrnet_tfx.serving.export.ServingModule`'s
``logits``: BatchNorm folded into the convolutions by :func:`hrnet_tfx.models.inference.inference_model`,
weights frozen into graph constants, so oneDNN reorders each filter once), inference only; with
``--dtype-policy mixed_bfloat16`` the same two again in bfloat16 (the served one with bfloat16 weights).
``keras float32 folded, variables`` is the served network with its weights left in variables (what the
exports served until 2026-11-30): beside ``served`` it shows what the constant weights gain.
The served and folded rows' model gets random, non-zero BatchNorm statistics first, as a trained model
has (``_trained_like.py`` says why a fresh model's would mislead).

``--vs-timm PYTHON`` also measures ``timm.create_model(model, pretrained=False)`` (eval mode for
inference, train mode + ``torch.optim.SGD(momentum=0.9)`` for the step, its default for-loop form:
``foreach=True`` and ``fused=True`` measured the same within 1.3%; bf16 rows use
``torch.autocast``) in a worker process (``_timm_worker.py``) run by PYTHON, a Python with torch and
timm. timm runs in ``channels_last`` memory format by default (PyTorch's fastest CPU layout and what a
PyTorch user picks for CPU inference; ``--timm-layout nchw`` for the default contiguous format). Both frameworks get the same intra-op (``--threads``) and inter-op (``--inter-threads``) thread
counts. Rounds are interleaved (Keras, timm, timm, Keras, ...) and strictly one at a time, so load from
other processes on a shared machine hits both sides alike.

``--vs-timm`` also measures timm's own inference-only form (``timm ... frozen``: ``torch.jit.trace`` +
``torch.jit.freeze`` + ``torch.jit.optimize_for_inference``, which folds BN and prepacks the oneDNN weights;
bf16 as a model cast to bfloat16), the counterpart of our served rows: both fold BN and reorder weights once.

``--assume-frozen-weights`` measures inference only, in a process with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``:
oneDNN then also reorders the weights of the training graph's variables once and reuses them, instead of
on every call (8-15% of a folded inference step with variables). The setting is process-wide and ignores
later changes to the weights (a training step would keep computing with the first weights), so this mode
has no train column; the served rows need no such setting.

Reading the ratio: ``ours/timm`` is Keras images/s divided by timm images/s measured in the same run
(the ratio of the medians, then the min-max of the per-round ratios, then ``best``: our best round over
timm's best round); above 1 means ours is faster. On the 2-core EPYC of ``benchmarks/README.md`` timm's
training step runs at one of two speeds ~1.2x apart, switching every few rounds within one process (not
tied to page faults, OpenMP binding or wait policy, or oneDNN's primitive cache), so its median depends on
how many rounds it spent at the slow one; ``best`` compares both sides at their fastest.
Compare ratios between runs, not absolute images/s (those depend on the machine and its load; the load
average is printed). Where the time goes (profiles, the levers tried
and their effect) is written up in ``benchmarks/README.md``; ``profile_model.py`` reproduces it.

Example::

    .venv/bin/python benchmarks/bench_model.py --vs-timm /tmp/torchvenv/bin/python --dtype-policy mixed_bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

from hrnet_tfx import WEIGHT_CACHE_ENV  # (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

OPS = ("infer", "train")
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_timm_worker.py")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hrnet_w18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    p.add_argument("--steps", type=int, default=3, help="calls per timed run (default 3)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, both frameworks")
    p.add_argument("--inter-threads", type=int, default=None,
                   help="inter-op threads, both frameworks (default: --threads)")
    p.add_argument("--jit-compile", action="store_true", help="add a Keras row compiled with XLA")
    p.add_argument("--dtype-policy", default="float32", choices=("float32", "mixed_bfloat16"),
                   help="mixed_bfloat16 adds bfloat16 rows (Keras policy, torch.autocast)")
    p.add_argument("--vs-timm", metavar="PYTHON", help="a Python with torch and timm installed")
    p.add_argument("--timm-layout", default="channels_last", choices=("channels_last", "nchw"),
                   help="timm's memory format (default channels_last: PyTorch's fastest on the CPU)")
    p.add_argument("--assume-frozen-weights", action="store_true",
                   help=f"inference only, with {WEIGHT_CACHE_ENV}=1 (oneDNN caches reordered weights; serving only)")
    p.add_argument("--settle", type=float, default=0.3, help="idle seconds before each timed run")
    args = p.parse_args(argv)
    args.ops = ("infer",) if args.assume_frozen_weights else OPS
    if args.inter_threads is None:
        args.inter_threads = args.threads
    if args.vs_timm:
        exe = shutil.which(args.vs_timm)
        if exe is None:
            p.error(f"--vs-timm: {args.vs_timm!r} is not an executable Python")
        args.vs_timm = exe
    if min(args.repeats, args.steps, args.batch, args.threads, args.inter_threads) < 1:
        p.error("--repeats, --steps, --batch and the thread counts must be >= 1")
    return args


class KerasRow:
    """Our model with compiled inference and training-step functions.

    ``form="served"`` measures inference only, of what an export serves (``ServingModule(...).logits``: BN
    folded, weights as constants; bfloat16 weights when the policy is mixed_bfloat16); ``form="folded"``
    the same folded network with its weights in variables (what exports served before). Both on a model
    with random BatchNorm statistics (module docstring).
    """

    def __init__(self, label, args, tf, keras, dtype_policy, jit, form="training"):
        from _trained_like import with_trained_like_batch_norms
        from hrnet_tfx import models
        from hrnet_tfx.models.inference import inference_model
        from hrnet_tfx.serving.export import ServingModule
        from hrnet_tfx.training.optimizer import MomentumSGD

        self.label, self.bf16 = label, dtype_policy != "float32"
        self.ops = args.ops if form == "training" else ("infer",)
        model = models.build_model(args.model, num_classes=1000, image_size=args.image_size,
                                   dtype_policy=dtype_policy)
        x = tf.random.normal((args.batch, args.image_size, args.image_size, 3))
        y = tf.random.uniform((args.batch,), 0, 1000, dtype=tf.int32)
        if form != "training":
            with_trained_like_batch_norms(model)
            dtype = "bfloat16" if self.bf16 else "float32"
            if form == "served":
                logits = ServingModule(model, [str(i) for i in range(1000)], args.image_size,
                                       serving_dtype=dtype).logits
            else:
                logits = inference_model(model, dtype=dtype)
            self.fns = {"infer": tf.function(lambda: logits(x), autograph=False)}
            return
        opt = MomentumSGD(learning_rate=0.01, momentum=0.9)  # the trainer's optimizer

        @tf.function(jit_compile=jit, autograph=False)
        def infer():
            return model(x, training=False)

        @tf.function(jit_compile=jit)
        def train():
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = tf.reduce_mean(
                    keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        self.fns = {"infer": infer, "train": train}

    def run(self, op, steps):
        fn = self.fns[op]
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        out.numpy()  # wait for the result
        return time.perf_counter() - start


class TimmWorker:
    """A long-lived worker process running timm; one request at a time."""

    def __init__(self, args):
        cmd = [args.vs_timm, WORKER, "--model", args.model, "--batch", str(args.batch),
               "--image-size", str(args.image_size), "--threads", str(args.threads),
               "--inter-threads", str(args.inter_threads)]
        if args.timm_layout == "channels_last":
            cmd.append("--channels-last")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=env)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise SystemExit(f"error: the timm worker ({self.proc.args[0]}) exited with code "
                             f"{self.proc.returncode} before answering; see its messages above")
        msg = json.loads(line)
        if "error" in msg:
            raise SystemExit(f"error: {msg['error']}\n(--vs-timm needs a Python with torch and timm, "
                             f"e.g. a venv with `pip install torch timm`)")
        return msg

    def request(self, **req):
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # end of input stops the worker
            self.proc.wait(timeout=60)


class TimmRow:
    def __init__(self, label, worker, bf16, ops=OPS, frozen=False):
        self.label, self.worker, self.bf16, self.ops, self.frozen = label, worker, bf16, ops, frozen

    def run(self, op, steps):
        return self.worker.request(op=op, steps=steps, bf16=self.bf16, frozen=self.frozen)["seconds"]


def measure(rows, args):
    """Interleaved rounds: every row runs each op once per round, never two at a time; the row order
    flips every round so neither framework always runs first. Returns {(label, op): [img/s, ...]}."""
    from tqdm import tqdm

    results = {(r.label, op): [] for r in rows for op in r.ops}
    rounds = args.warmup + args.repeats
    bar = tqdm(total=rounds * len(results), desc="measuring", unit="run", file=sys.stderr)
    for k in range(rounds):
        order = rows if k % 2 == 0 else rows[::-1]
        line = []
        for row in order:
            for op in row.ops:
                time.sleep(args.settle)
                seconds = row.run(op, args.steps)
                ips = args.batch * args.steps / seconds
                if k >= args.warmup:
                    results[(row.label, op)].append(ips)
                line.append(f"{row.label} {op} {ips:.2f}")
                bar.update()
        kind = "warm-up" if k < args.warmup else "timed"
        bar.write(f"round {k + 1}/{rounds} ({kind}, load {os.getloadavg()[0]:.2f}): "
                  + ", ".join(line) + " img/s")
    bar.close()
    return results


def report(rows, results, args):
    def cell(label, op):
        v = results.get((label, op))
        return f"{statistics.median(v):8.2f} ({min(v):.2f}-{max(v):.2f})" if v else "-"

    print(f"{'':48s}{'inference img/s':>31s}{'train step img/s':>31s}")
    for r in rows:
        print(f"{r.label:48s}{cell(r.label, 'infer'):>31s}{cell(r.label, 'train'):>31s}")
    for r in rows:
        for ref in [t for t in rows if isinstance(t, TimmRow) and t.bf16 == r.bf16]:
            if not isinstance(r, KerasRow):
                continue
            ratios = [_ratio(results[(r.label, op)], results[(ref.label, op)])
                      if (r.label, op) in results and (ref.label, op) in results else "-" for op in OPS]
            name = f"ratio ({r.label[6:]}/{ref.label[5:]})"
            print(f"{name:48s}{ratios[0]:>31s}{ratios[1]:>31s}")


def _ratio(ours: list[float], theirs: list[float]) -> str:
    """The ratio of the medians, the min-max of the per-round ratios (both sides of a round ran back to
    back, so a round's ratio is the figure least moved by load that changes between rounds), and the ratio
    of the two sides' best rounds (each at its fastest: the conservative figure when one side's speed
    jumps between rounds, as timm's training step does on the 2-core EPYC of ``benchmarks/README.md``)."""
    per_round = [a / b for a, b in zip(ours, theirs)]
    return (f"{statistics.median(ours) / statistics.median(theirs):.2f} ({min(per_round):.2f}-{max(per_round):.2f})"
            f" best {max(ours) / max(theirs):.2f}")


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if args.assume_frozen_weights:  # read once, when TensorFlow's first oneDNN convolution runs
        os.environ[WEIGHT_CACHE_ENV] = "1"
    worker = TimmWorker(args) if args.vs_timm else None  # fail fast before the slow Keras build

    import tensorflow as tf
    import tf_keras as keras

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.inter_threads)
    bf16 = args.dtype_policy == "mixed_bfloat16"
    print(f"# {args.model} {args.image_size}x{args.image_size} batch {args.batch}, CPU "
          f"{platform.processor() or platform.machine()} x{os.cpu_count()}, threads intra {args.threads} "
          f"inter {args.inter_threads}; {args.repeats} timed runs of {args.steps} steps after "
          f"{args.warmup} warm-up rounds; median (min-max)")
    print(f"# TensorFlow {tf.__version__}, TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, "
          f"{WEIGHT_CACHE_ENV}={os.environ.get(WEIGHT_CACHE_ENV, 'unset')}"
          + (f"; torch {worker.info['torch']}, timm {worker.info['timm']} (threads "
             f"{worker.info['threads']}/{worker.info['inter_threads']}"
             f", {args.timm_layout})" if worker else ""))
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)

    rows = [KerasRow("keras float32", args, tf, keras, "float32", False),
            KerasRow("keras float32 folded, variables", args, tf, keras, "float32", False, form="folded"),
            KerasRow("keras float32 served", args, tf, keras, "float32", False, form="served")]
    if args.jit_compile:
        rows.append(KerasRow("keras float32 xla", args, tf, keras, "float32", True))
    if bf16:
        rows.append(KerasRow("keras bf16", args, tf, keras, "mixed_bfloat16", False))
        rows.append(KerasRow("keras bf16 served", args, tf, keras, "mixed_bfloat16", False, form="served"))
    if worker:
        rows.append(TimmRow("timm float32", worker, False, args.ops))
        if bf16:
            rows.append(TimmRow("timm bf16", worker, True, args.ops))
        rows.append(TimmRow("timm float32 frozen", worker, False, ("infer",), frozen=True))  # beside our served rows
        if bf16:
            rows.append(TimmRow("timm bf16 frozen", worker, True, ("infer",), frozen=True))
    try:
        print("# tracing/compiling (first call of every function) ...", file=sys.stderr, flush=True)
        for r in rows:
            for op in r.ops:
                r.run(op, 1)
        results = measure(rows, args)
    finally:
        if worker:
            worker.close()
    report(rows, results, args)
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
