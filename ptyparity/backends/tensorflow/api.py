"""The TensorFlow / Keras 3 backend API (see :func:`ptyparity.backends.load_backend`).

NumPy in, NumPy out, canonical channel-last layouts at every boundary. Training
runs a Keras custom ``train_step`` (:class:`~ptyparity.backends.tensorflow.keras_model.PtychoPINNSystem`)
compiled once with a relaxed batch dimension, over the batches, batch order, loss
reduction, optimizer and plateau rule that SPEC §5 fixes for both backends; it
mirrors :mod:`ptyparity.backends.torch.api` call for call.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import random
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tensorflow.python.framework import config as _tf_config  # noqa: E402  (op-determinism state)

from ptyparity import checkpoint as ckpt, progress  # noqa: E402
from ptyparity.backends import contract  # noqa: E402
from ptyparity.backends.tensorflow import network, ops, train_state  # noqa: E402
from ptyparity.backends.tensorflow.keras_model import PtychoPINNSystem  # noqa: E402
from ptyparity.errors import PtyparityError  # noqa: E402
from ptyparity.training import EpochMeter, HistoryHooks, PlateauRule, TrainHooks  # noqa: E402

NAME = "tensorflow"

_FORWARD_CACHE = "_ptyparity_forward_fns"  # per-model cache of compiled forward functions


def versions():
    """Framework versions, logged as run params."""
    return {"tensorflow_version": tf.__version__, "keras_version": keras.__version__}


def build(cfg, probe, weights, *, device=None, precision="float32"):
    """A Keras network holding canonical ``weights``.

    Parameters
    ----------
    cfg : ModelConfig
    probe : ndarray, shape (N, N), complex
        The model probe (already scaled, masked when ``probe_mask``).
    weights : dict of ndarray
        Canonical weights (:func:`ptyparity.architecture.weight_shapes` names, HWIO).
    device : str, optional
        A ``tf.device`` name for the variables (e.g. ``"/cpu:0"``); TensorFlow's
        default placement when None.
    precision : {"float32", "float64"}
        Layer dtype policy and physics precision (float64 / complex128: parity
        verification).

    Returns
    -------
    model : PtychoPINN
    """
    with tf.device(device) if device is not None else contextlib.nullcontext():
        return network.build_model(cfg, probe, weights, precision=precision)


def get_weights(model):
    """The model's weights as the canonical dict of float32 arrays."""
    return network.get_weights(model)


def _signature(cfg, precision="float32"):
    """Input specs with a free batch dimension, so one trace serves every batch size. The traced
    functions branch on Python values only, so they are traced without autograph (~0.1 s a fit)."""
    dtype = ops.real_dtype(precision)
    return [tf.TensorSpec((None, cfg.N, cfg.N, cfg.channels), dtype, name="scaled_diffraction"),
            tf.TensorSpec((None, cfg.channels, 2), dtype, name="rel")]


# Taps that need (all but two element-wise ops of) the whole forward graph.
_WHOLE_GRAPH_TAPS = frozenset(("pred_intensity", "pred_amplitude", "pred_amplitude_counts"))
_VALIDATION_TAPS = ("pred_intensity", "pred_amplitude")  # what either loss mode's losses read


def _forward_fn(model, keep):
    """The compiled forward pass returning the taps ``keep`` (``None``: all), cached
    on the model; only the graph those taps need runs.

    A request for taps that need the whole graph anyway (:data:`_WHOLE_GRAPH_TAPS`: a
    training's held-out deviance after its debug dump) reuses the all-taps function when
    it is traced already: a second trace costs ~0.3 s, the unused outputs next to nothing."""
    cache = model.__dict__.get(_FORWARD_CACHE)
    if cache is None:
        cache = {}
        object.__setattr__(model, _FORWARD_CACHE, cache)  # bypass Keras/TF attribute tracking
    if keep not in cache and keep is not None and None in cache and _WHOLE_GRAPH_TAPS.intersection(keep):
        def subset(scaled_diffraction, rel, _every=cache[None]):
            taps = _every(scaled_diffraction, rel)
            return {name: taps[name] for name in keep}

        cache[keep] = subset
    if keep not in cache:
        def run(scaled_diffraction, rel):
            taps = model((scaled_diffraction, rel))
            return {name: taps[name] for name in (contract.tap_names(model.cfg) if keep is None else keep)}

        cache[keep] = tf.function(run, input_signature=_signature(model.cfg, model.precision), autograph=False)
    return cache[keep]


def forward(model, scaled_diffraction, rel, keep=None, *, precision=None):
    """Run the network in inference mode (no gradients, no update).

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
    taps = _forward_fn(model, keep)(tf.constant(scaled_diffraction), tf.constant(rel))
    return {name: np.asarray(t.numpy()) for name, t in taps.items()}


# --- training ---------------------------------------------------------------------


def _strategy(accelerator, devices):
    """The ``tf.distribute`` strategy for a Lightning-style ``accelerator``/``devices``
    request; ``None`` means TensorFlow's default placement is already right.

    ``cpu``: one CPU device (pinned with a ``OneDeviceStrategy`` only when GPUs are
    visible). ``gpu``: ``devices`` GPUs (``-1``: all visible); a ``MirroredStrategy``
    when more than one. ``auto``: ``gpu`` when TensorFlow sees a GPU, else ``cpu``.
    """
    contract.check_accelerator(accelerator, devices)
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    if accelerator == "auto":
        accelerator = "gpu" if gpus else "cpu"
    if accelerator == "cpu":
        if devices not in (1, -1):
            raise PtyparityError(f"the tensorflow backend trains on one CPU device; got devices={devices}")
        return tf.distribute.OneDeviceStrategy("/cpu:0") if gpus else None
    if not gpus:
        raise PtyparityError("accelerator='gpu' but TensorFlow sees no GPU; use --accelerator cpu or auto")
    n = len(gpus) if devices == -1 else devices
    if n > len(gpus):
        raise PtyparityError(f"devices={n} but TensorFlow sees only {len(gpus)} GPU(s)")
    if n == 1:
        return None  # TensorFlow places everything on the first GPU by default
    return _mirrored(tuple(gpus[:n]))


@functools.lru_cache(maxsize=None)
def _mirrored(devices):
    """One ``MirroredStrategy`` per device tuple for the whole process: a new strategy
    over the same devices restarts the collective instance keys, and a fit in another
    dtype then fails in the all-reduce ("expected data_type 1 ... got data_type 2")."""
    return tf.distribute.MirroredStrategy(devices=list(devices))


class _Runner:
    """Compiled train and validation steps of a system, on one device or replicated.

    Each step takes NumPy ``(scaled_diffraction, rel)``; the functions are traced once
    (free batch dimension). Under a strategy every replica takes its contiguous share
    of the batch rows and the values (and, through the optimizer's all-reduce, the
    gradients) are summed back weighted by the share, so they equal the
    single-device batch means.
    """

    def __init__(self, system, strategy):
        self.system = system
        self.strategy = strategy
        signature = _signature(system.net.cfg, system.net.precision)
        self.train = tf.function(self._distributed(system.train_step), input_signature=signature, autograph=False)
        self.test = tf.function(self._distributed(system.test_step), input_signature=signature, autograph=False)

    def _distributed(self, step):
        strategy = self.strategy
        if strategy is None:
            return lambda scaled, rel: step((scaled, rel))
        # One replica (a CPU pinned by OneDeviceStrategy) gets share 1, an exact no-op.

        def replicated(scaled, rel):
            def replica_step(scaled, rel):
                ctx = tf.distribute.get_replica_context()
                b = tf.shape(scaled)[0]
                lo = ctx.replica_id_in_sync_group * b // ctx.num_replicas_in_sync
                hi = (ctx.replica_id_in_sync_group + 1) * b // ctx.num_replicas_in_sync
                real = scaled.dtype
                share = tf.cast(hi - lo, real) / tf.cast(b, real)
                # A replica left without rows (batch < replicas) runs one row with share 0:
                # TF's convolutions reject empty batches, and it must still join the all-reduce.
                start = tf.minimum(lo, b - 1)
                stop = start + tf.maximum(hi - lo, 1)
                return step((scaled[start:stop], rel[start:stop], share))

            out = strategy.run(replica_step, args=(scaled, rel))
            return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for k, v in out.items()}

        return replicated

    def __call__(self, fn, scaled, rel):
        out = fn(*self._tensors(scaled, rel))
        return float(out["loss"]), float(out["deviance"])

    def _tensors(self, scaled, rel):
        dtype = np.float32 if self.system.net.precision == "float32" else np.float64  # the signature's
        return tf.constant(np.asarray(scaled, dtype)), tf.constant(np.asarray(rel, dtype))

    def validate(self, scaled, rel):
        """One validation batch's ``(loss, deviance)``, no update. On one device the network
        runs through its compiled forward pass (:func:`_forward_fn`, traced already by a
        training's first debug dump) and the two means are taken eagerly: a test step of its
        own cost a second trace and first call (a fit's first validation pass 0.27 s, now 0.035 s)."""
        if self.strategy is not None:
            return self(self.test, scaled, rel)
        scaled, rel = self._tensors(scaled, rel)
        loss, deviance = self.system.losses(_forward_fn(self.system.net, _VALIDATION_TAPS)(scaled, rel), scaled)
        return float(loss), float(deviance)


@contextlib.contextmanager
def _seeded(seed, deterministic):
    """Seed TensorFlow (always, as the torch backend seeds torch) and, when
    ``deterministic``, Keras' global seed and TF op determinism for the duration.

    ``keras.utils.set_random_seed`` also reseeds Python's ``random`` and NumPy's
    global RNG; both are put back at once, so the global NumPy and ``random`` states
    are left alone as in the torch backend. Op determinism is switched back off
    afterwards when it was off before (TF exports no switch-off, so this uses
    ``tensorflow.python.framework.config.disable_op_determinism``; where that is
    missing it stays on). The TF and Keras seeds stay set: they are process-global.
    """
    tf.random.set_seed(seed)
    if not deterministic:
        yield
        return
    was_on = _tf_config.is_op_determinism_enabled()
    py_state, np_state = random.getstate(), np.random.get_state()
    keras.utils.set_random_seed(seed)
    random.setstate(py_state)
    np.random.set_state(np_state)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        disable = getattr(_tf_config, "disable_op_determinism", None)
        if not was_on and disable is not None:
            disable()


def _progress_bar(live_bar, epoch, max_epochs, steps):
    """Keras' live bar for one epoch (a terminal only: written to a file, its redraws are
    thousands of backspaces and escape codes)."""
    if not live_bar:
        return None
    print(f"Epoch {epoch + 1}/{max_epochs}", file=sys.stdout, flush=True)
    return keras.utils.Progbar(steps, stateful_metrics=("loss", "deviance", "val_loss", "val_deviance"))


def _run_epochs(system, runner, training_set, recorder, live_bar, resume=None, checkpoint=None):
    """The epoch loop of SPEC §5: train batches in the fixed order, validate, step
    the plateau rule, report, checkpoint; a resumed loop starts at ``resume.epoch``."""
    cfg = training_set.cfg
    net = system.net
    plateau = PlateauRule(cfg.learning_rate)
    val_batches = training_set.val_batches()
    step, first_epoch = 0, 0
    if resume is not None:
        train_state.restore(system, resume)
        ckpt.restore_plateau(plateau, resume.plateau)
        step, first_epoch = resume.step, resume.epoch
    for epoch in range(first_epoch, cfg.max_epochs):
        lr = plateau.lr  # the rate of this epoch, as a Python float (the variable is float32)
        system.optimizer.learning_rate.assign(lr)
        batches = training_set.epoch_batches(epoch)
        bar = _progress_bar(live_bar, epoch, cfg.max_epochs, len(batches))
        train = EpochMeter()
        for i, which in enumerate(batches):
            scaled, rel = training_set.batch(which)
            loss, deviance = runner(runner.train, scaled, rel)  # pre-update values
            train.add(loss, deviance, len(which))
            recorder.on_step(step, {"train_step_loss": loss, "train_step_deviance": deviance})
            step += 1
            if bar is not None and i + 1 < len(batches):  # the last update comes with the val values
                bar.update(i + 1, list(zip(("loss", "deviance"), train.means())), finalize=False)
        train_loss, train_deviance = train.means()
        if val_batches:
            val = EpochMeter()
            for which in val_batches:
                val.add(*runner.validate(*training_set.batch(which)), len(which))
            val_loss, val_deviance = val.means()
        else:  # without validation batches the train values steer
            val_loss, val_deviance = train_loss, train_deviance
        if bar is not None:
            bar.update(len(batches), [("loss", train_loss), ("deviance", train_deviance),
                                      ("val_loss", val_loss), ("val_deviance", val_deviance)], finalize=True)
        metrics = {
            "train_loss": train_loss,
            "val_loss": val_loss,
            "train_deviance": train_deviance,
            "val_deviance": val_deviance,
            "intensity_scale": math.exp(float(net.log_scale.numpy())),
            "learning_rate": lr,
        }
        plateau.step(val_deviance)
        recorder.on_epoch_end(epoch, metrics)
        if checkpoint is not None:
            weights, adam_m, adam_v, adam_step, rng = train_state.capture(system)
            checkpoint(ckpt.TrainState(epoch=epoch + 1, step=adam_step, weights=weights, adam_m=adam_m,
                                       adam_v=adam_v, plateau=ckpt.plateau_state(plateau),
                                       history={k: list(v) for k, v in recorder.history.items()}, rng=rng))


def fit(model, training_set, hooks=None, *, quiet=False, accelerator="cpu", devices=1, deterministic=False,
        resume=None, checkpoint=None):
    """Train ``model`` in place with a Keras custom train step (SPEC §5).

    Batches are ``training_set.epoch_batches(epoch)`` for epoch ``0 … max_epochs-1``,
    in that order; validation runs over ``training_set.val_batches()`` after every
    epoch; the plateau rule sets the next epoch's rate from the validation deviance.

    Parameters
    ----------
    model : PtychoPINN
        Built for ``training_set.cfg.model``; its weights are updated in place.
    training_set : TrainingSet
    hooks : TrainHooks, optional
        Receives ``on_step`` / ``on_epoch_end`` as documented there.
    quiet : bool
        Show nothing. Otherwise a terminal gets Keras' progress bar, a pipe or file
        one line per epoch (:mod:`ptyparity.progress`).
    accelerator : {"cpu", "gpu", "auto"}
    devices : int
        GPUs to use (``-1``: all visible); more than one trains under a
        ``tf.distribute.MirroredStrategy`` on a replica of ``model`` whose weights
        are copied back afterwards. The CPU path is one device.
    deterministic : bool
        ``tf.config.experimental.enable_op_determinism()`` and
        ``keras.utils.set_random_seed(cfg.seed)`` for this fit. Op determinism is a
        process-wide switch: while ``fit`` runs it applies to every TF op in the
        process, and it is switched back off afterwards if it was off before. The TF
        and Keras global seeds stay set; Python's ``random`` and NumPy's global RNG
        are restored (see :func:`_seeded`).
    resume : ptyparity.checkpoint.TrainState, optional
        Continue from this state: weights (in the training precision), Adam's moments
        and ``iterations``, the plateau rule and the history; epochs
        ``resume.epoch … max_epochs-1`` run.
    checkpoint : callable, optional
        ``checkpoint(state)`` after every epoch (:class:`ptyparity.checkpoint.TrainState`).

    Notes
    -----
    ``training_set.cfg.precision`` is the training precision. When it differs from
    the model's (``"float64"`` on a model built in float32: parity verification), a
    replica in that precision (float64 layers, complex128 probe and FFT) is trained
    from the model's weights and its weights are copied back, rounded to the
    model's precision, as for multi-GPU training.

    Returns
    -------
    history : dict of list of float
        Per epoch: ``train_loss``, ``val_loss``, ``train_deviance``, ``val_deviance``,
        ``intensity_scale``, ``learning_rate``; per step: ``train_step_loss``,
        ``train_step_deviance``.
    """
    cfg = training_set.cfg
    contract.check_fit_model(model.cfg, training_set)
    strategy = _strategy(accelerator, devices)
    shown, live_bar = progress.training_display(hooks if hooks is not None else TrainHooks(), cfg.max_epochs,
                                                quiet=quiet)
    recorder = HistoryHooks(shown, resume.history if resume is not None else None)
    # Training draws no random numbers (weights and batch order come from NumPy);
    # seeding only pins down anything a future layer might draw.
    precision = getattr(cfg, "precision", "float32")
    with _seeded(cfg.seed, deterministic):
        if strategy is None and precision == model.precision:
            system = PtychoPINNSystem(model, loss_mode=cfg.loss_mode, learning_rate=cfg.learning_rate)
            _run_epochs(system, _Runner(system, None), training_set, recorder, live_bar, resume, checkpoint)
        else:  # variables must be created under the strategy / in the precision: train a replica, copy back
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                replica = network.build_model(model.cfg, model.probe_source, network.get_weights(model, np.float64),
                                              precision=precision)
                system = PtychoPINNSystem(replica, loss_mode=cfg.loss_mode, learning_rate=cfg.learning_rate)
            _run_epochs(system, _Runner(system, strategy), training_set, recorder, live_bar, resume, checkpoint)
            network.set_weights(model, network.get_weights(replica, np.float64))
    return recorder.history
