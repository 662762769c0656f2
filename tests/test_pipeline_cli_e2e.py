"""The pipeline through the real ``tfx`` CLI, run as subprocesses exactly as users do (scripts/demo.sh):

    tfx pipeline create --engine local --pipeline_path hrnet_tfx/pipeline/local_runner.py
    tfx pipeline list   --engine local
    tfx run create      --engine local --pipeline_name hrnet-tfx-demo

The config reaches ``local_runner.py`` through ``HRNET_TFX_PRESET`` / ``HRNET_TFX_OVERRIDES``. Note that
``tfx run create`` re-executes the DSL file in a fresh ``python`` process with the *current* environment
(the CLI only remembers the DSL path, the pipeline name and its root), so every command gets the same env.

The local engine's CLI keeps its registered pipelines in ``$LOCAL_HOME`` (``<ENGINE>_HOME``; default
``$HOME/tfx/local/``, and ``$HOME/local/`` for pre-0.25 layouts, which also honours ``$LOCAL_HOME``), one
folder per pipeline holding ``pipeline_args.json``. Each test points ``LOCAL_HOME`` into its ``tmp_path``,
so it never touches the user's ``~/tfx`` nor collides with an earlier run ("Pipeline ... already exists").

``--engine local`` is always passed: engine auto-detection in TFX 1.16 crashes when kfp is installed.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from hrnet_tfx.data.sample import make_sample

REPO = Path(__file__).resolve().parent.parent
DSL = REPO / "hrnet_tfx" / "pipeline" / "local_runner.py"
BIN = Path(sys.executable).parent
TFX = BIN / "tfx"
PIPELINE = "hrnet-tfx-demo"
TIMEOUT = 1500  # seconds per command; a run takes a few minutes on a 2-core machine


def _env(tfx_home: Path, overrides: str) -> dict:
    env = dict(os.environ)
    env.pop("HRNET_TFX_CONFIG", None)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        TF_USE_LEGACY_KERAS="1",
        TF_CPP_MIN_LOG_LEVEL="3",
        PYTHONWARNINGS="ignore::FutureWarning",
        LOCAL_HOME=str(tfx_home),  # the tfx CLI's own state for --engine local
        HRNET_TFX_PRESET="demo",
        HRNET_TFX_OVERRIDES=overrides,
    )
    return env


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tfx(env: dict, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``tfx ARGS --engine local``; with ``check``, a nonzero exit fails with the output's tail."""
    cmd = [str(TFX), *args, "--engine", "local"]
    result = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    if check:
        assert result.returncode == 0, (
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout (tail) ---\n{_tail(result.stdout)}"
            f"\n--- stderr (tail) ---\n{_tail(result.stderr)}")
    return result


def _store(root: Path) -> metadata_store.MetadataStore:
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = str(root / "metadata.sqlite")  # PipelineConfig.metadata's default
    return metadata_store.MetadataStore(connection)


def _cached_components(store: metadata_store.MetadataStore) -> set:
    return {store.get_execution_types_by_id([e.type_id])[0].name.rsplit(".", 1)[-1]
            for e in store.get_executions() if e.last_known_state == metadata_store_pb2.Execution.CACHED}


@pytest.mark.parametrize("overrides, message", [
    ("input_base={sample} train.no_such_key=1",
     "hrnet-tfx pipeline: pipeline config, train: unknown key(s) ['no_such_key']"),
    ("input_base={tmp}/missing", "hrnet-tfx pipeline: pipeline config: input_base {tmp}/missing does not exist"),
])
def test_cli_create_refuses_a_bad_config_in_one_line(tmp_path, overrides, message):
    make_sample(str(tmp_path / "sample"), num_classes=2, train_per_class=1, val_per_class=1, image_size=16)
    tfx_home = tmp_path / "tfx_home"
    env = _env(tfx_home, overrides.format(sample=tmp_path / "sample", tmp=tmp_path) + f" root={tmp_path / 'root'}")
    result = _tfx(env, tmp_path, "pipeline", "create", "--pipeline_path", str(DSL), check=False)
    assert result.returncode != 0, result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith(message.format(tmp=tmp_path)), _tail(result.stderr)
    assert "Traceback" not in result.stderr
    assert not (tfx_home / PIPELINE).exists() and not (tmp_path / "root").exists()  # nothing registered or written


@pytest.mark.e2e
def test_pipeline_through_the_tfx_cli(tmp_path):
    sample, root, serving, tfx_home = (tmp_path / d for d in ("sample", "root", "serving", "tfx_home"))
    make_sample(str(sample), num_classes=3, train_per_class=8, val_per_class=3, image_size=48)
    env = _env(tfx_home, f"input_base={sample} root={root} serving_base={serving} "
                         "train.train_steps=20 top1_lower_bound=0.0 convert.verify=decode fingerprint=files")

    created = _tfx(env, tmp_path, "pipeline", "create", "--pipeline_path", str(DSL))
    assert f'Pipeline "{PIPELINE}" created successfully.' in created.stdout
    assert (tfx_home / PIPELINE / "pipeline_args.json").exists()  # the CLI's state is in tmp_path

    listed = _tfx(env, tmp_path, "pipeline", "list")
    assert PIPELINE in listed.stdout.split()

    ran = _tfx(env, tmp_path, "run", "create", "--pipeline_name", PIPELINE)
    store = _store(root)
    for kind in ("Examples", "Model", "ModelRun", "ModelEvaluation", "ModelBlessing", "PushedModel"):
        assert len(store.get_artifacts_by_type(kind)) == 1, kind
    assert [a.custom_properties["pushed"].int_value for a in store.get_artifacts_by_type("PushedModel")] == [1]
    (version,) = os.listdir(serving / "hrnet")
    assert (serving / "hrnet" / version / "saved_model.pb").exists()
    summary = ran.stdout[ran.stdout.index(f"pipeline {PIPELINE} finished"):].splitlines()  # the run ends with it
    assert [line.split(":")[0] for line in summary[2:]] == [
        "TensorBoard logs", "trained model", "metrics report", "pushed model", "serve it"]
    assert summary[1].startswith("eval top-1 ") and summary[1].endswith("(9 images, step 20)")
    assert summary[5] == f"pushed model:      {serving / 'hrnet' / version}"
    assert "ArtifactQuery.property_predicate" not in ran.stderr  # known noise, filtered by message
    # The typed sections reached the components: convert:/fingerprint ImageExampleGen's execution, and train:'s
    # counts left to the data (0) the Trainer's run, which took them from ImageExampleGen's manifest.
    (gen,) = [e for e in store.get_executions() if "verify" in e.custom_properties]
    assert (gen.custom_properties["verify"].string_value, gen.custom_properties["fingerprint"].string_value) == (
        "decode", "files")
    (run_dir,) = (root / "HorovodTrainer" / "model_run").iterdir()
    trained = json.loads((run_dir / "train_config.json").read_text())
    assert (trained["num_classes"], trained["num_train_examples"]) == (3, 24)
    assert json.loads((root / "pipeline_config.json").read_text())["train"]["num_classes"] == 0

    _tfx(env, tmp_path, "run", "create", "--pipeline_name", PIPELINE)  # unchanged inputs: from the cache
    assert {"ImageExampleGen", "HorovodTrainer"} <= _cached_components(store)
    assert len(store.get_artifacts_by_type("Examples")) == 1 and len(store.get_artifacts_by_type("Model")) == 1
