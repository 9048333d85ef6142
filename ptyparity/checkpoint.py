"""The training checkpoint: everything a fit needs to continue exactly where it stopped.

A :class:`TrainState` is taken after every epoch (both backends, the same fields): the
canonical weights (the names and HWIO layout a bundle uses), Adam's first and second
moments in the same canonical layout and the step count, the epoch, the plateau rule's
state, the history so far and the random-number state. It is written as two plain
files, ``state.npz`` (arrays only, read back with ``allow_pickle=False``) and
``state.json`` (numbers, the run's settings and the sha256 of the NPZ), never a pickle.

Random numbers: the batch order of epoch ``e`` is ``default_rng([seed, e])``
(:meth:`ptyparity.training.TrainingSet.epoch_batches`), a pure function of the seed and
the epoch, so the epoch *is* its state; the backend's own generator state (torch's CPU
generator; TensorFlow's global seed, which the fit re-sets from the config) is kept in
``rng``. Training itself draws no random numbers.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from ptyparity.errors import PtyparityError

FORMAT_VERSION = 1
STATE_NPZ = "state.npz"
STATE_JSON = "state.json"
# Two slots, written in turn (epoch e into SLOTS[e % 2]): a process killed while it writes one
# leaves the other, one epoch older, intact. :func:`load_latest` takes the newest complete one.
SLOTS = ("slot0", "slot1")
_GROUPS = ("weights", "adam_m", "adam_v", "rng")


@dataclass(frozen=True)
class TrainState:
    """A fit after ``epoch`` complete epochs.

    Attributes
    ----------
    epoch : int
        Epochs done; training continues with epoch ``epoch`` (0-based).
    step : int
        Optimiser steps done (Adam's ``t``).
    weights : dict of ndarray
        Canonical weights (:func:`ptyparity.architecture.weight_shapes` names, HWIO
        kernels) in the training precision (float32, or float64 under ``--precision float64``).
    adam_m, adam_v : dict of ndarray
        Adam's first / second moment of every trained weight, same names and layouts.
    plateau : dict
        :class:`ptyparity.training.PlateauRule` state: ``lr``, ``best`` (None: no epoch
        yet), ``bad_epochs``.
    history : dict of list of float
        :data:`ptyparity.training.EPOCH_KEYS` and ``STEP_KEYS`` so far.
    rng : dict of ndarray
        Backend generator state (e.g. ``torch_cpu``: torch's CPU generator, uint8).
    """

    epoch: int
    step: int
    weights: dict
    adam_m: dict
    adam_v: dict
    plateau: dict
    history: dict
    rng: dict = field(default_factory=dict)


def plateau_state(rule):
    """The JSON-able state of a :class:`ptyparity.training.PlateauRule`."""
    return {"lr": float(rule.lr), "best": None if math.isinf(rule.best) else float(rule.best),
            "bad_epochs": int(rule.bad_epochs)}


def restore_plateau(rule, state):
    """Put :func:`plateau_state` output back into ``rule`` (in place); returns ``rule``."""
    rule.lr = float(state["lr"])
    rule.best = math.inf if state["best"] is None else float(state["best"])
    rule.bad_epochs = int(state["bad_epochs"])
    return rule


def _sha256(path):
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def save(state: TrainState, directory, *, meta=None):
    """Write ``state`` as ``directory/state.npz`` + ``directory/state.json``.

    Parameters
    ----------
    state : TrainState
    directory : path
        Created when missing; the two files are overwritten.
    meta : dict, optional
        JSON-able facts about the run (backend, config, data paths…), kept under ``"run"``.

    Returns
    -------
    paths : list of str
        The two files, NPZ first.
    """
    os.makedirs(directory, exist_ok=True)
    arrays = {f"{group}/{name}": np.asarray(value) for group in _GROUPS
              for name, value in getattr(state, group).items()}
    npz = os.path.join(directory, STATE_NPZ)
    np.savez(npz, **arrays)  # uncompressed: float weights barely compress, and this runs every epoch
    record = {"format_version": FORMAT_VERSION, "epoch": int(state.epoch), "step": int(state.step),
              "plateau": state.plateau, "history": state.history, "npz_sha256": _sha256(npz), "run": meta or {}}
    path = os.path.join(directory, STATE_JSON)
    with open(path, "w") as fh:
        json.dump(record, fh, allow_nan=True)  # a history value may be NaN (a diverged epoch)
    return [npz, path]


def load(directory):
    """Read a checkpoint written by :func:`save`.

    Returns
    -------
    state : TrainState
    meta : dict
        The ``meta`` given to :func:`save`.

    Raises
    ------
    PtyparityError
        Missing files, an NPZ that is not the one the JSON names, a newer format.
    """
    npz, path = os.path.join(directory, STATE_NPZ), os.path.join(directory, STATE_JSON)
    if not (os.path.isfile(npz) and os.path.isfile(path)):
        raise PtyparityError(f"{directory}: no complete checkpoint ({STATE_JSON} + {STATE_NPZ}); "
                             "the run stopped before its first epoch ended, train it again")
    with open(path) as fh:
        record = json.load(fh)
    if record.get("format_version") != FORMAT_VERSION:
        raise PtyparityError(f"{path}: checkpoint format {record.get('format_version')!r}, this ptyparity reads "
                             f"{FORMAT_VERSION}; resume with the ptyparity version that wrote it")
    if _sha256(npz) != record.get("npz_sha256"):
        raise PtyparityError(f"{npz}: its sha256 differs from the one {STATE_JSON} records (a partial or "
                             "edited checkpoint); resume from another run or train again")
    groups = {group: {} for group in _GROUPS}
    with np.load(npz, allow_pickle=False) as data:
        for key in data.files:
            group, _, name = key.partition("/")
            if group not in groups:
                raise PtyparityError(f"{npz}: unexpected array {key!r}; not a ptyparity checkpoint")
            groups[group][name] = data[key]
    state = TrainState(epoch=int(record["epoch"]), step=int(record["step"]), plateau=record["plateau"],
                       history={k: [float(v) for v in vals] for k, vals in record["history"].items()}, **groups)
    return state, record.get("run", {})


def slot(epoch):
    """The slot (sub-directory) the checkpoint after ``epoch`` complete epochs goes to."""
    return SLOTS[epoch % len(SLOTS)]


def load_latest(directory):
    """The newest complete checkpoint among the :data:`SLOTS` under ``directory``.

    Returns
    -------
    state : TrainState
    meta : dict

    Raises
    ------
    PtyparityError
        When no slot holds a complete, intact checkpoint (the reasons, one per slot).
    """
    found, problems = [], []
    for name in SLOTS:
        try:
            found.append(load(os.path.join(directory, name)))
        except (PtyparityError, OSError, ValueError, KeyError) as err:  # a slot cut short by a kill
            problems.append(f"{name}: {err}")
    if not found:
        raise PtyparityError(f"{directory}: no complete checkpoint ({'; '.join(problems)})")
    return max(found, key=lambda pair: pair[0].epoch)
