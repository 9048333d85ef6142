"""Crash and resume of a ``train`` run: the per-epoch checkpoint artifact, and
``ptyparity train --resume RUN_ID``.

Every epoch a train run overwrites one of its two checkpoint slots (in turn, so a kill
while writing one leaves the other), ``checkpoint/slot<e % 2>/state.npz`` + ``state.json``
(:mod:`ptyparity.checkpoint`: weights, Adam, epoch, plateau rule, history, RNG, and what is
needed to start again: backend, config, data paths and digest). :func:`resume_train` reads the last one of a stopped run and continues it in
a new run tagged ``ptyparity.resumed_from``, with the same config; a resumed
``--deterministic`` training ends with the weights an uninterrupted one ends with.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

from ptyparity import checkpoint, names, tracking, training
from ptyparity.errors import PtyparityError

# Options that may differ from the resumed run's: where it is recorded and shown, what runs it.
FREE_OPTIONS = {"experiment", "run_name", "quiet", "accelerator", "devices", "register", "log_patch_stats",
                "debug_dump", "resume", "train_data", "test_data"}
# Options stored in the checkpoint's "run" record rather than in the config.
RUN_OPTIONS = {"backend": "backend", "measurement": "measurement", "force": "force", "init_from": "init_from"}


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a resumed training starts: the source run, its last checkpoint and its record."""

    run_id: str
    state: checkpoint.TrainState
    meta: dict


def checkpoint_meta(backend, cfg, *, train_path, test_path, measurement, force, init_from, digest):
    """The ``run`` record of every checkpoint: what :func:`resume_train` needs to start again."""
    return {"backend": backend, "train_config": dataclasses.asdict(cfg),
            "train_path": os.path.abspath(train_path), "test_path": os.path.abspath(test_path) if test_path else None,
            "measurement": measurement, "force": bool(force), "init_from": init_from, "dataset_digest": digest}


class CheckpointLogger:
    """``checkpoint(state)`` for :func:`ptyparity.training.fit_model`: overwrites the run's
    ``checkpoint/`` artifact, then, in one write, renews the run's heartbeat and logs
    ``checkpoint_seconds`` (the artifact's cost) at the epoch's step, with the epoch's metrics
    when the run's epoch logger handed them over (:meth:`hold`).

    A training ends every epoch with its metrics, then its checkpoint; writing both in one
    store transaction saves one (~7-10 ms on sqlite) an epoch."""

    def __init__(self, meta):
        self.meta = meta
        self.seconds = []
        self._held = None  # (epoch, metrics) of the epoch whose checkpoint comes next

    def hold(self, epoch, metrics):
        """Keep epoch ``epoch``'s metrics (logged at step ``epoch``) for this epoch's checkpoint write."""
        self.flush()
        self._held = (int(epoch), dict(metrics))

    def flush(self):
        """Write held metrics that no checkpoint followed (the fit stopped in between)."""
        if self._held is not None:
            epoch, metrics = self._held
            self._held = None
            self._write(metrics, epoch)

    def __call__(self, state):
        start = time.perf_counter()
        written = {}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                for path in checkpoint.save(state, tmp, meta=self.meta):  # NPZ first, then the JSON naming its sha256
                    tracking.log_artifact(path, f"{names.CHECKPOINT_DIR}/{checkpoint.slot(state.epoch)}")
            self.seconds.append(time.perf_counter() - start)
            written = {"checkpoint_seconds": self.seconds[-1]}
        finally:  # the epoch's metrics are written even when its checkpoint failed
            step = state.epoch - 1
            if self._held is not None and self._held[0] != step:
                self.flush()  # not this epoch's (cannot happen in a fit): at their own step
            metrics = self._held[1] if self._held is not None else {}
            self._held = None
            self._write({**metrics, **written}, step)

    @staticmethod
    def _write(metrics, step):
        from ptyparity import tracking_liveness

        tracking_liveness.heartbeat(metrics, step=step)


def log_resumed_history(state):
    """Log the epochs the checkpoint already holds into the new run (metrics at their
    epoch steps), so the resumed run's record covers the whole training."""
    for key in training.EPOCH_KEYS:
        tracking.log_series(key, state.history[key])


def train_config_from_dict(values):
    """A :class:`TrainConfig` from its ``asdict`` form (the checkpoint's ``train_config``)."""
    from ptyparity.config import TrainConfig, model_config_from_dict

    try:
        return TrainConfig(**{**values, "model": model_config_from_dict(values["model"])})
    except (TypeError, KeyError) as err:
        raise PtyparityError(f"the checkpoint's config does not fit this ptyparity ({err}); resume with the "
                             "version that wrote it") from None


def _check_options(run_id, cfg, meta, given):
    """Refuse options that contradict the resumed run's config (``given``: option -> value typed)."""
    fields = {f.name for f in dataclasses.fields(cfg)} | {f.name for f in dataclasses.fields(cfg.model)}
    clash = []
    for name, value in sorted(given.items()):
        if name in FREE_OPTIONS:
            continue
        if name in RUN_OPTIONS:
            have = meta.get(RUN_OPTIONS[name])
        elif name in fields:
            have = getattr(cfg.model if hasattr(cfg.model, name) else cfg, name)
        else:
            have = None
        if value != have:
            clash.append(f"--{name.replace('_', '-')} {value!r} (the run has {have!r})")
    if clash:
        raise PtyparityError(f"--resume {run_id}: the options contradict the run's config: {', '.join(clash)}; "
                             "drop them (a resumed run keeps its config)")


def _source_run(run_id, experiment):
    """The run to resume, after the stale-run sweep of its experiment (a killed run is FAILED by then)."""
    run = tracking.get_run(run_id)
    tracking.init_store(experiment=experiment or tracking.experiment_name(run))  # sweeps stale runs
    run = tracking.get_run(run_id)
    kind = tracking.run_tag(run, names.TAG_KIND)
    if kind != "train":
        raise PtyparityError(f"run {run_id} is not a train run (kind {kind!r}); --resume takes the id of a "
                             "train run")
    if run.info.status == "RUNNING":
        owner = f"process {tracking.run_tag(run, names.TAG_OWNER_PID)} on {tracking.run_tag(run, names.TAG_OWNER_HOST)}"
        raise PtyparityError(f"run {run_id} is still RUNNING ({owner} is alive); let it finish or stop it, "
                             "then resume it")
    return run


def resume_train(run_id, given, *, experiment=None, **run_options):
    """Continue train run ``run_id`` from its last checkpoint in a new run.

    Parameters
    ----------
    run_id : str
        A FAILED (killed, diverged), KILLED or FINISHED train run with a ``checkpoint/``.
    given : dict
        The options the user typed (name -> value); one that contradicts the run's config
        or settings is refused. ``train_data`` / ``test_data`` may point elsewhere: the
        training data must have the run's digest.
    experiment : str, optional
        Default: the run's own experiment.
    **run_options
        ``run_name``, ``quiet``, ``accelerator``, ``devices``, ``log_patch_stats``,
        ``debug_dump``, ``register`` of :func:`ptyparity.runs.run_train`.

    Returns
    -------
    backend : str
    result : TrainResult
        The new run (tags ``ptyparity.resumed_from`` = ``run_id``, ``ptyparity.resumed_epoch``).
    """
    from ptyparity.runs.train import run_train

    run = _source_run(run_id, experiment)
    try:
        local = tracking.download_artifact(run_id, names.CHECKPOINT_DIR)
    except PtyparityError:
        raise PtyparityError(f"run {run_id} has no {names.CHECKPOINT_DIR}/ artifact (it stopped before its "
                             "first epoch ended, or predates checkpoints); train it again") from None
    state, meta = checkpoint.load_latest(local)
    cfg = train_config_from_dict(meta["train_config"])
    _check_options(run_id, cfg, meta, given)
    train_path = given.get("train_data") or meta["train_path"]
    test_path = given.get("test_data") or meta["test_path"]
    result = run_train(meta["backend"], train_path, cfg, test_path=test_path,
                       experiment=experiment or tracking.experiment_name(run), measurement=meta["measurement"],
                       force=meta["force"], init_from=meta["init_from"],
                       resume=ResumePoint(run_id=run_id, state=state, meta=meta), **run_options)
    return meta["backend"], result
