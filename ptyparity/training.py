"""Backend-neutral training inputs and rules (SPEC §2, §5).

Everything that must be identical in both backends is computed here, once, in
NumPy: the groups, the train/validation split, the per-epoch batch order, the
normalisation scalars, the model probe, the batches themselves and the learning
rate plateau rule. A backend only runs forward, loss, backward and step on what
this module hands it. :func:`fit_model` runs a backend's fit and returns what it
produced (weights, the scales in effect, the history); it records nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ptyparity import normalization, physics
from ptyparity.architecture import LOG_SCALE
from ptyparity.config import TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.grouping import Groups, default_max_offset, group_positions, inference_groups


@dataclass(frozen=True)
class Scales:
    """The numbers that tie data units to model units; persisted in every bundle.

    Attributes
    ----------
    input_norm : float
        ``X = diff3d * input_norm`` has mean pattern energy ``(N/2)**2``.
    data_scale : float
        The fixed ``s`` of SPEC §2 (``s * X`` is the target, in count units).
    intensity_scale : float
        ``exp(log_scale)``: equal to ``data_scale`` at the start of training and
        after it unless ``intensity_scale_trainable``; the value in effect is what
        a bundle persists and inference uses.
    probe_norm : float
        ``P = probe_norm * probe``.
    nphotons : float
        Mean photons per training pattern (from the file when it says, else measured).
    """

    input_norm: float
    data_scale: float
    intensity_scale: float
    probe_norm: float
    nphotons: float

    @property
    def log_scale(self):
        return math.log(self.intensity_scale)


def compute_scales(data, cfg: TrainConfig, groups: Groups | None = None):
    """Normalisation scalars from the training data and the config (SPEC §2).

    ``input_normalization`` "dataset" takes ``input_norm`` from every pattern of ``data``
    once; "per_set" (upstream PtychoPINN) from the training ``groups`` (all of them, the
    validation groups included, a pattern counted once per group it is in), computed once
    for the run as upstream computes it once over its training container
    (:func:`ptyparity.normalization.set_input_norm`).
    """
    n = data.N
    if cfg.model.input_normalization == "per_set":
        if groups is None:
            raise ValueError("input_normalization 'per_set' needs the training groups")
        norm = normalization.set_input_norm(np.moveaxis(data.diff3d[groups.indices], 1, -1))
    else:
        norm = physics.input_norm(data.diff3d)
    nphotons = float(data.extras["nphotons"]) if "nphotons" in data.extras else data.nphotons
    if cfg.intensity_scale is not None:
        s = float(cfg.intensity_scale)
    else:
        s = physics.intensity_scale(cfg.intensity_scale_mode, input_norm=norm, n=n, nphotons=nphotons)
    probe = physics.effective_probe(data.probe, probe_mask=cfg.model.probe_mask)
    probe_norm = normalization.model_probe_norm(probe, probe_normalization=cfg.model.probe_normalization)
    return Scales(input_norm=norm, data_scale=s, intensity_scale=s, probe_norm=probe_norm,
                  nphotons=nphotons)


def model_probe(probe, scales, *, probe_mask=False):
    """The probe the model illuminates with: ``probe_norm * (masked) probe``, complex64."""
    return (scales.probe_norm * physics.effective_probe(probe, probe_mask=probe_mask)).astype(np.complex64)


def group_batch(diff3d, groups: Groups, which, *, input_norm, data_scale):
    """One batch in canonical layout.

    Parameters
    ----------
    diff3d : ndarray, shape (M, N, N)
        Measured amplitudes.
    groups : Groups
    which : ndarray of int
        Group indices of the batch.
    input_norm, data_scale : float

    Returns
    -------
    scaled_diffraction : ndarray, shape (b, N, N, C), float32
        ``s * X = diff3d * input_norm * s`` (count units; the loss target).
    rel : ndarray, shape (b, C, 2), float32
    """
    idx = groups.indices[which]  # (b, C)
    patterns = np.moveaxis(diff3d[idx], 1, -1)  # (b, C, N, N) -> (b, N, N, C)
    scaled = (patterns.astype(np.float64) * (input_norm * data_scale)).astype(np.float32)
    return scaled, groups.rel[which].astype(np.float32)


@dataclass
class TrainingSet:
    """Groups, split, scales and batch order for one training run.

    Build it with :func:`prepare`; both backends iterate it identically.
    """

    cfg: TrainConfig
    diff3d: np.ndarray
    groups: Groups
    train_idx: np.ndarray
    val_idx: np.ndarray
    scales: Scales
    probe: np.ndarray

    def batch(self, which):
        """``(scaled_diffraction, rel)`` of groups ``which``; see :func:`group_batch`."""
        return group_batch(self.diff3d, self.groups, which, input_norm=self.scales.input_norm,
                           data_scale=self.scales.data_scale)

    def epoch_batches(self, epoch):
        """Group indices of each training batch of ``epoch`` (0-based), in order.

        The shuffle comes from ``numpy.random.default_rng([seed, epoch])`` so both
        backends see the same order; the last batch may be short.
        """
        order = np.random.default_rng([self.cfg.seed, epoch]).permutation(self.train_idx)
        bs = self.cfg.batch_size
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    def val_batches(self):
        """Validation batches, fixed order."""
        bs = self.cfg.batch_size
        return [self.val_idx[i : i + bs] for i in range(0, len(self.val_idx), bs)]

    @property
    def steps_per_epoch(self):
        return math.ceil(len(self.train_idx) / self.cfg.batch_size)


def resolve_config(cfg: TrainConfig, data):
    """Fill in what depends on the data: ``N`` and ``max_offset`` of the model."""
    model = cfg.model
    if model.N != data.N:
        model = dataclasses.replace(model, N=data.N)
    if model.gridsize > 1 and model.max_offset == 0:
        model = dataclasses.replace(model, max_offset=default_max_offset(data.positions))
    return dataclasses.replace(cfg, model=model)


def prepare(data, cfg: TrainConfig):
    """Group, split and scale the training data.

    Parameters
    ----------
    data : RawData
        Training data.
    cfg : TrainConfig
        Should come from :func:`resolve_config`.

    Returns
    -------
    training_set : TrainingSet
    """
    model = cfg.model
    groups = group_positions(data.positions, gridsize=model.gridsize, n_groups=cfg.n_groups,
                             neighbor_count=cfg.neighbor_count, max_offset=model.max_offset or None,
                             seed=cfg.seed, enforce_max_offset=model.group_offsets == "limited")
    n_val = int(round(cfg.val_fraction * len(groups))) if cfg.val_fraction > 0 else 0
    if cfg.val_fraction > 0:
        n_val = max(1, n_val)
    if len(groups) - n_val < 1:
        raise PtyparityError(f"n_groups={cfg.n_groups} leaves no training group after the validation split; "
                             "raise --n-groups")
    perm = np.random.default_rng(cfg.seed).permutation(len(groups))
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    scales = compute_scales(data, cfg, groups)
    probe = model_probe(data.probe, scales, probe_mask=model.probe_mask)
    return TrainingSet(cfg=cfg, diff3d=data.diff3d, groups=groups, train_idx=train_idx, val_idx=val_idx,
                       scales=scales, probe=probe)


def inference_set(data, model_cfg, *, neighbor_count, seed):
    """Groups for inference: every scan position seeds one group (SPEC §2)."""
    return inference_groups(data.positions, gridsize=model_cfg.gridsize, neighbor_count=neighbor_count,
                            max_offset=model_cfg.max_offset or None, seed=seed,
                            enforce_max_offset=model_cfg.group_offsets == "limited")


class PlateauRule:
    """Halve the learning rate after ``patience`` epochs without improvement.

    An epoch improves when its validation deviance is below ``best * (1 - 1e-4)``;
    after 2 consecutive epochs that do not, the rate halves (never below
    ``min_lr``) and the count restarts; no cooldown. Identical in both backends
    because the frameworks' own schedulers count patience differently.
    """

    def __init__(self, lr, *, factor=0.5, patience=2, min_lr=1e-4, rel_threshold=1e-4):
        self.lr = float(lr)
        self.factor = factor
        self.patience = patience
        self.min_lr = min_lr
        self.rel_threshold = rel_threshold
        self.best = math.inf
        self.bad_epochs = 0

    def step(self, val_deviance):
        """Record one epoch's validation deviance; return the learning rate to use next."""
        if val_deviance < self.best * (1 - self.rel_threshold) or self.best == math.inf:
            self.best = float(val_deviance)
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                # Never below min_lr, and never raised to it when training started lower.
                self.lr = max(self.lr * self.factor, min(self.min_lr, self.lr))
                self.bad_epochs = 0
        return self.lr


class TrainHooks:
    """What a backend's ``fit`` reports back; the shared workflow records it.

    Both backends call these with the same names and meanings, so the MLflow
    record of a torch run and a TF run line up column for column.
    """

    def on_step(self, step, metrics):
        """After each optimiser step. ``step`` counts from 0 over the whole run;
        ``metrics`` has ``train_step_loss`` and ``train_step_deviance`` of the batch
        just used, computed *before* the update (the value the gradient came from)."""

    def on_epoch_end(self, epoch, metrics):
        """After each epoch (0-based) with ``train_loss``, ``val_loss``,
        ``train_deviance``, ``val_deviance`` (batch-size-weighted means; train
        values over the epoch's pre-update batches), ``intensity_scale``
        (``exp(log_scale)`` after the epoch) and ``learning_rate`` (the rate used
        in this epoch)."""


def weighted_mean(values, weights):
    """Batch-size-weighted mean used for every per-epoch loss."""
    values = np.asarray(values, np.float64)
    weights = np.asarray(weights, np.float64)
    return float(np.sum(values * weights) / np.sum(weights)) if len(values) else float("nan")


EPOCH_KEYS = ("train_loss", "val_loss", "train_deviance", "val_deviance", "intensity_scale", "learning_rate")
STEP_KEYS = ("train_step_loss", "train_step_deviance")


class EpochMeter:
    """Per-batch loss, deviance and size of one epoch, averaged by batch size."""

    def __init__(self):
        self.loss, self.deviance, self.sizes = [], [], []

    def add(self, loss, deviance, size):
        self.loss.append(float(loss))
        self.deviance.append(float(deviance))
        self.sizes.append(int(size))

    def means(self):
        """``(loss, deviance)`` weighted by batch size."""
        return weighted_mean(self.loss, self.sizes), weighted_mean(self.deviance, self.sizes)


class TrainingDiverged(PtyparityError):
    """A loss became NaN or infinite: training stops at that step."""


def _check_finite(metrics, keys, epoch, step):
    """Raise :class:`TrainingDiverged` naming the epoch and step (1-based) of a NaN/inf loss."""
    bad = [f"{key} = {metrics[key]}" for key in keys if not math.isfinite(metrics[key])]
    if bad:
        where = f"epoch {epoch + 1}" + (f", step {step + 1}" if step is not None else " (validation)")
        raise TrainingDiverged(f"training diverged: {', '.join(bad)} at {where}; the learning rate is likely "
                               "too high (lower --learning-rate) or the data are not photon counts (check "
                               "`ptyparity inspect`)")


class HistoryHooks(TrainHooks):
    """Records every hook call into per-epoch and per-step lists, then forwards it;
    stops the fit (:class:`TrainingDiverged`) at the first NaN/inf loss.

    ``history`` is what a backend's ``fit`` returns; a resumed fit starts it from the
    checkpoint's (``history``), so it always covers the whole training.
    """

    def __init__(self, hooks=None, history=None):
        self.hooks = hooks if hooks is not None else TrainHooks()
        self.history = {key: list((history or {}).get(key, ())) for key in EPOCH_KEYS + STEP_KEYS}

    def on_step(self, step, metrics):
        _check_finite(metrics, STEP_KEYS[:1], len(self.history["train_loss"]), step)
        for key in STEP_KEYS:
            self.history[key].append(metrics[key])
        self.hooks.on_step(step, metrics)

    def on_epoch_end(self, epoch, metrics):
        _check_finite(metrics, ("train_loss", "val_loss"), epoch, None)
        for key in EPOCH_KEYS:
            self.history[key].append(metrics[key])
        self.hooks.on_epoch_end(epoch, metrics)


@dataclass(frozen=True)
class FitResult:
    """What one training produced.

    Attributes
    ----------
    weights : dict of ndarray
        Canonical weights after training (all finite).
    scales : Scales
        The training set's scales with ``intensity_scale = exp(log_scale)`` of
        ``weights``: the scale in effect, which a bundle persists.
    history : dict of list of float
        :data:`EPOCH_KEYS` per epoch and :data:`STEP_KEYS` per step.
    step_loss, step_deviance : tuple of float
        ``train_step_loss`` / ``train_step_deviance`` of every optimiser step.
    """

    weights: dict
    scales: Scales
    history: dict
    step_loss: tuple
    step_deviance: tuple


def final_scales(scales: Scales, weights):
    """``scales`` with ``intensity_scale`` set to ``exp(log_scale)`` of ``weights``.

    Equal to ``scales`` unless the scale was trainable (float32 rounding aside);
    ``data_scale`` (the fixed ``s`` of the targets) never changes.
    """
    return dataclasses.replace(scales, intensity_scale=float(np.exp(np.float64(weights[LOG_SCALE]))))


def fit_model(api, model, training_set: TrainingSet, *, hooks=None, quiet=False, accelerator="cpu", devices=1,
              resume=None, checkpoint=None):
    """Train ``model`` with its backend and return weights, scales and history.

    Parameters
    ----------
    api : module
        A backend API (:func:`ptyparity.backends.load_backend`).
    model : backend model
        Built for ``training_set.cfg.model``; trained in place.
    training_set : TrainingSet
        Left unchanged (its ``scales`` are the ones training started from).
    hooks : TrainHooks, optional
        Receives every step and epoch as the backend reports them.
    quiet, accelerator, devices
        Passed to the backend's ``fit``; ``deterministic`` comes from the config.
    resume : ptyparity.checkpoint.TrainState, optional
        Continue from this state (epoch, weights, Adam, plateau rule, history).
    checkpoint : callable, optional
        ``checkpoint(state)`` after every epoch with the :class:`~ptyparity.checkpoint.TrainState`.

    Returns
    -------
    result : FitResult

    Raises
    ------
    PtyparityError
        When a loss turns NaN/inf (:class:`TrainingDiverged`, at that step) or the trained
        weights hold NaN or inf (the training diverged).
    """
    history = api.fit(model, training_set, hooks, quiet=quiet, accelerator=accelerator, devices=devices,
                      deterministic=training_set.cfg.deterministic, resume=resume, checkpoint=checkpoint)
    weights = api.get_weights(model)
    if not all(np.all(np.isfinite(w)) for w in weights.values()):
        raise PtyparityError(f"training diverged: the weights hold NaN/inf after {len(history['train_loss'])} "
                             "epoch(s); lower --learning-rate")
    return FitResult(weights=weights, scales=final_scales(training_set.scales, weights), history=history,
                     step_loss=tuple(history["train_step_loss"]), step_deviance=tuple(history["train_step_deviance"]))
