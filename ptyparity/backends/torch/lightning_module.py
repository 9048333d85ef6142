"""The training system around the torch PtychoPINN network (SPEC §5).

A thin :class:`lightning.LightningModule`: it wraps the plain ``nn.Module`` from
:mod:`ptyparity.backends.torch.network`, computes one loss in a shared
:meth:`PtychoPINNModule.model_step`, builds one Adam optimizer, steps the shared
:class:`ptyparity.training.PlateauRule` and reports through
:class:`ptyparity.training.TrainHooks`. The physics stays in ``ops`` and ``network``.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

from ptyparity import checkpoint as ckpt
from ptyparity.backends import contract
from ptyparity.backends.torch import openmp, ops, train_state
from ptyparity.training import EpochMeter, HistoryHooks, PlateauRule

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-7  # Keras' default, so both backends run the same Adam


class PtychoPINNModule(L.LightningModule):
    """Loss, optimizer, plateau rule and hooks around a PtychoPINN network.

    Parameters
    ----------
    net : PtychoPINN
        The network; trained in place.
    loss_mode : {"poisson", "mae"}
        What is optimised. The Poisson deviance is computed in both modes and
        reported, never optimised in ``mae`` mode.
    learning_rate : float
        Initial Adam rate; the plateau rule starts from it.
    hooks : HistoryHooks
        Receives ``on_step`` after every optimiser step and ``on_epoch_end`` after
        every epoch (validation included); its ``history`` goes into each checkpoint.
    resume : ptyparity.checkpoint.TrainState, optional
        Continue from this state: Lightning's epoch 0 is epoch ``resume.epoch``, the step
        count, plateau rule and Adam's moments (restored at ``on_train_start``) go on.
    checkpoint : callable, optional
        ``checkpoint(state)`` with the :class:`~ptyparity.checkpoint.TrainState` after every epoch.
    live_bar : bool
        Feed Lightning's progress bar (``self.log`` of the step loss and the epoch's validation
        deviance). Without a bar nothing reads those values, and ``self.log`` costs ~1 ms a step.
    """

    def __init__(self, net: nn.Module, *, loss_mode: str, learning_rate: float, hooks: HistoryHooks,
                 resume=None, checkpoint=None, live_bar=True):
        super().__init__()
        self.live_bar = bool(live_bar)
        self.net = net
        self.loss_mode = contract.check_loss_mode(loss_mode)
        self.hooks = hooks
        self.plateau = PlateauRule(learning_rate)
        self._train = EpochMeter()
        self._val = EpochMeter()
        self._step = 0
        self._first_epoch = 0
        self._resume, self._checkpoint = resume, checkpoint
        if resume is not None:
            ckpt.restore_plateau(self.plateau, resume.plateau)
            self._step, self._first_epoch = resume.step, resume.epoch

    def forward(self, scaled_diffraction, rel):
        return self.net(scaled_diffraction, rel)

    def model_step(self, batch):
        """Loss (with gradient) and Poisson deviance (without) of one batch.

        Parameters
        ----------
        batch : (Tensor, Tensor)
            ``scaled_diffraction`` (b, N, N, C) in count units and ``rel`` (b, C, 2).

        Returns
        -------
        loss, deviance : Tensor, shape ()
        """
        scaled, rel = batch
        taps = self.net(scaled, rel)
        log_scale, precision = self.net.log_scale, self.net.precision  # the losses in the network's precision
        if self.loss_mode == "poisson":
            loss = ops.poisson_loss(taps["pred_intensity"], scaled, log_scale, precision=precision)
        else:
            loss = ops.mae_loss(taps["pred_amplitude"], scaled, log_scale, precision=precision)
        with torch.no_grad():
            deviance = ops.poisson_deviance(taps["pred_intensity"], scaled, log_scale, precision=precision)
        return loss, deviance

    # --- training ------------------------------------------------------------------

    def on_train_start(self):
        if self._resume is not None:  # the optimizer exists from here on
            train_state.restore_optimizer(self.net, self.optimizers(use_pl_optimizer=False), self._resume)

    def on_train_epoch_start(self):
        self._train = EpochMeter()

    def training_step(self, batch, batch_idx):
        loss, deviance = self.model_step(batch)
        size = batch[0].shape[0]
        if self.live_bar:
            self.log("train_step_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=size)
        return {"loss": loss, "deviance": deviance, "size": size}

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """After the optimiser step; ``outputs`` hold the pre-update values."""
        loss, deviance = float(outputs["loss"]), float(outputs["deviance"])
        self._train.add(loss, deviance, outputs["size"])
        self.hooks.on_step(self._step, {"train_step_loss": loss, "train_step_deviance": deviance})
        self._step += 1

    def on_train_epoch_end(self):
        """Epoch means, the plateau rule for the next epoch's rate, then the hook."""
        train_loss, train_deviance = self._train.means()
        # Lightning validates before this hook; without validation batches the train values steer.
        val_loss, val_deviance = self._val.means() if self._val.sizes else (train_loss, train_deviance)
        optimizer = self.optimizers(use_pl_optimizer=False)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_deviance": train_deviance,
            "val_deviance": val_deviance,
            "intensity_scale": math.exp(float(self.net.log_scale.detach())),
            "learning_rate": float(optimizer.param_groups[0]["lr"]),
        }
        next_lr = self.plateau.step(val_deviance)
        for group in optimizer.param_groups:
            group["lr"] = next_lr
        if self.live_bar:
            self.log("val_deviance", val_deviance, prog_bar=True)
        epoch = self._first_epoch + self.current_epoch
        self.hooks.on_epoch_end(epoch, metrics)
        if self._checkpoint is not None:
            weights, adam_m, adam_v, step, rng = train_state.capture(self.net, optimizer)
            self._checkpoint(ckpt.TrainState(
                epoch=epoch + 1, step=step, weights=weights, adam_m=adam_m, adam_v=adam_v,
                plateau=ckpt.plateau_state(self.plateau), history={k: list(v) for k, v in self.hooks.history.items()},
                rng=rng))

    # --- validation ----------------------------------------------------------------

    def on_validation_epoch_start(self):
        self._val = EpochMeter()

    def validation_step(self, batch, batch_idx):
        loss, deviance = self.model_step(batch)
        self._val.add(loss, deviance, batch[0].shape[0])

    # --- optimizer -----------------------------------------------------------------

    def configure_optimizers(self):
        params = [p for p in self.net.parameters() if p.requires_grad]  # log_scale only when trainable
        # fused: one kernel per tensor instead of a dozen small ops; the same update (torch's
        # Adam formula) in 60 % of the time, ~1.5 ms of a 57 ms step at N=32 (scripts/bench.py).
        return torch.optim.Adam(params, lr=self.plateau.lr, betas=ADAM_BETAS, eps=ADAM_EPS, fused=True)


class ThreadGovernorCallback(L.Callback):
    """Runs an :class:`ptyparity.backends.torch.openmp.ThreadGovernor` during a fit: one
    intra-op thread while other processes keep the CPUs busy, torch's own count otherwise.
    :meth:`restore` (called by ``fit`` whatever happens) puts that count back."""

    def __init__(self):
        self.governor = None
        self._threads = torch.get_num_threads()

    def on_train_start(self, trainer, pl_module):
        self._threads = torch.get_num_threads()
        self.governor = openmp.ThreadGovernor(self._threads)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        threads = self.governor.poll()
        if threads is not None:
            torch.set_num_threads(threads)

    def restore(self):
        torch.set_num_threads(self._threads)
