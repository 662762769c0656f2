"""hrnet-tfx: train and serve HRNet image classifiers with TFX, Horovod and TF Serving.

Importing this package sets ``TF_USE_LEGACY_KERAS=1`` (unless the caller already chose a value) so that
TensorFlow, TFX and TFMA all use Keras 2 (``tf_keras``), which Horovod and TFMA 0.47 require. Do it before
TensorFlow is imported anywhere: ``import hrnet_tfx`` first, or export the variable in the environment.
"""

import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
