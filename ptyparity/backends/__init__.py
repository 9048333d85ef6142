"""Framework backends. Each subpackage (``torch``, ``tensorflow``) holds:

- ``api``: the backend API, a module satisfying :class:`BackendAPI`
  (:mod:`ptyparity.backends.contract`), returned by :func:`load_backend`;
- ``ops``: differentiable copies of :mod:`ptyparity.physics` with the same names
  (:data:`~ptyparity.backends.contract.OP_NAMES`), arguments and canonical layouts,
  each with a keyword-only ``precision``, plus ``to_backend``/``to_numpy``;
- ``network``: the PtychoPINN network (SPEC §4) built from
  :func:`ptyparity.architecture.conv_layers`, whose forward pass returns the SPEC §6
  taps (:data:`ptyparity.names.TAP_NAMES`) in canonical channel-last layout, with
  canonical-weights import/export.

Backends import the shared modules (this package's ``contract`` included), never
each other; importing this package imports no framework.
"""

from __future__ import annotations

import importlib
from typing import cast

from ptyparity.backends.contract import BackendAPI
from ptyparity.config import BACKENDS
from ptyparity.errors import PtyparityError

__all__ = ["BackendAPI", "load_backend"]


def load_backend(name) -> BackendAPI:
    """The ``api`` module of backend ``name`` (imports its framework).

    Raises
    ------
    PtyparityError
        When ``name`` is not one of ``ptyparity.config.BACKENDS``.
    """
    if name not in BACKENDS:
        raise PtyparityError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    return cast(BackendAPI, importlib.import_module(f"ptyparity.backends.{name}.api"))
