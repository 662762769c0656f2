"""hrnet-tfx: train and serve HRNet image classifiers with TFX, Horovod and TF Serving.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` (unless the caller already chose a value) so that
TensorFlow, TFX and TFMA all use Keras 2 (``tf_keras``), which Horovod and TFMA 0.47 require. Do it before
TensorFlow is imported anywhere: ``import hrnet_tfx`` first, or export the variable in the environment.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"

WEIGHT_CACHE_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"
"""With ``1``, TensorFlow's oneDNN convolutions reorder their weights into oneDNN's layout once and reuse
them instead of on every call (8-15% of a float32 folded inference step; ``benchmarks/README.md``). It is
read once per process and ignores later changes to a loaded model's weights, so training refuses it. The
exports do not need it: their weights are graph constants, whose reordered form oneDNN keeps anyway."""
