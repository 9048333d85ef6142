"""Tracked workflows: each opens one MLflow run, does the work, records it.

The CLI and the MLproject entry points are thin shells over these functions.
"""

from __future__ import annotations

import dataclasses
import os

from ptyparity import tracking
from ptyparity.data import dataset_digest
from ptyparity.simulate import SimConfig, write_dataset


@dataclasses.dataclass(frozen=True)
class SimulateResult:
    run_id: str
    paths: dict
    digests: dict
    summary: dict


def run_simulate(cfg: SimConfig, out_dir, *, experiment=tracking.DEFAULT_EXPERIMENT, run_name=None,
                 overwrite=False, log_data=True):
    """Simulate ``train.npz``/``test.npz`` into ``out_dir`` inside a ``simulate`` run.

    The run records the config as params, the train digest as
    ``ptyparity.dataset_digest`` (test digest as ``ptyparity.test_dataset_digest``),
    both datasets as MLflow dataset inputs, preview PNGs under ``preview/`` and,
    with ``log_data``, the NPZ files under ``data/``.

    Returns
    -------
    result : SimulateResult
    """
    from ptyparity import report
    from ptyparity.data import summarize

    with tracking.start_run("simulate", experiment=experiment, run_name=run_name) as run:
        paths, data = write_dataset(cfg, out_dir, overwrite=overwrite)
        digests = {split: dataset_digest(d) for split, d in data.items()}
        tracking.set_tags({"dataset_digest": digests["train"], "test_dataset_digest": digests["test"]})
        params = dataclasses.asdict(cfg)
        params.update(object_size_px=cfg.object_size, scan_step_px=cfg.scan_step,
                      probe_edge_phase_rad=cfg.edge_phase)
        tracking.log_params(params)
        summary = {split: summarize(d) for split, d in data.items()}
        train = data["train"]
        tracking.log_metrics({"n_patterns": train.n_patterns,
                              "photons_per_pattern_mean": summary["train"]["photons_per_pattern_mean"],
                              "test_photons_per_pattern_mean": summary["test"]["photons_per_pattern_mean"]})
        for split, d in data.items():
            tracking.log_dataset(d, name=f"ptyparity-{split}", digest=digests[split], source=paths[split],
                                 context="training" if split == "train" else "testing")
        tracking.log_dict({"config": params, "digests": digests, "summary": summary}, "simulate.json")
        tracking.log_figure(report.object_figure(train.obj, title="train object"), "preview/object_train.png")
        tracking.log_figure(report.object_figure(data["test"].obj, title="test object"), "preview/object_test.png")
        tracking.log_figure(report.probe_figure(train.probe), "preview/probe.png")
        tracking.log_figure(report.diffraction_figure(train.diff3d), "preview/diffraction.png")
        if log_data:
            for path in paths.values():
                tracking.log_artifact(path, "data")
        return SimulateResult(run_id=run.info.run_id, paths={k: os.path.abspath(v) for k, v in paths.items()},
                              digests=digests, summary=summary)


# --- training and inference ------------------------------------------------------

# Param names shared by train and infer runs of both backends (SPEC §7).
def _config_params(model_cfg, train_cfg):
    m, t = model_cfg, train_cfg
    return {
        "N": m.N, "gridsize": m.gridsize, "n_filters_scale": m.n_filters_scale, "object_big": m.object_big,
        "probe_big": m.probe_big, "probe_mask": m.probe_mask, "merge_weighting": m.merge_weighting,
        "max_offset": m.max_offset, "intensity_scale_trainable": m.intensity_scale_trainable,
        "neighbor_count": t["neighbor_count"], "n_groups": t["n_groups"], "batch_size": t["batch_size"],
        "max_epochs": t["max_epochs"], "learning_rate": t["learning_rate"], "loss_mode": t["loss_mode"],
        "intensity_scale_mode": t["intensity_scale_mode"], "seed": t["seed"],
        "deterministic": t["deterministic"], "val_fraction": t["val_fraction"],
    }


def _scale_params(scales):
    return {"intensity_scale": scales.intensity_scale, "data_scale": scales.data_scale,
            "input_norm": scales.input_norm, "probe_norm": scales.probe_norm, "nphotons": scales.nphotons}


def backend_independent_hash(train_cfg_dict):
    """``ptyparity.config_hash``: the training config minus logging-only fields."""
    from ptyparity.config import config_hash

    values = dict(train_cfg_dict)
    values.pop("patch_stats_limit", None)
    return config_hash(values)


def pair_key(digest, cfg_hash, seed):
    """``ptyparity.pair_key`` = dataset digest + config hash + seed."""
    return f"{digest[:16]}-{cfg_hash}-s{seed}"


def _debug_dump(taps, raw, support, prefix, *, log_dump):
    """Patch statistics (returned as metrics) and, with ``log_dump``, the dump artifacts."""
    from ptyparity import report
    from ptyparity.stats import tap_summary

    metrics, per_patch = tap_summary(taps, raw, support)
    if log_dump:
        tracking.log_dict({"aggregates": metrics, "per_patch": per_patch}, f"{prefix}/patch_stats.json")
        tracking.log_figure(report.patch_grid_figure(taps["amp_patches"], normalise=True),
                            f"{prefix}/patch_grid_normalised.png")
        tracking.log_figure(report.patch_grid_figure(taps["amp_patches"], normalise=False),
                            f"{prefix}/patch_grid_shared.png")
        tracking.log_npz({k: v for k, v in taps.items()}, f"{prefix}/taps.npz")
    return metrics


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str
    registered_version: str | None
    history: dict
    final_metrics: dict


class _RecordingHooks:
    """TrainHooks that log to the active MLflow run and remember the history."""

    def __init__(self, quiet):
        self.quiet = quiet
        self.step_deviance = []
        self.step_loss = []

    def on_step(self, step, metrics):
        self.step_loss.append(metrics["train_step_loss"])
        self.step_deviance.append(metrics["train_step_deviance"])

    def on_epoch_end(self, epoch, metrics):
        tracking.log_metrics(metrics, step=epoch)


def run_train(backend, train_path, cfg, *, test_path=None, experiment=tracking.DEFAULT_EXPERIMENT, run_name=None,
              quiet=False, accelerator="cpu", devices=1, log_patch_stats=True, debug_dump=True, init_from=None,
              register=True, measurement="auto"):
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
        Bundle path or URI whose canonical weights start the training.
    register : bool
        Register the bundle as ``ptyparity-<backend>``.

    Returns
    -------
    result : TrainResult
    """
    import numpy as np

    from ptyparity import architecture, bundle, report, training
    from ptyparity.backends import load_backend
    from ptyparity.data import load_npz
    from ptyparity.errors import PtyparityError
    from ptyparity.physics import support_mask

    api = load_backend(backend)
    data = load_npz(train_path, measurement=measurement)
    cfg = training.resolve_config(cfg, data)
    ts = training.prepare(data, cfg)
    test = load_npz(test_path, measurement=measurement) if test_path else None
    if test is not None and test.N != data.N:
        raise PtyparityError(f"{test_path}: patterns are {test.N}x{test.N} but the training data's are "
                             f"{data.N}x{data.N}; use a matching test set")
    if init_from:
        start = bundle.load_dir(bundle.resolve(init_from))
        if start.model_cfg.N != cfg.model.N or architecture.weight_shapes(start.model_cfg) != \
                architecture.weight_shapes(cfg.model):
            raise PtyparityError(f"{init_from}: its network (N={start.model_cfg.N}, "
                                 f"gridsize={start.model_cfg.gridsize}, f={start.model_cfg.n_filters_scale}) does "
                                 "not match this training config; use matching --gridsize/--n-filters-scale")
        weights = dict(start.weights)
        weights[architecture.LOG_SCALE] = np.asarray(ts.scales.log_scale, np.float32)
    else:
        weights = architecture.init_weights(cfg.model, seed=cfg.seed, log_scale=ts.scales.log_scale)
    digest = dataset_digest(data)
    cfg_dict = dataclasses.asdict(cfg)
    chash = backend_independent_hash(cfg_dict)
    tags = {"dataset_digest": digest, "config_hash": chash, "pair_key": pair_key(digest, chash, cfg.seed)}
    if init_from:
        tags["init_from"] = init_from
    with tracking.start_run("train", backend=backend, experiment=experiment, run_name=run_name, tags=tags) as run:
        params = _config_params(cfg.model, cfg_dict)
        start_scales = ts.scales
        params.update({k: v for k, v in _scale_params(start_scales).items() if k != "intensity_scale"})
        params.update(api.versions())
        params.update(patch_stats_limit=cfg.patch_stats_limit, n_train_groups=len(ts.train_idx),
                      n_val_groups=len(ts.val_idx))
        tracking.log_params(params)
        tracking.log_dataset(data, name="train", digest=digest, source=train_path, context="training")
        tracking.log_dict({"train_config": cfg_dict, "scales": dataclasses.asdict(ts.scales), "backend": backend},
                          "config.json")
        model = api.build(cfg.model, ts.probe, weights)
        support = support_mask(cfg.model.N, probe_big=cfg.model.probe_big)
        dump_which = np.arange(min(cfg.patch_stats_limit, len(ts.groups)))

        def dump(prefix, step):
            from ptyparity.inference import forward_groups, raw_groups

            taps = forward_groups(api, model, data.diff3d, ts.groups, ts.scales, which=dump_which)
            metrics = _debug_dump(taps, raw_groups(data.diff3d, ts.groups, dump_which), support, prefix,
                                  log_dump=debug_dump)
            if log_patch_stats:
                tracking.log_metrics(metrics, step=step)
            return metrics

        def test_deviance():
            if test is None:
                return None
            return _deviance_on(api, model, test, cfg, ts.scales)

        dump("debug_dump/initial", 0)
        dev0 = test_deviance()
        hooks = _RecordingHooks(quiet)
        history = api.fit(model, ts, hooks, quiet=quiet, accelerator=accelerator, devices=devices,
                          deterministic=cfg.deterministic)
        tracking.log_series("train_step_deviance", hooks.step_deviance)
        tracking.log_series("train_step_loss", hooks.step_loss)
        final_weights = api.get_weights(model)
        scales = dataclasses.replace(ts.scales, intensity_scale=float(np.exp(np.float64(
            final_weights[architecture.LOG_SCALE]))))
        ts.scales = scales  # the dump and test deviance below use the scale in effect
        tracking.log_params({"intensity_scale": scales.intensity_scale})
        final = dump("debug_dump/final", cfg.max_epochs)
        final.update({k: history[k][-1] for k in ("train_loss", "val_loss", "train_deviance", "val_deviance")})
        dev1 = test_deviance()
        if dev1 is not None:
            tracking.log_metrics({"test_deviance_initial": dev0, "test_deviance": dev1})
            final.update(test_deviance_initial=dev0, test_deviance=dev1)
        tracking.log_figure(report.loss_figure(history), "plots/loss.png")
        tracking.log_dict(history, "history.json")

        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir = bundle.save(os.path.join(tmp, "bundle"), weights=final_weights, model_cfg=cfg.model,
                                     train_cfg=cfg, scales=scales, probe=ts.probe, backend=backend,
                                     versions=api.versions(),
                                     extra={"train_run_id": run.info.run_id, "dataset_digest": digest,
                                            "config_hash": chash})
            model_uri, version = tracking.log_bundle_model(
                bundle_dir, registered_model_name=f"ptyparity-{backend}" if register else None)
        return TrainResult(run_id=run.info.run_id, model_uri=model_uri, registered_version=version,
                           history=history, final_metrics=final)


def _deviance_on(api, model, data, cfg, scales, *, max_groups=1024):
    """Mean Poisson deviance of ``model`` on held-out data (inference groups)."""
    import numpy as np

    from ptyparity import physics, training
    from ptyparity.inference import forward_groups

    groups = training.inference_set(data, cfg.model, neighbor_count=cfg.neighbor_count, seed=cfg.seed)
    which = np.arange(min(max_groups, len(groups)))
    taps = forward_groups(api, model, data.diff3d, groups, scales, which=which, keep=("pred_intensity",))
    target, _ = training.group_batch(data.diff3d, groups, which, input_norm=scales.input_norm,
                                     data_scale=scales.data_scale)
    return physics.poisson_deviance(taps["pred_intensity"], target, scales.log_scale)


@dataclasses.dataclass(frozen=True)
class InferResult:
    run_id: str
    metrics: dict
    canvas_path: str | None = None


def run_infer(model_uri, data_path, *, backend=None, experiment=tracking.DEFAULT_EXPERIMENT, run_name=None,
              debug_dump=True, log_patch_stats=True, patch_stats_limit=None, measurement="auto", verify=True):
    """Run a bundle on a raw dataset inside an ``infer`` run.

    Records the bundle's scalars as params (``intensity_scale`` is the value loaded),
    the patch statistics and debug dump of the first ``patch_stats_limit`` groups,
    the stitched canvas (``stitched/canvas.npz`` + PNGs) and, when the data has
    ``objectGuess``, ``gt.*`` metrics beside the flat-guess ones.

    Returns
    -------
    result : InferResult
    """
    import numpy as np

    from ptyparity import bundle, metrics as canvas_metrics, report
    from ptyparity.data import load_npz
    from ptyparity.inference import raw_groups

    rec = bundle.load(model_uri, verify=verify)
    data = load_npz(data_path, measurement=measurement)
    rec.check_data(data)
    name = rec.backend_name(backend)
    meta = rec.bundle.meta
    tc = rec.bundle.train_cfg
    digest = dataset_digest(data)
    chash = meta.get("config_hash") or backend_independent_hash(tc)
    tags = {"dataset_digest": digest, "config_hash": chash, "pair_key": pair_key(digest, chash, tc.get("seed", 0)),
            "model_uri": model_uri, "bundle_backend": rec.bundle.backend or ""}
    if meta.get("train_run_id"):
        tags["train_run_id"] = meta["train_run_id"]
    version = tracking.model_version_of(model_uri)
    if version:
        tags["model_name"], tags["model_version"] = version
    with tracking.start_run("infer", backend=name, experiment=experiment, run_name=run_name, tags=tags) as run:
        api, _model = rec.model(name)
        params = _config_params(rec.model_cfg, tc)
        params.update(_scale_params(rec.scales))
        params.update(api.versions())
        limit = int(patch_stats_limit or tc.get("patch_stats_limit", 16))
        params["patch_stats_limit"] = limit
        tracking.log_params(params)
        tracking.log_dataset(data, name="infer", digest=digest, source=data_path, context="inference")
        groups = rec.groups_for(data)
        which = np.arange(min(limit, len(groups)))
        taps = rec.taps(data, backend=name, groups=groups, which=which)
        metrics = _debug_dump(taps, raw_groups(data.diff3d, groups, which), rec.support(), "debug_dump",
                              log_dump=debug_dump)
        recon = rec.reconstruct(data, backend=name)
        tracking.log_npz({"canvas": recon.canvas, "count": recon.count,
                          "pos": recon.groups.pos.astype(np.float32)}, "stitched/canvas.npz")
        tracking.log_figure(report.canvas_figure(recon.canvas, reference=data.obj, title=f"{name} reconstruction"),
                            "stitched/canvas.png")
        if data.obj is not None:
            region = canvas_metrics.covered_region(recon.count)
            scores = canvas_metrics.compare_canvases(recon.canvas, data.obj, region)
            flat = canvas_metrics.flat_guess_scores(data.obj, region)
            metrics.update({f"gt.{k}": v for k, v in scores.items()})
            metrics.update({f"gt.{k}_flat": v for k, v in flat.items()})
        tracking.log_metrics({k: v for k, v in metrics.items() if log_patch_stats or not k.startswith("patch.")})
        return InferResult(run_id=run.info.run_id, metrics=metrics)
