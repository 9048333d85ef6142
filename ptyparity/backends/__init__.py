"""Framework backends. Each subpackage (``torch``, ``tensorflow``) holds:

- ``ops``: differentiable copies of :mod:`ptyparity.physics` with the same names,
  arguments and canonical layouts, plus ``to_backend``/``to_numpy`` converters;
- ``network``: the PtychoPINN network (SPEC §4) built from
  :func:`ptyparity.architecture.conv_layers`, whose forward pass returns the SPEC §6
  taps in canonical channel-last layout, with canonical-weights import/export.

Backends import the shared modules, never each other; importing this package
imports no framework.
"""

import importlib

from ptyparity.config import BACKENDS
from ptyparity.errors import PtyparityError


def load_backend(name):
    """The backend's ``api`` module (imports its framework).

    Every ``api`` module provides ``NAME``, ``versions()``, ``build(cfg, probe,
    weights)``, ``get_weights(model)``, ``forward(model, scaled_diffraction, rel,
    keep=None)`` (NumPy in and out, canonical layout) and ``fit(model,
    training_set, hooks)``.
    """
    if name not in BACKENDS:
        raise PtyparityError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return importlib.import_module(f"ptyparity.backends.{name}.api")
