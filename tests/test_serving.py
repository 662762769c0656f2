"""Serving: model base discovery, the development server over real gRPC and HTTP on loopback, the client,
the warm-up file, the CLI and the TF Serving launcher.

One tiny HRNet (tiny.yaml, 5 classes, 64x64) is exported once with the real export code into a model base
``<tmp>/base/hrnet/1/``; a second version differs from it only in the classifier bias (written straight
into a copy's variables, which is much cheaper than a second export). Expected values come from an
in-process call of the same SavedModel's signatures (``tf.saved_model.load``), never from the server's code.
"""

import base64
import concurrent.futures
import io
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from click.testing import CliRunner
from PIL import Image

import hrnet_tfx  # noqa: F401  (before TensorFlow: Keras 2)
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,  # noqa: E402
                                     model_service_pb2_grpc, predict_pb2, prediction_log_pb2,
                                     prediction_service_pb2_grpc)

from hrnet_tfx.data import features  # noqa: E402
from hrnet_tfx.serving import warmup  # noqa: E402
from hrnet_tfx.serving.batching import BatchingOptions  # noqa: E402
from hrnet_tfx.serving.client import Client  # noqa: E402
from hrnet_tfx.serving.dev import rest_requests  # noqa: E402
from hrnet_tfx.serving.dev.server import DevServer, DevServerOptions  # noqa: E402
from hrnet_tfx.serving.dev.watcher import ModelWatcher, VersionState  # noqa: E402
from hrnet_tfx.serving.errors import Code, ServerUnavailableError, ServingError  # noqa: E402
from hrnet_tfx.serving.model_base import complete_versions, latest_version, resolve_model  # noqa: E402
from hrnet_tfx.serving.server import model_server_command, serve  # noqa: E402
from hrnet_tfx.serving.tensors import to_ndarray, to_tensor_proto  # noqa: E402

from conftest import REPO, b64, free_port  # noqa: E402

LABELS = ["cat", "dog", "eel", "fox", "gnu"]
IMAGE_SIZE = 64
MAX_PIXELS = 200_000  # the test servers' image cap; the "huge" image is 640x480 = 307,200 pixels
SIZES = [(120, 90), (90, 120), (64, 64), (200, 150), (77, 101), (150, 60)]
TIMEOUT = 120.0  # per request; the machine is shared, so generous


def jpeg(width, height, seed):
    """A JPEG whose colours depend on ``seed`` (so each image gets its own probabilities)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    hue = np.array([(seed * 67) % 256, (seed * 151) % 256, (seed * 29) % 256], np.float32)
    waves = 80 * np.sin(xx[..., None] / (3 + seed) + yy[..., None] / (5 + seed))
    pixels = hue + waves + rng.normal(0, 20, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def example_bytes(image):
    return tf.train.Example(features=tf.train.Features(feature={
        features.IMAGE_ENCODED: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})).SerializeToString()


def make_version_2(model, dest, boosted_class):
    """An export of ``model`` (version 1's network) whose classifier bias favours ``boosted_class`` by +100
    logits (the exported weights are graph constants, so a new version is a new export)."""
    from hrnet_tfx.serving.export import export_saved_model

    bias = model.get_layer("classifier").bias
    original = bias.numpy()
    bias.assign(original + 100.0 * np.eye(len(LABELS), dtype=np.float32)[boosted_class])
    try:
        export_saved_model(model, dest, LABELS, image_size=IMAGE_SIZE)
    finally:
        bias.assign(original)


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{"base", "v1", "stage"}``: a model base with version 1 (and its warm-up file) and a staging dir."""
    from hrnet_tfx.models import build_model
    from hrnet_tfx.serving.export import export_saved_model

    root = tmp_path_factory.mktemp("serving")
    # Seeded right before the build, so the weights do not depend on what ran earlier in the process; with
    # this seed the random network still tells the test images apart (checked in `reference`).
    keras.utils.set_random_seed(0)
    model = build_model("tiny.yaml", num_classes=len(LABELS), image_size=None)
    v1 = root / "base" / "hrnet" / "1"
    export_saved_model(model, str(v1), LABELS, image_size=IMAGE_SIZE)
    warmup.write_warmup_requests(str(v1))
    stage = root / "stage"
    stage.mkdir()
    return {"base": root / "base", "v1": v1, "stage": stage, "model": model}


@pytest.fixture(scope="module")
def images():
    return [jpeg(w, h, i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def loaded(exported):
    """Version 1 loaded in this process (``tf.saved_model.load``)."""
    return tf.saved_model.load(str(exported["v1"]))


@pytest.fixture(scope="module")
def reference(loaded, images):
    """In-process signature outputs of version 1 for ``images`` (the expected values)."""
    ref = {k: v.numpy() for k, v in loaded.signatures["predict_images"](images=tf.constant(images)).items()}
    classify = loaded.signatures["serving_default"](inputs=tf.constant([example_bytes(i) for i in images]))
    ref["classes"] = classify["classes"].numpy()
    ref["scores"] = classify["scores"].numpy()
    probs = ref["probabilities"]
    # The burst test tells images apart by their probabilities: they must differ (a random network can
    # saturate its softmax and give every image the same answer; the seed above avoids that).
    assert min(np.abs(probs[i] - probs[j]).max() for i in range(len(images)) for j in range(i)) > 1e-4
    return ref


@pytest.fixture(scope="module")
def server(exported):
    options = DevServerOptions(host="127.0.0.1", grpc_port=0, rest_port=0, max_image_pixels=MAX_PIXELS)
    with DevServer(str(exported["base"]), "hrnet", options) as s:
        yield s


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(server.grpc_address) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(images, signature="predict_images", model="hrnet", version=None, input_name="images"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[input_name].CopyFrom(to_tensor_proto(np.array(images, dtype=object)))
    return request


def classify_request(examples, model="hrnet"):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    for data in examples:
        request.input.example_list.examples.add().ParseFromString(data)
    return request


def rest_url(server, suffix="", model="hrnet"):
    return f"http://{server.rest_address}/v1/models/{model}{suffix}"


def assert_matches(outputs, ref, rows=slice(None)):
    np.testing.assert_allclose(outputs["probabilities"], ref["probabilities"][rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs["top_k_scores"], ref["top_k_scores"][rows], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(outputs["top_k_ids"], ref["top_k_ids"][rows])
    np.testing.assert_array_equal(np.asarray(outputs["top_k_labels"]).astype(bytes), ref["top_k_labels"][rows])


def recording_predict(server):
    """Makes the served version record the signatures it looks up and those of the Predicts it runs (they still
    run for real); returns ``(ran, looked_up, undo)``."""
    ran, looked_up = [], []
    with server.core.lease("hrnet") as servable:
        predict, signature = servable.predict, servable.signature

        def recording_predict(signature_name, inputs, output_filter=()):
            ran.append(signature_name)
            return predict(signature_name, inputs, output_filter)

        def recording_signature(name, *args, **kwargs):
            looked_up.append(name)
            return signature(name, *args, **kwargs)

        servable.predict, servable.signature = recording_predict, recording_signature

    def undo():
        del servable.predict, servable.signature

    return ran, looked_up, undo


# -- export ----------------------------------------------------------------------------------------------
def test_top_k_signature_is_the_top_k_of_predict_images(loaded, images, reference):
    signature = loaded.signatures["predict_images_top_k"]
    assert set(signature.structured_outputs) == {"top_k_ids", "top_k_labels", "top_k_scores"}
    out = {k: v.numpy() for k, v in signature(images=tf.constant(images)).items()}
    order = np.argsort(-reference["probabilities"], axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(out["top_k_ids"], order)
    np.testing.assert_array_equal(out["top_k_labels"], np.array([l.encode() for l in LABELS], object)[order])
    np.testing.assert_allclose(out["top_k_scores"], np.take_along_axis(reference["probabilities"], order, axis=1),
                               rtol=1e-6, atol=0)
    for key in ("top_k_ids", "top_k_labels", "top_k_scores"):  # exactly predict_images' own top k
        np.testing.assert_array_equal(out[key], reference[key])


def _source(module: str):
    """The file of an hrnet_tfx module (``a/b.py`` or ``a/b/__init__.py``), or None if it is not one."""
    base = pathlib.Path(hrnet_tfx.__file__).parent.parent.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(module: str) -> set[str]:
    """The hrnet_tfx modules ``module`` imports anywhere in its source (function-level imports too)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(_source(module).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {m for m in found if m.startswith("hrnet_tfx.") and _source(m)}


def test_training_and_deployments_never_import_the_development_server():
    import pkgutil

    import hrnet_tfx.training

    roots = [f"hrnet_tfx.training.{m.name}" for m in pkgutil.iter_modules(hrnet_tfx.training.__path__)] + [
        f"hrnet_tfx.serving.{name}" for name in ("export", "warmup", "client", "names", "batching", "model_base")] + [
        "hrnet_tfx.components.pusher", "hrnet_tfx.components.evaluator", "hrnet_tfx.components.trainer"]
    seen, todo, reached = set(), list(roots), {}
    while todo:
        module = todo.pop()
        for child in _imports(module) - seen:
            seen.add(child)
            reached[child] = module
            todo.append(child)
    server = sorted(m for m in seen if m.startswith(("hrnet_tfx.serving.dev", "hrnet_tfx.serving.server")))
    assert server == [], [(m, reached[m]) for m in server]
    assert "hrnet_tfx.serving.export" in seen and "hrnet_tfx.fs" in seen  # the walk does see imports


# -- model base ------------------------------------------------------------------------------------------
def _version(path, complete=True):
    path.mkdir(parents=True)
    if complete:
        (path / "saved_model.pb").write_bytes(b"")


def test_model_base_discovery_counts_only_complete_versions(tmp_path):
    model = tmp_path / "base" / "hrnet"
    _version(model / "1")
    _version(model / "7")
    _version(model / "9", complete=False)  # still being copied
    for junk in (".export-abc", "8.partial", "tmp", "-3", "٣"):
        _version(model / junk)
    assert complete_versions(str(model)) == [1, 7]
    assert latest_version(str(model)) == 7
    assert resolve_model(str(tmp_path / "base")) == ("hrnet", str(model))
    assert resolve_model(str(model)) == ("hrnet", str(model))
    assert resolve_model(str(model), "resnet") == ("resnet", str(model))  # a model dir under another name
    assert resolve_model(str(tmp_path / "base"), "later") == ("later", str(tmp_path / "base" / "later"))
    _version(tmp_path / "base" / "other" / "1")
    with pytest.raises(ValueError, match="several models.*hrnet, other"):
        resolve_model(str(tmp_path / "base"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no model under"):
        resolve_model(str(tmp_path / "empty"))
    remote = "ram://serving-discovery/base/hrnet"  # a bucket-like file system, through tf.io.gfile
    for name, complete in (("3", True), ("12", True), ("13", False), (".tmp-14", True)):
        tf.io.gfile.makedirs(f"{remote}/{name}")
        if complete:
            with tf.io.gfile.GFile(f"{remote}/{name}/saved_model.pb", "wb") as f:
                f.write(b"")
    assert complete_versions(remote) == [3, 12] and latest_version(remote) == 12
    assert resolve_model("ram://serving-discovery/base") == ("hrnet", remote)
    assert complete_versions("ram://serving-discovery/missing") == []


class _Toy:
    """A stand-in servable for the version policy (the watcher only needs an object with close())."""

    def __init__(self, version):
        self.version, self.closed = version, False

    def close(self):
        self.closed = True


def test_watcher_serves_the_latest_version_and_unloads_after_in_flight_requests(tmp_path):
    model = tmp_path / "hrnet"
    _version(model / "1")
    loaded = {}

    def load(version, path):
        if version == 5:
            raise RuntimeError("corrupt variables")
        loaded[version] = _Toy(version)
        return loaded[version]

    watcher = ModelWatcher("hrnet", str(model), load, poll_seconds=0.05).start()
    try:
        assert watcher.current_version == 1
        with watcher.lease() as servable:
            assert servable.version == 1
            _version(model / "3")
            assert watcher.wait_for_version(3, timeout=10)
            assert not servable.closed  # a leased version is not closed under a running request
        for _ in range(100):
            if loaded[1].closed:
                break
            time.sleep(0.05)
        assert loaded[1].closed
        states = {s.version: s.state for s in watcher.statuses()}
        assert states == {3: VersionState.AVAILABLE, 1: VersionState.END}
        with pytest.raises(ServingError) as err:
            with watcher.lease(1):
                pass
        assert err.value.code == Code.NOT_FOUND and "Specific(hrnet, 1)" in err.value.message
        _version(model / "4", complete=False)
        _version(model / "5")  # fails to load: version 3 keeps serving
        deadline = time.monotonic() + 10
        while not watcher.statuses(5) or watcher.statuses(5)[0].state != VersionState.END:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert watcher.current_version == 3 and 4 not in loaded
        assert "corrupt variables" in watcher.statuses(5)[0].error_message
    finally:
        watcher.stop()
    assert loaded[3].closed


def test_watcher_falls_back_to_the_newest_version_that_loads(tmp_path):
    model = tmp_path / "hrnet"
    _version(model / "1")
    _version(model / "2")

    def load(version, path):
        if version == 2:
            raise ValueError("not a SavedModel")
        return _Toy(version)

    watcher = ModelWatcher("hrnet", str(model), load, poll_seconds=0.05).start()
    try:
        assert watcher.current_version == 1  # version 2 is broken: serve 1 rather than nothing
        states = [(s.version, s.state) for s in watcher.statuses()]
        assert states == [(2, VersionState.END), (1, VersionState.AVAILABLE)]
        failed = watcher.statuses(2)[0]
        assert failed.error_code == Code.UNKNOWN and "not a SavedModel" in failed.error_message
    finally:
        watcher.stop()


def test_watcher_retries_a_version_that_failed_to_load_with_a_growing_bounded_back_off(tmp_path):
    model = tmp_path / "hrnet"
    _version(model / "1")
    attempts = []

    def load(version, path):
        attempts.append((version, time.monotonic()))
        if version == 2 and len(attempts) < 5:  # rsync wrote saved_model.pb before the variables
            raise OSError("variables/variables.index not found")
        return _Toy(version)

    watcher = ModelWatcher("hrnet", str(model), load, poll_seconds=0.05, max_retry_seconds=0.2).start()
    try:
        _version(model / "2")  # its saved_model.pb is never touched again: the retries are time-driven
        assert watcher.wait_for_version(2, timeout=30)
        tries = [t for v, t in attempts if v == 2]
        assert len(tries) == 4  # 3 failures, then it loads
        gaps = np.diff(tries)
        assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2 and gaps.max() < 5, gaps  # 0.05, 0.1, 0.2 (cap)
        assert watcher.statuses(2)[0].state == VersionState.AVAILABLE
    finally:
        watcher.stop()


def test_a_version_switch_waits_for_the_requests_still_running_on_the_old_version(tmp_path):
    model = tmp_path / "hrnet"
    _version(model / "1")
    watcher = ModelWatcher("hrnet", str(model), lambda version, path: _Toy(version), poll_seconds=0.05,
                           unload_grace=0.1).start()
    try:
        with watcher.lease() as old:
            _version(model / "2")
            assert watcher.wait_for_version(2, timeout=10)
            with watcher.lease() as new:
                assert new.version == 2  # new requests go to the new version meanwhile
            time.sleep(1.0)  # ten times unload_grace
            assert not old.closed and watcher.statuses(1)[0].state == VersionState.UNLOADING
        deadline = time.monotonic() + 10
        while not old.closed:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert watcher.statuses(1)[0].state == VersionState.END
    finally:
        watcher.stop()


# -- REST JSON codec -------------------------------------------------------------------------------------
def test_rest_json_row_and_columnar_formats():
    from tensorflow.core.framework import types_pb2

    strings = rest_requests.json_to_array([b64(b"\x00\xff"), "text"], types_pb2.DT_STRING, "x")
    assert strings.dtype == object and strings.tolist() == [b"\x00\xff", b"text"]
    nested = rest_requests.json_to_array([["a", "b"], ["c", b64(b"d")]], types_pb2.DT_STRING, "x")
    assert nested.shape == (2, 2) and nested.tolist() == [[b"a", b"b"], [b"c", b"d"]]
    with pytest.raises(ServingError, match=r"x\[1\]: list of 1 values where the others have 2"):
        rest_requests.json_to_array([["a", "b"], ["c"]], types_pb2.DT_STRING, "x")
    with pytest.raises(ServingError, match=r"x\[0\]: JSON Value: 1 Type: int is not of expected type: DT_STRING"):
        rest_requests.json_to_array([1], types_pb2.DT_STRING, "x")
    with pytest.raises(ServingError, match="x: the development server takes string inputs only .* not DT_FLOAT"):
        rest_requests.json_to_array([[1, 2.5]], types_pb2.DT_FLOAT, "x")
    outputs = {"scores": np.array([[0.1, 1 / 3]], np.float32), "labels": np.array([[b"a", b"\xff"]], object),
               "raw_bytes": np.array([b"ok"], object)}
    text = rest_requests.predict_json(outputs, row_format=True)
    assert b'"scores":[0.1,0.33333334]' in text  # the shortest decimal that reads back as the same float32
    row = json.loads(text)
    assert row == {"predictions": [{"scores": [0.1, 0.33333334], "labels": ["a", b64(b"\xff")],
                                    "raw_bytes": b64(b"ok")}]}
    assert np.float32(row["predictions"][0]["scores"][1]) == np.float32(1 / 3)
    special = json.loads(rest_requests.predict_json({"x": np.array([np.nan, -np.inf, 1e-7], np.float32)}, False))
    assert np.isnan(special["outputs"][0]) and special["outputs"][1:] == [-np.inf, 1e-7]
    ints = {"y": np.array([[1, 2]], np.int32)}
    assert json.loads(rest_requests.predict_json(ints, row_format=True)) == {"predictions": [[1, 2]]}
    assert json.loads(rest_requests.predict_json(ints, row_format=False)) == {"outputs": [[1, 2]]}
    with pytest.raises(ServingError, match="inconsistent batch size"):
        rest_requests.predict_json({"a": np.zeros((2, 3)), "b": np.zeros((3,))}, row_format=True)
    name, examples = rest_requests.parse_classify({"context": {"shared": 7}, "examples": [
        {"image/encoded": b64(b"jpeg"), "weight": 0.5, "flag": True, "tags": ["a", "b"]}]})
    example = tf.train.Example.FromString(examples[0])
    feature = example.features.feature
    assert name == "" and feature["shared"].int64_list.value == [7]
    assert feature["image/encoded"].bytes_list.value == [b"jpeg"] and feature["tags"].bytes_list.value == [b"a", b"b"]
    assert feature["weight"].float_list.value == [0.5] and feature["flag"].int64_list.value == [1]
    with pytest.raises(ServingError, match="Unexpected element type"):
        rest_requests.parse_classify({"examples": [{"mixed": [1, "a"]}]})


def test_rest_json_reads_base64_with_or_without_padding_and_nothing_else():
    from hrnet_tfx.serving.rest_json import decode_b64

    for data in (b"", b"\x00", b"\xff\xfe", b"abc", bytes(range(256))):
        text = base64.b64encode(data).decode("ascii")
        assert decode_b64({"b64": text}, "x") == data
        assert decode_b64({"b64": text.rstrip("=")}, "x") == data
    for bad in ("ab=c", "a===", "abc!", "ab cd", "abcde", "ab\u00e9c", "-_-_"):  # urlsafe alphabet refused too
        with pytest.raises(ServingError, match="x: Unable to base64 decode"):
            decode_b64({"b64": bad}, "x")


# -- gRPC ------------------------------------------------------------------------------------------------
def test_grpc_predict_equals_in_process_signature(stub, images, reference):
    response = stub.Predict(predict_request(images), timeout=TIMEOUT)
    assert response.model_spec.name == "hrnet" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "predict_images"
    outputs = {k: to_ndarray(v) for k, v in response.outputs.items()}
    assert set(outputs) == {"probabilities", "top_k_ids", "top_k_labels", "top_k_scores"}
    assert_matches(outputs, reference)
    # Written like TF Serving writes them (typed fields), so `.float_val` readers work.
    assert len(response.outputs["probabilities"].float_val) == len(images) * len(LABELS)
    request = predict_request(images[:2])
    request.output_filter.append("top_k_labels")
    filtered = stub.Predict(request, timeout=TIMEOUT)
    assert list(filtered.outputs) == ["top_k_labels"]


def test_grpc_classify_and_predict_examples(stub, images, reference):
    response = stub.Classify(classify_request([example_bytes(i) for i in images]), timeout=TIMEOUT)
    assert response.model_spec.signature_name == "serving_default" and response.model_spec.version.value == 1
    assert len(response.result.classifications) == len(images)
    for i, result in enumerate(response.result.classifications):
        assert [c.label for c in result.classes] == LABELS
        np.testing.assert_allclose([c.score for c in result.classes], reference["scores"][i], rtol=1e-5, atol=1e-6)
    examples = stub.Predict(predict_request([example_bytes(i) for i in images], "predict_examples",
                                            input_name="examples"), timeout=TIMEOUT)
    assert_matches({k: to_ndarray(v) for k, v in examples.outputs.items()}, reference)


def test_grpc_metadata_and_status(server, stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "hrnet"
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=TIMEOUT)
    assert response.model_spec.name == "hrnet" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert set(defs) - {"__saved_model_init_op"} == {"serving_default", "predict_images", "predict_examples",
                                                     "predict_images_top_k"}
    assert set(defs["serving_default"].inputs) == {"inputs"}
    assert set(defs["serving_default"].outputs) == {"classes", "scores"}
    assert defs["predict_images"].inputs["images"].dtype == tf.string.as_datatype_enum
    assert [d.size for d in defs["predict_images"].outputs["probabilities"].tensor_shape.dim] == [-1, len(LABELS)]
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModelMetadata(get_model_metadata_pb2.GetModelMetadataRequest(model_spec=request.model_spec))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "metadata_field" in err.value.details()

    with grpc.insecure_channel(server.grpc_address) as channel:
        models = model_service_pb2_grpc.ModelServiceStub(channel)
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec=request.model_spec))
        assert [(s.version, s.state) for s in status.model_version_status] == [(1, 30)]  # AVAILABLE
        missing = get_model_status_pb2.GetModelStatusRequest()
        missing.model_spec.name, missing.model_spec.version.value = "hrnet", 9
        with pytest.raises(grpc.RpcError) as err:
            models.GetModelStatus(missing)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and "Could not find version 9" in err.value.details()


@pytest.mark.parametrize("case", ["not_an_image", "huge_image", "wrong_input", "unknown_signature", "unknown_model",
                                  "unknown_version", "bad_example_image"])
def test_grpc_bad_requests_get_the_right_code_and_the_server_keeps_serving(stub, images, reference, case):
    huge = jpeg(640, 480, 99)
    expected = {
        "not_an_image": (grpc.StatusCode.INVALID_ARGUMENT, "images[1]: not a decodable image",
                         lambda: stub.Predict(predict_request([images[0], b"GIF? no, text"]), timeout=TIMEOUT)),
        "huge_image": (grpc.StatusCode.INVALID_ARGUMENT, "640x480 = 307,200 pixels",
                       lambda: stub.Predict(predict_request([huge]), timeout=TIMEOUT)),
        "wrong_input": (grpc.StatusCode.INVALID_ARGUMENT, "sent extra {pictures}, missing {images}",
                        lambda: stub.Predict(predict_request(images[:1], input_name="pictures"), timeout=TIMEOUT)),
        "unknown_signature": (grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "nope" not found',
                              lambda: stub.Predict(predict_request(images[:1], "nope"), timeout=TIMEOUT)),
        "unknown_model": (grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(resnet)",
                          lambda: stub.Predict(predict_request(images[:1], model="resnet"), timeout=TIMEOUT)),
        "unknown_version": (grpc.StatusCode.NOT_FOUND, "Specific(hrnet, 3)",
                            lambda: stub.Predict(predict_request(images[:1], version=3), timeout=TIMEOUT)),
        "bad_example_image": (grpc.StatusCode.INVALID_ARGUMENT, "inputs[0] image/encoded: not a decodable image",
                              lambda: stub.Classify(classify_request([example_bytes(b"\x00" * 50)]),
                                                    timeout=TIMEOUT)),
    }
    code, message, call = expected[case]
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == code, err.value.details()
    assert message in err.value.details()
    again = stub.Predict(predict_request(images[:1]), timeout=TIMEOUT)
    assert_matches({k: to_ndarray(v) for k, v in again.outputs.items()}, reference, slice(0, 1))


def test_a_taken_port_is_a_clear_error_before_any_model_loads(exported, server):
    for grpc_port, rest_port, name in ((server.grpc_port, 0, "gRPC"), (0, server.rest_port, "REST")):
        other = DevServer(str(exported["base"]), "hrnet",
                          DevServerOptions(host="127.0.0.1", grpc_port=grpc_port, rest_port=rest_port))
        start = time.monotonic()
        with pytest.raises(OSError, match=f"cannot bind {name} to 127.0.0.1:{grpc_port or rest_port}"):
            other.start()
        assert other.core.watcher.statuses() == []  # failed before loading anything
        assert time.monotonic() - start < 30
    assert Client(server.grpc_address).status()[0]["state"] == "AVAILABLE"  # the first server is unharmed


# -- REST ------------------------------------------------------------------------------------------------
def test_rest_predict_row_and_columnar_equal_in_process_signature(server, images, reference):
    url = rest_url(server, ":predict")
    row = requests.post(url, json={"signature_name": "predict_images", "instances": [b64(i) for i in images]},
                        timeout=TIMEOUT)
    assert row.status_code == 200 and row.headers["Content-Type"] == "application/json"
    predictions = row.json()["predictions"]
    assert len(predictions) == len(images)
    assert_matches({k: [p[k] for p in predictions] for k in predictions[0]}, reference)
    named = requests.post(url, json={"signature_name": "predict_images",
                                     "instances": [{"images": b64(i)} for i in images]}, timeout=TIMEOUT)
    named = named.json()["predictions"]
    assert named == predictions
    columnar = requests.post(url, json={"signature_name": "predict_images",
                                        "inputs": {"images": [b64(i) for i in images]}}, timeout=TIMEOUT)
    assert columnar.status_code == 200
    outputs = columnar.json()["outputs"]
    assert set(outputs) == {"probabilities", "top_k_ids", "top_k_labels", "top_k_scores"}
    assert_matches(outputs, reference)
    versioned = requests.post(rest_url(server, "/versions/1:predict"),
                              json={"signature_name": "predict_images", "inputs": [b64(images[0])]}, timeout=TIMEOUT)
    assert versioned.status_code == 200 and versioned.json()["outputs"]["top_k_labels"] == [
        [label.decode() for label in reference["top_k_labels"][0]]]


def test_rest_classify_with_examples_and_context(server, images, reference):
    url = rest_url(server, ":classify")
    results = requests.post(url, json={"examples": [{features.IMAGE_ENCODED: b64(i)} for i in images]},
                            timeout=TIMEOUT).json()["results"]
    assert len(results) == len(images)
    for i, ranking in enumerate(results):
        assert [label for label, _ in ranking] == LABELS
        np.testing.assert_allclose([score for _, score in ranking], reference["scores"][i], rtol=1e-5, atol=1e-6)
    shared = requests.post(url, json={"signature_name": "serving_default", "context": {
        features.IMAGE_ENCODED: b64(images[2])}, "examples": [{}, {"unused": 1}]}, timeout=TIMEOUT)
    assert shared.status_code == 200, shared.text
    for ranking in shared.json()["results"]:
        np.testing.assert_allclose([s for _, s in ranking], reference["scores"][2], rtol=1e-5, atol=1e-6)


def test_rest_status_and_metadata(server):
    status = requests.get(rest_url(server), timeout=TIMEOUT)
    assert status.status_code == 200
    assert status.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert requests.get(rest_url(server, "/versions/1"), timeout=TIMEOUT).json() == status.json()
    metadata = requests.get(rest_url(server, "/metadata"), timeout=TIMEOUT).json()
    assert metadata["model_spec"] == {"name": "hrnet", "signature_name": "", "version": "1"}
    images_input = metadata["metadata"]["signature_def"]["signature_def"]["predict_images"]["inputs"]["images"]
    assert images_input["dtype"] == "DT_STRING" and images_input["tensor_shape"]["dim"][0]["size"] == "-1"
    assert Client(server.grpc_address).metadata() == metadata  # same shape over gRPC


@pytest.mark.parametrize("case", ["not_an_image", "huge_image", "wrong_input_row", "wrong_input_columnar",
                                  "unknown_signature", "unknown_model", "unknown_version", "bad_json", "no_instances",
                                  "bad_route", "status_unknown_version"])
def test_rest_bad_requests_get_400_or_404_and_the_server_keeps_serving(server, images, reference, case):
    predict = rest_url(server, ":predict")
    cases = {
        "not_an_image": (400, "not a decodable image", "POST", predict,
                         {"signature_name": "predict_images", "instances": [b64(b"%PDF-1.4 not an image")]}),
        "huge_image": (400, "more than this server's limit", "POST", predict,
                       {"signature_name": "predict_images", "instances": [b64(jpeg(640, 480, 99))]}),
        "wrong_input_row": (400, "does not have named input: pictures", "POST", predict,
                            {"signature_name": "predict_images", "instances": [{"pictures": b64(images[0])}]}),
        "wrong_input_columnar": (400, "does not have named input: pictures", "POST", predict,
                                 {"signature_name": "predict_images", "inputs": {"pictures": [b64(images[0])]}}),
        "unknown_signature": (400, 'Serving signature key "nope" not found', "POST", predict,
                              {"signature_name": "nope", "instances": [b64(images[0])]}),
        "unknown_model": (404, "Servable not found for request: Latest(resnet)", "POST",
                          rest_url(server, ":predict", model="resnet"), {"instances": [b64(images[0])]}),
        "unknown_version": (404, "Specific(hrnet, 3)", "POST", rest_url(server, "/versions/3:predict"),
                            {"signature_name": "predict_images", "instances": [b64(images[0])]}),
        "bad_json": (400, "JSON Parse error", "POST", predict, b"{not json"),
        "no_instances": (400, "Missing 'inputs' or 'instances' key", "POST", predict,
                         {"signature_name": "predict_images"}),
        "bad_route": (400, "Malformed request: POST /v1/models/hrnet:explain", "POST",
                      rest_url(server, ":explain"), {}),
        "status_unknown_version": (404, "Could not find version 3 of model hrnet", "GET",
                                   rest_url(server, "/versions/3"), None),
    }
    status, message, method, url, body = cases[case]
    data = body if isinstance(body, bytes) else None if body is None else json.dumps(body).encode()
    response = requests.request(method, url, data=data, timeout=TIMEOUT)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"} and message in response.json()["error"]
    again = requests.post(predict, json={"signature_name": "predict_images", "instances": [b64(images[0])]},
                          timeout=TIMEOUT)
    assert again.status_code == 200
    np.testing.assert_allclose(again.json()["predictions"][0]["probabilities"], reference["probabilities"][0],
                               rtol=1e-5, atol=1e-6)


def test_rest_top_k_signature_answers_k_values_per_image(server, images, reference):
    answer = requests.post(rest_url(server, ":predict"), json={"signature_name": "predict_images_top_k",
                                                               "instances": [b64(i) for i in images]}, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    predictions = answer.json()["predictions"]
    assert [set(p) for p in predictions] == [{"top_k_ids", "top_k_labels", "top_k_scores"}] * len(images)
    np.testing.assert_array_equal([p["top_k_ids"] for p in predictions], reference["top_k_ids"])
    assert [p["top_k_labels"] for p in predictions] == [[l.decode() for l in row] for row in reference["top_k_labels"]]
    np.testing.assert_allclose([p["top_k_scores"] for p in predictions], reference["top_k_scores"], rtol=1e-6)


# -- concurrency -----------------------------------------------------------------------------------------
def test_a_burst_of_concurrent_grpc_and_rest_requests_is_all_answered(server, images, reference):
    total, workers = 40, 8
    clients = {False: Client(server.grpc_address, timeout=TIMEOUT), True: Client(server.rest_address, rest=True,
                                                                                 timeout=TIMEOUT)}
    local = threading.local()

    def call(i):
        rest = i % 2 == 1
        if not hasattr(local, "session"):
            local.session = requests.Session()
        picks = [i % len(images), (i * 5 + 1) % len(images)]
        if rest:
            body = {"signature_name": "predict_images", "inputs": {"images": [b64(images[p]) for p in picks]}}
            outputs = local.session.post(rest_url(server, ":predict"), json=body, timeout=TIMEOUT).json()["outputs"]
            return i, picks, np.array(outputs["probabilities"])
        outputs = clients[False].predict({"images": [images[p] for p in picks]}, "predict_images")
        return i, picks, outputs["probabilities"]

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(call, range(total), timeout=300))
    elapsed = time.monotonic() - start
    assert len(results) == total and sorted(r[0] for r in results) == list(range(total))
    for _, picks, probabilities in results:  # each answer belongs to its own request's images
        np.testing.assert_allclose(probabilities, reference["probabilities"][picks], rtol=1e-5, atol=1e-6)
    assert elapsed < 300
    for client in clients.values():
        client.close()


# -- client ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_predict_images_and_classify(server, images, reference, tmp_path, rest):
    path = tmp_path / "photo.jpg"
    path.write_bytes(images[3])
    address = server.rest_address if rest else server.grpc_address
    with Client(address, rest=rest, timeout=TIMEOUT) as client:
        top = client.predict_images([images[0], str(path)], top_k=3)
        for ranking, row in zip(top, [0, 3]):
            assert [label for label, _ in ranking] == [l.decode() for l in reference["top_k_labels"][row][:3]]
            np.testing.assert_allclose([s for _, s in ranking], reference["top_k_scores"][row][:3], rtol=1e-5)
        everything = client.predict_images([images[1]], top_k=10)[0]  # more than the export's top 5: via Classify
        assert len(everything) == len(LABELS) and [l for l, _ in everything] == [
            LABELS[j] for j in np.argsort(-reference["scores"][1], kind="stable")]
        classified = client.classify_examples([{features.IMAGE_ENCODED: images[4]}])
        np.testing.assert_allclose([s for _, s in classified[0]], reference["scores"][4], rtol=1e-5, atol=1e-6)
        assert client.status()[0] == {"version": "1", "state": "AVAILABLE",
                                      "status": {"error_code": "OK", "error_message": ""}}
        with pytest.raises(ServingError) as err:
            client.predict_images([b"definitely not a JPEG"])
        assert err.value.code == Code.INVALID_ARGUMENT and "not a decodable image" in err.value.message
    with pytest.raises(ServingError) as err, Client(address, rest=rest, model_name="resnet") as other:
        other.predict_images([images[0]])
    assert err.value.code == Code.NOT_FOUND and "resnet" in err.value.message


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_names_the_address_it_cannot_reach(rest):
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(ServerUnavailableError) as err:
        Client(address, rest=rest, timeout=10).predict_images([b"x"])
    assert address in str(err.value) and "connection refused" in str(err.value)


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_asks_the_top_k_signature(server, images, reference, rest):
    ran, _, undo = recording_predict(server)
    try:
        with Client(server.rest_address if rest else server.grpc_address, rest=rest, timeout=TIMEOUT) as client:
            top = client.predict_images(images, top_k=5)
    finally:
        undo()
    assert ran == ["predict_images_top_k"]
    assert [[label for label, _ in ranking] for ranking in top] == [
        [label.decode() for label in row] for row in reference["top_k_labels"]]
    np.testing.assert_allclose([[score for _, score in ranking] for ranking in top], reference["top_k_scores"],
                               rtol=1e-6)


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_client_falls_back_to_predict_images_for_a_model_exported_without_the_top_k_signature(server, images,
                                                                                              reference, rest):
    with server.core.lease("hrnet") as servable:
        top_k = servable.signature_defs.pop("predict_images_top_k")  # as a model exported before it existed
    ran, looked_up, undo = recording_predict(server)
    try:
        with Client(server.rest_address if rest else server.grpc_address, rest=rest, timeout=TIMEOUT) as client:
            first = client.predict_images(images[:2], top_k=3)
            second = client.predict_images(images[2:3], top_k=3)
    finally:
        undo()
        servable.signature_defs["predict_images_top_k"] = top_k
    assert ran == ["predict_images", "predict_images"]
    assert looked_up.count("predict_images_top_k") == 1  # asked for once, then remembered
    assert [[label for label, _ in ranking] for ranking in first + second] == [
        [label.decode() for label in row[:3]] for row in reference["top_k_labels"][:3]]


# -- warm-up ---------------------------------------------------------------------------------------------
def test_warmup_file_parses_as_prediction_logs_and_replays(exported, stub):
    path = warmup.warmup_file(str(exported["v1"]))
    assert path.endswith("assets.extra/tf_serving_warmup_requests")
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
    kinds = [(r.WhichOneof("log_type"), (r.predict_log.request if r.HasField("predict_log")
                                          else r.classify_log.request).model_spec.signature_name) for r in records]
    assert kinds == [("predict_log", "predict_images"), ("predict_log", "predict_images_top_k"),
                     ("classify_log", "serving_default"), ("predict_log", "predict_examples")]
    images_tensor = records[0].predict_log.request.inputs["images"]
    assert images_tensor.dtype == tf.string.as_datatype_enum and len(images_tensor.string_val) == 2
    assert Image.open(io.BytesIO(images_tensor.string_val[0])).format == "JPEG"
    assert records[1].predict_log.request.inputs["images"] == images_tensor  # what the client sends
    assert len(records[2].classify_log.request.input.example_list.examples) == 2
    assert warmup.replay_warmup_requests(str(exported["v1"]), stub, "hrnet", timeout=TIMEOUT) == 4
    with pytest.raises(ValueError, match="at least one image"):
        warmup.write_warmup_requests(str(exported["v1"]), images=[])


# -- versions, batching, shutdown ------------------------------------------------------------------------
def test_a_pushed_version_is_picked_up_and_the_old_one_unloaded(exported, images, reference, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(exported["v1"], base / "hrnet" / "1")
    boosted = (int(reference["top_k_ids"][0][0]) + 1) % len(LABELS)
    staged = tmp_path / "staging-2"
    make_version_2(exported["model"], str(staged), boosted)
    options = DevServerOptions(host="127.0.0.1", grpc_port=0, rest_port=0, poll_seconds=0.2, warmup=False)
    with DevServer(str(base), options=options) as server, Client(server.grpc_address, timeout=TIMEOUT) as client:
        assert server.model_name == "hrnet"
        first = client.predict({"images": images[:2]}, "predict_images")
        np.testing.assert_allclose(first["probabilities"], reference["probabilities"][:2], rtol=1e-5, atol=1e-6)
        (base / "hrnet" / "3").mkdir()  # an incomplete version (no saved_model.pb) is never loaded
        os.rename(staged, base / "hrnet" / "2")  # the push: one atomic rename
        assert server.core.watcher.wait_for_version(2, timeout=300)
        deadline = time.monotonic() + 60
        while client.status()[-1]["state"] != "END":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert [(s["version"], s["state"]) for s in client.status()] == [("2", "AVAILABLE"), ("1", "END")]
        with grpc.insecure_channel(server.grpc_address) as channel:
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(predict_request(images),
                                                                                          timeout=TIMEOUT)
        assert response.model_spec.version.value == 2
        probabilities = to_ndarray(response.outputs["probabilities"])
        assert (probabilities.argmax(axis=1) == boosted).all() and probabilities[:, boosted].min() > 0.99
        with pytest.raises(ServingError) as err:
            Client(server.grpc_address, version=1, timeout=TIMEOUT).predict_images(images[:1])
        assert err.value.code == Code.NOT_FOUND


def hold_runs(server):
    """Makes the served version's session runs wait for ``release`` (they then run for real); ``started``
    counts the runs waiting."""
    started, release = threading.Semaphore(0), threading.Event()
    with server.core.lease("hrnet") as servable:
        run = servable._run

        def held_run(feeds, fetches):
            started.release()
            release.wait(TIMEOUT)
            return run(feeds, fetches)

        servable._run = held_run
    return started, release


def test_requests_in_flight_are_capped_and_finished_at_stop(exported, images, reference):
    options = DevServerOptions(host="127.0.0.1", grpc_port=0, rest_port=0, warmup=False, max_concurrent_requests=1)
    server = DevServer(str(exported["base"]), "hrnet", options).start()
    client, rest = Client(server.grpc_address, timeout=TIMEOUT), Client(server.rest_address, rest=True, timeout=TIMEOUT)
    started, release = hold_runs(server)
    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(c.predict, {"images": images[:1]}, "predict_images") for c in (client, rest)]
            assert started.acquire(timeout=TIMEOUT) and started.acquire(timeout=TIMEOUT)
            for busy in (client, rest):  # one request in flight per protocol: the next is refused at once
                with pytest.raises(ServingError) as err:
                    busy.predict({"images": images[:1]}, "predict_images")
                assert err.value.code == Code.RESOURCE_EXHAUSTED, err.value
            assert err.value.http_status == 429 and "1 requests in flight" in err.value.message
            stopping = pool.submit(server.stop, 60)
            time.sleep(0.5)
            assert not stopping.done()  # stop() waits for the requests in flight
            release.set()
            for future in pending:
                np.testing.assert_allclose(np.asarray(future.result(timeout=TIMEOUT)["probabilities"], np.float32),
                                           reference["probabilities"][:1], rtol=1e-5, atol=1e-6)
            stopping.result(timeout=TIMEOUT)
        with pytest.raises(ServerUnavailableError):
            Client(server.grpc_address, timeout=10).predict_images(images[:1])
    finally:
        release.set()
        client.close()
        rest.close()
        server.stop()


def test_internal_errors_reach_the_client_as_a_generic_message_and_are_logged(server, images, caplog):
    from hrnet_tfx.serving.dev.core import INTERNAL_MESSAGE

    with server.core.lease("hrnet") as servable:
        run = servable._run

        def broken(feeds, fetches):
            raise RuntimeError("secret detail at /srv/models/hrnet")

        servable._run = broken
    try:
        for address, rest in ((server.grpc_address, False), (server.rest_address, True)):
            with pytest.raises(ServingError) as err, Client(address, rest=rest, timeout=TIMEOUT) as client:
                client.predict_images(images[:1])
            assert err.value.code == Code.INTERNAL and err.value.message == INTERNAL_MESSAGE
            assert err.value.http_status == 500
    finally:
        servable._run = run
    assert caplog.text.count("RuntimeError: secret detail at /srv/models/hrnet") == 2  # details stay in the log


# -- launcher and CLI ------------------------------------------------------------------------------------
def test_tensorflow_model_server_command_and_launch(exported, tmp_path):
    command = model_server_command("/opt/tfs/tensorflow_model_server", "hrnet", "/models/hrnet", grpc_port=9000,
                                   rest_port=9001, poll_seconds=2.4, batching_parameters_file="/tmp/b.txt")
    assert command == ["/opt/tfs/tensorflow_model_server", "--port=9000", "--rest_api_port=9001",
                       "--model_name=hrnet", "--model_base_path=/models/hrnet", "--file_system_poll_wait_seconds=2",
                       "--enable_batching=true", "--batching_parameters_file=/tmp/b.txt"]
    text = BatchingOptions(max_batch_size=16, batch_timeout_micros=500, num_batch_threads=2,
                           allowed_batch_sizes=(4, 16)).to_text_proto()
    assert text.splitlines() == ["max_batch_size { value: 16 }", "batch_timeout_micros { value: 500 }",
                                 "max_enqueued_batches { value: 100 }", "num_batch_threads { value: 2 }",
                                 "allowed_batch_sizes: 4", "allowed_batch_sizes: 16"]
    with pytest.raises(FileNotFoundError, match="not on PATH"):
        serve(str(exported["base"]), "hrnet", use_model_server=True, model_server_binary="no-such-model-server")
    # The real binary is not installable here; a stand-in script on PATH records how serve() launches it.
    record = tmp_path / "argv.txt"
    fake = tmp_path / "bin" / "tensorflow_model_server"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {record}\nfor a in "$@"; do case "$a" in '
                    f'--batching_parameters_file=*) cat "${{a#*=}}" >> {record};; esac; done\nexit 3\n')
    fake.chmod(0o755)
    code = serve(str(exported["base"]), grpc_port=8600, rest_port=8601, batching=BatchingOptions(max_batch_size=8),
                 model_server_binary=str(fake))
    assert code == 3  # the model server's own exit code
    lines = record.read_text().splitlines()
    assert f"--model_base_path={exported['base'] / 'hrnet'}" in lines and "--model_name=hrnet" in lines
    assert "--port=8600" in lines and "--enable_batching=true" in lines and "max_batch_size { value: 8 }" in lines


def test_predict_command_prints_labels(server, images, reference, tmp_path):
    from hrnet_tfx.cli.serving import predict

    paths = []
    for i in (0, 5):
        paths.append(tmp_path / f"img{i}.jpg")
        paths[-1].write_bytes(images[i])
    for args in (["--server", server.grpc_address], ["--server", server.rest_address, "--rest"]):
        result = CliRunner().invoke(predict, args + [str(p) for p in paths], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert lines[0] == str(paths[0]) and lines[6] == str(paths[1]) and len(lines) == 12
        assert lines[1].split()[-1] == reference["top_k_labels"][0][0].decode()
        assert float(lines[1].split()[1]) == pytest.approx(float(reference["top_k_scores"][0][0]), abs=1e-4)
    bad = CliRunner().invoke(predict, ["--server", f"127.0.0.1:{free_port()}", str(paths[0])])
    assert bad.exit_code != 0 and "connection refused" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize("rest", [False, True], ids=["grpc", "rest"])
def test_predict_command_names_a_bad_file_and_still_answers_the_others(server, images, reference, tmp_path, rest):
    from hrnet_tfx.cli.serving import predict

    paths = {name: tmp_path / f"{name}.jpg" for name in ("a", "b", "bad", "c")}
    for i, name in enumerate(("a", "b", "c")):
        paths[name].write_bytes(images[i])
    paths["bad"].write_bytes(b"<html>not an image</html>")
    address = server.rest_address if rest else server.grpc_address
    for batch_size in ("1", "2", "4"):  # bad.jpg is request 3 / item 1 of request 2 / item 2 of request 1
        args = ["--server", address, "--batch-size", batch_size] + (["--rest"] if rest else [])
        result = CliRunner().invoke(predict, args + [str(p) for p in paths.values()])
        assert result.exit_code == 1, result.output
        assert f"error: {paths['bad']}: not a decodable image" in result.stderr, result.stderr
        assert "images[" not in result.output and "Traceback" not in result.output
        assert "1 of 4 images could not be classified" in result.stderr
        lines = result.stdout.splitlines()
        assert lines[0::6] == [str(paths[n]) for n in ("a", "b", "c")], result.stdout  # the others are answered
        for block, row in zip((lines[1], lines[7], lines[13]), (0, 1, 2)):
            assert block.split()[-1] == reference["top_k_labels"][row][0].decode()
    as_json = CliRunner().invoke(predict, args + ["--json", str(paths["bad"]), str(paths["a"])])
    answers = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert as_json.exit_code == 1 and answers[0]["image"] == str(paths["bad"])
    assert answers[0]["error"].startswith("not a decodable image") and answers[1]["image"] == str(paths["a"])


def test_predict_command_says_which_port_it_probably_reached(server, images, tmp_path):
    from hrnet_tfx.cli.serving import predict

    image = tmp_path / "a.jpg"
    image.write_bytes(images[0])
    grpc_at_rest = CliRunner().invoke(predict, ["--server", server.rest_address, str(image)])
    assert grpc_at_rest.exit_code == 1 and "is this the REST port? use --rest" in grpc_at_rest.output, \
        grpc_at_rest.output
    rest_at_grpc = CliRunner().invoke(predict, ["--server", server.grpc_address, "--rest", str(image)])
    assert rest_at_grpc.exit_code == 1 and "is this the gRPC port? drop --rest" in rest_at_grpc.output, \
        rest_at_grpc.output


CLI = ("from hrnet_tfx.cli import main; from hrnet_tfx.cli.serving import serve, predict; "
       "[main.add_command(c) for c in (serve, predict) if c.name not in main.commands]; main()")


@pytest.mark.e2e
def test_serve_command_runs_the_dev_server_and_stops_cleanly_on_sigterm(exported, images, reference, tmp_path):
    grpc_port, rest_port = free_port(), free_port()
    log_path = tmp_path / "serve.log"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", CLI, "serve", str(exported["base"]), "--grpc-port", str(grpc_port), "--rest-port",
             str(rest_port), "--host", "127.0.0.1", "--model-server-binary", "no-such-model-server"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while "development server for model 'hrnet'" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        assert "no-such-model-server is not on PATH" in log_path.read_text()
        with Client(f"127.0.0.1:{grpc_port}", timeout=TIMEOUT) as client:
            top = client.predict_images(images[:1], top_k=1)
        assert top[0][0][0] == reference["top_k_labels"][0][0].decode()
        image = tmp_path / "query.jpg"
        image.write_bytes(images[0])
        out = subprocess.run([sys.executable, "-c", CLI, "predict", "--server", f"127.0.0.1:{rest_port}", "--rest",
                              "--top-k", "2", "--json", str(image)], capture_output=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr.decode()[-2000:]
        answer = json.loads(out.stdout.decode().strip().splitlines()[-1])
        assert answer["image"] == str(image) and len(answer["top_k"]) == 2
        assert answer["top_k"][0][0] == reference["top_k_labels"][0][0].decode()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    text = log_path.read_text()
    assert "shutting down" in text and "development server: stopped" in text


def test_serve_guard_defaults_are_the_readme_table():
    """The development server's guard table in the README states each flag's default; both sides are
    checked against the values here."""
    from hrnet_tfx.cli.serving import serve as serve_command

    documented = dict(re.findall(r"`(--[a-z-]+)` \(([^)]+)\) \|", (REPO / "README.md").read_text()))
    assert documented == {"--max-image-pixels": "25,000,000", "--max-aspect-ratio": "50",
                          "--max-items-per-request": "128", "--max-request-bytes": "16 MiB",
                          "--max-concurrent-requests": "32", "--max-connections": "128", "--request-timeout": "30 s"}
    defaults = {p.opts[0]: p.default for p in serve_command.params if p.opts}
    assert {flag: defaults[flag] for flag in documented} == {
        "--max-image-pixels": 25_000_000, "--max-aspect-ratio": 50, "--max-items-per-request": 128,
        "--max-request-bytes": 16 << 20, "--max-concurrent-requests": 32, "--max-connections": 128,
        "--request-timeout": 30}


def test_animated_png_passes_the_guard_and_decodes_as_its_default_image():
    """README: animated GIFs are refused, animated PNGs are fine (TF decodes the default image only)."""
    from hrnet_tfx.serving.dev.image_guard import ImageGuard

    frames = [Image.new("RGB", (24, 16), (200, 10, 10)), Image.new("RGB", (24, 16), (10, 10, 200))]
    buf = io.BytesIO()
    frames[0].save(buf, "PNG", save_all=True, append_images=frames[1:])
    data = buf.getvalue()
    assert Image.open(io.BytesIO(data)).n_frames == 2
    ImageGuard().check_image(data, "images[0]")
    decoded = tf.io.decode_image(data).numpy()
    assert decoded.shape == (16, 24, 3) and tuple(decoded[0, 0]) == (200, 10, 10)
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ServingError, match=r"images\[0\]: animated GIF refused"):
        ImageGuard().check_image(gif.getvalue(), "images[0]")
