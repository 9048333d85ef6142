"""A ``lightning.Trainer`` callback that records your training as a ptyparity ``train`` run.

Usage (the lines you add to your own script)::

    from ptyparity.integrations.lightning import ParityCallback

    def predict_patches(model, batch):
        # your LightningModule and one batch of your DataLoader -> (B, N, N, C) amplitude, phase
        diffraction, positions = batch
        amp, phase = model(diffraction)              # torch (B, C, N, N) here
        return amp.permute(0, 2, 3, 1), phase.permute(0, 2, 3, 1)

    parity = ParityCallback(predict_patches, batch=next(iter(val_loader)), data="data/train.npz",
                            implementation="my-ptychopinn", version="1.2", gridsize=2,
                            object_big=True, probe_big=False, scales={"intensity_scale": s})
    trainer = lightning.Trainer(max_epochs=8, callbacks=[parity])
    trainer.fit(model, train_loader, val_loader)
    print(parity.run_id)                             # the train run; pass it to record.infer_run

``predict_patches`` runs under ``torch.no_grad()`` with the module in eval mode. It may also
return a dict with ``amp``, ``phase`` and any of ``diffraction`` (the batch's measured amplitudes),
``encoder_input`` (what the network was fed), ``pred_amplitude`` and ``pred_amplitude_counts``
(your forward model's diffraction amplitude in model and count units), all ``(B, N, N, C)``:
ptyparity then measures ``mean_input_scale`` and ``mean_physics_scale``, which compare checks.
"""

from __future__ import annotations

import lightning
import torch

from ptyparity import names
from ptyparity.integrations.recorder import TrainingRecorder


class ParityCallback(lightning.pytorch.Callback):
    """Record a Lightning training as a ptyparity ``train`` run (:func:`ptyparity.record.train_run`).

    Parameters
    ----------
    predict_patches : callable
        ``predict_patches(model, batch) -> (amp, phase)``, each ``(B, N, N, C)`` (channel-last,
        ``C = gridsize**2``), or a dict (see the module docstring). ``model`` is your
        LightningModule; ``batch`` is the ``batch`` given here.
    batch : object
        A fixed batch in your own format (the same groups at the start and the end of training).
    data : path or ptyparity.data.RawData
        The training data (dataset digest, ``N``).
    implementation, version : str
        Your code's name and version.
    gridsize, object_big, probe_big, seed : optional
        Your network's layout (SPEC §3-4) and seed.
    params : dict, optional
        More params (``n_groups``, ``batch_size``, …); ``max_epochs`` and the optimiser's
        ``learning_rate`` are read from the Trainer.
    scales : dict, optional
        The normalisation scalars (``intensity_scale``, ``input_norm``, …; :data:`ptyparity.record.SCALE_NAMES`).
    tags, data_path, experiment, run_name : optional
        As :func:`ptyparity.record.train_run`.

    Each epoch logs what your module logged (``self.log``) at ``on_train_epoch_end`` (after
    validation): ``train_loss``, ``val_loss``, … (``loss`` is recorded as ``train_loss``). An
    exception in ``fit`` ends the run FAILED with ``ptyparity.error``.
    """

    def __init__(self, predict_patches, batch, data, *, implementation, version, gridsize=1, object_big=False,
                 probe_big=False, seed=0, params=None, scales=None, tags=None, data_path=None,
                 experiment=names.DEFAULT_EXPERIMENT, run_name=None):
        super().__init__()
        self.recorder = TrainingRecorder(predict_patches, batch, data, implementation=implementation,
                                         version=version, backend="torch", gridsize=gridsize, object_big=object_big,
                                         probe_big=probe_big, seed=seed, params=params, scales=scales, tags=tags,
                                         data_path=data_path, experiment=experiment, run_name=run_name)

    @property
    def run_id(self):
        """The train run's id (None before training starts)."""
        return self.recorder.run_id

    def _predict(self, pl_module):
        def predict():
            was_training = pl_module.training
            pl_module.eval()
            try:
                with torch.no_grad():
                    return self.recorder.predict_patches(pl_module, self.recorder.batch)
            finally:
                pl_module.train(was_training)
        return predict

    def on_fit_start(self, trainer, pl_module):
        params = {"max_epochs": trainer.max_epochs}
        if trainer.optimizers:
            params["learning_rate"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.recorder.start(pl_module, params, self._predict(pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        logged = dict(trainer.callback_metrics)
        if trainer.optimizers:
            logged.setdefault("learning_rate", trainer.optimizers[0].param_groups[0]["lr"])
        self.recorder.epoch(trainer.current_epoch, logged)

    def on_fit_end(self, trainer, pl_module):
        self.recorder.finish(self._predict(pl_module))

    def on_exception(self, trainer, pl_module, exception):
        self.recorder.fail(exception)
