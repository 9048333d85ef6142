"""TensorFlow / Keras 3 backend.

- :mod:`ptyparity.backends.tensorflow.ops`: differentiable TF copies of
  :mod:`ptyparity.physics` (same names, arguments and canonical layouts);
- :mod:`ptyparity.backends.tensorflow.network`: the Keras ``PtychoPINN`` model and
  canonical-weights import/export.

This package is the only place that imports tensorflow; importing the package
itself imports nothing heavy, the submodules do.
"""

import os

# Before TensorFlow is first imported (by the submodules): keep its C++ INFO lines
# (oneDNN banners, CPU feature notes) out of the user's terminal, and run Keras on TF.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
