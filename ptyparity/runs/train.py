"""The ``train`` run: fit one backend (:func:`ptyparity.training.fit_model`) and
record the config, the losses, the debug dumps before and after, and the bundle.

Each helper below has one job; :func:`run_train` only puts them in order.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from ptyparity import __version__, names, record, tracking, training
from ptyparity.data import dataset_digest
from ptyparity.runs import common
from ptyparity.config import CONVENTION_CHOICES
from ptyparity.runs.common import TrainResult, backend_independent_hash, config_params, pair_key, scale_params


def run_train(backend, train_path, cfg, *, test_path=None, experiment=names.DEFAULT_EXPERIMENT, run_name=None,
              quiet=False, accelerator="cpu", devices=1, log_patch_stats=True, debug_dump=True, init_from=None,
              register=True, measurement="auto", force=False, explicit_fields=None, resume=None):
    """Train one backend on a raw dataset inside a ``train`` run.

    Parameters
    ----------
    backend : {"torch", "tensorflow"}
    train_path : path
        Raw training NPZ.
    cfg : TrainConfig
        ``N`` and ``max_offset`` are filled in from the data.
    test_path : path, optional
        Held-out data: its Poisson deviance before and after training is logged
        (``test_deviance_initial``, ``test_deviance``).
    init_from : str, optional
        Bundle path or URI whose canonical weights start the training. The network and
        the conventions (:data:`FOLLOWED_FIELDS`: gridsize, n_filters_scale, object_big,
        probe_big, head_layout, …) follow that bundle; a field in ``explicit_fields`` that
        contradicts it is refused.
    explicit_fields : collection of str, optional
        The ``ModelConfig`` fields the user set (the CLI's options given on the command
        line); None: the fields that differ from the ``ModelConfig`` default.
    register : bool
        Register the bundle as ``ptyparity-<backend>``.
    force : bool
        Train on data that cannot be photon counts (:func:`ptyparity.data.count_sanity`);
        the warnings are kept as tag ``ptyparity.data_warnings``.
    resume : ptyparity.runs.resume.ResumePoint, optional
        Continue that run's last checkpoint (:func:`ptyparity.runs.resume.resume_train`
        builds it, with the run's ``cfg``); the data must have the run's digest.

    Returns
    -------
    result : TrainResult

    Raises
    ------
    PtyparityError
        Bad input, or a training that diverged (the run ends FAILED with tag
        ``ptyparity.error``, no bundle).
    """
    from ptyparity.backends import load_backend
    from ptyparity.errors import PtyparityError
    from ptyparity.runs import resume as resuming

    api = load_backend(backend)
    start = None
    if init_from:
        from ptyparity import bundle

        start = bundle.load_dir(bundle.resolve(init_from))
        cfg = follow_bundle(cfg, start.model_cfg, init_from, explicit_fields)
    data, test, cfg, ts, data_warnings = _load_inputs(train_path, test_path, cfg, measurement, force)
    weights = _initial_weights(cfg, ts.scales, init_from, start)
    digest = dataset_digest(data)
    if resume is not None and digest != resume.meta["dataset_digest"]:
        raise PtyparityError(f"{train_path}: not the data run {resume.run_id} trained on (sha256 {digest[:12]}…, "
                             f"the run's {resume.meta['dataset_digest'][:12]}…); pass --train-data with that file")
    chash = backend_independent_hash(dataclasses.asdict(cfg))
    tags = {names.TAG_DATASET_DIGEST: digest, names.TAG_CONFIG_HASH: chash,
            names.TAG_PAIR_KEY: pair_key(digest, chash, cfg.seed),
            **record.implementation_tags(record.IMPLEMENTATION, __version__)}  # as every record.train_run's
    if init_from:
        tags[names.TAG_INIT_FROM] = init_from
    if data_warnings:
        tags[names.TAG_DATA_WARNINGS] = data_warnings
    if resume is not None:
        tags.update({names.TAG_RESUMED_FROM: resume.run_id, names.TAG_RESUMED_EPOCH: resume.state.epoch})
    saver = resuming.CheckpointLogger(resuming.checkpoint_meta(
        backend, cfg, train_path=train_path, test_path=test_path, measurement=measurement, force=force,
        init_from=init_from, digest=digest))
    with tracking.start_run("train", backend=backend, experiment=experiment, run_name=run_name, tags=tags) as run:
        # The same record API an outside implementation uses (ptyparity.record).
        rec = record.RunRecord(run.info.run_id, "train", n=cfg.model.N, gridsize=cfg.model.gridsize,
                               probe_big=cfg.model.probe_big, backend=backend)
        _log_inputs(rec, api, backend, cfg, ts, data, digest, train_path)
        model = api.build(cfg.model, ts.probe, weights)
        probe = _Probe(api, model, data, test, ts, log_patch_stats=log_patch_stats, log_dump=debug_dump)
        probe.dump(names.DEBUG_DUMP_INITIAL, 0, ts.scales)
        dev0 = probe.test_deviance(ts.scales)
        if resume is not None:
            resuming.log_resumed_history(resume.state)
        fit = _fit(rec, api, model, ts, quiet=quiet, accelerator=accelerator, devices=devices, checkpoint=saver,
                   resume=None if resume is None else resume.state)
        rec.log_scales(intensity_scale=fit.scales.intensity_scale)
        final = probe.dump(names.DEBUG_DUMP_FINAL, cfg.max_epochs, fit.scales)
        final.update({k: fit.history[k][-1] for k in ("train_loss", "val_loss", "train_deviance", "val_deviance")})
        dev1 = probe.test_deviance(fit.scales)
        if dev1 is not None:
            tracking.log_metrics({"test_deviance_initial": dev0, "test_deviance": dev1})
            final.update(test_deviance_initial=dev0, test_deviance=dev1)
        _log_history(fit.history)
        extra = {"train_run_id": run.info.run_id, "dataset_digest": digest, "config_hash": chash}
        model_uri, version = _log_bundle(api, backend, cfg, ts, fit, extra, register=register,
                                         model_metrics=_model_metric_keys(final))
        _describe(run.info.run_id, {**config_params(cfg), **final, **tags, names.TAG_BACKEND: backend,
                                    "intensity_scale": fit.scales.intensity_scale}, version)
        return TrainResult(run_id=run.info.run_id, model_uri=model_uri, registered_version=version,
                           history=fit.history, final_metrics=final)


def _load_inputs(train_path, test_path, cfg, measurement, force):
    """Training and test data, the config resolved against the data, the training set, and the
    count-sanity warnings that ``force`` let through (text for a tag, "" when none)."""
    from ptyparity.data import load_npz
    from ptyparity.errors import PtyparityError

    data = load_npz(train_path, measurement=measurement)
    data_warnings = _count_sanity(train_path, data, force)
    cfg = training.resolve_config(cfg, data)
    ts = training.prepare(data, cfg)
    test = load_npz(test_path, measurement=measurement) if test_path else None
    if test is not None and test.N != data.N:
        raise PtyparityError(f"{test_path}: patterns are {test.N}x{test.N} but the training data's are "
                             f"{data.N}x{data.N}; use a matching test set")
    return data, test, cfg, ts, data_warnings


def _count_sanity(train_path, data, force):
    """Refuse data that cannot be photon counts unless ``force``; the warnings as one text."""
    from ptyparity.data import count_sanity
    from ptyparity.errors import PtyparityError

    found = count_sanity(data)
    if found and not force:
        raise PtyparityError(f"{train_path}: the data cannot be photon counts: "
                             + "; ".join(w.message for w in found) + "; pass --force to train anyway")
    return " | ".join(f"{w.code}: {w.message}" for w in found)[:5000]


# What a fine-tuned model takes from the bundle it starts from: its network and its conventions.
FOLLOWED_FIELDS = ("gridsize", "n_filters_scale", "object_big", "probe_big", *CONVENTION_CHOICES)


def follow_bundle(cfg, start_model_cfg, init_from, explicit_fields=None):
    """``cfg`` with the network and conventions of the starting bundle (:data:`FOLLOWED_FIELDS`).

    Raises
    ------
    PtyparityError
        When a field the user set (``explicit_fields``; None: those differing from the
        ``ModelConfig`` default) contradicts the bundle.
    """
    from ptyparity.config import SPEC_CONVENTIONS, ModelConfig
    from ptyparity.errors import PtyparityError

    default = ModelConfig()
    given = ({f for f in FOLLOWED_FIELDS if getattr(cfg.model, f) != getattr(default, f)}
             if explicit_fields is None else set(explicit_fields))
    clash = [f"{f}={getattr(cfg.model, f)!r} (the bundle has {getattr(start_model_cfg, f)!r})"
             for f in FOLLOWED_FIELDS if f in given and getattr(cfg.model, f) != getattr(start_model_cfg, f)]
    if clash:
        raise PtyparityError(f"--init-from {init_from}: the training options contradict the bundle: "
                             f"{', '.join(clash)}; drop them (the network follows the bundle)")
    followed = {f: getattr(start_model_cfg, f) for f in FOLLOWED_FIELDS}
    if start_model_cfg.conventions != SPEC_CONVENTIONS:
        # An upstream model's canvas is part of what it computes (patches beyond it are cut off),
        # so it keeps its own size rather than one resolved from the new data's scan step.
        followed["max_offset"] = start_model_cfg.max_offset
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **followed))


def _initial_weights(cfg, scales, init_from, start=None):
    """Seeded initial weights, or the starting bundle's (``start``, read from ``init_from``)
    with this data's ``log_scale``."""
    from ptyparity import architecture
    from ptyparity.errors import PtyparityError

    if not init_from:
        return architecture.init_weights(cfg.model, seed=cfg.seed, log_scale=scales.log_scale)
    if start.model_cfg.N != cfg.model.N or \
            architecture.weight_shapes(start.model_cfg) != architecture.weight_shapes(cfg.model):
        raise PtyparityError(f"{init_from}: its network (N={start.model_cfg.N}, gridsize={start.model_cfg.gridsize}, "
                             f"f={start.model_cfg.n_filters_scale}) does not match this training config; use "
                             "matching --gridsize/--n-filters-scale")
    weights = dict(start.weights)
    weights[architecture.LOG_SCALE] = np.asarray(scales.log_scale, np.float32)
    return weights


def _log_inputs(rec, api, backend, cfg, ts, data, digest, train_path):
    """Params (config, starting scales but not ``intensity_scale``, versions, sizes),
    the dataset input and ``config.json``."""
    params = config_params(cfg)
    params.update({k: v for k, v in scale_params(ts.scales).items() if k != "intensity_scale"})
    params.update(api.versions())
    params.update(patch_stats_limit=cfg.patch_stats_limit, n_train_groups=len(ts.train_idx),
                  n_val_groups=len(ts.val_idx))
    rec.log_params(params)
    tracking.log_dataset(data, name="train", digest=digest, source=train_path, context="training")
    tracking.log_dict({"train_config": dataclasses.asdict(cfg), "scales": dataclasses.asdict(ts.scales),
                       "backend": backend}, names.CONFIG_JSON)


class _Probe:
    """Looks at the model on fixed data: the debug dump of the first groups, and the
    held-out deviance; called before and after training with the scales in effect."""

    def __init__(self, api, model, data, test, ts, *, log_patch_stats, log_dump):
        from ptyparity.physics import support_mask

        self.api, self.model, self.data, self.test, self.ts = api, model, data, test, ts
        self.log_patch_stats, self.log_dump = log_patch_stats, log_dump
        self.which = np.arange(min(ts.cfg.patch_stats_limit, len(ts.groups)))
        self.support = support_mask(ts.cfg.model.N, probe_big=ts.cfg.model.probe_big)

    def dump(self, prefix, step, scales):
        """Patch statistics (logged at ``step``) and the dump artifacts under ``prefix``."""
        from ptyparity.inference import forward_groups, raw_groups

        taps = forward_groups(self.api, self.model, self.data.diff3d, self.ts.groups, scales, which=self.which)
        raw = raw_groups(self.data.diff3d, self.ts.groups, self.which)
        metrics = common.debug_dump(taps, raw, self.support, prefix, log_dump=self.log_dump)
        if self.log_patch_stats:
            tracking.log_metrics(metrics, step=step)
        return metrics

    def test_deviance(self, scales, *, max_groups=128):
        """Mean Poisson deviance on ``max_groups`` of the held-out data's inference groups, spread
        evenly over its scan (None without test data).

        Measured on the simulated test scan (3249 groups) at the start and end of a default torch
        training: the first 256 groups, the top rows of the raster, were 4-5 % below the whole
        set's mean; 128 to 512 groups spread over the scan were within 3.2 % of it, so 128 give the
        before/after figure at half the cost of 256 (~0.25 s less in a 13 s default training)."""
        from ptyparity import physics
        from ptyparity.inference import forward_groups, run_input_norm

        if self.test is None:
            return None
        cfg = self.ts.cfg
        groups = training.inference_set(self.test, cfg.model, neighbor_count=cfg.neighbor_count, seed=cfg.seed)
        which = np.unique(np.linspace(0, len(groups) - 1, min(max_groups, len(groups))).round().astype(int))
        norm_mode = cfg.model.input_normalization  # per_set: the test set gets its own factor
        taps = forward_groups(self.api, self.model, self.test.diff3d, groups, scales, which=which,
                              keep=("pred_intensity",), input_normalization=norm_mode)
        norm = run_input_norm(self.test.diff3d, groups, scales, which, input_normalization=norm_mode)
        target, _ = training.group_batch(self.test.diff3d, groups, which, input_norm=norm,
                                         data_scale=scales.data_scale)
        return physics.poisson_deviance(taps["pred_intensity"], target, scales.log_scale)


class _EpochLogger(training.TrainHooks):
    """Logs each epoch's metrics as it ends; keeps the per-step values for one batch write.

    With a ``saver`` (the run's :class:`~ptyparity.runs.resume.CheckpointLogger`, which the
    backend calls right after each epoch ends) the metrics go into the saver's write of that
    epoch's checkpoint: one store transaction an epoch."""

    def __init__(self, rec, saver=None):
        self.rec, self.saver = rec, saver
        self.steps = {key: [] for key in training.STEP_KEYS}

    def on_step(self, step, metrics):
        for key in training.STEP_KEYS:
            self.steps[key].append(metrics[key])

    def on_epoch_end(self, epoch, metrics):
        values = {k: v for k, v in metrics.items() if v is not None}
        if self.saver is None:
            self.rec.log_epoch(epoch, values)
        else:
            self.saver.hold(epoch, values)
            self.rec.epochs_logged = max(self.rec.epochs_logged, epoch + 1)


def _fit(rec, api, model, ts, resume=None, checkpoint=None, **fit_options):
    """:func:`training.fit_model`, with the step series logged even when it diverges (whose
    message becomes tag ``ptyparity.error``); a resumed fit's series start with the checkpoint's."""
    from ptyparity.errors import PtyparityError

    hooks = _EpochLogger(rec, checkpoint)
    if resume is not None:
        hooks.steps = {key: list(resume.history[key]) for key in training.STEP_KEYS}
    try:
        return training.fit_model(api, model, ts, hooks=hooks, resume=resume, checkpoint=checkpoint, **fit_options)
    except PtyparityError as err:
        tracking.set_tags({names.TAG_ERROR: str(err)[:5000]})
        raise
    finally:
        if checkpoint is not None:
            checkpoint.flush()
        rec.log_steps({key: hooks.steps[key] for key in ("train_step_deviance", "train_step_loss")})


def _log_history(history):
    from ptyparity import report

    tracking.log_figure(report.loss_figure(history), names.LOSS_PLOT)
    tracking.log_dict(history, names.HISTORY_JSON)


def _describe(run_id, record, version):
    """The run's description and, when registered, the model's and the new version's (with the
    version tags its description is rebuilt from after a compare)."""
    from ptyparity import descriptions, tracking_notes

    name = names.registered_model_name(record[names.TAG_BACKEND])
    tracking_notes.describe_run(descriptions.train_description(
        {**record, "model_name": name, "model_version": version}))
    if version is None:
        return
    tracking_notes.describe_registered_model(name, descriptions.registered_model_description(name))
    version_tags = {names.TAG_BACKEND: record[names.TAG_BACKEND], names.TAG_PAIR_KEY: record[names.TAG_PAIR_KEY],
                    names.TAG_TRAIN_RUN_ID: run_id}
    tracking_notes.describe_model_version(name, version, descriptions.model_version_description(
        {"source_kind": "train", "source_run_id": run_id, **version_tags}), tags=version_tags)


# What a train run logs about its own process, not about the model it ends with.
_PROCESS_METRICS = frozenset(training.STEP_KEYS + ("checkpoint_seconds", "test_deviance_initial"))


def _model_metric_keys(final):
    """The metrics the logged model carries: the last epoch's, the final dump's statistics and
    the held-out deviance, each at its latest step (MLflow's own default, the run's step-0
    values, would show the untrained network beside the trained model)."""
    return sorted((set(final) | set(training.EPOCH_KEYS)) - _PROCESS_METRICS)


def _log_bundle(api, backend, cfg, ts, fit, extra, *, register, model_metrics=()):
    """Save the bundle, log it as the run's pyfunc model at the step the training ends on (its
    optimizer step count, ``ts.steps_per_epoch * cfg.max_epochs``: past every per-step value, so
    MLflow links nothing there but, with one step an epoch, the final dump's statistics) with
    ``model_metrics`` linked to it, and (``register``) register it.

    Returns
    -------
    model_uri : str
    version : str or None
    """
    from ptyparity import bundle

    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir = bundle.save(os.path.join(tmp, "bundle"), weights=fit.weights, model_cfg=cfg.model,
                                 train_cfg=cfg, scales=fit.scales, probe=ts.probe, backend=backend,
                                 versions=api.versions(), extra=extra)
        return tracking.log_bundle_model(bundle_dir,
                                         registered_model_name=names.registered_model_name(backend) if register
                                         else None, step=ts.steps_per_epoch * cfg.max_epochs,
                                         model_metrics=model_metrics)
