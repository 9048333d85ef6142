"""The framework-free part of the callbacks: open a :func:`ptyparity.record.train_run` when
training starts, log each epoch, dump patches at the start and the end, close the run.

:class:`TrainingRecorder` is what :mod:`ptyparity.integrations.lightning` and
:mod:`ptyparity.integrations.keras` drive from their frameworks' hooks.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

from ptyparity import names, record
from ptyparity.errors import PtyparityError

PATCH_KEYS = ("amp", "phase", "diffraction", "encoder_input", "pred_amplitude", "pred_amplitude_counts")
# A framework's name of a loss -> ptyparity's (SPEC §7).
RENAMED = {"loss": "train_loss", "lr": "learning_rate"}


def to_numpy(value):
    """A framework tensor (torch, TensorFlow, JAX) or array as a NumPy array."""
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    if hasattr(value, "numpy") and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


def patches_of(output):
    """``predict_patches``' result as :meth:`ptyparity.record.RunRecord.log_patches` keywords.

    ``output`` is ``(amp, phase)`` or a dict with ``amp`` and ``phase`` and any of
    ``diffraction``, ``encoder_input``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    if isinstance(output, dict):
        unknown = sorted(set(output) - set(PATCH_KEYS))
        if unknown or not {"amp", "phase"} <= set(output):
            raise PtyparityError(f"predict_patches returned keys {sorted(output)}; it must return (amp, phase) or "
                                 f"a dict with amp, phase and any of {', '.join(PATCH_KEYS[2:])}")
        return {k: to_numpy(v) for k, v in output.items() if v is not None}
    if isinstance(output, (tuple, list)) and len(output) == 2:
        return {"amp": to_numpy(output[0]), "phase": to_numpy(output[1])}
    raise PtyparityError(f"predict_patches must return (amp, phase) or a dict, got {type(output).__name__}")


def epoch_metrics(logged):
    """A framework's per-epoch numbers under ptyparity's names: ``loss`` -> ``train_loss``,
    Lightning's ``<name>_epoch`` -> ``<name>``; per-step values (``*_step``) are left out."""
    out = {}
    for key, value in logged.items():
        if key.endswith("_step"):
            continue
        key = key[: -len("_epoch")] if key.endswith("_epoch") else key
        try:
            number = float(to_numpy(value))
        except (TypeError, ValueError):
            continue  # not a scalar
        if math.isfinite(number):
            out[RENAMED.get(key, key)] = number
    return out


class TrainingRecorder:
    """One ``train`` run recorded from a framework's hooks (see the callbacks for the parameters)."""

    def __init__(self, predict_patches, batch, data, *, implementation, version, backend, gridsize=1,
                 object_big=False, probe_big=False, seed=0, params=None, scales=None, tags=None, data_path=None,
                 experiment=names.DEFAULT_EXPERIMENT, run_name=None):
        if not callable(predict_patches):
            raise PtyparityError("predict_patches must be a function (model, batch) -> (amp, phase)")
        self.predict_patches, self.batch = predict_patches, batch
        self.options = dict(data=data, implementation=implementation, version=version, backend=backend,
                            gridsize=gridsize, object_big=object_big, probe_big=probe_big, seed=seed,
                            scales=scales, tags=tags, data_path=data_path, experiment=experiment, run_name=run_name)
        self.params = dict(params or {})
        self._stack = None
        self.run = None  # the RunRecord while training runs
        self.run_id = None

    def start(self, model, framework_params, predict):
        """Open the run, log the params, dump the initial patches (``predict()`` runs the user's function)."""
        if self._stack is not None:
            raise PtyparityError("the ParityCallback is already recording a training; use one callback per fit")
        stack = contextlib.ExitStack()
        self.run = stack.enter_context(record.train_run(params={**framework_params, **self.params}, **self.options))
        self._stack, self.run_id = stack, self.run.run_id
        try:
            self.run.log_patches("initial", **patches_of(predict()))
        except BaseException as exc:
            self.fail(exc)
            raise

    def epoch(self, epoch, logged):
        """Log one epoch's numbers (framework names mapped, see :func:`epoch_metrics`)."""
        if self.run is not None:
            self.run.log_epoch(int(epoch), epoch_metrics(logged))

    def finish(self, predict):
        """Dump the final patches and end the run FINISHED (FAILED, with the reason, if that fails)."""
        if self._stack is None:
            return
        try:
            self.run.log_patches("final", **patches_of(predict()))
        except BaseException as exc:
            self.fail(exc)
            raise
        stack, self._stack = self._stack, None
        stack.close()

    def fail(self, exc):
        """End the run FAILED with ``ptyparity.error`` (the training raised ``exc``)."""
        if self._stack is None:
            return
        stack, self._stack = self._stack, None
        with contextlib.suppress(type(exc)):
            stack.__exit__(type(exc), exc, exc.__traceback__)
