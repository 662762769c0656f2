"""Export, pipeline config, Pusher and report on a file system without directory renames: TF's in-memory
``ram://`` (one process, behaves like a bucket: a directory "rename" there moves no files). Also the
Pusher's object-store protocol under concurrency and after a killed push, and the files written for users.

Models are the hand-weighted colour models of ``test_evaluator_pusher`` (top-1 1.0 / 1/3 on the colour
records), exported with the real serving signatures.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest
import tensorflow as tf

from hrnet_tfx.components import pusher
from hrnet_tfx.components.pusher import (CLAIMS_DIR, PUSH_RECORD, STAGING_PREFIX, PushError,
                                         next_version, push_saved_model, read_push_record, saved_model_fingerprint)
from hrnet_tfx.fs import walk_files
from hrnet_tfx.models.config import ConfigError
from hrnet_tfx.pipeline import load_config
from hrnet_tfx.serving import model_base
from hrnet_tfx.serving.export import export_saved_model, publish_directory
from hrnet_tfx.serving.warmup import WARMUP_DIR, read_warmup_requests, sample_images

from conftest import REPO
from test_evaluator_pusher import LABELS, color_model

gfile = tf.io.gfile


def ram(name: str) -> str:
    """A fresh ``ram://`` directory (the in-memory file system is shared by the whole test process)."""
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def tree(root: str) -> dict:
    """{relative path: size} of every file under ``root``."""
    out = {}
    for dirpath, rel, files in walk_files(root):
        for name in files:
            out[name if rel == "." else f"{rel}/{name}"] = gfile.stat(f"{dirpath}/{name}").length
    return out


@pytest.fixture(scope="module")
def ram_models(color_records):
    """``good`` and ``constant`` exported to ram:// (with the label map) and ``good`` to local disk."""
    base = ram("models")
    label_map = str(color_records / "labels.tsv")
    for kind in ("good", "constant"):
        export_saved_model(color_model(kind), f"{base}/{kind}", LABELS, image_size=64, label_map_path=label_map)
    return base


def assert_complete_version(version_dir: str, source: str | None = None):
    names = tree(version_dir)
    assert {"saved_model.pb", "variables/variables.index", "assets/labels.tsv",
            f"{WARMUP_DIR}/tf_serving_warmup_requests", f"{WARMUP_DIR}/{PUSH_RECORD}"} <= set(names), names
    with gfile.GFile(f"{version_dir}/assets/labels.tsv") as f:
        assert f.read().splitlines()[1] == "1\tg\tgreen"
    assert sorted(r.WhichOneof("log_type") for r in read_warmup_requests(version_dir)) == [
        "classify_log", "predict_log", "predict_log", "predict_log"]
    if source:
        assert read_push_record(version_dir)["fingerprint"] == saved_model_fingerprint(source)


# --- export ---------------------------------------------------------------------------------------------


def test_export_to_ram_loads_and_predicts(ram_models, tmp_path, color_records):
    path = f"{ram_models}/good"
    assert gfile.exists(f"{path}/saved_model.pb") and gfile.exists(f"{path}/variables/variables.index")
    assert gfile.listdir(ram_models) == ["constant", "good"] or sorted(gfile.listdir(ram_models)) == [
        "constant", "good"]  # no staging left beside the exports
    assert not os.path.exists("ram:")  # nothing written to a local ./ram:/ directory
    with gfile.GFile(f"{path}/assets/labels.tsv") as f:
        assert f.read() == (color_records / "labels.tsv").read_text()
    loaded = tf.saved_model.load(path)
    red, green = (np.full((64, 64, 3), c, np.uint8) for c in ((220, 20, 20), (20, 220, 20)))
    images = tf.constant([tf.io.encode_jpeg(red).numpy(), tf.io.encode_jpeg(green).numpy()])
    out = loaded.signatures["predict_images"](images=images)
    assert [row[0].decode() for row in out["top_k_labels"].numpy()] == ["red", "green"]
    with pytest.raises(FileExistsError, match="already exists"):
        export_saved_model(color_model("good"), path, LABELS, image_size=64)


def test_a_failed_export_leaves_nothing_at_the_export_dir():
    base = ram("failed-export")
    with pytest.raises(tf.errors.NotFoundError):
        export_saved_model(color_model("good"), f"{base}/m", LABELS, image_size=64,
                           label_map_path=f"{base}/no-such-labels.tsv")
    assert not gfile.exists(f"{base}/m") and gfile.listdir(base) == []


def test_object_store_publishing_copies_saved_model_pb_last(tmp_path, ram_models):
    """A copy that breaks midway (here: a dangling file in variables/) leaves no saved_model.pb."""
    staging = tmp_path / "staging"
    pusher.copy_tree(f"{ram_models}/good", str(staging))
    (staging / "variables" / "zz-dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(tf.errors.NotFoundError):
        publish_directory(str(staging), str(tmp_path / "final"), rename=False)
    assert (tmp_path / "final" / "variables").is_dir()  # the copy had started
    assert not (tmp_path / "final" / "saved_model.pb").exists()
    assert model_base.saved_model_file(str(tmp_path / "final")) is None


# --- pipeline config -----------------------------------------------------------------------------------


def test_pipeline_config_saves_to_a_bucket_and_metadata_stays_local(tmp_path):
    root = ram("pipeline")
    config = load_config("demo", "", [f"root={root}", f"metadata_path={tmp_path / 'mlmd.sqlite'}"])
    config.save(f"{root}/pipeline_config.json")
    with gfile.GFile(f"{root}/pipeline_config.json") as f:
        saved = json.loads(f.read())
    assert saved["root"] == root and type(config).from_dict(saved) == config
    assert gfile.listdir(root) == ["pipeline_config.json"]  # no temporary file left
    assert config.metadata == str(tmp_path / "mlmd.sqlite")
    with pytest.raises(ConfigError, match=r"metadata_path 'ram://.*/metadata.sqlite' is not a local path"):
        load_config("demo", "", [f"root={root}"]).metadata


# --- push protocol on a bucket -------------------------------------------------------------------------


def test_push_from_and_to_ram_and_a_rerun_pushes_no_second_version(ram_models):
    base = ram("serving")
    first = push_saved_model(f"{ram_models}/good", base, "hrnet", now=1_700_000_000)
    assert first == (1_700_000_000, f"{base}/hrnet/1700000000", False)
    assert_complete_version(first.directory, f"{ram_models}/good")
    assert read_push_record(first.directory)["source"] == f"{ram_models}/good"
    # the same model again: it is already the latest version, nothing is written
    again = push_saved_model(f"{ram_models}/good", base, "hrnet", now=1_700_000_100)
    assert again == (first.version, first.directory, True)
    other = push_saved_model(f"{ram_models}/constant", base, "hrnet", now=1_700_000_000)
    assert other.version == first.version + 1 and not other.reused
    # a rollback to the older model is a new version: only the latest counts as "already pushed"
    rollback = push_saved_model(f"{ram_models}/good", base, "hrnet", now=1_700_000_000)
    assert rollback.version == other.version + 1 and not rollback.reused
    assert model_base.complete_versions(f"{base}/hrnet") == [first.version, other.version, rollback.version]
    assert sorted(gfile.listdir(f"{base}/hrnet")) == sorted(
        [CLAIMS_DIR, *map(str, model_base.complete_versions(f"{base}/hrnet"))])
    assert gfile.listdir(f"{base}/hrnet/{CLAIMS_DIR}") == []


@pytest.mark.parametrize("where", ["ram", "local"])
def test_concurrent_pushes_get_distinct_versions_with_complete_contents(where, ram_models, tmp_path):
    """Four pushes start together at the same clock second: the object-store claim protocol (ram://) and
    the local rename give each its own version, each version holds its own model."""
    base = ram("concurrent") if where == "ram" else str(tmp_path / "serving")
    sources = [f"{ram_models}/good", f"{ram_models}/constant"] * 2
    barrier = threading.Barrier(len(sources))
    results, errors = [None] * len(sources), []

    def run(i):
        try:
            barrier.wait()
            # skip_if_latest off: the same model twice must still be two versions here
            results[i] = push_saved_model(sources[i], base, "hrnet", now=1_700_000_000, skip_if_latest=False)
        except BaseException as e:  # noqa: BLE001  (reported below)
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    versions = sorted(r.version for r in results)
    assert versions == list(range(1_700_000_000, 1_700_000_000 + len(sources)))
    assert model_base.complete_versions(f"{base}/hrnet") == versions
    for source, result in zip(sources, results):
        assert_complete_version(result.directory, source)
    leftovers = [n for n in gfile.listdir(f"{base}/hrnet") if n.rstrip("/").startswith(STAGING_PREFIX)]
    assert leftovers == []
    if where == "ram":
        assert gfile.listdir(f"{base}/hrnet/{CLAIMS_DIR}") == []


def test_a_live_claim_is_respected_and_a_stale_one_cleaned_with_its_half_copied_version(ram_models):
    base = ram("claims")
    model_dir = f"{base}/hrnet"
    now_ms = int(time.time() * 1000)
    gfile.makedirs(f"{model_dir}/{CLAIMS_DIR}")
    # a push killed two hours ago during its last copy: claim + version directory without saved_model.pb
    gfile.makedirs(f"{model_dir}/1700000000/variables")
    with gfile.GFile(f"{model_dir}/1700000000/variables/variables.index", "w") as f:
        f.write("partial")
    stale_ms = now_ms - 2 * 3600 * 1000
    for path in (f"{model_dir}/{CLAIMS_DIR}/1700000000-{stale_ms}-{'a' * 32}",
                 f"{model_dir}/{STAGING_PREFIX}{stale_ms}-{'a' * 32}/saved_model.pb"):
        gfile.makedirs(path.rsplit("/", 1)[0])
        with gfile.GFile(path, "w") as f:
            f.write("x")
    # a push claiming 1700000001 right now, and its staging directory
    live = f"{model_dir}/{CLAIMS_DIR}/1700000001-{now_ms}-{'b' * 32}"
    live_staging = f"{model_dir}/{STAGING_PREFIX}{now_ms}-{'b' * 32}"
    gfile.makedirs(live_staging)
    with gfile.GFile(live, "w") as f:
        f.write("x")

    result = push_saved_model(f"{ram_models}/good", base, "hrnet", now=1_700_000_000)
    assert result.version == 1_700_000_002  # neither the half-copied version nor the live claim's number
    names = {n.rstrip("/") for n in gfile.listdir(model_dir)}
    assert names == {CLAIMS_DIR, "1700000002", live_staging.rsplit("/", 1)[1]}
    assert gfile.listdir(f"{model_dir}/{CLAIMS_DIR}") == [live.rsplit("/", 1)[1]]


def test_version_names_are_ascii_digits_only(tmp_path):
    model_dir = tmp_path / "hrnet"
    (model_dir / "\u0661\u0662\u0663").mkdir(parents=True)  # Arabic-Indic "123": str.isdigit() says yes
    (model_dir / "7").mkdir()
    assert next_version(str(model_dir), now=5) == 8


KILLED_PUSH = """
import sys, threading
from hrnet_tfx.components.pusher import push_saved_model
from hrnet_tfx.serving import warmup
warmup.read_images = lambda *args, **kwargs: threading.Event().wait()  # a read that never ends: killed here
push_saved_model(sys.argv[1], sys.argv[2], "hrnet", warmup_images=[sys.argv[3]], rename=False)
"""


@pytest.mark.e2e  # a real process killed with SIGKILL: importing TFX in it takes ~20 s on 2 cores
def test_a_killed_push_leaves_staging_that_a_later_push_cleans_once_stale(tmp_path, ram_models):
    """The push is killed while staging (held in reading its warm-up images; a FIFO is refused there, not
    waited on): its staging directory stays; a later push leaves it while it may be live, and removes it
    once stale."""
    source, base = tmp_path / "model", tmp_path / "serving"
    pusher.copy_tree(f"{ram_models}/good", str(source))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_PUSH, str(source), str(base), "image.jpg"], env=env)
    try:
        deadline = time.time() + 120
        staged = []
        while time.time() < deadline and not staged:
            staged = list((base / "hrnet").glob(f"{STAGING_PREFIX}*/variables/variables.index"))
            assert proc.poll() is None, "the push ended before it could be killed"
            time.sleep(0.2)
        assert staged, "the push never staged"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (staging,) = (base / "hrnet").glob(f"{STAGING_PREFIX}*")
    assert model_base.version_dirs(str(base / "hrnet")) == {}

    first = push_saved_model(str(source), str(base), "hrnet", rename=False)  # young: may be a live push
    assert staging.exists()
    (source / "assets" / "extra.txt").write_text("a changed model")
    second = push_saved_model(str(source), str(base), "hrnet", rename=False, stale_after=0)
    assert not staging.exists() and second.version == first.version + 1
    assert sorted(p.name for p in (base / "hrnet").iterdir()) == sorted(
        [CLAIMS_DIR, str(first.version), str(second.version)])


def test_push_refusals_name_the_problem(ram_models):
    base = ram("refusals")
    with pytest.raises(PushError, match="not a SavedModel"):
        push_saved_model(f"{ram_models}/nothing", base, "hrnet")
    with pytest.raises(PushError, match=r"model name 'hrnet\\n'"):
        push_saved_model(f"{ram_models}/good", base, "hrnet\n")
    assert not gfile.exists(base)


def test_warmup_images_come_from_a_bucket_and_are_bounded(ram_models):
    from hrnet_tfx.serving.images import MAX_IMAGE_BYTES, ImageFileError

    base = ram("warmup")
    image = sample_images(1, seed=3)[0]
    gfile.makedirs(base)
    with gfile.GFile(f"{base}/cat.jpg", "wb") as f:
        f.write(image)
    with gfile.GFile(f"{base}/huge.jpg", "wb") as f:
        f.write(b"\xff" * (MAX_IMAGE_BYTES + 1))
    with pytest.raises(ImageFileError, match=rf"warm-up image ram://.*/huge.jpg is larger than {MAX_IMAGE_BYTES} bytes"):
        push_saved_model(f"{ram_models}/good", base, "hrnet", warmup_images=[f"{base}/huge.jpg"])
    assert model_base.version_dirs(f"{base}/hrnet") == {}
    push = push_saved_model(f"{ram_models}/good", base, "hrnet", warmup_images=[f"{base}/cat.jpg"])
    records = list(read_warmup_requests(push.directory))
    predict = next(r.predict_log.request for r in records if r.predict_log.request.model_spec.signature_name
                   == "predict_images")
    assert predict.inputs["images"].string_val == [image]


@pytest.mark.parametrize("uri", ["s3://bucket/x", "hdfs://namenode/x"])
def test_tensorflow_reads_no_s3_or_hdfs_by_itself(uri):
    """The claim behind SHARED_SCHEMES (and the README's Paths note): the pinned TensorFlow has no s3:// or
    hdfs:// file system. Installing tensorflow-io would make this fail, and the refusals must then change."""
    with pytest.raises(tf.errors.UnimplementedError, match="not implemented"):
        gfile.exists(uri)


@pytest.mark.parametrize("path, problem", [
    ("gs://bucket/runs", None),
    ("/data/runs", None),
    ("runs", None),  # local paths are the caller's question
    ("ram://runs", "in-memory file system: it lives in one process"),
    ("file:///data/runs", "file:// is the pod's own disk"),
    ("s3://bucket/runs", "s3:// is not a file system TensorFlow 2.16 or TF Serving 2.16 reads by itself"),
    ("hdfs://namenode/runs", "hdfs:// is not a file system"),
    ("GS://bucket/runs", "GS:// is not a file system"),
])
def test_only_gs_uris_are_storage_pods_share(path, problem):
    from hrnet_tfx.fs import shared_uri_problem

    found = shared_uri_problem(path)
    assert (found is None) if problem is None else (problem in found), found


@pytest.mark.parametrize("args", [
    ["data", "convert", "{tmp}", "s3://bucket/out"],
    ["data", "convert", "hdfs://namenode/ILSVRC2012", "{tmp}/out"],
    ["pipeline", "run", "--preset", "demo", "-s", "input_base={tmp}", "-s", "root=s3://bucket/pipelines",
     "-s", "metadata_path={tmp}/metadata.sqlite"],
    ["pipeline", "run", "--preset", "demo", "-s", "input_base=s3://bucket/ILSVRC2012", "-s", "root={tmp}/p"],
    ["pipeline", "run", "--preset", "demo", "-s", "input_base={tmp}", "-s", "root={tmp}/p",
     "-s", "serving_base=hdfs://namenode/serving"],
    ["train", "--model", "hrnet_w18_small", "--model-dir", "s3://bucket/runs", "-s", "train_files={tmp}/t-*",
     "-s", "eval_files={tmp}/e-*", "-s", "num_classes=2"],
    ["train", "--model", "hrnet_w18_small", "--model-dir", "{tmp}/runs", "-s", "train_files={tmp}/t-*",
     "-s", "eval_files=s3://bucket/e-*", "-s", "num_classes=2"],
    ["serve", "s3://bucket/serving", "--model-name", "hrnet"],
    ["models", "import-weights", "hrnet_w18_small", "{tmp}/w.pth", "--output", "hdfs://namenode/w18"],
])
@pytest.mark.timeout(300)  # without the check, `serve --model-name` waits for ever for a push it cannot see
def test_a_bucket_tensorflow_cannot_read_is_named_before_any_work(args, tmp_path):
    """s3:// and hdfs:// are not "missing" (gfile.isdir answers False for them) and not a traceback: each command
    says that TensorFlow here has no file system for the scheme, and writes nothing."""
    from click.testing import CliRunner

    from hrnet_tfx.cli import main

    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in args])
    scheme = next(a for a in args if "://" in a).split("=")[-1].split("://")[0]
    assert result.exit_code == 1, result.output
    assert f"TensorFlow here has no file system for {scheme}://" in result.output, result.output
    assert "Traceback" not in result.output and "does not exist" not in result.output
    assert os.listdir(tmp_path) == []
