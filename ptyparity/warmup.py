"""Import what a backend's training and inference use, up front, and keep it out of the
cyclic garbage collector's full passes.

A ``ptyparity`` process holds 450,000-630,000 objects once MLflow, matplotlib and a
framework (with Lightning or Keras) are imported. Python's full collection walks every
one of them; a training's first run triggered one or two such passes, 0.47 s (TensorFlow)
and 0.89 s (torch) at the default size, all spent re-checking modules, classes and
functions that live as long as the process. :func:`import_backend` imports those modules
and, in ptyparity's own processes (the CLI entry point and the pipeline's backend
processes call :func:`enable`), moves everything alive at that moment into the
collector's permanent generation (:func:`gc.freeze`): the first run's full passes then
took 0.03-0.05 s. A program that imports ptyparity keeps its collector as it set it.

The cost: cyclic garbage that exists at the moment of the freeze is never freed. Right
after the imports that is next to nothing.
"""

from __future__ import annotations

import gc
import importlib

_ENABLED = False
# What a train or infer step imports lazily, past the backend's api module.
_STEP_MODULES = {"torch": ("ptyparity.backends.torch.lightning_module",), "tensorflow": ()}
_SHARED_MODULES = ("mlflow", "mlflow.pyfunc", "matplotlib.pyplot", "ptyparity.runs.train")


def enable():
    """Let :func:`import_backend` freeze this process's objects (entry points only)."""
    global _ENABLED
    _ENABLED = True


def import_backend(backend):
    """Import ``backend``'s api, its training modules, MLflow and matplotlib, then freeze
    the objects alive now when :func:`enable` was called.

    Returns
    -------
    api : module
        :func:`ptyparity.backends.load_backend` of ``backend``.
    """
    from ptyparity import report
    from ptyparity.backends import load_backend

    api = load_backend(backend)
    report.pyplot()  # selects the Agg backend before pyplot is imported
    for name in _SHARED_MODULES + _STEP_MODULES.get(backend, ()):
        importlib.import_module(name)
    if _ENABLED:
        gc.freeze()
    return api
