"""TensorFlow / Keras 3 backend.

- :mod:`ptyparity.backends.tensorflow.ops`: differentiable TF copies of
  :mod:`ptyparity.physics` (same names, arguments and canonical layouts);
- :mod:`ptyparity.backends.tensorflow.network`: the Keras ``PtychoPINN`` model and
  canonical-weights import/export.

This package is the only place that imports tensorflow; importing the package
itself imports nothing heavy, the submodules do.
"""
