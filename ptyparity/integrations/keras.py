"""A ``keras.Model.fit`` callback that records your training as a ptyparity ``train`` run.

Usage (the lines you add to your own script)::

    from ptyparity.integrations.keras import ParityCallback

    def predict_patches(model, batch):
        # your Keras model and one batch of your inputs -> (B, N, N, C) amplitude, phase
        amp, phase = patch_model(batch, training=False)  # e.g. a sub-model up to the patches
        return amp, phase

    with ParityCallback(predict_patches, batch=x_train[:16], data="data/train.npz",
                        implementation="my-ptychopinn", version="1.2", gridsize=2, object_big=True,
                        probe_big=False, scales={"intensity_scale": s}) as parity:
        model.fit(x_train, y_train, epochs=8, validation_split=0.05, callbacks=[parity])
    print(parity.run_id)                                 # the train run; pass it to record.infer_run

The ``with`` block is what ends the run FAILED (with ``ptyparity.error``) when ``fit`` raises:
Keras calls no callback on an exception. Without it a failed fit's run is ended FAILED when the
process exits. ``predict_patches`` may also return a dict with ``amp``, ``phase`` and any of
``diffraction``, ``encoder_input``, ``pred_amplitude``, ``pred_amplitude_counts`` (``(B, N, N, C)``):
ptyparity then measures ``mean_input_scale`` and ``mean_physics_scale``, which compare checks.
"""

from __future__ import annotations

import atexit

import keras

from ptyparity import names
from ptyparity.integrations.recorder import TrainingRecorder


class _ProcessEnded(RuntimeError):
    pass


class ParityCallback(keras.callbacks.Callback):
    """Record a Keras ``fit`` as a ptyparity ``train`` run (:func:`ptyparity.record.train_run`).

    Parameters are those of :class:`ptyparity.integrations.lightning.ParityCallback`;
    ``predict_patches(model, batch)`` gets the Keras model being fitted. ``epochs`` and the
    optimiser's ``learning_rate`` are read from ``fit``. Each epoch logs Keras' ``logs``
    (``loss`` as ``train_loss``, ``val_loss``, your metrics).
    """

    def __init__(self, predict_patches, batch, data, *, implementation, version, gridsize=1, object_big=False,
                 probe_big=False, seed=0, params=None, scales=None, tags=None, data_path=None,
                 experiment=names.DEFAULT_EXPERIMENT, run_name=None):
        super().__init__()
        self.recorder = TrainingRecorder(predict_patches, batch, data, implementation=implementation,
                                         version=version, backend="tensorflow", gridsize=gridsize,
                                         object_big=object_big, probe_big=probe_big, seed=seed, params=params,
                                         scales=scales, tags=tags, data_path=data_path, experiment=experiment,
                                         run_name=run_name)

    @property
    def run_id(self):
        """The train run's id (None before training starts)."""
        return self.recorder.run_id

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            self.recorder.fail(exc)
        else:
            self.recorder.fail(RuntimeError("model.fit ended without calling on_train_end"))
        return False

    def _predict(self):
        return lambda: self.recorder.predict_patches(self.model, self.recorder.batch)

    def _learning_rate(self):
        try:
            value = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except (AttributeError, TypeError, ValueError):
            return None
        return float(f"{value:.7g}")  # a float32 variable: 1e-3, not 0.0010000000474974513

    def on_train_begin(self, logs=None):
        params = {"max_epochs": self.params.get("epochs")}
        lr = self._learning_rate()
        if lr is not None:
            params["learning_rate"] = lr
        self.recorder.start(self.model, {k: v for k, v in params.items() if v is not None}, self._predict())
        atexit.register(self._at_exit)

    def on_epoch_end(self, epoch, logs=None):
        logged = dict(logs or {})
        lr = self._learning_rate()
        if lr is not None:
            logged.setdefault("learning_rate", lr)
        self.recorder.epoch(epoch, logged)

    def on_train_end(self, logs=None):
        atexit.unregister(self._at_exit)
        self.recorder.finish(self._predict())

    def _at_exit(self):
        self.recorder.fail(_ProcessEnded("the process ended during model.fit (it raised, or was stopped)"))
