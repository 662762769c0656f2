"""The convolution ceiling: how fast an HRNet could run on this CPU with TensorFlow's own convolution
kernels, beside what our served network and training step reach, and timm, in one run.

HRNet-W18 spends 92-97% of a served call and 65-79% of a training step in its 325 convolutions
(``benchmarks/README.md``). This script takes every convolution of the network (its input shape, filter
shape, stride and padding, read from the traced graph), groups the identical ones, and times each
distinct one alone, ``--copies`` independent copies per call (so the per-call cost of a ``tf.function`` is
spread over them; each copy has its own input, and the copies may run side by side on the two inter-op
threads, as the network's branches can), the way the network would run it at its best:

* inference: a ``tf.function`` of conv + bias + ReLU with the filter and bias as graph constants (what the
  served export runs: oneDNN fuses the three and reorders the filter once);
* training step: the forward convolution, the gradient of its input (none for the first, whose input is
  the image) and the gradient of its filter (``Conv2DBackpropInput`` / ``Conv2DBackpropFilter``), with
  the filter as a variable (cast to bfloat16 under ``mixed_bfloat16``, as Keras does).

The **ceiling** is the batch size divided by the sum over the network of each convolution's best time:
the img/s the network would reach if nothing but its convolutions cost anything, and each of them ran
as fast as it does alone. Nothing else (BatchNorm, upsampling, adds, casts, the optimizer, the classifier)
is counted, so no implementation built on these kernels can pass it.

A training step also runs every BatchNorm forward and backward (the served network has none: they are
folded into the convolutions). The **convolution + BatchNorm ceiling** adds the best time of each of the
network's 325 BatchNorm layers alone, timed the same way: the layer itself (``Layer.from_config`` of the
network's, so the same implementation and dtype: Keras' fused kernel, or the row-view BN for narrow
float32 layers), in training mode with its moving-average updates, on the convolution's output dtype,
with the cast back to it where the layer computes in float32 under ``mixed_bfloat16``, and its input,
gamma and beta gradients. BatchNorm is part of the official network, so this second ceiling bounds any
implementation of it on TensorFlow's kernels too.

Beside the two ceilings, in the same run: our served network and training step (as in
``bench_model.py``), and with ``--vs-timm PYTHON`` timm's eager model (channels_last; bfloat16 under
``torch.autocast``). The last lines put issue #12's goals (inference >= 1.5x timm, training step >= 1.2x
timm) against the ceilings, once from timm's median round and once from its best (timm's training step
jumps between two speeds from round to round, see ``bench_model.py``): a goal above one cannot be met with
TensorFlow 2.16's oneDNN 3.3.4 on this CPU, however the rest of the graph is arranged.

Measured on a 2-core AMD EPYC (Zen 4, AVX512_BF16, idle), two runs, hrnet_w18, 224, batch 8: ceilings
18.05-19.16 img/s float32 inference, 35.91-36.04 bfloat16, 5.81-5.95 float32 training step, 10.08-10.24
bfloat16; the served network 1.00-1.02x (float32) and 0.94-1.01x (bfloat16) its ceiling, the training
steps 0.78-0.80x and 0.63-0.67x; issue #12's goals 1.28-1.36x, 1.14-1.15x, 0.79-0.81x and 0.87-0.88x the
ceiling (``benchmarks/README.md``, sixth phase). Three later runs: convolution + BatchNorm ceilings of
4.71-5.07 img/s (float32 step) and 7.77-7.86 (bfloat16), our steps at 0.87-0.94x and 0.77-0.87x of them,
issue #12's training goals 0.90-1.06x and 0.90-1.11x (``benchmarks/README.md``, seventh phase). On
2026-12-01 (timm at its fast speed): the training goals at 1.07x (float32) and 1.08x (bfloat16) the
convolution + BatchNorm ceiling, the inference goals at 1.29x and 1.11x the convolution ceiling (eighth
phase).

Example::

    .venv/bin/python benchmarks/bench_ceiling.py --vs-timm /work/torchvenv/bin/python
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import statistics
import sys
import time

import bench_model  # the Keras and timm rows, shared with bench_model.py

GOALS = {"infer": 1.5, "train": 1.2}  # issue #12: ours / timm


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="hrnet_w18")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2, help="intra-op threads, both frameworks")
    p.add_argument("--calls", type=int, default=5, help="timed calls per convolution and dtype (best taken)")
    p.add_argument("--copies", type=int, default=10, help="independent copies of the convolution per call")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds of the whole networks (median taken)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--vs-timm", metavar="PYTHON", help="a Python with torch and timm installed")
    args = p.parse_args(argv)
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not set(args.dtypes) <= {"float32", "bfloat16"} or not args.dtypes:
        p.error("--dtypes: float32 and/or bfloat16")
    if min(args.batch, args.threads, args.calls, args.copies, args.repeats) < 1:
        p.error("--batch, --threads, --calls, --copies and --repeats must be >= 1")
    return args


Conv = collections.namedtuple("Conv", "input filter strides padding output")


def network_convolutions(tf, model, batch: int, image_size: int) -> collections.Counter:
    """Every Conv2D of ``model(x, training=False)``'s traced graph, as a Counter of :class:`Conv`."""
    fn = tf.function(lambda x: model(x, training=False), autograph=False)
    graph = fn.get_concrete_function(tf.TensorSpec((batch, image_size, image_size, 3), tf.float32)).graph
    convs = collections.Counter()
    for op in graph.get_operations():
        if op.type == "Conv2D":
            padding = op.get_attr("padding").decode()
            if padding == "EXPLICIT":
                raise SystemExit("explicit convolution padding is not handled here")
            convs[Conv(tuple(op.inputs[0].shape), tuple(op.inputs[1].shape), tuple(op.get_attr("strides")),
                       padding, tuple(op.outputs[0].shape))] += 1
    return convs


BatchNorm = collections.namedtuple("BatchNorm", "input layer_class config")


def network_batchnorms(keras, model, batch: int) -> collections.Counter:
    """Every BatchNormalization layer of ``model``, as a Counter of :class:`BatchNorm` (its input shape
    with ``batch``, and what rebuilds the layer: its class and its config without the name, as JSON)."""
    norms = collections.Counter()
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
            key = BatchNorm((batch, *layer.input_shape[1:]), type(layer), json.dumps(config, sort_keys=True))
            norms[key] += 1
    return norms


def time_batchnorm(tf, np, norm: BatchNorm, conv_dtype: str, calls: int, copies: int) -> float:
    """Best seconds of one training-mode run of the BatchNorm layer ``norm``: forward with its
    moving-average updates, and the gradients of its input, gamma and beta, on the ``conv_dtype`` output
    of a convolution and cast back to it (module docstring)."""
    rng = np.random.default_rng(0)
    dt = tf.as_dtype(conv_dtype)
    layer = norm.layer_class.from_config(json.loads(norm.config))
    layer.build(norm.input)

    def inputs():  # one per copy, as in time_convolution
        return [tf.cast(tf.constant(rng.standard_normal(norm.input, dtype=np.float32)), dt) for _ in range(copies)]

    xs, dys = inputs(), inputs()

    @tf.function(autograph=False)
    def train():
        with tf.GradientTape() as tape:
            tape.watch(xs)
            ys = [tf.cast(layer(x, training=True), dt) for x in xs]
        return tape.gradient(ys, xs + layer.trainable_variables, output_gradients=dys)

    return _best(train, calls) / copies


def _best(fn, calls: int) -> float:
    fn()  # trace, compile, and oneDNN's first-call reorders (a call returns once every output is computed)
    best = float("inf")
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def time_convolution(tf, np, conv: Conv, dtype: str, op: str, calls: int, copies: int) -> float:
    """Best seconds of one run of ``conv`` as the network runs it at its best (module docstring): the best
    call of ``copies`` independent copies, divided by ``copies``."""
    rng = np.random.default_rng(0)
    dt = tf.as_dtype(dtype)

    def inputs(shape):  # one per copy: identical copies would be merged by grappler's CSE
        return [tf.cast(tf.constant(rng.standard_normal(shape, dtype=np.float32)), dt) for _ in range(copies)]

    xs = inputs(conv.input)
    w_np = (rng.standard_normal(conv.filter, dtype=np.float32) * 0.05)
    kw = dict(strides=list(conv.strides), padding=conv.padding)
    if op == "infer":
        b_np = rng.standard_normal(conv.filter[-1], dtype=np.float32)

        @tf.function(autograph=False)
        def infer():
            w, b = tf.cast(tf.constant(w_np), dt), tf.cast(tf.constant(b_np), dt)  # folded by grappler
            return [tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, w, **kw), b)) for x in xs]

        return _best(infer, calls) / copies
    w_var = tf.Variable(w_np)
    dys = inputs(conv.output)
    input_gradient = conv.input[-1] != 3  # the first convolution's input is the image

    @tf.function(autograph=False)
    def train():
        w, out = tf.cast(w_var, dt), []
        for x, dy in zip(xs, dys):
            out += [tf.nn.conv2d(x, w, **kw),
                    tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=conv.filter, out_backprop=dy, **kw)]
            if input_gradient:
                out.append(tf.raw_ops.Conv2DBackpropInput(input_sizes=conv.input, filter=w, out_backprop=dy, **kw))
        return out

    return _best(train, calls) / copies


def macs(conv: Conv) -> int:
    """Multiply-adds of one forward call."""
    n, oh, ow, cout = conv.output
    kh, kw, cin, _ = conv.filter
    return n * oh * ow * kh * kw * cin * cout


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    margs = bench_model.parse_args(["--model", args.model, "--batch", str(args.batch), "--image-size",
                                    str(args.image_size), "--threads", str(args.threads)]
                                   + (["--vs-timm", args.vs_timm] if args.vs_timm else []))
    worker = bench_model.TimmWorker(margs) if args.vs_timm else None

    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from hrnet_tfx import models

    tf.get_logger().setLevel("ERROR")  # one tf.function per convolution: the retracing warnings are expected
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"# {args.model} {args.image_size}x{args.image_size} batch {args.batch}, CPU "
          f"{platform.processor() or platform.machine()} x{os.cpu_count()}, {args.threads} intra-op threads; "
          f"TensorFlow {tf.__version__}" + (f", torch {worker.info['torch']}, timm {worker.info['timm']} "
                                            "(channels_last)" if worker else ""))
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    convs = network_convolutions(tf, models.build_model(args.model, num_classes=1000,
                                                        image_size=args.image_size), args.batch, args.image_size)
    total_macs = sum(macs(c) * k for c, k in convs.items())
    print(f"# {sum(convs.values())} convolutions, {len(convs)} distinct; "
          f"{total_macs / args.batch / 1e9:.3f} GMAC per image in convolutions")

    ceiling, per_conv, with_bn = {}, {}, {}
    for dtype in args.dtypes:
        for op in ("infer", "train"):
            spent = 0.0
            for conv, count in convs.items():
                t = time_convolution(tf, np, conv, dtype, op, args.calls, args.copies)
                per_conv[(dtype, op, conv)] = t
                spent += count * t
            ceiling[(dtype, op)] = args.batch / spent
            print(f"# ceiling {dtype} {op}: {ceiling[(dtype, op)]:.2f} img/s", file=sys.stderr, flush=True)
        policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
        norms = network_batchnorms(keras, models.build_model(args.model, num_classes=1000, image_size=args.image_size,
                                                             dtype_policy=policy), args.batch)
        bn_spent = sum(count * time_batchnorm(tf, np, norm, dtype, args.calls, args.copies)
                       for norm, count in norms.items())
        with_bn[dtype] = args.batch / (args.batch / ceiling[(dtype, "train")] + bn_spent)
        print(f"# {sum(norms.values())} BatchNorms ({len(norms)} distinct), {bn_spent * 1e3:.0f} ms per step: "
              f"convolution + BatchNorm ceiling {dtype} train: {with_bn[dtype]:.2f} img/s", file=sys.stderr,
              flush=True)

    rows = []
    for dtype in args.dtypes:
        policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
        short = "bf16" if dtype == "bfloat16" else dtype
        rows.append((dtype, "infer", bench_model.KerasRow(f"keras {short} served", margs, tf, keras, policy,
                                                            False, form="served")))
        rows.append((dtype, "train", bench_model.KerasRow(f"keras {short}", margs, tf, keras, policy, False)))
        if worker:
            rows.append((dtype, "timm", bench_model.TimmRow(f"timm {short}", worker, dtype == "bfloat16")))
    measured = collections.defaultdict(list)
    try:
        for _, op, row in rows:  # first calls: tracing and compiling
            for o in ("infer", "train") if op == "timm" else (op,):
                row.run(o, 1)
        for k in range(args.repeats):
            for dtype, op, row in rows if k % 2 == 0 else rows[::-1]:
                for o in ("infer", "train") if op == "timm" else (op,):
                    measured[(row.label, o)].append(args.batch * 2 / row.run(o, 2))
            print(f"# round {k + 1}/{args.repeats} done, load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    finally:
        if worker:
            worker.close()

    def med(label, op):
        return statistics.median(measured[(label, op)])

    print(f"\n{'':34s}{'inference img/s':>18s}{'train step img/s':>18s}")
    for dtype in args.dtypes:
        short = "bf16" if dtype == "bfloat16" else dtype
        print(f"{'convolution ceiling ' + short:34s}{ceiling[(dtype, 'infer')]:18.2f}{ceiling[(dtype, 'train')]:18.2f}")
        print(f"{'convolution + BatchNorm ceiling ' + short:34s}{'-':>18s}{with_bn[dtype]:18.2f}")
        print(f"{'ours ' + short + ' (served / step)':34s}{med(f'keras {short} served', 'infer'):18.2f}"
              f"{med(f'keras {short}', 'train'):18.2f}")
        if worker:
            print(f"{'timm ' + short + ' eager':34s}{med(f'timm {short}', 'infer'):18.2f}"
                  f"{med(f'timm {short}', 'train'):18.2f}")
    print()
    for dtype in args.dtypes:
        short = "bf16" if dtype == "bfloat16" else dtype
        for op, ours in (("infer", f"keras {short} served"), ("train", f"keras {short}")):
            c = ceiling[(dtype, op)]
            line = f"{short} {op}: ours = {med(ours, op) / c:.2f} of the ceiling"
            if op == "train":
                line += f" ({med(ours, op) / with_bn[dtype]:.2f} of the convolution + BatchNorm ceiling)"
            if worker:
                line += f"; timm = {med(f'timm {short}', op) / c:.2f}"
                # the goal from timm's median round, then from its best (its step's speed jumps, bench_model.py)
                for which, timm in (("", med(f"timm {short}", op)), (" (timm's best round)",
                                                                     max(measured[(f"timm {short}", op)]))):
                    goal = GOALS[op] * timm
                    line += f"; goal{which} {GOALS[op]}x timm = {goal:.2f} img/s = {goal / c:.2f} of the ceiling"
                    if op == "train":
                        line += f", {goal / with_bn[dtype]:.2f} of the convolution + BatchNorm ceiling"
            print(line)
    print("\nwhere the ceiling's inference time goes: the convolutions that take the most of it, with the rate"
          " each reaches alone (GFLOP/s)")
    spent = {d: args.batch / ceiling[(d, "infer")] for d in args.dtypes}
    for conv in sorted(convs, key=lambda c: -convs[c] * per_conv[(args.dtypes[0], "infer", c)])[:10]:
        cells = [f"{d}: {2 * macs(conv) / per_conv[(d, 'infer', conv)] / 1e9:6.1f} GFLOP/s, "
                 f"{convs[conv] * per_conv[(d, 'infer', conv)] / spent[d] * 100:4.1f}%" for d in args.dtypes]
        print(f"  {convs[conv]:3d} x in {conv.input[1:]} filter {conv.filter} stride {conv.strides[1]}: "
              + "; ".join(cells))
    print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
