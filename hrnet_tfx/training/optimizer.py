"""SGD with momentum whose dense update is one fused kernel per variable."""

from __future__ import annotations

import hrnet_tfx  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
import tensorflow as tf
import tf_keras as keras


class MomentumSGD(keras.optimizers.SGD):
    """Keras' ``SGD`` (same arguments, variables, config and update rule), except that a dense gradient
    with momentum is applied by TensorFlow's ``ResourceApplyKerasMomentum`` kernel, which updates the
    momentum and the variable in place in one op: ``m = momentum * m - lr * g``, then ``v += m``, or with
    Nesterov ``v += momentum * m - lr * g``. Keras' own ``update_step`` builds that from about eight small
    ops per variable (casts, multiplies, a negation, an add, an assignment and an ``assign_add``); HRNet-W18
    has 981 trainable variables (kernels, BatchNorm scales and offsets, the classifier), and its traced
    update has 6,875 ops instead of 13,742 (training step +2-4% on a 2-core CPU, ``benchmarks/README.md``).
    The momentum slots are the parent's, so checkpoints of either class restore into the other. Sparse
    gradients (``tf.IndexedSlices``) run the parent's code."""

    def update_step(self, gradient, variable):
        """Applies ``gradient`` to ``variable`` (see the class docstring)."""
        if isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable)
        m = self.momentums[self._index_dict[self._var_key(variable)]]
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=m.handle, lr=tf.cast(self.learning_rate, variable.dtype), grad=gradient,
            momentum=tf.cast(self.momentum, variable.dtype), use_nesterov=self.nesterov)
