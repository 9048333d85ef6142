"""The PyTorch backend API (see :func:`ptyparity.backends.load_backend`).

NumPy in, NumPy out, canonical channel-last layouts at every boundary. Training
runs through Lightning with the batches, batch order, loss reduction, optimizer
and plateau rule that SPEC §5 fixes for both backends.

Lightning is imported by :func:`fit` only: it costs ~3 s per process on top of
torch, and building, loading and running a model (``infer``, a bundle, the MLflow
pyfunc) never needs it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import warnings

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ptyparity import progress
from ptyparity.backends import contract
from ptyparity.backends.torch import network, ops, train_state
from ptyparity.errors import PtyparityError
from ptyparity.training import HistoryHooks, TrainHooks

NAME = "torch"


# Info-level chatter ("GPU available: …", "💡 Tip: … litlogger", "`Trainer.fit` stopped: …")
# lives under these.
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def versions():
    """Framework versions, logged as run params."""
    # The installed distribution's version (what ``lightning.__version__`` says), read
    # without importing Lightning.
    return {"torch_version": torch.__version__, "lightning_version": importlib.metadata.version("lightning")}


def build(cfg, probe, weights, *, device=None, precision="float32"):
    """An eval-mode network holding canonical ``weights``.

    Parameters
    ----------
    cfg : ModelConfig
    probe : ndarray, shape (N, N), complex
        The model probe (already scaled, masked when ``probe_mask``).
    weights : dict of ndarray
        Canonical weights (:func:`ptyparity.architecture.weight_shapes` names, HWIO).
    device : str or torch.device, optional
        Default CPU.
    precision : {"float32", "float64"}
        Parameter and compute dtype (float64 / complex128: parity verification).

    Returns
    -------
    model : PtychoPINN
        Conv kernels in ``channels_last`` memory.
    """
    model = network.build_model(cfg, probe, weights, precision=precision)
    if device is not None:
        model = model.to(device)  # keeps the channels_last strides
    return model.eval()


def get_weights(model):
    """The model's weights as the canonical dict of float32 arrays."""
    return network.get_weights(model)


def forward(model, scaled_diffraction, rel, keep=None, *, precision=None):
    """Run the network without gradients, in eval mode.

    Parameters
    ----------
    model : PtychoPINN
    scaled_diffraction : ndarray, shape (b, N, N, C), float32
        Measured amplitudes in count units, ``s * X``.
    rel : ndarray, shape (b, C, 2)
        Channel offsets ``[x, y]`` from the group centre.
    keep : sequence of str, optional
        Taps to return (default all, :func:`ptyparity.backends.contract.tap_names`).
    precision : {"float32", "float64"}, optional
        The precision the model was built in (default: whatever it was built in,
        float32 unless :func:`build` was asked for float64); the inputs are converted
        to it and the taps come back in it.

    Returns
    -------
    taps : dict of ndarray
        Canonical channel-last layout, in forward order; only the taps in ``keep``.

    Raises
    ------
    PtyparityError
        Inputs of the wrong shape or dtype, an unknown tap, a precision mismatch.
    """
    contract.check_model_precision(model.precision, precision)
    scaled_diffraction, rel = contract.check_forward_inputs(model.cfg, scaled_diffraction, rel, model.precision)
    keep = contract.check_keep(keep, model.cfg)
    device = model.log_scale.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            taps = model(ops.to_backend(scaled_diffraction, device=device, precision=model.precision),
                         ops.to_backend(rel, device=device, precision=model.precision))
    finally:
        model.train(was_training)
    return {name: ops.to_numpy(taps[name]) for name in (contract.tap_names(model.cfg) if keep is None else keep)}


class _GroupBatches(Dataset):
    """``dataset[indices]`` is the batch of groups ``indices`` as tensors."""

    def __init__(self, training_set, precision="float32"):
        self.training_set = training_set
        self.precision = precision

    def __getitem__(self, indices):
        scaled, rel = self.training_set.batch(indices)
        return (ops.to_backend(scaled, precision=self.precision), ops.to_backend(rel, precision=self.precision))


class _EpochBatchSampler(Sampler):
    """Yields each batch's group indices, in the order the training set fixes.

    Lightning calls :meth:`set_epoch` before every epoch; the order is computed when
    iteration starts, so it is always ``training_set.epoch_batches(epoch)``. A resumed
    fit counts Lightning's epochs from ``first_epoch``.
    """

    def __init__(self, training_set, first_epoch=0):
        self.training_set = training_set
        self.first_epoch = int(first_epoch)
        self.epoch = self.first_epoch

    def set_epoch(self, epoch):
        self.epoch = self.first_epoch + int(epoch)

    def __iter__(self):
        yield from self.training_set.epoch_batches(self.epoch)

    def __len__(self):
        return self.training_set.steps_per_epoch


class _FixedBatchSampler(Sampler):
    """Yields a fixed list of index batches (validation)."""

    def __init__(self, batches):
        self.batches = list(batches)

    def __iter__(self):
        yield from self.batches

    def __len__(self):
        return len(self.batches)


@contextlib.contextmanager
def _lightning_output():
    """Hide Lightning's info lines (its device report, its advertising tip, why the fit
    stopped: nothing a user acts on), and three warnings that are no news to the user:
    in-memory NumPy batches need no loader workers, a training set without validation
    groups skips validation by design, and Lightning's own use of torch's deprecated
    ``LeafSpec``. Every other warning, and every error, stays."""
    saved = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    try:
        for name in _LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*have no `val_dataloader`. Skipping val loop.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _torch_flags_kept():
    """``Trainer(deterministic=…)`` sets process-wide torch flags; put them back after."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark = saved[2]


def _progress_bar():
    """Lightning's live bar, kept on screen after each epoch (one line per epoch, as Keras')."""
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
    from lightning.pytorch.utilities.imports import _RICH_AVAILABLE

    return RichProgressBar(leave=True) if _RICH_AVAILABLE else TQDMProgressBar(leave=True)


def _trainer(cfg, *, live_bar, accelerator, devices, deterministic, first_epoch=0, callbacks=()):
    """The Lightning ``Trainer`` of one fit; a request Lightning cannot serve (no GPU,
    ``devices=-1`` on the CPU) is a :class:`PtyparityError`.

    ``live_bar``: Lightning's progress bar and model summary (a terminal); without it
    the fit shows nothing itself (the epoch lines come from :mod:`ptyparity.progress`).
    """
    import lightning as L
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        return L.Trainer(accelerator=accelerator, devices=devices, max_epochs=cfg.max_epochs - first_epoch,
                         logger=False,
                         enable_checkpointing=False, enable_progress_bar=live_bar, enable_model_summary=live_bar,
                         callbacks=[*([_progress_bar()] if live_bar else []), *callbacks],
                         deterministic=deterministic, num_sanity_val_steps=0)
    except (MisconfigurationException, TypeError, ValueError) as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise PtyparityError(f"accelerator={accelerator!r} with devices={devices!r} is not available here "
                             f"({reason}); use --accelerator cpu --devices 1") from None


def fit(model, training_set, hooks=None, *, quiet=False, accelerator="cpu", devices=1, deterministic=False,
        resume=None, checkpoint=None):
    """Train ``model`` in place with Lightning (SPEC §5).

    Batches are ``training_set.epoch_batches(epoch)`` for epoch ``0 … max_epochs-1``,
    in that order; validation runs over ``training_set.val_batches()`` after every
    epoch; the plateau rule sets the next epoch's rate from the validation deviance.

    Parameters
    ----------
    model : PtychoPINN
        Built for ``training_set.cfg.model``; its weights are updated in place and
        it comes back in eval mode, on the CPU when it was trained elsewhere
        (Lightning's teardown moves it there).
    training_set : TrainingSet
    hooks : TrainHooks, optional
        Receives ``on_step`` / ``on_epoch_end`` as documented there.
    quiet : bool
        Show nothing. Otherwise a terminal gets Lightning's progress bar and model
        summary, a pipe or file one line per epoch (:mod:`ptyparity.progress`);
        Lightning's info lines are hidden either way.
    accelerator : {"cpu", "gpu", "auto"}
    devices : int
        Passed to :class:`lightning.Trainer` (more than one: Lightning's DDP).
    deterministic : bool
        Torch's deterministic algorithms (``Trainer(deterministic=True)``) for this
        fit; the process-wide flags are restored afterwards.
    resume : ptyparity.checkpoint.TrainState, optional
        Continue from this state: its weights (in the training precision), Adam's
        moments and step, the plateau rule, the history and torch's RNG; epochs
        ``resume.epoch … max_epochs-1`` run.
    checkpoint : callable, optional
        ``checkpoint(state)`` after every epoch (:class:`ptyparity.checkpoint.TrainState`).

    Notes
    -----
    A CPU fit that is not ``deterministic`` runs a thread governor
    (:mod:`ptyparity.backends.torch.openmp`): one intra-op thread while other processes keep
    half a core busy, torch's thread count otherwise (put back afterwards).

    ``training_set.cfg.precision`` is the training precision. When it differs from
    the model's (``"float64"`` on a model built in float32: parity verification),
    the model is switched to it for the fit (parameters float64, probe complex128,
    batches widened from the float32 training data) and switched back afterwards,
    so the trained weights come back rounded to the model's own precision.

    Returns
    -------
    history : dict of list of float
        Per epoch: ``train_loss``, ``val_loss``, ``train_deviance``, ``val_deviance``,
        ``intensity_scale``, ``learning_rate``; per step: ``train_step_loss``,
        ``train_step_deviance``.
    """
    from ptyparity.backends.torch.lightning_module import PtychoPINNModule, ThreadGovernorCallback

    cfg = training_set.cfg
    contract.check_fit_model(model.cfg, training_set)
    contract.check_accelerator(accelerator, devices)
    precision = getattr(cfg, "precision", "float32")
    own_precision = model.precision
    shown, live_bar = progress.training_display(hooks if hooks is not None else TrainHooks(), cfg.max_epochs,
                                                quiet=quiet)
    recorder = HistoryHooks(shown, resume.history if resume is not None else None)
    first_epoch = resume.epoch if resume is not None else 0
    train_loader = DataLoader(_GroupBatches(training_set, precision), batch_size=None,
                              sampler=_EpochBatchSampler(training_set, first_epoch))
    val_batches = training_set.val_batches()
    val_loader = (DataLoader(_GroupBatches(training_set, precision), batch_size=None,
                             sampler=_FixedBatchSampler(val_batches))
                  if val_batches else None)
    # Training itself draws no random numbers (weights and batch order come from NumPy);
    # seeding torch only pins down anything a future layer might draw. The global
    # NumPy and `random` states are left alone.
    torch.manual_seed(cfg.seed)
    # The thread governor (see openmp): CPU fits only, and not where the same bits are asked for.
    governor = ThreadGovernorCallback() if accelerator == "cpu" and not deterministic else None
    with _lightning_output(), _torch_flags_kept():
        trainer = _trainer(cfg, live_bar=live_bar, accelerator=accelerator, devices=devices,
                           deterministic=deterministic, first_epoch=first_epoch,
                           callbacks=[governor] if governor else [])
        system = PtychoPINNModule(model, loss_mode=cfg.loss_mode, learning_rate=cfg.learning_rate, hooks=recorder,
                                  resume=resume, checkpoint=checkpoint, live_bar=live_bar)
        network.set_precision(model, precision)
        system.train()  # Lightning keeps the modes it finds; build() hands out eval mode
        try:
            if resume is not None:
                train_state.restore_weights(model, resume)  # exact, in the training precision
            if first_epoch < cfg.max_epochs:
                trainer.fit(system, train_dataloaders=train_loader, val_dataloaders=val_loader)
        finally:
            if governor is not None:
                governor.restore()
            model.eval()
            network.set_precision(model, own_precision)
    return recorder.history
