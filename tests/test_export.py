"""The export serves the BatchNorm-folded network (float32 or bfloat16) and keeps the training weights beside it.

What it must keep: the served logits are the Keras model's (float32 within 1e-4 relative; bfloat16 agrees on
the top-1 class), the SavedModel holds one copy of the weights (the folded ones), and an export (also a
pushed version, also on a bucket, also one written before the change) still initialises a model exactly
(``load_weights_into``, ``train --init-from``).
"""

import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx import WEIGHT_CACHE_ENV, models
from hrnet_tfx.fs import copy_tree
from hrnet_tfx.models.inference import INFERENCE_DTYPES, inference_model
from hrnet_tfx.serving.export import (TRAINING_WEIGHTS, ServingModule, export_saved_model, load_weights_into,
                                      weights_checkpoint, write_training_weights)
from test_inference import natural_images, randomise_batch_norms, relative_error

LABELS = [f"class {i}" for i in range(100)]


@pytest.fixture(scope="module")
def trained(tiny_config_path):
    """A tiny network with non-trivial BatchNorm statistics (a fold that drops one changes the logits)."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(3)
    return randomise_batch_norms(models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64), 3)


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    """``{dtype: export dir}``: float32 by ``export_saved_model``'s default, bfloat16 by the Trainer's export
    (``serving_dtype`` in the training config)."""
    from hrnet_tfx.training import TrainConfig
    from hrnet_tfx.training.loop import export

    root = tmp_path_factory.mktemp("exports")
    config = TrainConfig(model="tiny.yaml", num_classes=len(LABELS), image_size=64, serving_dtype="bfloat16",
                         export_dir=str(root / "bfloat16"))
    return {"float32": export_saved_model(trained, str(root / "float32"), LABELS, image_size=64),
            "bfloat16": export(config, trained)}


@pytest.fixture(scope="module")
def images():
    return natural_images(64, 48)[0]


def saved_weights(export_dir):
    """``[(shape, dtype)]`` of the floating-point constants of rank >= 1 in the SavedModel's network: the one
    function of its graph that holds convolutions (the frozen served network every signature calls)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    (meta,) = saved.meta_graphs
    graphs = [list(meta.graph_def.node)] + [list(fn.node_def) for fn in meta.graph_def.library.function]
    (network,) = [nodes for nodes in graphs if any(n.op == "Conv2D" for n in nodes)]
    weights = []
    for node in network:
        dtype = tf.dtypes.as_dtype(node.attr["dtype"].type) if node.op == "Const" else None
        shape = tuple(d.size for d in node.attr["value"].tensor.tensor_shape.dim) if dtype else ()
        if dtype is not None and dtype.is_floating and shape:
            weights.append((shape, dtype))
    return weights


def saved_variables(export_dir):
    """``{name: (shape, dtype)}`` of the variables a SavedModel's checkpoint holds (TF Serving loads these)."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    dtypes = reader.get_variable_to_dtype_map()
    return {n: (tuple(s), dtypes[n]) for n, s in reader.get_variable_to_shape_map().items()
            if n.endswith("VARIABLE_VALUE")}


def test_float32_export_serves_the_models_logits_with_one_copy_of_the_weights(trained, exports, images):
    loaded = tf.saved_model.load(exports["float32"])
    expected = trained(images, training=False).numpy()
    assert relative_error(loaded.logits(images).numpy(), expected) < 1e-4
    folded = inference_model(trained)
    assert saved_variables(exports["float32"]) == {}  # the weights are constants,
    stored = saved_weights(exports["float32"])  # once, in the one function every signature calls
    assert sorted(s for s, _ in stored) == sorted(tuple(v.shape) for v in folded.variables)
    assert len(folded.variables) == 174
    assert not hasattr(loaded, "model_variables")


def test_bfloat16_export_agrees_with_float32_on_the_top_class(exports, images):
    """Measured on these 48 photo-like images: 48 of 48 top-1 classes agree (logits within 1.2% of their spread;
    the float32 export is within 1.0e-6 relative of the Keras model)."""
    exact_model = tf.saved_model.load(exports["float32"])
    exact = exact_model.logits(images).numpy()
    approx_model = tf.saved_model.load(exports["bfloat16"])
    approx = approx_model.logits(images).numpy()
    assert approx.dtype == np.float32 and not np.array_equal(approx, exact)
    agreement = float(np.mean(approx.argmax(1) == exact.argmax(1)))
    assert agreement >= 0.9, agreement
    stored = saved_weights(exports["bfloat16"])
    assert {d for s, d in stored if len(s) == 4} == {tf.bfloat16}  # every convolution kernel
    assert [d for s, d in stored if len(s) == 2] == [tf.float32]  # but the classifier's
    # the development server runs the signatures the way TF Serving does (a session over the MetaGraph)
    from hrnet_tfx.serving.dev.servable import SavedModelServable

    request = np.empty(1, dtype=object)
    request[:] = [_jpeg()]
    served = SavedModelServable("hrnet", 1, exports["bfloat16"]).predict("predict_images_top_k", {"images": request})
    direct = approx_model.signatures["predict_images_top_k"](images=tf.constant(request.tolist()))
    assert served["top_k_scores"].dtype == np.float32
    np.testing.assert_array_equal(served["top_k_ids"], direct["top_k_ids"].numpy())
    np.testing.assert_allclose(served["top_k_scores"], direct["top_k_scores"].numpy(), rtol=1e-6)


SESSION_SCRIPT = """
import sys
import numpy as np
import hrnet_tfx
from hrnet_tfx.serving.dev.servable import SavedModelServable

servable = SavedModelServable("hrnet", 1, sys.argv[1])  # TF Serving's way: a session over the MetaGraph
request = np.empty(2, dtype=object)
request[:] = [open(sys.argv[2], "rb").read()] * 2
for call in range(3):
    print(f"#call {call}", flush=True)
    servable.predict("predict_images_top_k", {"images": request})
    sys.stdout.flush()
"""


def test_the_served_graph_reorders_each_filter_once(exports, tmp_path):
    """The exported weights are graph constants, so TensorFlow's oneDNN convolutions keep each filter in
    oneDNN's layout after the first call, in TF Serving's session form too. With variables every call
    reordered every filter again (17% of hrnet_w18's oneDNN time), unless a process-wide setting said so."""
    image = tmp_path / "query.jpg"
    image.write_bytes(_jpeg())
    env = {k: v for k, v in os.environ.items() if k != WEIGHT_CACHE_ENV}  # the graph alone must do it
    env.update(ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", SESSION_SCRIPT, exports["float32"], str(image)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    calls = [[line.split(",")[4] for line in part.splitlines() if line.startswith("onednn_verbose")
              and ",exec," in line] for part in done.stdout.split("#call ")[1:]]
    kernels = sum(1 for shape, _ in saved_weights(exports["float32"]) if len(shape) == 4)
    assert [c.count("convolution") for c in calls] == [kernels] * 3
    assert calls[0].count("reorder") >= kernels  # the first call reorders every filter, and the log shows it
    assert calls[2].count("reorder") <= 2, calls[2]  # later calls none (one input reorder at most)


def _jpeg():
    return tf.io.encode_jpeg(tf.cast(tf.random.stateless_uniform([80, 96, 3], [0, 1], maxval=255), tf.uint8)).numpy()


@pytest.mark.parametrize("dtype", INFERENCE_DTYPES)
def test_an_export_initialises_a_fresh_model_exactly(trained, exports, images, tiny_config_path, dtype):
    fresh = models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64)
    assert load_weights_into(fresh, exports[dtype]) == []
    for a, b in zip(fresh.variables, trained.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    np.testing.assert_array_equal(fresh(images, training=False).numpy(), trained(images, training=False).numpy())
    assert weights_checkpoint(exports[dtype]) == os.path.join(exports[dtype], TRAINING_WEIGHTS)


def test_an_export_written_before_the_training_weights_still_loads(trained, tiny_config_path, tmp_path):
    """Older exports kept the Keras model's variables in the SavedModel itself (``model_variables``)."""
    old = tf.Module()
    old.model_variables = list(trained.variables)
    tf.saved_model.save(old, str(tmp_path / "old"))
    fresh = models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64)
    assert load_weights_into(fresh, str(tmp_path / "old")) == []
    for a, b in zip(fresh.variables, trained.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    assert weights_checkpoint(str(tmp_path / "old")) == os.path.join(str(tmp_path / "old"), "variables", "variables")


def test_unreadable_training_weights_are_named_and_nothing_is_assigned(exports, tiny_config_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exports["float32"], broken)
    data = [p for p in (broken / os.path.dirname(TRAINING_WEIGHTS)).iterdir() if ".data-" in p.name]
    assert len(data) == 1
    data[0].write_bytes(data[0].read_bytes()[: data[0].stat().st_size // 2])
    fresh = models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64)
    before = [v.numpy() for v in fresh.variables]
    with pytest.raises(ValueError, match=r"cannot read \S+ from the training weights .*broken/assets.extra/"
                                         r"training_weights/weights"):
        load_weights_into(fresh, str(broken))
    for a, b in zip(fresh.variables, before):
        np.testing.assert_array_equal(a.numpy(), b)


def test_fine_tune_from_an_export_on_a_bucket(trained, exports, tiny_config_path):
    """(``tests/test_buckets.py`` exports to ``ram://``; here the export is copied there, which is faster.)"""
    export_dir = f"ram://export-{uuid.uuid4().hex[:8]}/hrnet"
    copy_tree(exports["float32"], export_dir)
    assert tf.io.gfile.exists(f"{export_dir}/{TRAINING_WEIGHTS}.index")
    other = models.build_model(tiny_config_path, num_classes=3, image_size=64)
    assert load_weights_into(other, export_dir) == ["classifier/bias:0", "classifier/kernel:0"]
    for a, b in zip(other.variables[:-2], trained.variables[:-2]):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)


def test_serving_module_refuses_unknown_dtypes_and_unfolded_bfloat16(trained):
    with pytest.raises(ValueError, match=r"serving_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        ServingModule(trained, LABELS, 64, serving_dtype="float16")
    with pytest.raises(ValueError, match="an unfolded export serves the model as it is: serving_dtype must be float32"):
        ServingModule(trained, LABELS, 64, serving_dtype="bfloat16", fold=False)
    unfolded = ServingModule(trained, LABELS, 64, fold=False)
    images = natural_images(64, 4)[0]
    assert relative_error(unfolded.logits(images).numpy(), trained(images, training=False).numpy()) < 1e-4
    assert not unfolded.variables


def test_an_export_too_large_for_one_graph_is_refused_before_it_is_written(trained, monkeypatch, tmp_path):
    """The weights are constants of saved_model.pb, which protobuf caps at 2 GiB: a network beyond that is
    refused by name (the limit lowered here to the tiny network's size) instead of failing inside the save."""
    import hrnet_tfx.serving.export as export_lib

    size = sum(v.shape.num_elements() * 4 for v in inference_model(trained).variables)
    monkeypatch.setattr(export_lib, "MAX_GRAPH_WEIGHT_BYTES", size - 1)
    with pytest.raises(ValueError, match=rf"weights take {size:,} bytes; .* caps at 2 GiB .* serve in bfloat16"):
        export_saved_model(trained, str(tmp_path / "big"), LABELS, image_size=64)
    assert not os.path.exists(tmp_path / "big") and os.listdir(tmp_path) == []
    monkeypatch.setattr(export_lib, "MAX_GRAPH_WEIGHT_BYTES", size)
    export_saved_model(trained, str(tmp_path / "fits"), LABELS, image_size=64)


def test_pushed_version_keeps_the_training_weights_beside_the_push_record(trained, exports, tiny_config_path,
                                                                          tmp_path):
    from hrnet_tfx.components.pusher import push_saved_model, read_push_record, saved_model_fingerprint
    from hrnet_tfx.data.features import LABEL_MAP_FILENAME

    labels = tmp_path / LABEL_MAP_FILENAME
    labels.write_text("".join(f"{i}\tc{i}\t{name}\n" for i, name in enumerate(LABELS)))
    push = push_saved_model(exports["float32"], str(tmp_path / "base"), "hrnet", label_map_path=str(labels))
    extra = sorted(os.listdir(os.path.join(push.directory, "assets.extra")))
    assert extra == ["hrnet_tfx_push.json", "tf_serving_warmup_requests", "training_weights"]
    assert read_push_record(push.directory)["fingerprint"] == saved_model_fingerprint(
        exports["float32"], {f"assets/{LABEL_MAP_FILENAME}": str(labels)})
    fresh = models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64)
    load_weights_into(fresh, push.directory)
    for a, b in zip(fresh.variables, trained.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.name)
    # other training weights beside the same served graph are another model: the fingerprint tells them apart
    changed = tmp_path / "changed"
    shutil.copytree(exports["float32"], changed)
    shutil.rmtree(changed / os.path.dirname(TRAINING_WEIGHTS))
    write_training_weights(models.build_model(tiny_config_path, num_classes=len(LABELS), image_size=64), str(changed))
    assert saved_model_fingerprint(str(changed)) != saved_model_fingerprint(exports["float32"])


def test_serving_dtype_is_checked_in_the_training_config():
    from hrnet_tfx.models.config import ConfigError
    from hrnet_tfx.training import TrainConfig

    with pytest.raises(ConfigError, match=r"serving_dtype must be one of \('float32', 'bfloat16'\), got 'float16'"):
        TrainConfig(serving_dtype="float16")
    assert TrainConfig().serving_dtype == "float32"


def test_import_weights_offers_the_serving_dtypes():
    from hrnet_tfx.cli.models import import_weights

    option = next(p for p in import_weights.params if p.name == "serving_dtype")
    assert tuple(option.type.choices) == INFERENCE_DTYPES and option.default == "float32"
