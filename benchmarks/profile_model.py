"""Where the CPU time of our HRNet goes: TensorFlow profiler per op type, and oneDNN primitives and layouts.

For each requested graph (inference or training step; float32 or mixed_bfloat16; the training graph or
the folded inference model of :func:`hrnet_tfx.models.inference.inference_model`), traces ``--steps`` calls
with ``tf.profiler`` and prints, per step, the milliseconds and count of every op type (the kernels that
ran, after grappler's rewrites: ``_MklNativeFusedConv2D`` is a convolution fused with its bias/BN/add/ReLU,
``FusedBatchNormV3`` a BN left alone, ``Cast`` a dtype conversion inserted by the mixed-precision policy).
Percentages are of the summed op time (on 2 threads the sum can exceed the wall time).

``--onednn`` also runs one step of each graph in a child process with ``ONEDNN_VERBOSE=1`` and sums
oneDNN's own log per primitive kind, implementation and source layout (which convolutions run as
``brgconv``/``jit`` kernels, in which dtype, and how much time goes to ``reorder`` between layouts).

    python benchmarks/profile_model.py --graphs infer,infer-folded,train --onednn

The findings are written up in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import subprocess
import sys
import tempfile
import time

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

GRAPHS = {
    # name: (op, dtype policy of the trained model, fold BN into an inference model, inference dtype)
    "infer": ("infer", "float32", False, None),
    "infer-folded": ("infer", "float32", True, "float32"),
    "infer-frozen": ("infer", "float32", "frozen", "float32"),
    "train": ("train", "float32", False, None),
    "infer-bf16": ("infer", "mixed_bfloat16", False, None),
    "infer-folded-bf16": ("infer", "float32", True, "bfloat16"),
    "infer-frozen-bf16": ("infer", "float32", "frozen", "bfloat16"),
    "train-bf16": ("train", "mixed_bfloat16", False, None),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="hrnet_w18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=2, help="profiled calls per graph")
    p.add_argument("--graphs", default="infer,infer-folded,train",
                   help=f"comma-separated, from {','.join(GRAPHS)}")
    p.add_argument("--top", type=int, default=14, help="op types listed per graph")
    p.add_argument("--onednn", action="store_true", help="also summarise ONEDNN_VERBOSE for one step")
    p.add_argument("--onednn-child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    unknown = set(args.graphs.split(",")) - set(GRAPHS)
    if unknown:
        p.error(f"unknown graph(s) {sorted(unknown)}; choose from {', '.join(GRAPHS)}")
    return args


def make_step(name, args):
    """The function of graph ``name`` (a ``tf.function`` without arguments), as bench_model.py times it."""
    import tensorflow as tf
    import tf_keras as keras

    from _trained_like import with_trained_like_batch_norms
    from hrnet_tfx import models
    from hrnet_tfx.models.inference import inference_model
    from hrnet_tfx.serving.export import ServingModule
    from hrnet_tfx.training.optimizer import MomentumSGD

    op, policy, fold, dtype = GRAPHS[name]
    model = models.build_model(args.model, num_classes=1000, image_size=args.image_size, dtype_policy=policy)
    x = tf.random.normal((args.batch, args.image_size, args.image_size, 3))
    y = tf.random.uniform((args.batch,), 0, 1000, dtype=tf.int32)
    if fold:  # a fresh model's folded biases are all 0, which a frozen graph loses (_trained_like.py)
        with_trained_like_batch_norms(model)
    if fold == "frozen":  # what the export serves: BN folded, weights as constants (oneDNN keeps its filters)
        logits = ServingModule(model, [str(i) for i in range(1000)], args.image_size, serving_dtype=dtype).logits
        return tf.function(lambda: logits(x), autograph=False)
    if fold:
        model = inference_model(model, dtype=dtype)
    if op == "infer":
        return tf.function(lambda: model(x, training=False), autograph=False)
    opt = MomentumSGD(learning_rate=0.01, momentum=0.9)  # the trainer's optimizer

    @tf.function
    def train():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train


def op_profile(fn, steps):
    """``({op type: (ms per step, count per step)}, wall ms per step)`` from a tf.profiler trace."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        start = time.perf_counter()
        for _ in range(steps):
            out = fn()
        out.numpy()
        wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    totals = collections.defaultdict(lambda: [0.0, 0])
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute") and not line.name.startswith("tf_inter"):
                continue
            for event in line.events:
                op_name = plane.event_metadata[event.metadata_id].name
                if ":" not in op_name or "::" in op_name:
                    continue  # executor bookkeeping, not an op kernel
                t = totals[op_name.rsplit(":", 1)[1]]
                t[0] += event.duration_ps / 1e9
                t[1] += 1
    return {k: (ms / steps, n / steps) for k, (ms, n) in totals.items()}, wall * 1000


def _parse_onednn(line):
    """``(kind, implementation, propagation, src dtype:layout, ms)`` of an ``exec`` line of oneDNN 3.x's
    verbose log (``onednn_verbose,primitive,exec,cpu,<kind>,<impl>,<prop>,<memory descs>,...,<ms>``)."""
    f = line.strip().split(",")
    if len(f) < 9 or f[0] != "onednn_verbose" or "exec" not in f[:4]:
        return None
    i = f.index("exec")
    src = f[i + 5].split(" ")[0].split(":")  # e.g. src_f32::blocked:acdb::f0 (acdb = NHWC)
    layout = f"{src[0].split('_')[-1]}:{src[3] if len(src) > 3 else '?'}"
    return f[i + 2], f[i + 3], f[i + 4], layout, float(f[-1])


def onednn_summary(name, args):
    """Runs one step of graph ``name`` under ONEDNN_VERBOSE=1 in a child; sums the log per primitive."""
    cmd = [sys.executable, os.path.abspath(__file__), "--onednn-child", name, "--model", args.model,
           "--batch", str(args.batch), "--image-size", str(args.image_size), "--threads", str(args.threads)]
    env = dict(os.environ, ONEDNN_VERBOSE="1")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    marker = out.rfind("#step-start")
    rows = collections.defaultdict(lambda: [0.0, 0])
    for line in out[marker:].splitlines():
        parsed = _parse_onednn(line)
        if parsed is None:
            continue
        *key, ms = parsed
        rows[tuple(key)][0] += ms
        rows[tuple(key)][1] += 1
    return rows


def onednn_child(args):
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    fn = make_step(args.onednn_child, args)
    fn().numpy()
    fn().numpy()
    print("#step-start", flush=True)
    fn().numpy()
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.onednn_child:
        return onednn_child(args)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"# {args.model} {args.image_size}x{args.image_size} batch {args.batch}, threads {args.threads}, "
          f"TensorFlow {tf.__version__}, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    for name in args.graphs.split(","):
        fn = make_step(name, args)
        fn()
        fn()
        ops, wall = op_profile(fn, args.steps)
        total = sum(ms for ms, _ in ops.values())
        print(f"\n## {name}: wall {wall:.0f} ms per step, op time {total:.0f} ms, {sum(n for _, n in ops.values()):.0f} ops")
        print(f"  {'op type':34s} {'ms/step':>9s} {'%':>6s} {'count':>7s}")
        for op, (ms, n) in sorted(ops.items(), key=lambda kv: -kv[1][0])[: args.top]:
            print(f"  {op:34s} {ms:9.1f} {100 * ms / total:6.1f} {n:7.0f}")
        for op in ("Cast", "FusedBatchNormV3", "_MklFusedBatchNormV3", "AddV2", "_MklAdd"):
            if op in ops and op not in dict(sorted(ops.items(), key=lambda kv: -kv[1][0])[: args.top]):
                ms, n = ops[op]
                print(f"  {op:34s} {ms:9.1f} {100 * ms / total:6.1f} {n:7.0f}")
        if args.onednn:
            rows = onednn_summary(name, args)
            tot = sum(ms for ms, _ in rows.values())
            print(f"  oneDNN primitives (one step, {tot:.0f} ms): kind, implementation, propagation, src dtype:layout")
            for (kind, impl, prop, src), (ms, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[: args.top]:
                print(f"    {kind:14s} {impl:28s} {prop:18s} {src:16s} {ms:8.1f} ms {n:5d}x")


if __name__ == "__main__":
    main()
