"""MomentumSGD: Keras' SGD with one fused update op per variable, the same numbers and checkpoints."""

import numpy as np
import pytest

import hrnet_tfx  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

from hrnet_tfx.training.optimizer import MomentumSGD  # noqa: E402
from hrnet_tfx.training.schedule import WarmupSchedule  # noqa: E402

SHAPES = [(3, 3, 4, 8), (8,), (16, 10), ()]


def _variables(seed: int = 0) -> list[tf.Variable]:
    rng = np.random.default_rng(seed)
    return [tf.Variable(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _gradients(step: int) -> list[tf.Tensor]:
    rng = np.random.default_rng(100 + step)
    return [tf.constant(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]


def _train(optimizer, variables, steps: int = 6, jit: bool = False) -> None:
    optimizer.build(variables)
    if jit:  # what Keras does when a GPU is present: each variable's update_step compiled by XLA
        optimizer.jit_compile = True
    apply = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    for step in range(steps):
        apply(_gradients(step))


def _schedule():
    return WarmupSchedule(0.4, steps_per_epoch=2, total_epochs=3, warmup_epochs=1, decay_epochs=(2,))


@pytest.mark.parametrize("nesterov", [False, True])
def test_updates_equal_keras_sgd(nesterov):
    """Same variables and momentums as Keras' SGD after several steps of a changing learning rate."""
    ours, theirs = _variables(), _variables()
    opt_ours = MomentumSGD(learning_rate=_schedule(), momentum=0.9, nesterov=nesterov)
    opt_theirs = keras.optimizers.SGD(learning_rate=_schedule(), momentum=0.9, nesterov=nesterov)
    _train(opt_ours, ours)
    _train(opt_theirs, theirs)
    for a, b in zip(ours + opt_ours.momentums, theirs + opt_theirs.momentums):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert not np.allclose(ours[0].numpy(), _variables()[0].numpy())  # it did train
    assert int(opt_ours.iterations) == int(opt_theirs.iterations) == 6


@pytest.mark.parametrize("wrap", [False, True])
def test_one_fused_update_op_per_variable(wrap):
    """The traced update holds one ResourceApplyKerasMomentum per variable (also under the loss scaling
    the trainer adds for mixed_float16), and Keras' own SGD none: the fused path is the one taken."""

    def count(optimizer) -> int:
        variables = _variables()
        optimizer.build(variables)
        fn = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
        graph = fn.get_concrete_function(_gradients(0)).graph
        ops = [op for f in [graph, *[g.graph for g in graph._functions.values()]] for op in f.get_operations()]
        return sum(op.type == "ResourceApplyKerasMomentum" for op in ops)

    make = (lambda o: keras.mixed_precision.LossScaleOptimizer(o)) if wrap else (lambda o: o)
    assert count(make(MomentumSGD(0.1, momentum=0.9))) == len(SHAPES)
    assert count(make(keras.optimizers.SGD(0.1, momentum=0.9))) == 0


def test_xla_compiled_update_gives_the_same_numbers():
    """On a GPU Keras compiles each update with XLA: the fused op compiles and gives the same result, to
    float32 rounding (XLA may contract a multiply and an add into one fused multiply-add)."""
    plain, compiled = _variables(), _variables()
    _train(MomentumSGD(0.1, momentum=0.9, nesterov=True), plain)
    _train(MomentumSGD(0.1, momentum=0.9, nesterov=True), compiled, jit=True)
    for a, b in zip(plain, compiled):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("first", ["keras", "ours"])
def test_checkpoints_restore_across_the_two_classes(tmp_path, first):
    """A checkpoint written with either optimizer restores into the other (same slots), and training
    goes on with the same numbers."""
    classes = {"keras": keras.optimizers.SGD, "ours": MomentumSGD}
    other = "ours" if first == "keras" else "keras"
    variables = _variables()
    writer = classes[first](0.1, momentum=0.9)
    _train(writer, variables, steps=3)
    path = tf.train.Checkpoint(variables=variables, optimizer=writer).write(str(tmp_path / "ckpt"))

    restored_vars = _variables(seed=1)
    reader = classes[other](0.1, momentum=0.9)
    reader.build(restored_vars)
    tf.train.Checkpoint(variables=restored_vars, optimizer=reader).read(path).assert_consumed()
    assert int(reader.iterations) == 3
    for a, b in zip(writer.momentums, reader.momentums):
        assert np.any(a.numpy() != 0)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    _train(writer, variables, steps=2)
    _train(reader, restored_vars, steps=2)
    for a, b in zip(variables, restored_vars):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
