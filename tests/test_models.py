"""The model library: registry, config, exact parameter counts and GFLOPs, fidelity to the official
network, forward/backward, serialisation, mixed precision and XLA."""

import dataclasses
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from hrnet_tfx import models
from hrnet_tfx.models.config import ConfigError, HRNetConfig
from hrnet_tfx.models.hrnet import BatchNormalization, NearestUpSampling2D, count_macs, count_weights

# Official HRNet-Image-Classification: trainable params (exact) and its "GFLOPs" counter (conv+linear MACs / 1024**3).
OFFICIAL = {
    "hrnet_w18_small": (13_187_464, 1.49),
    "hrnet_w18_small_v2": (15_597_464, 2.42),
    "hrnet_w18": (21_299_004, 3.99),
    "hrnet_w30": (37_712_220, 7.55),
    "hrnet_w32": (41_232_680, 8.31),
    "hrnet_w40": (57_557_160, 11.8),
    "hrnet_w44": (67_064_984, 13.9),
    "hrnet_w48": (77_469_864, 16.1),
    "hrnet_w64": (128_059_944, 26.9),
}


def _decimals(value: float) -> int:
    return len(repr(value).split(".")[1])


def test_registry_lists_the_nine_official_variants():
    assert models.list_models() == list(OFFICIAL)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_parameter_count_and_gflops_match_official_table(name):
    """Every registered variant, counted from its network description without building it (milliseconds)."""
    info = count_weights(models.get_config(name))
    params, gflops = OFFICIAL[name]
    assert info["trainable_params"] == params
    assert round(info["macs"] / 1024**3, _decimals(gflops)) == gflops


def test_readme_table_states_the_pinned_counts():
    readme = (pathlib.Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = re.findall(r"^\| (hrnet_\w+) \| ([\d,]+) \| ([\d.]+) \|", readme, re.MULTILINE)
    assert {name: (int(params.replace(",", "")), float(gflops)) for name, params, gflops in rows} == OFFICIAL


@pytest.mark.parametrize("name", ["tiny.yaml", "hrnet_w18_small"])
def test_counting_without_building_equals_the_built_model(name):
    keras.backend.clear_session()
    model = models.build_model(name, num_classes=7, image_size=64)
    assert count_weights(models.get_config(name), num_classes=7, image_size=64) == {
        "trainable_params": sum(int(w.shape.num_elements()) for w in model.trainable_weights),
        "non_trainable_params": sum(int(w.shape.num_elements()) for w in model.non_trainable_weights),
        "macs": count_macs(model)}


@pytest.mark.large
@pytest.mark.parametrize("name", list(OFFICIAL))
def test_full_size_model_matches_official_table(name):
    keras.backend.clear_session()
    info = models.model_summary(name)
    params, gflops = OFFICIAL[name]
    assert info["trainable_params"] == params
    assert round(info["macs"] / 1024**3, _decimals(gflops)) == gflops
    assert info["layers"]["Dense"] == 1


def test_registry_refuses_duplicates_and_explains_failed_lookup():
    with pytest.raises(ValueError, match="already registered"):
        models.register("hrnet_w18", models.regular_config(18))
    with pytest.raises(ConfigError) as err:
        models.get_config("hrnet_w81")
    assert str(err.value).startswith("unknown model 'hrnet_w81' (did you mean 'hrnet_w48'?). Known models: ")
    assert "hrnet_w18" in str(err.value)


def test_regular_variants_are_generated_from_width():
    cfg = models.get_config("hrnet_w30")
    assert cfg == models.regular_config(30)
    assert cfg.stages[-1].num_channels == (30, 60, 120, 240)
    assert [s.num_modules for s in cfg.stages] == [1, 1, 4, 3]


def test_config_is_frozen_and_round_trips(tiny_config_path):
    cfg = HRNetConfig.from_file(tiny_config_path)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'num_features'"):
        cfg.num_features = 3
    assert HRNetConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(dropout=0.2), r"unknown key\(s\) \['dropout'\]"),
        (lambda d: d["stages"][1].update(fuse="SUM"), r"stages\[1\]: unknown key\(s\) \['fuse'\]"),
        (lambda d: d.pop("stages"), r"missing key\(s\) \['stages'\]"),
        (lambda d: d["stages"][2].pop("num_blocks"), r"stages\[2\]: missing key\(s\) \['num_blocks'\]"),
        (lambda d: d["stages"][1].update(block="DENSE"), "block must be one of"),
        (lambda d: d["stages"][2].update(num_channels=[4, 8]), "one entry per branch"),
        (lambda d: d.update(head_channels=[2, 4]), "head_channels: need one entry per final branch"),
        # a file names every key: dropping these used to give a 2,298,348-parameter net instead of 181,420
        (lambda d: [d.pop("num_features"), d.pop("head_conv_bias")],
         r"missing key\(s\) \['num_features', 'head_conv_bias'\]: a network config names every key "
         r"\(the official HRNet's: num_features: 2048, head_conv_bias: true\)"),
        (lambda d: d.pop("head_channels"),
         r"missing key\(s\) \['head_channels'\].*head_channels: \[32, 64, 128, 256\]"),
        (lambda d: d.update(num_feature=64), r"unknown key\(s\) \['num_feature' \(did you mean 'num_features'\?\)\]; "
         "allowed: head_channels, head_conv_bias, num_features, stages, stem_channels$"),
        (lambda d: d["stages"][0].update(num_block=[1]),
         r"stages\[0\]: unknown key\(s\) \['num_block' \(did you mean 'num_blocks'\?\)\]"),
    ],
)
def test_config_file_errors_name_the_problem(tmp_path, tiny_config_path, mutate, message):
    import yaml

    data = yaml.safe_load(tiny_config_path.read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=message):
        models.build_model(str(path))


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        models.get_config(str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match=r"network config file not found: tiny.yml \(did you mean 'tiny.yaml'\?\): not in the "):
        models.get_config("tiny.yml")


def test_config_file_on_a_bucket(tiny_config_path):
    import tensorflow as tf

    path = f"ram://configs-{os.getpid()}/tiny.yaml"
    tf.io.gfile.makedirs(path.rsplit("/", 1)[0])
    tf.io.gfile.copy(str(tiny_config_path), path, overwrite=True)
    assert models.get_config(path) == HRNetConfig.from_file(tiny_config_path)


@pytest.fixture(scope="module")
def tiny(tiny_config_path):
    return models.build_model(str(tiny_config_path), num_classes=7, image_size=64)


def test_official_layer_details(tiny):
    convs = [layer for layer in tiny.layers if isinstance(layer, keras.layers.Conv2D)]
    bns = [layer for layer in tiny.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(convs) == len(bns)
    assert all(bn.momentum == 0.9 and bn.epsilon == 1e-5 for bn in bns)
    biased = sorted(c.name for c in convs if c.use_bias)
    assert biased == ["downsamp_modules.0.0", "downsamp_modules.1.0", "downsamp_modules.2.0", "final_layer.0"]
    for conv in convs:
        if conv.strides == (2, 2):  # symmetric explicit padding, as PyTorch's padding=1
            assert conv.padding == "valid"
            assert isinstance(tiny.get_layer(conv.name + ".pad"), keras.layers.ZeroPadding2D)
    ups = [layer for layer in tiny.layers if isinstance(layer, keras.layers.UpSampling2D)]
    assert ups and all(u.interpolation == "nearest" for u in ups)
    assert not any(isinstance(layer, keras.layers.Dropout) for layer in tiny.layers)
    assert tiny.output_shape == (None, 7)


def test_initialisation_is_kaiming_fan_out_and_every_kernel_distinct():
    model = models.build_model("hrnet_w18_small", num_classes=10, image_size=64)
    kernels = [layer.kernel.numpy() for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert len({k.tobytes() for k in kernels}) == len(kernels)  # no shared unseeded initializer
    big = model.get_layer("final_layer.0").kernel.numpy()  # 1x1, 1024 -> 2048: fan_out = 2048
    assert abs(big.std() - math.sqrt(2 / 2048)) < 0.02 * math.sqrt(2 / 2048)
    bn = model.get_layer("bn1")
    assert np.all(bn.gamma.numpy() == 1) and np.all(bn.beta.numpy() == 0)


def test_forward_backward_on_tiny_config(tiny):
    x = tf.random.normal([2, 64, 64, 3], seed=1)
    y = tf.constant([1, 5])
    with tf.GradientTape() as tape:
        logits = tiny(x, training=True)
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
    grads = tape.gradient(loss, tiny.trainable_variables)
    assert logits.shape == (2, 7) and np.isfinite(loss.numpy())
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    assert sum(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads) == len(grads)


def test_any_input_size_divisible_by_32(tiny_config_path):
    with pytest.raises(ValueError, match="divisible by 32"):
        models.build_model(str(tiny_config_path), image_size=100)
    flexible = models.build_model(str(tiny_config_path), num_classes=3, image_size=None)
    for size in (64, 96, (64, 128)):
        h, w = (size, size) if isinstance(size, int) else size
        assert flexible(tf.zeros([1, h, w, 3])).shape == (1, 3)


def test_backbone_outputs_one_map_per_resolution(tiny_config_path):
    backbone = models.build_model(str(tiny_config_path), image_size=64, include_head=False)
    shapes = [tuple(o.shape) for o in backbone.outputs]
    assert shapes == [(None, 16, 16, 4), (None, 8, 8, 8), (None, 4, 4, 16), (None, 2, 2, 32)]


def test_get_config_from_config_round_trip(tiny):
    clone = keras.Model.from_config(tiny.get_config())
    clone.set_weights(tiny.get_weights())
    x = tf.random.normal([2, 64, 64, 3], seed=2)
    np.testing.assert_allclose(clone(x, training=False), tiny(x, training=False), rtol=1e-5, atol=1e-5)
    assert [w.name for w in clone.weights] == [w.name for w in tiny.weights]


def test_savedmodel_round_trip_needs_no_custom_objects(tiny, tmp_path):
    path = str(tmp_path / "saved")
    tiny.save(path, save_format="tf", include_optimizer=False)
    loaded = keras.models.load_model(path, compile=False)
    x = tf.random.normal([2, 64, 64, 3], seed=3)
    np.testing.assert_allclose(loaded(x, training=False), tiny(x, training=False), rtol=1e-5, atol=1e-5)
    raw = tf.saved_model.load(path)
    np.testing.assert_allclose(raw(x, training=False), tiny(x, training=False), rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "x.npy", x.numpy())
    np.save(tmp_path / "y.npy", tiny(x, training=False).numpy())
    # A process that never imports hrnet_tfx loads it with plain tf_keras (no custom objects).
    script = (
        "import os, sys, numpy as np; os.environ['TF_USE_LEGACY_KERAS'] = '1'; import tf_keras as keras\n"
        "assert 'hrnet_tfx' not in sys.modules\n"
        f"m = keras.models.load_model({path!r}, compile=False)\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r}); y = np.load({str(tmp_path / 'y.npy')!r})\n"
        "np.testing.assert_allclose(m(x, training=False).numpy(), y, rtol=1e-5, atol=1e-5)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_keeps_float32_variables_and_logits(tiny_config_path, policy):
    model = models.build_model(str(tiny_config_path), num_classes=5, image_size=64, dtype_policy=policy)
    compute = policy.split("_")[1]
    assert model.get_layer("layer1.0.conv1").compute_dtype == compute
    # bfloat16 BN is TF's generic oneDNN kernel on the CPU (1.9x the float32 BN) unless its channel count is
    # a multiple of 16: such BNs compute in bfloat16, the others in float32 (tiny has 2-64 channels)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        wide = layer.input_shape[-1] % 16 == 0
        expected = "float32" if policy == "mixed_bfloat16" and not wide else compute
        assert layer.compute_dtype == expected, (layer.name, layer.input_shape)
    assert {layer.compute_dtype for layer in bns} == ({"float32", "bfloat16"} if policy == "mixed_bfloat16"
                                                      else {compute})
    assert model.get_layer("layer1.0.relu1").compute_dtype == compute
    assert all(v.dtype == tf.float32 for v in model.weights)
    logits = model(tf.random.normal([2, 64, 64, 3]), training=False)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))


def test_unknown_dtype_policy_is_rejected(tiny_config_path):
    with pytest.raises(ValueError, match="dtype_policy"):
        models.build_model(str(tiny_config_path), dtype_policy="float16")


def test_jit_compile_predict_matches_eager(tiny_config_path):
    model = models.build_model(str(tiny_config_path), num_classes=4, image_size=64, jit_compile=True)
    assert model.jit_compile
    x = np.random.RandomState(0).randn(4, 64, 64, 3).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), model(x, training=False), rtol=1e-4, atol=1e-4)


def test_xla_compiles_the_training_gradient(tiny_config_path):
    """The fusion upsampling has an XLA gradient (stock UpSampling2D's ResizeNearestNeighborGrad has none)."""
    model = models.build_model(str(tiny_config_path), num_classes=3, image_size=64)
    x = tf.random.normal([4, 64, 64, 3], seed=4)
    y = tf.constant([0, 1, 2, 0])

    def grads(jit):
        forward = tf.function(lambda images: model(images, training=True), jit_compile=jit, autograph=False)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, forward(x), from_logits=True))
        return [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]

    plain, xla = grads(False), grads(True)
    scale = max(np.abs(g).max() for g in plain)
    assert max(np.abs(a - b).max() for a, b in zip(plain, xla)) < 1e-2 * scale


def test_nearest_upsampling_equals_stock_layer():
    x = tf.random.normal([2, 3, 5, 4], seed=5)
    for size in (2, 4, (2, 8)):
        ours = NearestUpSampling2D(size)
        stock = keras.layers.UpSampling2D(size, interpolation="nearest")
        np.testing.assert_array_equal(ours(x).numpy(), stock(x).numpy())
        assert ours.get_config() == {**stock.get_config(), "name": ours.name}
    flexible = keras.Input([None, None, 4])
    assert NearestUpSampling2D(4)(flexible).shape.as_list() == [None, None, None, 4]


def test_packaged_config_resolves_by_file_name():
    assert models.get_config("tiny.yaml") == HRNetConfig.from_file(
        pathlib.Path(models.__file__).parent.parent / "configs" / "tiny.yaml"
    )


def test_nearest_upsampling_gradient_is_the_window_sum():
    """The gradient is one pooling pass (not a Sum over the broadcast axes: 3-5x the CPU) and equals the
    stock layer's (bit for bit for 2x2 windows; summation order aside for larger ones)."""
    dy = tf.random.normal([2, 8, 16, 3], seed=6)
    for size in (2, 4, (2, 8)):
        x = tf.random.normal([2, 8 // (size if isinstance(size, int) else size[0]),
                              16 // (size if isinstance(size, int) else size[1]), 3], seed=7)
        grads = []
        for layer in (NearestUpSampling2D(size), keras.layers.UpSampling2D(size, interpolation="nearest")):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x)
            grads.append(tape.gradient(y, x, output_gradients=dy).numpy())
        if size == 2:
            np.testing.assert_array_equal(*grads)
        np.testing.assert_allclose(*grads, rtol=1e-6, atol=1e-6)

    layer = NearestUpSampling2D(2)
    x = tf.TensorSpec([2, 4, 4, 3], tf.float32)

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, x, output_gradients=tf.ones([2, 8, 8, 3]))

    ops = {op.type for op in gradient.get_concrete_function(x).graph.get_operations()}
    assert "AvgPool" in ops and "Sum" not in ops, sorted(ops)


def _bn_pair(channels: int):
    """Our BatchNormalization and Keras' with the same (non-trivial) weights and moving statistics."""
    layers = [BatchNormalization(momentum=0.9, epsilon=1e-5),
              keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)]
    rng = np.random.default_rng(3)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels), rng.normal(size=channels),
               rng.uniform(0.5, 2.0, channels)]
    for layer in layers:
        layer.build([None, 6, 10, channels])
        layer.set_weights([w.astype(np.float32) for w in weights])
    return layers


def test_narrow_batch_norm_matches_keras_and_leaves_the_fused_kernel():
    """A float32 training step of an 18-channel BN (not a multiple of 4: oneDNN's generic kernel) runs the
    row-view batch norm, with Keras' output, gradients and moving statistics (unbiased variance); a
    32-channel BN, inference and bfloat16 still run Keras' fused op."""
    x = tf.random.normal([4, 6, 10, 18], 2.0, 3.0, seed=8)
    dy = tf.random.normal([4, 6, 10, 18], seed=9)
    results = []
    for layer in _bn_pair(18):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        grads = tape.gradient(y, [x, layer.gamma, layer.beta], output_gradients=dy)
        results.append([y, *grads, layer.moving_mean, layer.moving_variance,
                        layer(x, training=False)])
    for ours, theirs in zip(*results):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=2e-5, atol=2e-5)

    def op_types(layer, shape, training, dtype=tf.float32):
        fn = tf.function(lambda x: layer(x, training=training))
        return {op.type for op in fn.get_concrete_function(tf.TensorSpec(shape, dtype)).graph.get_operations()}

    assert "FusedBatchNormV3" not in op_types(_bn_pair(18)[0], [4, 6, 10, 18], True)
    assert "FusedBatchNormV3" in op_types(_bn_pair(18)[0], [4, 6, 10, 18], False)
    assert "FusedBatchNormV3" in op_types(_bn_pair(32)[0], [4, 6, 10, 32], True)
    half = BatchNormalization(dtype="mixed_bfloat16")
    assert "FusedBatchNormV3" in op_types(half, [4, 6, 10, 18], True, tf.bfloat16)


def test_models_use_the_narrow_batch_norm_and_it_round_trips():
    """The network's BNs are our subclass (so an 18-channel branch trains without the generic kernel), and
    the layer rebuilds from its config under its registered name."""
    model = models.build_model("tiny.yaml", num_classes=5, image_size=32)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(layer) is BatchNormalization for layer in bns)
    layer = BatchNormalization(momentum=0.9, epsilon=1e-5, name="bn")
    config = keras.saving.serialize_keras_object(layer)
    assert config["registered_name"] == "hrnet_tfx>BatchNormalization"
    again = keras.saving.deserialize_keras_object(config)
    assert type(again) is BatchNormalization and again.get_config() == layer.get_config()


def test_narrow_batch_norm_is_exact_for_a_large_mean():
    """The variance is taken around the batch mean: inputs at mean 1000, std 0.5 (where E[x^2] - mean^2 in
    float32 would lose most digits) normalize like a float64 reference."""
    x = (1000.0 + 0.5 * np.random.default_rng(4).standard_normal([4, 6, 10, 18])).astype(np.float32)
    layer = BatchNormalization(momentum=0.0, epsilon=1e-5)
    y = layer(tf.constant(x), training=True).numpy()
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x64 - mean) / np.sqrt(var + 1e-5), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(layer.moving_variance.numpy(), var * x[..., 0].size / (x[..., 0].size - 1), rtol=1e-3)
