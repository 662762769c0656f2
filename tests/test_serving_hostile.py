"""The development server under hostile requests, each class of attack against one server process that runs
under a memory limit.

The server is ``hrnet-tfx serve --server dev`` in a subprocess (tiny HRNet, 5 classes). Once it has answered
well-formed requests of every kind, its address space is capped with ``RLIMIT_AS`` at its idle size +
:data:`AS_HEADROOM`, so an attack that allocates gigabytes fails inside the server instead of swapping the
machine. Every case then checks the answer (status code and message), that the server's peak resident memory
rose by at most :data:`RSS_BOUND` during the attack (peak reset before each case through
``/proc/PID/clear_refs``), and that it still answers a well-formed request; a gRPC heartbeat runs through the
whole module and must never fail.
"""

import io
import json
import os
import re
import resource
import select
import socket
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow: Keras 2)
import tensorflow as tf  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from hrnet_tfx.serving.tensors import to_tensor_proto  # noqa: E402

from conftest import b64, free_port, jpeg_claiming  # noqa: E402

LABELS = ["cat", "dog", "eel", "fox", "gnu"]
MIB = 2**20
AS_HEADROOM = 1536 * MIB
"""Address space the server may add to its idle size before allocations fail."""
RSS_BOUND = 128 * MIB
"""The most an attack may raise the server's peak resident memory (its idle size is ~0.5-1 GiB)."""
MAX_REQUEST_BYTES = 4 * MIB
MAX_ITEMS = 16
MAX_CONNECTIONS = 12
MAX_CONCURRENT = 4
REQUEST_TIMEOUT = 6.0  # also tornado's header deadline from accept: a loaded 2-core machine needs the margin
TIMEOUT = 120.0
CLI = ("from hrnet_tfx.cli import main; from hrnet_tfx.cli.serving import serve; "
       "[main.add_command(c) for c in (serve,) if c.name not in main.commands]; main()")


def jpeg(width=80, height=60, seed=0):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def encode(image, fmt, **kwargs):
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _first_image_descriptor(gif):
    """Offset of the first image descriptor (``,``) of a GIF: after the header, the global colour table and
    any extension blocks."""
    flags = gif[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    while gif[pos] == 0x21:  # extension: label, then length-prefixed sub-blocks up to an empty one
        pos += 2
        while gif[pos]:
            pos += gif[pos] + 1
        pos += 1
    assert gif[pos] == 0x2C, gif[pos]
    return pos


def gif_bomb(width, height):
    """A 2-frame GIF: frame 1 is 1x1 (the size Pillow reports), frame 2 is ``width x height`` (TensorFlow
    decodes both frames at that size). A uniform frame compresses to a few bytes per thousand pixels."""
    palette = [0, 0, 0, 255, 0, 0] + [0] * 762
    small, big = Image.new("P", (1, 1), 0), Image.new("P", (width, height), 1)
    small.putpalette(palette)
    big.putpalette(palette)
    small_gif, big_gif = encode(small, "GIF"), encode(big, "GIF")
    return small_gif[:-1] + big_gif[_first_image_descriptor(big_gif):]


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def predict_request(tensor, input_name="images", model="hrnet", signature="predict_images"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    request.inputs[input_name].CopyFrom(tensor)
    return request


def string_tensor(shape, values=()):
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=list(values))
    for size in shape:
        tensor.tensor_shape.dim.add().size = size
    return tensor


class Server:
    """The server process, its addresses, and the checks every case ends with."""

    def __init__(self, process, grpc_address, rest_address, channel):
        self.process, self.grpc_address, self.rest_address = process, grpc_address, rest_address
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.good = jpeg(seed=1)
        self.heartbeats, self.heartbeat_errors = 0, []
        self.peak_rise = 0

    @property
    def pid(self):
        return self.process.pid

    def url(self, suffix=""):
        return f"http://{self.rest_address}/v1/models/hrnet{suffix}"

    def good_grpc(self):
        request = predict_request(to_tensor_proto(np.array([self.good], dtype=object)))
        response = self.stub.Predict(request, timeout=TIMEOUT)
        assert len(response.outputs["top_k_labels"].string_val) == 5
        return response

    def good_rest(self):
        answer = requests.post(self.url(":predict"), json={"signature_name": "predict_images",
                                                           "instances": [b64(self.good)]}, timeout=TIMEOUT)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["top_k_labels"][0] in LABELS

    def reset_peak(self):
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return proc_status(self.pid, "VmRSS")

    def check_after(self, rss_before):
        """Still alive, peak memory within the bound, and both protocols answer."""
        assert self.process.poll() is None, "the server died"
        rise = proc_status(self.pid, "VmHWM") - rss_before
        assert rise <= RSS_BOUND, f"peak RSS rose by {rise / MIB:.0f} MiB (bound {RSS_BOUND / MIB:.0f} MiB)"
        self.peak_rise = max(self.peak_rise, rise)
        self.good_grpc()
        self.good_rest()
        return rise


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from hrnet_tfx.models import build_model
    from hrnet_tfx.serving.export import export_saved_model

    root = tmp_path_factory.mktemp("hostile")
    tf.random.set_seed(0)
    model = build_model("tiny.yaml", num_classes=len(LABELS), image_size=None)
    export_saved_model(model, str(root / "base" / "hrnet" / "1"), LABELS, image_size=64)
    grpc_port, rest_port = free_port(), free_port()
    log_path = root / "serve.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", MALLOC_ARENA_MAX="2")
    args = [sys.executable, "-c", CLI, "serve", str(root / "base"), "--server", "dev", "--host", "127.0.0.1",
            "--grpc-port", str(grpc_port), "--rest-port", str(rest_port), "--max-request-bytes", str(MAX_REQUEST_BYTES),
            "--max-items-per-request", str(MAX_ITEMS), "--max-connections", str(MAX_CONNECTIONS),
            "--max-concurrent-requests", str(MAX_CONCURRENT),
            "--request-timeout", str(REQUEST_TIMEOUT)]
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, env=env)
    channel = None
    try:
        deadline = time.monotonic() + 300
        while "development server for model 'hrnet'" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        s = Server(process, f"127.0.0.1:{grpc_port}", f"127.0.0.1:{rest_port}", channel)
        warm_up(s)
        idle = proc_status(process.pid, "VmSize")
        resource.prlimit(process.pid, resource.RLIMIT_AS, (idle + AS_HEADROOM, idle + AS_HEADROOM))
        stop = threading.Event()

        def heartbeat():
            while not stop.wait(0.5):
                try:
                    s.good_grpc()
                    s.heartbeats += 1
                except Exception as e:  # collected, asserted at the end
                    s.heartbeat_errors.append(repr(e))

        beat = threading.Thread(target=heartbeat, daemon=True)
        beat.start()
        yield s
        stop.set()
        beat.join()
        assert s.heartbeat_errors == [] and s.heartbeats > 0, s.heartbeat_errors
        print(f"\nhostile requests: largest peak RSS rise {s.peak_rise / MIB:.0f} MiB (bound {RSS_BOUND / MIB:.0f}); "
              f"idle RSS {proc_status(process.pid, 'VmRSS') / MIB:.0f} MiB; {s.heartbeats} heartbeats answered")
        assert "Traceback" not in log_path.read_text(), log_path.read_text()[-5000:]
    finally:
        if channel is not None:
            channel.close()
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0 and "development server: stopped" in log_path.read_text(), \
        log_path.read_text()[-3000:]
    assert "still running" not in log_path.read_text(), log_path.read_text()[-3000:]  # nothing left in flight


def warm_up(s):
    """Every request kind once, several at a time, so threads and lazy TF kernels exist before the limit."""
    from concurrent.futures import ThreadPoolExecutor

    png = encode(Image.new("RGB", (50, 40), "red"), "PNG")
    example = tf.train.Example(features=tf.train.Features(feature={"image/encoded": tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[png]))})).SerializeToString()

    def classify():
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name = "hrnet"
        request.input.example_list.examples.add().ParseFromString(example)
        s.stub.Classify(request, timeout=TIMEOUT)

    for fn in (s.good_grpc, s.good_rest, classify):  # first calls one at a time: they pay TF's lazy set-up
        fn()
    with ThreadPoolExecutor(MAX_CONCURRENT) as pool:
        for f in [pool.submit(fn) for fn in (s.good_grpc, s.good_rest, classify) * 4]:
            f.result()


def grpc_error(call):
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value.code(), err.value.details()


# -- images whose header hides the cost --------------------------------------------------------------------
IMAGES = {
    # the server runs with the default --max-image-pixels (25,000,000): both refused by the header alone
    "jpeg_header_60000x60000": (lambda: jpeg_claiming(60000, 60000), "image too large to decode (Image size "
                                "(3600000000 pixels) exceeds limit of 178956970 pixels"),  # Pillow's own bomb check
    "jpeg_header_6000x5000": (lambda: jpeg_claiming(6000, 5000), "image is 6000x5000 = 30,000,000 pixels, more "
                              "than this server's limit of 25,000,000 pixels per image (--max-image-pixels)"),
    # 44 KB: frame 1 is 1x1, frame 2 8000x8000; TF decodes 2 x 8000 x 8000 x 3 bytes, then resizes floats.
    "gif_hidden_frame": (lambda: gif_bomb(8000, 8000), "animated GIF refused (more than one frame)"),
    "png_1000000x1": (lambda: encode(Image.new("L", (1_000_000, 1)), "PNG"), "an aspect ratio of 1,000,000.0"),
    "png_1x1000000": (lambda: encode(Image.new("L", (1, 1_000_000)), "PNG"), "an aspect ratio of 1,000,000.0"),
    "webp": (lambda: encode(Image.new("RGB", (32, 32)), "WEBP"), "not a decodable image"),
}


@pytest.mark.parametrize("case", sorted(IMAGES))
@pytest.mark.parametrize("protocol", ["grpc", "rest"])
def test_images_whose_decoding_would_cost_gigabytes_are_refused(server, case, protocol):
    make, message = IMAGES[case]
    data = make()
    assert len(data) < 64 * 1024
    before = server.reset_peak()
    if protocol == "grpc":
        code, details = grpc_error(lambda: server.stub.Predict(
            predict_request(to_tensor_proto(np.array([data], dtype=object))), timeout=TIMEOUT))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    else:
        answer = requests.post(server.url(":predict"), json={"signature_name": "predict_images",
                                                             "instances": [b64(data)]}, timeout=TIMEOUT)
        assert answer.status_code == 400, answer.text
        details = answer.json()["error"]
    assert details.startswith("images[0]: ") and message in details, details
    server.check_after(before)


# -- gRPC tensors that declare more than they carry -------------------------------------------------------
def _float_1gib():
    tensor = tf.make_tensor_proto([1.0], dtype=tf.float32)
    tensor.tensor_shape.Clear()
    tensor.tensor_shape.dim.add().size = 16384
    tensor.tensor_shape.dim.add().size = 16384
    return tensor


TENSORS = {
    # ~40 bytes declaring a 1 GiB float tensor, for a string input.
    "float_16384x16384": (_float_1gib, "input 'images' must be DT_STRING, got DT_FLOAT"),
    "string_16384x16384_one_value": (lambda: string_tensor([16384, 16384], [b"x"]),
                                     "input 'images' must have shape [-1], got [16384, 16384]"),
    "string_-1x-1": (lambda: string_tensor([-1, -1], [b"x"]), "shape [-1, -1] has a negative dimension"),
    "string_2^32x2^32": (lambda: string_tensor([2**32, 2**32]), "must have shape [-1], got [4294967296, 4294967296]"),
    "string_2^40_no_values": (lambda: string_tensor([2**40]), "1,099,511,627,776 items in input 'images'"),
    "string_3_one_value": (lambda: string_tensor([3], [jpeg()]), "needs 3 values, got 1"),
    "too_many_images": (lambda: string_tensor([MAX_ITEMS + 1], [jpeg(8, 8)] * (MAX_ITEMS + 1)),
                        f"{MAX_ITEMS + 1} items in input 'images' in one request, more than this server's limit of "
                        f"{MAX_ITEMS}"),
}


@pytest.mark.parametrize("case", sorted(TENSORS))
def test_grpc_tensors_are_checked_against_the_signature_and_their_values_first(server, case):
    make, message = TENSORS[case]
    before = server.reset_peak()
    code, details = grpc_error(lambda: server.stub.Predict(predict_request(make()), timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message in details, (code, details)
    server.check_after(before)


def test_messages_quoting_what_a_client_sent_are_cut(server):
    request = predict_request(string_tensor([1], [jpeg()]), model="m" * MIB)
    code, details = grpc_error(lambda: server.stub.Predict(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.NOT_FOUND and details.startswith("Servable not found for request: Latest(mmm")
    assert len(details) == 2003 and details.endswith("...")
    request = predict_request(string_tensor([1], [jpeg()]))
    for i in range(50_000):
        request.inputs[f"junk_{i}"].dtype = types_pb2.DT_STRING
    code, details = grpc_error(lambda: server.stub.Predict(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sent extra {junk_0,junk_1" in details and len(details) == 2003
    server.check_after(server.reset_peak())


def test_classify_context_is_not_copied_before_the_model_and_the_counts_are_checked(server):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "resnet"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["pad"].bytes_list.value.append(b"x" * MIB)
    for _ in range(1_000_000):  # 2 bytes each on the wire: a ~3 MiB request that would merge into ~1 TiB
        with_context.examples.add()
    assert request.ByteSize() < MAX_REQUEST_BYTES
    before = server.reset_peak()
    code, details = grpc_error(lambda: server.stub.Classify(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.NOT_FOUND and "Latest(resnet)" in details, details
    server.check_after(before)
    request.model_spec.name = "hrnet"
    before = server.reset_peak()
    code, details = grpc_error(lambda: server.stub.Classify(request, timeout=TIMEOUT))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "1,000,000 examples in one request" in details, details
    del with_context.examples[MAX_ITEMS:]
    code, details = grpc_error(lambda: server.stub.Classify(request, timeout=TIMEOUT))
    merged = f"{MAX_ITEMS} examples with a 1,048,601-byte context make"
    assert code == grpc.StatusCode.INVALID_ARGUMENT and merged in details, details
    server.check_after(before)


# -- REST: HTTP that a hand-written server got wrong ----------------------------------------------------
def raw_http(server, data, wait=10.0):
    """Sends raw bytes, returns what the server answers before closing (or ``wait`` seconds pass)."""
    host, port = server.rest_address.rsplit(":", 1)
    chunks, deadline = [], time.monotonic() + wait
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        try:
            sock.sendall(data)
            while time.monotonic() < deadline:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (socket.timeout, ConnectionError):  # a reset after closing with unread input also ends it
            pass
    return b"".join(chunks)


def status_of(answer):
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return int(match[1]) if match else None


STATUS = b"GET /v1/models/hrnet HTTP/1.1\r\nHost: x\r\n"
POST = b"POST /v1/models/hrnet:predict HTTP/1.1\r\nHost: x\r\n"
HTTP_CASES = {
    # Each would be read until the client closes (or accepted as written) by a lenient parser.
    "content_length_-1": (STATUS + b"Content-Length: -1\r\n\r\n", 400),
    "content_length_+0": (STATUS + b"Content-Length: +0\r\n\r\n", 400),
    "content_length_1_2": (STATUS + b"Content-Length: 1_2\r\n\r\n" + b"{}          ", 400),
    "chunk_size_-1": (POST + b"Transfer-Encoding: chunked\r\n\r\n-1\r\n", 400),
    "content_length_1tb": (POST + b"Content-Length: 1000000000000\r\n\r\n", 413),
    # 4 MiB of chunks, then the size line of one more: refused as soon as it is read.
    "chunked_past_the_limit": (POST + b"Transfer-Encoding: chunked\r\n\r\n"
                               + (b"100000\r\n" + b"x" * 0x100000 + b"\r\n") * 4 + b"10\r\n", 400),
    "headers_past_64kib": (STATUS + b"X-Pad: " + b"x" * 70000 + b"\r\n\r\n", None),  # closed, no answer
}


@pytest.mark.parametrize("case", sorted(HTTP_CASES))
def test_rest_malformed_http_is_refused_at_once(server, case):
    data, status = HTTP_CASES[case]
    before = server.reset_peak()
    start = time.monotonic()
    answer = raw_http(server, data)
    assert status_of(answer) == status, answer[:300]
    assert time.monotonic() - start < 5  # answered and closed, not left waiting for the client
    if status == 413:
        assert b"larger than this server's limit of 4,194,304 bytes" in answer
    server.check_after(before)


def test_rest_a_client_dripping_bytes_is_disconnected(server):
    host, port = server.rest_address.rsplit(":", 1)
    start = time.monotonic()
    closed_after = None
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for byte in STATUS + b"X-Slow: " + b"y" * 30:  # one byte every 0.4 s: 25 s for the whole request
            try:
                sock.sendall(bytes([byte]))
                if select.select([sock], [], [], 0.4)[0]:  # readable: the server answered or closed
                    sock.recv(65536)
                    closed_after = time.monotonic() - start
                    break
            except OSError:
                closed_after = time.monotonic() - start
                break
    assert closed_after is not None and closed_after < REQUEST_TIMEOUT + 2, closed_after
    server.check_after(server.reset_peak())


def test_rest_connections_beyond_the_cap_are_refused(server):
    host, port = server.rest_address.rsplit(":", 1)
    idle = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 30
        while True:  # until the server has registered them (a loaded machine may take a while to accept)
            answer = raw_http(server, STATUS + b"\r\n", wait=5)
            if status_of(answer) == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert status_of(answer) == 503 and b"too many open connections (12)" in answer, answer[:300]
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    server.check_after(server.reset_peak())


def test_rest_bodies_being_received_count_as_requests_in_flight(server):
    host, port = server.rest_address.rsplit(":", 1)
    uploads = [socket.create_connection((host, int(port)), timeout=10) for _ in range(MAX_CONCURRENT)]
    try:
        for sock in uploads:  # each announces 3 MiB and sends 1 MiB of it
            sock.sendall(POST + b"Content-Length: 3145728\r\n\r\n" + b" " * MIB)
        time.sleep(0.5)
        answer = raw_http(server, POST + b"Content-Length: 2\r\n\r\n{}", wait=5)
        assert status_of(answer) == 429 and b"4 requests in flight" in answer, answer[:300]
    finally:
        for sock in uploads:
            sock.close()
    time.sleep(0.3)
    server.check_after(server.reset_peak())


JSON_CASES = {
    "nested_100000_deep": (":predict", b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400,
                           "nested too deeply"),
    "version_5000_digits": ("/versions/" + "9" * 5000 + ":predict", b'{"instances": []}', 400,
                            "is not a version number"),
    "600k_empty_objects": (":predict", b'{"instances": [' + b"{}," * 600_000 + b'{}]}', 400,
                           "600,001 instances in one request"),
    "too_many_values": (":predict", b'{"instances": [' + b"0," * 2_000_000 + b'0]}', 400, "values in the document"),
    "too_many_examples": (":classify", json.dumps({"context": {"pad": "x" * MIB},
                                                  "examples": [{}] * 1000}).encode(), 400,
                          "1,000 examples in one request"),
}


@pytest.mark.parametrize("case", sorted(JSON_CASES))
def test_rest_hostile_json_gets_400_with_a_message(server, case):
    suffix, body, status, message = JSON_CASES[case]
    assert len(body) <= MAX_REQUEST_BYTES
    before = server.reset_peak()
    answer = requests.post(server.url(suffix), data=body, timeout=TIMEOUT)
    assert answer.status_code == status and message in answer.json()["error"], answer.text[:500]
    server.check_after(before)
