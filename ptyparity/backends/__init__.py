"""Framework backends. Each subpackage (``torch``, ``tensorflow``) holds:

- ``ops``: differentiable copies of :mod:`ptyparity.physics` with the same names,
  arguments and canonical layouts, plus ``to_backend``/``to_numpy`` converters;
- ``network``: the PtychoPINN network (SPEC §4) built from
  :func:`ptyparity.architecture.conv_layers`, whose forward pass returns the SPEC §6
  taps in canonical channel-last layout, with canonical-weights import/export.

Backends import the shared modules, never each other; importing this package
imports no framework.
"""
