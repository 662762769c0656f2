"""Official weights -> fine-tune -> serve, as the README tells a user to do it, with the tiny network:

.pth --models import-weights--> serving SavedModel (version 1) --serve + predict--> answers with its labels
     --train --init-from (another class count, 10 steps)--> export (version 2) --> the server picks it up
     --predict--> answers with the new labels.
"""

import io
import json
import os
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from hrnet_tfx.cli import main

from conftest import FIXTURES, REPO, free_port, write_color_records

TIMEOUT = 600


def _cli(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _predict(port: int, image, env) -> list:
    out = subprocess.run([sys.executable, "-m", "hrnet_tfx.cli", "predict", "--server", f"127.0.0.1:{port}", "--json",
                          str(image)], capture_output=True, text=True, env=env, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["top_k"]


def _wait_for_labels(port: int, image, wanted: set, server, log) -> None:
    from hrnet_tfx.serving.client import Client
    from hrnet_tfx.serving.errors import ServingError

    deadline = time.monotonic() + TIMEOUT
    while True:
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        try:
            with Client(f"127.0.0.1:{port}", timeout=30) as client:
                if {label for label, _ in client.predict_images([str(image)], top_k=10)[0]} == wanted:
                    return
        except ServingError:
            pass  # not up yet
        time.sleep(1)


@pytest.mark.e2e
def test_official_weights_fine_tuned_and_served(tmp_path):
    data = write_color_records(tmp_path / "colors", train=24, eval_=6, shards=(2, 1))
    base, imported = tmp_path / "serving", tmp_path / "serving" / "hrnet" / "1"
    red = tmp_path / "red.jpg"
    buf = io.BytesIO()
    Image.new("RGB", (80, 72), (200, 30, 30)).save(buf, "JPEG")
    red.write_bytes(buf.getvalue())
    data_settings = ["-s", f"train_files={data}/train/*", "-s", f"eval_files={data}/eval/*", "-s", "image_size=64",
                     "-s", "global_batch_size=4"]

    _cli("models", "import-weights", "tiny.yaml", str(FIXTURES / "timm_tiny" / "official.pth"), "--output",
         str(imported), "--image-size", "64")
    evaluated = json.loads(_cli("train", "--model", "tiny.yaml", "--init-from", str(imported), "--model-dir",
                                str(tmp_path / "eval"), "--eval-only", "-s", "num_classes=10", *data_settings
                                ).strip().splitlines()[-1])
    assert (evaluated["count"], evaluated["step"]) == (6, 0)

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = tmp_path / "serve.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen([sys.executable, "-m", "hrnet_tfx.cli", "serve", str(base), "--model-name", "hrnet",
                                   "--server", "dev", "--host", "127.0.0.1", "--grpc-port", str(port), "--rest-port",
                                   "0"], stdout=log_file, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_for_labels(port, red, {f"class_{i}" for i in range(10)}, server, log)
        answer = _predict(port, red, env)  # the imported model has the predict_images signature
        assert len(answer) == 5 and {label for label, _ in answer} <= {f"class_{i}" for i in range(10)}

        metrics = json.loads(_cli("train", "--model", "tiny.yaml", "--init-from", str(imported), "--model-dir",
                                  str(tmp_path / "run"), "--export-dir", str(base / "hrnet" / "2"), "-s",
                                  f"label_map={data}/labels.tsv", "-s", "num_classes=3", "-s", "train_steps=10",
                                  *data_settings).strip().splitlines()[-1])
        assert (metrics["step"], metrics["count"]) == (10, 6)
        _wait_for_labels(port, red, {"red", "green", "blue"}, server, log)  # version 2 replaced version 1
        answer = _predict(port, red, env)
        assert sorted(label for label, _ in answer) == ["blue", "green", "red"]
        assert abs(sum(score for _, score in answer) - 1.0) < 1e-4
    finally:
        server.terminate()
        server.wait(timeout=120)
