"""Serving latency and throughput over gRPC and REST, against calling the SavedModel in-process.

Exports a model with the real export code (default: the tiny test network, ``tiny.yaml`` at 64x64 with
1000 classes, so responses carry ImageNet-sized outputs) into a temporary model base, starts the
development server on it in a separate process (``hrnet_tfx.serving.server.serve``, loopback only), and
times two signatures on batches of synthetic JPEGs (default 320x240): ``predict_images`` (``full``: every
class's probability plus the top k) and ``predict_images_top_k`` (``top-k``: ids, labels and scores of the
top k only, what :meth:`~hrnet_tfx.serving.client.Client.predict_images` asks), each in four ways:

* ``in-process``: ``tf.saved_model.load(dir).signatures[...]`` in this process (the baseline);
* ``in-process session``: the same signature run the way the server runs it (TF1 session over the
  MetaGraph), to tell the runtime's share of the difference from the protocol's;
* ``grpc``: full: ``Client.predict`` (PredictRequest in, all outputs back); top-k: ``Client.predict_images``;
* ``rest``: full: ``POST /v1/models/hrnet:predict`` with ``{"instances": [{"b64": ...}]}`` over a keep-alive
  ``requests.Session``, JSON parsed; top-k: ``Client(rest=True).predict_images``.

The export serves the BatchNorm-folded network (:mod:`hrnet_tfx.serving.export`), in ``--serving-dtype``,
with its weights as graph constants; the model gets random non-zero BatchNorm statistics first, as a trained
one has (``_trained_like.py``).
``--compare-unfolded`` also exports the same weights unfolded (the training graph,
``export_saved_model(..., fold=False)``) and adds its two in-process modes (``unfolded`` and ``unfolded
session``) to the same interleaved rounds: the served model's compute, folded vs not, side by side.

One client, sequential calls: each call's latency is recorded; throughput is images per second of calls.
Modes run in interleaved rounds (every mode once per round, the order flipping) so load from other
processes hits all of them alike. ``ratio`` is a mode's p50 latency over the in-process p50 of the same
signature and batch size: the protocol overhead as a factor. Compare ratios between runs, not milliseconds.
On a shared, loaded machine wall-clock latency swings with what else runs, so the CPU time each call costs
is measured too (this process, plus the server process for gRPC and REST, from ``/proc``): ``cpu ratio`` is
a mode's CPU time per call over the in-process one, the work the protocol adds, which load barely moves
(with ``--server-*`` the server's CPU is not seen: this process only).
``--concurrency N`` adds rows where N client threads call the server at once (throughput only).

Example::

    .venv/bin/python benchmarks/bench_serving.py                       # ~1 min of timing after the export
    .venv/bin/python benchmarks/bench_serving.py --model hrnet_w18_small --image-size 224 --seconds 120
    .venv/bin/python benchmarks/bench_serving.py --server-grpc host:8500 --server-rest host:8501 \\
        --model-dir /models/hrnet/3          # an already running server (e.g. tensorflow_model_server)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)

MODES = ("in-process", "in-process session", "grpc", "rest")
UNFOLDED_MODES = ("unfolded", "unfolded session")
SIGNATURES = {"full": "predict_images", "top-k": "predict_images_top_k"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny.yaml", help="variant or network config (default tiny.yaml)")
    p.add_argument("--image-size", type=int, default=64, help="network input size (default 64)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--jpeg-size", default="320x240", help="WxH of the synthetic request JPEGs")
    p.add_argument("--batches", default="1,32", help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--seconds", type=float, default=60.0, help="total timed seconds, split over all rows")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per mode and batch size first")
    p.add_argument("--concurrency", type=int, default=0, help="also time N concurrent clients (0: off)")
    p.add_argument("--server-grpc", help="HOST:PORT of a running server to use instead of starting one")
    p.add_argument("--server-rest", help="HOST:PORT of that server's REST API")
    p.add_argument("--model-dir", help="with --server-*: the served SavedModel version, for the in-process rows")
    p.add_argument("--model-name", default="hrnet")
    p.add_argument("--json", dest="json_out", help="also write the results as JSON here")
    p.add_argument("--serving-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="compute dtype of the exported (folded) graph")
    p.add_argument("--compare-unfolded", action="store_true",
                   help="also time an unfolded export in-process (modes 'unfolded', 'unfolded session')")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.jpeg_size = tuple(int(v) for v in args.jpeg_size.lower().split("x"))
    if bool(args.server_grpc) != bool(args.server_rest) or bool(args.server_grpc) != bool(args.model_dir):
        p.error("--server-grpc, --server-rest and --model-dir go together")
    if args.compare_unfolded and args.server_grpc:
        p.error("--compare-unfolded exports its own models: not with --server-*")
    if min(args.batches) < 1 or args.rounds < 1 or args.seconds <= 0:
        p.error("batch sizes, --rounds and --seconds must be positive")
    return args


def synthetic_jpegs(count, size, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(count):
        base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, (i * 37) % 256)], -1)
        pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def export_model(args, root, unfolded_dir=None):
    """Exports the served version under ``root`` (folded) and, with ``unfolded_dir``, the same weights unfolded."""
    import tensorflow as tf

    from _trained_like import with_trained_like_batch_norms
    from hrnet_tfx.models import build_model
    from hrnet_tfx.serving.export import export_saved_model
    from hrnet_tfx.serving.warmup import write_warmup_requests

    tf.random.set_seed(0)
    model = with_trained_like_batch_norms(build_model(args.model, num_classes=args.num_classes, image_size=None))
    version_dir = os.path.join(root, args.model_name, "1")
    labels = [f"class_{i:04d}" for i in range(args.num_classes)]
    export_saved_model(model, version_dir, labels, image_size=args.image_size, serving_dtype=args.serving_dtype)
    write_warmup_requests(version_dir)
    if unfolded_dir:
        export_saved_model(model, unfolded_dir, labels, image_size=args.image_size, fold=False)
    return version_dir


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(base, args, log_path):
    grpc_port, rest_port = free_port(), free_port()
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s');"
            "from hrnet_tfx.serving.server import serve;"
            f"sys.exit(serve({base!r}, {args.model_name!r}, {grpc_port}, {rest_port}, host='127.0.0.1', "
            "use_model_server=False))")
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    deadline = time.monotonic() + 600
    while "development server for model" not in open(log_path).read():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"error: the server did not start; its log:\n{open(log_path).read()[-3000:]}")
        time.sleep(0.5)
    return proc, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}"


class Modes:
    """One callable per (signature, mode): ``fn(batch_of_jpegs)`` returns the top-1 label of the first image."""

    def __init__(self, model_dir, grpc_address, rest_address, model_name, unfolded_dir=None):
        import requests
        import tensorflow as tf

        from hrnet_tfx.serving.client import Client
        from hrnet_tfx.serving.dev.servable import SavedModelServable

        loaded = tf.saved_model.load(model_dir)
        session = SavedModelServable(model_name, 1, model_dir)
        self.grpc_client = Client(grpc_address, model_name=model_name, timeout=300)
        self.rest_client = Client(rest_address, rest=True, model_name=model_name, timeout=300)
        self._session = requests.Session()
        url = f"http://{rest_address}/v1/models/{model_name}:predict"
        self.rest_address, self.grpc_address, self.model_name = rest_address, grpc_address, model_name

        def in_process(name, loaded=loaded):
            signature = loaded.signatures[name]
            return lambda batch: signature(images=tf.constant(batch))["top_k_labels"].numpy()[0, 0]

        def in_process_session(name, session=session):
            def call(batch):
                images = np.empty(len(batch), dtype=object)
                images[:] = batch
                return session.predict(name, {"images": images})["top_k_labels"][0, 0]
            return call

        def grpc_full(batch):
            return self.grpc_client.predict({"images": batch}, "predict_images")["top_k_labels"][0, 0]

        def rest_full(batch, http=None):
            body = json.dumps({"signature_name": "predict_images",
                               "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in batch]})
            response = (http or self._session).post(url, data=body, headers={"Content-Type": "application/json"},
                                                    timeout=300)
            response.raise_for_status()
            return response.json()["predictions"][0]["top_k_labels"][0]

        self.fns = {}
        for kind, name in SIGNATURES.items():
            self.fns[(kind, "in-process")] = in_process(name)
            self.fns[(kind, "in-process session")] = in_process_session(name)
        if unfolded_dir:
            unfolded = tf.saved_model.load(unfolded_dir)
            unfolded_session = SavedModelServable(model_name, 1, unfolded_dir)
            for kind, name in SIGNATURES.items():
                self.fns[(kind, "unfolded")] = in_process(name, unfolded)
                self.fns[(kind, "unfolded session")] = in_process_session(name, unfolded_session)
        self.fns[("full", "grpc")], self.fns[("full", "rest")] = grpc_full, rest_full
        self.fns[("top-k", "grpc")] = lambda batch: self.grpc_client.predict_images(batch)[0][0][0]
        self.fns[("top-k", "rest")] = lambda batch: self.rest_client.predict_images(batch)[0][0][0]

    def factory(self, kind, mode):
        """A new client's call for (signature, mode), for the concurrent rows."""
        from hrnet_tfx.serving.client import Client

        if kind == "top-k":
            address = self.rest_address if mode == "rest" else self.grpc_address
            client = Client(address, rest=mode == "rest", model_name=self.model_name, timeout=300)
            return lambda b: client.predict_images(b)
        if mode == "grpc":
            client = Client(self.grpc_address, model_name=self.model_name, timeout=300)
            return lambda b: client.predict({"images": b}, "predict_images")
        import requests

        http = requests.Session()
        return lambda b: self.fns[("full", "rest")](b, http)


def process_cpu_seconds(pid):
    """User + system CPU seconds of process ``pid`` so far (all its threads), from ``/proc/PID/stat``."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_calls(fn, batch, seconds, server_pid=None, min_calls=3):
    """``(latencies, CPU seconds of this process, CPU seconds of the server process or 0)`` for calls of
    ``fn(batch)`` during ``seconds``."""
    latencies = []
    cpu, server_cpu = time.process_time(), process_cpu_seconds(server_pid) if server_pid else 0.0
    end = time.perf_counter() + seconds
    while len(latencies) < min_calls or time.perf_counter() < end:
        start = time.perf_counter()
        fn(batch)
        latencies.append(time.perf_counter() - start)
    server_cpu = process_cpu_seconds(server_pid) - server_cpu if server_pid else 0.0
    return latencies, time.process_time() - cpu, server_cpu


def concurrent_throughput(fn_factory, batch, clients, seconds):
    counts = [0] * clients
    stop = time.perf_counter() + seconds

    def worker(i):
        fn = fn_factory()
        while time.perf_counter() < stop:
            fn(batch)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * len(batch) / (time.perf_counter() - start)


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    print(f"# model {args.model} at {args.image_size}x{args.image_size}, {args.num_classes} classes; request JPEGs "
          f"{args.jpeg_size[0]}x{args.jpeg_size[1]}; served {args.serving_dtype} BN-folded; "
          f"CPU {platform.processor() or platform.machine()} "
          f"x{os.cpu_count()}; TensorFlow {tf.__version__}")
    print(f"# load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}", flush=True)
    tmp = tempfile.mkdtemp(prefix="bench_serving_")
    proc = None
    try:
        if args.server_grpc:
            model_dir, grpc_address, rest_address = args.model_dir, args.server_grpc, args.server_rest
            print(f"# using the server at gRPC {grpc_address}, REST {rest_address}")
        else:
            start = time.monotonic()
            model_dir = export_model(args, os.path.join(tmp, "base"),
                                     os.path.join(tmp, "unfolded") if args.compare_unfolded else None)
            print(f"# exported in {time.monotonic() - start:.0f} s; starting the development server", flush=True)
            proc, grpc_address, rest_address = start_server(os.path.join(tmp, "base"), args,
                                                            os.path.join(tmp, "server.log"))
        modes = Modes(model_dir, grpc_address, rest_address, args.model_name,
                      os.path.join(tmp, "unfolded") if args.compare_unfolded else None)
        all_modes = MODES + (UNFOLDED_MODES if args.compare_unfolded else ())
        jpegs = synthetic_jpegs(max(args.batches), args.jpeg_size)
        print(f"# request JPEG size: mean {statistics.mean(len(j) for j in jpegs) / 1024:.1f} KiB", flush=True)
        kinds = list(SIGNATURES)
        for batch_size in args.batches:  # warm-up, and a check that every mode gives the same answer
            answers = set()
            for kind in kinds:
                for mode in all_modes:
                    for _ in range(args.warmup):
                        label = modes.fns[(kind, mode)](jpegs[:batch_size])
                    answers.add(label.decode() if isinstance(label, bytes) else label)
            if len(answers) != 1:
                raise SystemExit(f"error: the modes disagree on the top-1 label: {answers}")
        rows = [(k, m) for k in kinds for m in all_modes]
        per_row = args.seconds / (len(args.batches) * len(rows) * args.rounds)
        latencies = {(k, m, b): [] for k, m in rows for b in args.batches}
        cpu = {(k, m, b): [0.0, 0.0] for k, m in rows for b in args.batches}  # this process, the server
        server_pid = proc.pid if proc is not None else None
        loads = []
        for r in range(args.rounds):
            order = rows if r % 2 == 0 else rows[::-1]
            for batch_size in args.batches:
                for kind, mode in order:
                    remote = mode in ("grpc", "rest")
                    lat, own, server = time_calls(modes.fns[(kind, mode)], jpegs[:batch_size], per_row,
                                                  server_pid if remote else None)
                    latencies[(kind, mode, batch_size)] += lat
                    cpu[(kind, mode, batch_size)][0] += own
                    cpu[(kind, mode, batch_size)][1] += server
            loads.append(os.getloadavg()[0])
            print(f"# round {r + 1}/{args.rounds} done (load {loads[-1]:.2f})", file=sys.stderr, flush=True)

        results = []
        print(f"{'signature':<10}{'mode':<20}{'batch':>6}{'calls':>7}{'p50 ms':>9}{'p99 ms':>9}{'img/s':>8}"
              f"{'ratio p50':>10}{'cpu ms/call':>12}{'cpu ratio':>10}")
        for batch_size in args.batches:
            for kind in kinds:
                base_p50 = float(np.percentile(latencies[(kind, "in-process", batch_size)], 50))
                base_cpu = sum(cpu[(kind, "in-process", batch_size)]) / len(latencies[(kind, "in-process", batch_size)])
                for mode in all_modes:
                    lat = np.array(latencies[(kind, mode, batch_size)])
                    p50, p99 = float(np.percentile(lat, 50)), float(np.percentile(lat, 99))
                    ips = batch_size * len(lat) / lat.sum()
                    cpu_call = sum(cpu[(kind, mode, batch_size)]) / len(lat)
                    results.append({"signature": SIGNATURES[kind], "mode": mode, "batch": batch_size,
                                    "calls": len(lat), "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "images_per_s": ips,
                                    "ratio_p50": p50 / base_p50, "cpu_ms_per_call": cpu_call * 1e3,
                                    "cpu_ratio": cpu_call / base_cpu})
                    print(f"{kind:<10}{mode:<20}{batch_size:>6}{len(lat):>7}{p50 * 1e3:>9.1f}{p99 * 1e3:>9.1f}"
                          f"{ips:>8.1f}{p50 / base_p50:>10.2f}{cpu_call * 1e3:>12.1f}{cpu_call / base_cpu:>10.2f}")
        if args.concurrency:
            seconds = max(per_row * args.rounds, 2.0)
            print(f"# {args.concurrency} concurrent clients, {seconds:.0f} s each (throughput, img/s)")
            for batch_size in args.batches:
                for kind in kinds:
                    for mode in ("grpc", "rest"):
                        ips = concurrent_throughput(lambda: modes.factory(kind, mode), jpegs[:batch_size],
                                                    args.concurrency, seconds)
                        results.append({"signature": SIGNATURES[kind], "mode": f"{mode} x{args.concurrency}",
                                        "batch": batch_size, "images_per_s": ips})
                        print(f"{kind:<10}{mode + ' x' + str(args.concurrency):<22}{batch_size:>6}{'':>27}{ips:>9.1f}")
        print(f"# load average (1 min) after each round: {' '.join(f'{v:.2f}' for v in loads)}")
        print(f"# load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        if args.json_out:
            with open(args.json_out, "w") as f:
                json.dump({"args": {k: v for k, v in vars(args).items() if k != "json_out"}, "results": results}, f,
                          indent=2)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=120)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
