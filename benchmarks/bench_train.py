"""CPU training throughput under Horovod (1 and 2 workers) and the per-step cost of the gradient allreduce.

One run measures, side by side, for the tiny config (``hrnet_tfx/configs/tiny.yaml`` at 64x64) and for
hrnet_w18 at 224x224 (1000 classes, synthetic in-memory batches, so only the model step and the allreduce
are timed, not the input pipeline):

* ``1w x 2 cores``: one Horovod worker, 2 intra-op / 2 inter-op threads;
* ``1w x 1 core``:  one Horovod worker, 1 intra-op / 1 inter-op thread (the per-core baseline);
* ``2w x 1 core``:  two Horovod workers (``horovodrun -np 2 -H localhost:2 --gloo``), 1 + 1 threads each.

Every configuration is one ``horovodrun`` launch of this file with ``--worker``. The worker builds the
model and the optimizer with the training library's own ``_build`` (SGD Nesterov 0.9, the warm-up/step
schedule) and runs the same step as ``hrnet_tfx.training.loop._train`` (forward in a
``tf.function(autograph=False)``, softmax cross-entropy, the backend's ``DistributedGradientTape``, weight
decay 1e-4 added to the gradients, ``apply_gradients``). Per round it times, one at a time:

* ``train``: the real step (gradients averaged with DistributedGradientTape: one allreduce per gradient,
  fused by Horovod's background thread);
* ``local``: the same step with a plain ``tf.GradientTape`` (no allreduce), under the same load from the
  other worker; ``train - local`` is what the allreduce adds to a step, including any overlap with backward;
* ``allreduce``: only the reduction, on tensors shaped like the model's trainable variables, the way the
  tape does it (``hvd.allreduce`` per tensor, Average), plus ``hvd.grouped_allreduce`` of the same set and
  the per-tensor allreduce with ``Compression.fp16`` (the ``fp16_allreduce`` option).

Before each timed phase the benchmark waits (up to ``--quiet-wait`` s) until other processes use fewer than
``--quiet-cores`` cores, and it reports how many cores other jobs used during the timed rounds (machine CPU
time from /proc/stat minus its own workers'), so a shared machine's interference is visible in the output.

Each step is timed individually (``.numpy()`` on the result waits for it); after ``--warmup`` untimed rounds,
the median of ``--steps`` timed rounds is reported (the 2-worker figure is the slower rank's median).
Images/s are global (all workers). The load average is sampled throughout; before the first launch the
benchmark waits (up to ``--max-wait`` seconds) for the 1-minute load to fall below ``--load-target``.

Scaling efficiency = img/s(2w x 1 core) / (2 x img/s(1w x 1 core)): how well two single-core workers do
against two independent single-core workers with no communication. The CPU time of each worker per step
is reported beside the wall time: it separates "the worker computed more slowly" (more CPU per step, e.g.
two processes sharing caches and memory bandwidth) from "the worker waited" (fewer cores than threads).

Run time is dominated by set-up, not by the timed steps: building hrnet_w18 and tracing + optimising its
training step take ~3 CPU-minutes per worker process, and four worker processes run in total, so a run takes
~8-13 minutes on 2 cores (the two 1-worker launches set up concurrently). ``--models tiny`` takes ~3.

Example::

    .venv/bin/python benchmarks/bench_train.py
    .venv/bin/python benchmarks/bench_train.py --models tiny --steps 10
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
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TINY = os.path.join(REPO, "hrnet_tfx", "configs", "tiny.yaml")
MODELS = {  # label -> (model name or config file, image size)
    "tiny": (TINY, 64),
    "hrnet_w18": ("hrnet_w18", 224),
}
# (label, workers, threads per worker)
CONFIGS = (("1w x 2 cores", 1, 2), ("1w x 1 core", 1, 1), ("2w x 1 core", 2, 1))
MODES = ("train", "local", "allreduce", "grouped", "allreduce_fp16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="tiny,hrnet_w18", help="comma-separated: tiny, hrnet_w18")
    p.add_argument("--batch-tiny", type=int, default=16, help="per-worker batch of the tiny config (default 16)")
    p.add_argument("--batch-w18", type=int, default=4, help="per-worker batch of hrnet_w18 (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds after tracing (default 1; tiny 4x)")
    p.add_argument("--steps", type=int, default=5, help="timed rounds (default 5; tiny 4x)")
    p.add_argument("--sequential", action="store_true",
                   help="run the three launches one after another (default: the two 1-worker launches set up "
                        "concurrently and take turns for their timed rounds; the 2-worker launch runs alone)")
    p.add_argument("--local-models", default="tiny",
                   help="models (comma-separated, or empty) also timed without allreduce (plain GradientTape); "
                        "hrnet_w18 costs ~2 extra minutes of tracing per launch (default: tiny)")
    p.add_argument("--pin", action="store_true",
                   help="pin each worker to its own core(s) with sched_setaffinity (default: threads only, "
                        "the scheduler places them; pinning hurts when other jobs share the machine)")
    p.add_argument("--load-target", type=float, default=1.5, help="wait for the 1-minute load below this")
    p.add_argument("--max-wait", type=float, default=600, help="give up waiting for the load after this (s)")
    p.add_argument("--quiet-cores", type=float, default=0.3,
                   help="before each timed phase wait until other processes use fewer cores than this ...")
    p.add_argument("--quiet-wait", type=float, default=60, help="... for at most this many seconds (default 60)")
    p.add_argument("--timeout", type=float, default=1800, help="per-launch timeout (s)")
    # worker-only arguments
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--gate", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.local_models = [m.strip() for m in args.local_models.split(",") if m.strip()]
    unknown = [m for m in args.models + args.local_models if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; choose from {sorted(MODELS)}")
    if min(args.batch_tiny, args.batch_w18, args.steps) < 1 or args.warmup < 0:
        p.error("batches and --steps must be >= 1, --warmup >= 0")
    return args


# ----------------------------------------------------------------------------------------------------
# worker (one per Horovod rank)
# ----------------------------------------------------------------------------------------------------
class Gate:
    """A reader-writer lock on a file shared by concurrently launched configurations: set-up (import, build,
    tracing) holds it shared, timed rounds hold it exclusively, so no measurement runs beside anyone's set-up
    or measurement while the set-ups of different launches may overlap."""

    def __init__(self, path):
        self.file = open(path, "a+") if path else None  # noqa: SIM115

    def _lock(self, mode):
        if self.file is not None:
            import fcntl

            fcntl.flock(self.file, mode)

    def shared(self):
        import fcntl

        self._lock(fcntl.LOCK_SH)

    def exclusive(self):
        import fcntl

        self._lock(fcntl.LOCK_EX)

    def release(self):
        import fcntl

        self._lock(fcntl.LOCK_UN)


def machine_busy_seconds() -> float:
    """CPU-seconds the whole machine has spent busy since boot (all CPUs; /proc/stat)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # user..steal, without guest (counted in user)


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Waits (up to ``max_wait`` s) until the machine uses < ``threshold`` cores over a 2-second window.

    Called while every process of this benchmark is idle (blocked on the gate or in a barrier), so what
    it sees is other jobs. Returns (cores busy in the last window, seconds waited)."""
    start = time.monotonic()
    while True:
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        time.sleep(2.0)
        cores = (machine_busy_seconds() - busy0) / (time.monotonic() - t0)
        if cores < threshold or time.monotonic() - start >= max_wait:
            return cores, time.monotonic() - start


def worker(args) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    gate = Gate(args.gate)
    gate.shared()
    import resource

    import hrnet_tfx  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
    import tensorflow as tf

    # Threads must be set before TensorFlow's runtime starts (before the first op).
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

    import tf_keras as keras

    from hrnet_tfx.training.config import TrainConfig
    from hrnet_tfx.training.distribute import HorovodBackend
    from hrnet_tfx.training.loop import _build, _sums

    backend = HorovodBackend()
    hvd = backend.hvd
    rank, size = backend.rank, backend.size
    if args.pin:
        cores = sorted(os.sched_getaffinity(0))
        mine = cores[(backend.local_rank * args.threads) % len(cores):][: args.threads]
        os.sched_setaffinity(0, mine)
    loads = []

    def barrier():
        hvd.allreduce(tf.constant(0.0), name="bench_barrier").numpy()

    def timed(fn, *fn_args, cpu=None):
        barrier()
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn(*fn_args)
        (out[0] if isinstance(out, (list, tuple)) else out).numpy()
        if cpu is not None:
            cpu.append(time.process_time() - cpu_start)  # all threads of this process
        return time.perf_counter() - start

    results = {}
    for n, label in enumerate(args.models):
        if n:
            gate.shared()
        name, image_size = MODELS[label]
        batch = args.batch_tiny if label == "tiny" else args.batch_w18
        steps, warmup = (args.steps * 4, args.warmup * 4) if label == "tiny" else (args.steps, args.warmup)
        config = TrainConfig(model=name, image_size=image_size, num_classes=1000,
                             global_batch_size=batch * size, backend="horovod")
        t_build = time.perf_counter()
        model, optimizer, _ = _build(config, backend, steps_per_epoch=1000, total_steps=100_000)
        backend.broadcast(model.variables)
        backend.broadcast(optimizer.variables)
        t_build = time.perf_counter() - t_build
        variables = model.trainable_variables
        forward = tf.function(lambda images: model(images, training=True), jit_compile=config.jit_compile,
                              autograph=False)

        def make_step(distributed: bool):
            # The step of hrnet_tfx.training.loop._train (float32 policy, no label smoothing), with the
            # gradient tape either the backend's DistributedGradientTape or a plain one.
            def step_fn(images, labels):
                with tf.GradientTape() as tape:
                    logits = tf.cast(forward(images), tf.float32)
                    one_hot = tf.one_hot(tf.cast(labels, tf.int32), config.num_classes)
                    per_example = keras.losses.categorical_crossentropy(
                        one_hot, logits, from_logits=True, label_smoothing=config.label_smoothing)
                    local = tf.cast(tf.shape(labels)[0], tf.float32)
                    loss = tf.reduce_sum(per_example) / (local * backend.gradient_replicas)
                if distributed:
                    tape = backend.wrap_tape(tape)
                grads = tape.gradient(loss, variables)
                if config.weight_decay:
                    decay = config.weight_decay / backend.gradient_replicas
                    grads = [g + decay * tf.cast(v, g.dtype) for g, v in zip(grads, variables)]
                optimizer.apply_gradients(zip(grads, variables))
                sums = _sums(labels, logits, per_example)
                return [sums["loss_sum"], sums["top1"]]

            return tf.function(lambda images, labels: backend.run(step_fn, images, labels), autograph=False)

        def make_reduce(kind: str):
            compression = hvd.Compression.fp16 if kind == "allreduce_fp16" else hvd.Compression.none

            def reduce(tensors):
                if kind == "grouped":
                    return hvd.grouped_allreduce(tensors, op=hvd.Average, name=f"bench_grouped_{label}")
                return [hvd.allreduce(t, op=hvd.Average, compression=compression, name=f"bench_{kind}_{label}_{i}")
                        for i, t in enumerate(tensors)]

            return tf.function(reduce, autograph=False)

        images = tf.random.stateless_normal((batch, image_size, image_size, 3), seed=(rank, 1))
        labels = tf.random.stateless_uniform((batch,), seed=(rank, 2), maxval=1000, dtype=tf.int32)
        grads_like = [tf.random.stateless_normal(v.shape, seed=(rank, i)) * 1e-3 for i, v in enumerate(variables)]
        fns = {"train": (make_step(True), (images, labels))}
        if label in args.local_models:
            fns["local"] = (make_step(False), (images, labels))
        for kind in ("allreduce", "grouped", "allreduce_fp16"):
            fns[kind] = (make_reduce(kind), (grads_like,))

        trace = {m: timed(fn, *a) for m, (fn, a) in fns.items()}  # first call: tracing + one step
        gate.release()
        barrier()  # every rank has finished its set-up (and released the gate) ...
        quiet = [0.0, 0.0]
        if rank == 0:
            gate.exclusive()  # ... before rank 0 waits for the machine to itself
            quiet = list(wait_for_quiet(args.quiet_cores, args.quiet_wait))
        barrier()
        busy0, wall0, own0 = machine_busy_seconds(), time.monotonic(), time.process_time()
        times = {m: [] for m in fns}
        cpu_times = {m: [] for m in fns}
        for r in range(warmup + steps):
            for m, (fn, a) in fns.items():
                cpu = cpu_times[m] if r >= warmup else None
                seconds = timed(fn, *a, cpu=cpu)
                if r >= warmup:
                    times[m].append(seconds)
            loads.append(os.getloadavg()[0])
        barrier()
        busy, wall, own = machine_busy_seconds() - busy0, time.monotonic() - wall0, time.process_time() - own0
        own_all = sum(row[0] for row in backend.gather([own]))  # every rank's CPU during the timed rounds
        if rank == 0:
            gate.release()
        medians = {m: statistics.median(v) for m, v in times.items()}
        medians.update({f"cpu_{m}": statistics.median(v) for m, v in cpu_times.items()})
        # every rank's medians; report the slower rank (the step of a synchronous job is the slowest rank's)
        keys = sorted(medians)
        rows = backend.gather([medians[k] for k in keys])
        params = sum(int(v.shape.num_elements()) for v in variables)
        results[label] = {
            "model": name, "image_size": image_size, "batch_per_worker": batch, "timed_steps": steps,
            "build_s": t_build, "first_call_s": trace,
            "median_s": {k: max(row[i] for row in rows) for i, k in enumerate(keys)},
            "per_rank_median_s": {k: [row[i] for row in rows] for i, k in enumerate(keys)},
            "min_s": {m: min(v) for m, v in times.items()}, "max_s": {m: max(v) for m, v in times.items()},
            "quiet_before": quiet, "timed_wall_s": wall, "others_cores": max(0.0, busy - own_all) / wall,
            "own_cores": own_all / wall,
            "trainable_params": params, "grad_tensors": len(variables), "grad_bytes_fp32": params * 4,
            "max_rss_gb": max(row[0] for row in backend.gather([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20])),
        }
        del model, optimizer, fns
        keras.backend.clear_session()
    # What Horovod's background thread costs while nothing is reduced (it negotiates every cycle, 1 ms).
    barrier()
    cpu0 = time.process_time()
    time.sleep(3.0)
    idle = max(row[0] for row in backend.gather([(time.process_time() - cpu0) / 3.0]))
    if rank == 0:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"workers": size, "threads": args.threads, "loads": loads, "results": results,
                       "idle_cores": idle}, f)


# ----------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------
def wait_for_load(target: float, max_wait: float) -> tuple[float, float]:
    start = time.monotonic()
    load = os.getloadavg()[0]
    print(f"load average now: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)", flush=True)
    while load >= target and time.monotonic() - start < max_wait:
        print(f"  waiting for 1-min load < {target} (now {load:.2f}, waited {time.monotonic() - start:.0f}s)",
              flush=True)
        time.sleep(20)
        load = os.getloadavg()[0]
    waited = time.monotonic() - start
    if load >= target:
        print(f"  load still {load:.2f} after {waited:.0f}s: measuring anyway (numbers are pessimistic)")
    else:
        print(f"  load {load:.2f} < {target} after {waited:.0f}s: starting")
    return load, waited


class Launch:
    """One configuration: ``horovodrun -np N -H localhost:N --gloo python bench_train.py --worker ...``."""

    def __init__(self, args, tmp: str, label: str, workers: int, threads: int, gate: str):
        horovodrun = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
        self.label, self.out, self.timeout = label, os.path.join(tmp, f"result_{workers}w_{threads}t.json"), args.timeout
        self.cmd = [horovodrun, "-np", str(workers), "-H", f"localhost:{workers}", "--gloo",
                    sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
                    "--out", self.out, "--gate", gate, "--models", ",".join(args.models),
                    "--local-models", ",".join(args.local_models), "--batch-tiny", str(args.batch_tiny),
                    "--batch-w18", str(args.batch_w18), "--warmup", str(args.warmup), "--steps", str(args.steps),
                    "--quiet-cores", str(args.quiet_cores), "--quiet-wait", str(args.quiet_wait)]
        self.cmd += ["--pin"] if args.pin else []
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
               "OMP_NUM_THREADS": str(threads), "HOROVOD_STALL_CHECK_DISABLE": "1",
               # tiny + hrnet_w18 with four reduction variants use ~3,800 tensor names; the default response
               # cache (1,024) would evict and slow every step (the real loop's 981 gradients fit the default)
               "HOROVOD_CACHE_CAPACITY": os.environ.get("HOROVOD_CACHE_CAPACITY", "8192")}
        self.start = time.monotonic()
        self.log = open(os.path.join(tmp, f"log_{workers}w_{threads}t.txt"), "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def result(self) -> dict:
        try:
            code = self.proc.wait(timeout=max(1.0, self.timeout - (time.monotonic() - self.start)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = "timeout"
        if code or not os.path.exists(self.out):
            self.log.seek(0)
            sys.stdout.write(self.log.read()[-6000:])
            raise SystemExit(f"error: {' '.join(self.cmd)} exited with {code}")
        with open(self.out, encoding="utf-8") as f:
            result = json.load(f)
        result["wall_s"] = time.monotonic() - self.start
        return result


def report(args, runs: dict) -> None:
    def ms(x):
        return f"{x * 1e3:9.1f}"

    print()
    print("training step (synthetic data, real step: DistributedGradientTape + weight decay + SGD Nesterov)")
    header = (f"{'model':18s}{'config':15s}{'batch/w':>8s}{'step ms':>10s}{'(min-max)':>16s}"
              f"{'img/s':>9s}{'img/s/w':>9s}{'CPU s/step':>11s}{'cores':>6s}{'no-allreduce ms':>16s}")
    print(header)
    print("-" * len(header))
    ips = {}
    for label in args.models:
        for cfg, workers, _ in CONFIGS:
            r = runs[cfg]["results"][label]
            b = r["batch_per_worker"]
            t = r["median_s"]["train"]
            ips[(label, cfg)] = workers * b / t
            local = ms(r["median_s"]["local"]) if "local" in r["median_s"] else "-"
            spread = f"({r['min_s']['train'] * 1e3:.0f}-{r['max_s']['train'] * 1e3:.0f})"
            name = f"{label}@{r['image_size']}"
            cpu = r["median_s"]["cpu_train"]
            print(f"{name:18s}{cfg:15s}{b:8d}{ms(t):>10s}{spread:>16s}{ips[(label, cfg)]:9.2f}"
                  f"{ips[(label, cfg)] / workers:9.2f}{cpu:11.3f}{cpu / t:6.2f}{local:>16s}")
    print("  CPU s/step = CPU time of one worker process (all its threads) per step, cores = CPU s / wall s:")
    print("  fewer cores than threads given means the worker waited (for the CPU, or for the allreduce).")
    print()
    print("ratios (global img/s)")
    for label in args.models:
        one2, one1, two = (ips[(label, c[0])] for c in CONFIGS)
        print(f"  {label:10s} 2w/1w@2cores {two / one2:5.2f}x   2w/1w@1core {two / one1:5.2f}x   "
              f"1w@2cores/1w@1core {one2 / one1:5.2f}x   scaling efficiency (2w) / (2 x 1w@1core) "
              f"{two / (2 * one1):6.1%}")
    print()
    print("allreduce per step (tensors shaped like the trainable variables; Average; Gloo over loopback)")
    header = (f"{'model':12s}{'config':15s}{'tensors':>8s}{'params':>12s}{'MB fp32':>9s}{'ring MB/w':>10s}"
              f"{'per-tensor':>11s}{'grouped':>9s}{'fp16':>9s}{'step-local':>11s}{'% of step':>10s}")
    print(header + "   (times in ms, median)")
    print("-" * len(header))
    for label in args.models:
        for cfg, workers, _ in CONFIGS:
            r = runs[cfg]["results"][label]
            m = r["median_s"]
            mb = r["grad_bytes_fp32"] / 1e6
            ring = 2 * (workers - 1) / workers * mb
            added = m["train"] - m["local"] if "local" in m else None
            extra = f"{ms(added):>11s}{added / m['train']:10.1%}" if added is not None else f"{'-':>11s}{'-':>10s}"
            print(f"{label:12s}{cfg:15s}{r['grad_tensors']:8d}{r['trainable_params']:12,d}{mb:9.2f}{ring:10.2f}"
                  f"{ms(m['allreduce']):>11s}{ms(m['grouped']):>9s}{ms(m['allreduce_fp16']):>9s}"
                  + extra)
    print("  per-tensor = hvd.allreduce per gradient as DistributedGradientTape issues them (Horovod fuses them);")
    print("  grouped = one hvd.grouped_allreduce; fp16 = per-tensor with Compression.fp16 (half the bytes);")
    print("  ring MB/w = 2(N-1)/N x fp32 bytes each worker sends (and receives) per step in a ring allreduce;")
    print("  step-local = real step minus the same step with a plain GradientTape (what the allreduce adds).")
    two = runs[CONFIGS[2][0]]["results"]
    for label in args.models:
        r = two[label]
        t = r["median_s"]["grouped"]
        mb = 2 * 0.5 * r["grad_bytes_fp32"] / 1e6
        print(f"  {label}: 2-worker grouped allreduce moves {mb:.1f} MB per worker per step in {t * 1e3:.1f} ms "
              f"= {mb / t / 1e3:.2f} GB/s effective bus bandwidth over loopback Gloo")
    print()
    print("per-rank medians of the 2-worker train step (s): "
          + ", ".join(f"{label} {['%.3f' % x for x in two[label]['per_rank_median_s']['train']]}"
                      for label in args.models))
    print("other jobs on the machine during each timed phase (machine CPU from /proc/stat minus this benchmark's "
          "timed workers; includes the idle, gated benchmark processes' Horovod polling):")
    for cfg, _, _ in CONFIGS:
        for label in args.models:
            r = runs[cfg]["results"][label]
            q = r["quiet_before"]
            print(f"  {cfg:14s} {label:10s} others {r['others_cores']:.2f} cores during {r['timed_wall_s']:5.1f}s "
                  f"(ours {r['own_cores']:.2f}); before: {q[0]:.2f} cores after waiting {q[1]:.0f}s")
    print("Horovod's background thread while idle (no tensors; a negotiation every cycle): "
          + ", ".join(f"{cfg} {runs[cfg]['idle_cores']:.3f} cores/worker" for cfg, _, _ in CONFIGS))
    print("set-up seconds (build = model + optimizer + broadcast; first call = tracing + graph optimisation + one "
          "step) and peak RSS per worker:")
    for cfg, _, _ in CONFIGS:
        for label in args.models:
            r = runs[cfg]["results"][label]
            fc = r["first_call_s"]
            print(f"  {cfg:14s} {label:10s} build {r['build_s']:5.1f}  train {fc['train']:5.1f}"
                  + (f"  local {fc['local']:5.1f}" if "local" in fc else "")
                  + f"  allreduce {fc['allreduce']:5.1f}  peak RSS {r['max_rss_gb']:.2f} GB")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    import tensorflow as tf  # noqa: F401  (versions only; the workers are separate processes)
    import horovod

    t0 = time.monotonic()
    print(f"bench_train: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, TF {tf.__version__}, "
          f"Horovod {horovod.__version__} (Gloo); HOROVOD_FUSION_THRESHOLD/CYCLE_TIME "
          f"{os.environ.get('HOROVOD_FUSION_THRESHOLD', 'default 128 MB')}/"
          f"{os.environ.get('HOROVOD_CYCLE_TIME', 'default 1 ms')}")
    print(f"models {args.models}; per-worker batch tiny {args.batch_tiny}, hrnet_w18 {args.batch_w18}; "
          f"{args.warmup} warm-up + {args.steps} timed rounds (tiny x4); pin={args.pin}")
    start_load, waited = wait_for_load(args.load_target, args.max_wait)
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        gate = os.path.join(tmp, "gate")
        # The 1-worker launches share the gate: their set-ups overlap (mostly single-threaded tracing), their
        # timed rounds never do. The 2-worker launch runs alone (its idle ranks would poll each other).
        batches = [CONFIGS[:1], CONFIGS[1:2], CONFIGS[2:]] if args.sequential else [CONFIGS[:2], CONFIGS[2:]]
        for batch in batches:
            before = os.getloadavg()[0]
            launches = [Launch(args, tmp, cfg, workers, threads, gate) for cfg, workers, threads in batch]
            for launch in launches:
                runs[launch.label] = launch.result()
                loads = runs[launch.label]["loads"]
                print(f"  {launch.label}: done after {runs[launch.label]['wall_s']:.0f}s; 1-min load before "
                      f"{before:.2f}, during its timed rounds {min(loads):.2f}-{max(loads):.2f} (includes this "
                      f"benchmark's own workers)", flush=True)
    report(args, runs)
    all_loads = [x for r in runs.values() for x in r["loads"]]
    print()
    print(f"load: {start_load:.2f} at start (waited {waited:.0f}s), {min(all_loads):.2f}-{max(all_loads):.2f} "
          f"during the run, {os.getloadavg()[0]:.2f} at the end; this benchmark itself keeps ~1-2 cores busy. "
          f"total {time.monotonic() - t0:.0f}s")


if __name__ == "__main__":
    main()
