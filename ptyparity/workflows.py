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
        "precision": t.get("precision", "float32"),
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
        if not all(np.all(np.isfinite(w)) for w in final_weights.values()):
            raise PtyparityError(f"training diverged: the weights hold NaN/inf after {len(history['train_loss'])} "
                                 "epoch(s); lower --learning-rate")
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


# --- parity comparison -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CompareResult:
    run_id: str
    status: str  # pass | fail | error
    failed_checks: list
    checks: list
    reason: str = ""

    @property
    def exit_code(self):
        return {"pass": 0, "fail": 1}.get(self.status, 2)


def _tag(run, key):
    return run.data.tags.get(f"ptyparity.{key}")


def resolve_pair(*, torch_run_id=None, tf_run_id=None, pair_key=None, latest=False,
                 experiment=tracking.DEFAULT_EXPERIMENT):
    """Find the (torch, tensorflow) infer runs to compare.

    At most one of: both run ids, a ``pair_key`` (newest infer run of each backend
    with that key) or ``latest`` (the newest pair_key that has finished infer runs
    of both backends; also what an empty choice means). Found through MLflow search
    on tags.
    """
    from ptyparity.errors import PtyparityError

    modes = sum([bool(torch_run_id or tf_run_id), bool(pair_key), bool(latest)])
    if modes == 0:
        latest = True  # nothing chosen: the newest complete pair
        modes = 1
    if modes != 1:
        raise PtyparityError("choose the pair one way: --torch-run ID --tf-run ID, --pair-key KEY or --latest")
    if torch_run_id or tf_run_id:
        if not (torch_run_id and tf_run_id):
            raise PtyparityError("give both --torch-run and --tf-run (infer run ids)")
        return tracking.get_run(torch_run_id), tracking.get_run(tf_run_id)
    if pair_key:
        found = {}
        for backend in ("torch", "tensorflow"):
            runs = tracking.search_runs({"kind": "infer", "backend": backend, "pair_key": pair_key},
                                        experiment=experiment, max_results=1)
            if not runs:
                raise PtyparityError(f"no {backend} infer run with pair_key {pair_key!r} in experiment "
                                     f"{experiment!r}; run 'ptyparity infer --backend {backend}' first")
            found[backend] = runs[0]
        return found["torch"], found["tensorflow"]
    runs = tracking.search_runs({"kind": "infer"}, experiment=experiment, finished_only=True)
    newest = {}
    for run in runs:  # newest first
        key, backend = _tag(run, "pair_key"), _tag(run, "backend")
        slot = newest.setdefault(key, {})
        slot.setdefault(backend, run)
        if "torch" in slot and "tensorflow" in slot:
            return slot["torch"], slot["tensorflow"]
    raise PtyparityError(f"no complete torch/tensorflow pair of finished infer runs in experiment {experiment!r}; "
                         "train and infer both backends on the same data first")


def _refusal(torch_run, tf_run, allow_mismatch):
    """Why this pair cannot be compared, or None."""
    for name, run in (("torch", torch_run), ("tensorflow", tf_run)):
        if _tag(run, "kind") != "infer":
            return f"run {run.info.run_id} is a {_tag(run, 'kind') or 'non-ptyparity'} run, not an infer run"
        if _tag(run, "backend") != name:
            return f"run {run.info.run_id} is a {_tag(run, 'backend')} run but was given as the {name} run"
        if run.info.status != "FINISHED":
            return f"run {run.info.run_id} is {run.info.status}, not FINISHED; compare finished runs only"
        if not _tag(run, "train_run_id"):
            return f"run {run.info.run_id} has no ptyparity.train_run_id tag; infer from a ptyparity bundle"
    if _tag(torch_run, "pair_key") != _tag(tf_run, "pair_key") and not allow_mismatch:
        return (f"pair keys differ (torch {_tag(torch_run, 'pair_key')} vs tensorflow {_tag(tf_run, 'pair_key')}): "
                "different data, config or seed; pass --allow-mismatch to compare anyway")
    return None


def _metrics_with_params(run):
    values = dict(run.data.metrics)
    if "intensity_scale" in run.data.params:
        values["intensity_scale"] = float(run.data.params["intensity_scale"])
    return values


def run_compare(*, torch_run_id=None, tf_run_id=None, pair_key=None, latest=False, allow_mismatch=False,
                thresholds=None, experiment=tracking.DEFAULT_EXPERIMENT, run_name=None):
    """Compare a torch and a TF infer run; record the verdict (SPEC §8).

    Returns
    -------
    result : CompareResult
        ``status`` pass, fail or error; ``exit_code`` 0, 1 or 2.
    """
    import json

    import numpy as np

    from ptyparity import parity

    thr = dict(parity.DEFAULT_THRESHOLDS)
    thr.update(thresholds or {})
    torch_run, tf_run = resolve_pair(torch_run_id=torch_run_id, tf_run_id=tf_run_id, pair_key=pair_key,
                                     latest=latest, experiment=experiment)
    ids = {"torch_run_id": torch_run.info.run_id, "tf_run_id": tf_run.info.run_id}
    with tracking.start_run("compare", experiment=experiment, run_name=run_name,
                            tags={"pair_key": _tag(torch_run, "pair_key") or ""}) as run:
        tracking.log_params({f"threshold.{k}": v for k, v in thr.items()})
        tracking.set_tags({f"parity.{k}": v for k, v in ids.items()})
        if allow_mismatch:
            tracking.set_tags({"parity.allow_mismatch": "true"})
        reason = _refusal(torch_run, tf_run, allow_mismatch)
        trains = {}
        if reason is None:
            try:
                for name, r in (("torch", torch_run), ("tensorflow", tf_run)):
                    trains[name] = tracking.get_run(_tag(r, "train_run_id"))
                canvases = {name: np.load(tracking.download_artifact(r.info.run_id, "stitched/canvas.npz"),
                                          allow_pickle=False)
                            for name, r in (("torch", torch_run), ("tensorflow", tf_run))}
            except Exception as exc:  # noqa: BLE001 - any missing piece refuses the pair
                reason = str(exc).splitlines()[0]
        if reason is not None:
            tracking.set_tags({"parity.status": "error", "parity.error": reason[:5000]})
            for r in (torch_run, tf_run):
                tracking.set_tags({"parity.status": "error", "parity.compare_run_id": run.info.run_id},
                                  run_id=r.info.run_id)
            return CompareResult(run_id=run.info.run_id, status="error", failed_checks=[], checks=[], reason=reason)
        tracking.set_tags({"parity.torch_train_run_id": trains["torch"].info.run_id,
                           "parity.tf_train_run_id": trains["tensorflow"].info.run_id})

        m_torch, m_tf = _metrics_with_params(torch_run), _metrics_with_params(tf_run)
        checks = []
        for name, r in (("torch", torch_run), ("tensorflow", tf_run)):
            checks += parity.consistency_checks(name, _metrics_with_params(trains[name]), _metrics_with_params(r),
                                                rtol=thr["consistency_rtol"])
        checks += parity.ratio_checks(m_torch, m_tf, tolerance=thr["ratio_tolerance"],
                                      var_factor=thr["var_ratio_max_factor"])
        checks += parity.collapse_checks(m_torch, m_tf, max_fraction=thr["collapsed_fraction_max"])
        checks += parity.gt_skill_checks(m_torch, m_tf, margin=thr["gt_skill_margin"])
        c_torch, c_tf = canvases["torch"], canvases["tensorflow"]
        canvas_checks, scores, best = parity.canvas_checks(c_torch["canvas"], c_torch["count"], c_tf["canvas"],
                                                           c_tf["count"], thresholds=thr)
        checks += canvas_checks
        status, failed = parity.verdict(checks)
        tracking.log_metrics({c.name: c.value for c in checks})
        tracking.log_metrics(scores)
        tracking.set_tags({"parity.status": status, "parity.failed_checks": ",".join(failed) or "none",
                           "parity.best_orientation": best})
        summary = {"status": status, "failed_checks": failed, "checks": [c.as_dict() for c in checks],
                   "canvas_scores": scores, "thresholds": thr, **ids,
                   "torch_train_run_id": trains["torch"].info.run_id,
                   "tf_train_run_id": trains["tensorflow"].info.run_id}
        tracking.log_dict(json.loads(json.dumps(summary, default=float)), "parity/summary.json")
        _log_parity_report(summary, torch_run, tf_run, c_torch, c_tf)

        for r in (torch_run, tf_run):
            tracking.set_tags({"parity.status": status, "parity.compare_run_id": run.info.run_id},
                              run_id=r.info.run_id)
            name, version = _tag(r, "model_name"), _tag(r, "model_version")
            if name and version:
                tracking.tag_model_version(name, version, {"parity.status": status,
                                                           "parity.compare_run_id": run.info.run_id})
                if status == "pass":
                    tracking.set_model_alias(name, "parity-passed", version)
        return CompareResult(run_id=run.info.run_id, status=status, failed_checks=failed, checks=checks)


def _log_parity_report(summary, torch_run, tf_run, c_torch, c_tf):
    """Figures and the self-contained ``parity/report.html``."""
    import json

    import numpy as np

    from ptyparity import report

    figures = {
        "canvases": report.parity_canvas_figure(c_torch["canvas"], c_tf["canvas"], c_torch["count"], c_tf["count"]),
    }
    variances = {}
    grids = {}
    for name, r in (("torch", torch_run), ("tensorflow", tf_run)):
        try:
            with open(tracking.download_artifact(r.info.run_id, "debug_dump/patch_stats.json")) as fh:
                variances[name] = np.asarray(json.load(fh)["per_patch"]["amp"]["var"]).ravel()
            grids[name] = tracking.download_artifact(r.info.run_id, "debug_dump/patch_grid_normalised.png")
        except Exception:  # noqa: BLE001 - a run logged without a debug dump still gets a report
            pass
    if variances:
        figures["patch_variance"] = report.variance_histogram_figure(variances)
    pngs = {}
    for key, fig in figures.items():
        pngs[key] = report.figure_png(fig)
        tracking.log_figure(fig, f"parity/{key}.png")
    for name, path in grids.items():
        with open(path, "rb") as fh:
            pngs[f"patch_grid_{name}"] = fh.read()
    tracking.log_text(report.parity_html(summary, pngs), "parity/report.html")


TAP_ORDER = ("encoder_input", "amp_patches", "phase_patches", "object_patches", "object_canvas",
             "object_extracted", "exit_wave", "pred_intensity", "pred_amplitude", "pred_amplitude_counts")


def run_compare_forward(model_uri, *, data_path=None, n_groups=8, tolerance=1e-4,
                        experiment=tracking.DEFAULT_EXPERIMENT, run_name=None):
    """Same weights in both backends, one batch, per-tap max error (SPEC §8).

    Without ``data_path`` the batch comes from a freshly simulated dataset of the
    bundle's N (seed 0). TF is the reference; the first tap in forward order whose
    ``max|torch - tf| / max|tf|`` exceeds ``tolerance`` is named.

    Returns
    -------
    result : CompareResult
    """
    import numpy as np

    from ptyparity import bundle, parity
    from ptyparity.data import load_npz

    rec = bundle.load(model_uri)
    if data_path:
        data = load_npz(data_path)
    else:
        from ptyparity.simulate import SimConfig, simulate_split

        data = simulate_split(SimConfig(N=rec.model_cfg.N, object_size_px=4 * rec.model_cfg.N),
                              rng=np.random.default_rng(0), variant=0)
    rec.check_data(data)
    groups = rec.groups_for(data)
    which = np.arange(min(n_groups, len(groups)))
    with tracking.start_run("compare", experiment=experiment, run_name=run_name,
                            tags={"parity.mode": "forward", "model_uri": model_uri}) as run:
        tracking.log_params({"threshold.tap_rtol": tolerance, "n_groups": len(which)})
        taps = {b: rec.taps(data, backend=b, groups=groups, which=which) for b in ("tensorflow", "torch")}
        errors = parity.tap_errors(taps["tensorflow"], taps["torch"])
        first = parity.first_divergent_tap(errors, tolerance, TAP_ORDER)
        checks = [parity.Check(f"forward.{name}", errors[name], tolerance, errors[name] <= tolerance,
                               "max|torch - tf| / max|tf|") for name in TAP_ORDER if name in errors]
        status, failed = parity.verdict(checks)
        tracking.log_metrics({c.name: c.value for c in checks})
        tracking.set_tags({"parity.status": status, "parity.failed_checks": ",".join(failed) or "none",
                           "parity.first_divergent_tap": first or "none"})
        tracking.log_dict({"status": status, "first_divergent_tap": first, "tolerance": tolerance,
                           "tap_errors": errors}, "parity/forward.json")
        return CompareResult(run_id=run.info.run_id, status=status, failed_checks=failed, checks=checks,
                             reason=first or "")


# --- the pipeline ------------------------------------------------------------------

PRESETS = {
    # Sized to finish within minutes on 2 CPU cores.
    "small": {"n": 32, "n_filters_scale": 1, "n_groups": 512, "max_epochs": 8, "gridsize": 2, "batch_size": 16},
    # The realistic size: a GPU job.
    "full": {"n": 64, "n_filters_scale": 2, "n_groups": 4096, "max_epochs": 50, "gridsize": 2, "batch_size": 16},
}


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    run_id: str
    status: str
    runs: dict
    compare_exit_code: int


def _child(args, env, quiet):
    """Run one ``python -m ptyparity`` step in its own process (one framework per process)."""
    import subprocess
    import sys

    from ptyparity.errors import PtyparityError

    cmd = [sys.executable, "-m", "ptyparity", *args]
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE if quiet else None, stderr=subprocess.STDOUT
                          if quiet else None, text=True)
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and args[0] != "compare"):
        tail = (proc.stdout or "").strip().splitlines()[-1:] if quiet else []
        raise PtyparityError(f"pipeline step '{' '.join(args[:3])}' failed with exit code {proc.returncode}"
                             + (f": {tail[0]}" if tail else ""))
    return proc.returncode


def run_pipeline(*, preset="small", out_dir="data", seed=0, overwrite=False, experiment=tracking.DEFAULT_EXPERIMENT,
                 quiet=False, accelerator="cpu", devices=1, overrides=None, echo=print):
    """simulate -> train torch -> train tensorflow -> infer both -> compare, as one
    ``pipeline`` run whose steps are nested child runs, each in its own process.

    Returns
    -------
    result : PipelineResult
    """
    from ptyparity.errors import PtyparityError

    if preset not in PRESETS:
        raise PtyparityError(f"preset must be one of {', '.join(PRESETS)}; got {preset!r}")
    p = dict(PRESETS[preset])
    p.update({k: v for k, v in (overrides or {}).items() if v})  # None or 0: keep the preset's
    out_dir = os.fspath(out_dir)
    train_path, test_path = os.path.join(out_dir, "train.npz"), os.path.join(out_dir, "test.npz")
    uri = tracking.tracking_uri()
    tracking.init_store(experiment=experiment)  # create the store once, before any child opens it
    with tracking.start_run("pipeline", experiment=experiment, run_name=f"pipeline-{preset}") as parent:
        pid = parent.info.run_id
        experiment = tracking.experiment_name(parent)  # `mlflow run` may have chosen it
        # Resolved sizes under their own names: `mlflow run` logs the entry point's raw
        # parameters (n_groups=0 meaning "the preset's") on this same run.
        tracking.log_params({"preset": preset, "seed": seed, **{f"resolved.{k}": v for k, v in p.items()}})
        env = dict(os.environ, MLFLOW_TRACKING_URI=uri, PTYPARITY_PARENT_RUN_ID=pid, OMP_WAIT_POLICY="PASSIVE",
                   TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("MLFLOW_RUN_ID", None)  # set by `mlflow run` for this process only; children open their own
        common = ["--experiment", experiment]
        q = ["--quiet"] if quiet else []
        if overwrite or not (os.path.exists(train_path) and os.path.exists(test_path)):
            echo(f"[1/6] simulate N={p['n']} into {out_dir}")
            _child(["simulate", "--out-dir", out_dir, "--n", str(p["n"]), "--seed", str(seed), "--overwrite",
                    *common, "--run-name", "simulate"], env, quiet)
        else:
            echo(f"[1/6] reusing {train_path} and {test_path} (pass --overwrite to simulate again)")
        runs = {}
        for step, backend in ((2, "torch"), (3, "tensorflow")):
            echo(f"[{step}/6] train {backend}: {p['n_groups']} groups, {p['max_epochs']} epochs")
            _child(["train", "--backend", backend, "--train-data", train_path, "--test-data", test_path,
                    "--n-groups", str(p["n_groups"]), "--max-epochs", str(p["max_epochs"]),
                    "--gridsize", str(p["gridsize"]), "--batch-size", str(p["batch_size"]),
                    "--n-filters-scale", str(p["n_filters_scale"]), "--seed", str(seed),
                    "--accelerator", accelerator, "--devices", str(devices), *q, *common,
                    "--run-name", f"train-{backend}"], env, quiet)
            (train_run,) = tracking.child_runs(pid, experiment=experiment, **{"ptyparity.kind": "train",
                                                                            "ptyparity.backend": backend})[:1]
            runs[f"train_{backend}"] = train_run.info.run_id
        for step, backend in ((4, "torch"), (5, "tensorflow")):
            version = tracking.registered_version_of_run(f"ptyparity-{backend}", runs[f"train_{backend}"])
            model_uri = f"models:/ptyparity-{backend}/{version}"
            echo(f"[{step}/6] infer {backend} with {model_uri}")
            _child(["infer", "--model", model_uri, "--data", test_path, *common, "--run-name", f"infer-{backend}"],
                   env, quiet)
            (infer_run,) = tracking.child_runs(pid, experiment=experiment, **{"ptyparity.kind": "infer",
                                                                            "ptyparity.backend": backend})[:1]
            runs[f"infer_{backend}"] = infer_run.info.run_id
        echo("[6/6] compare")
        code = _child(["compare", "--torch-run", runs["infer_torch"], "--tf-run", runs["infer_tensorflow"],
                       *common, "--run-name", "compare"], env, quiet)
        (compare_run,) = tracking.child_runs(pid, experiment=experiment, **{"ptyparity.kind": "compare"})[:1]
        runs["compare"] = compare_run.info.run_id
        status = compare_run.data.tags.get("parity.status", "error")
        tracking.set_tags({"parity.status": status, **{f"pipeline.{k}": v for k, v in runs.items()}})
        return PipelineResult(run_id=pid, status=status, runs=runs, compare_exit_code=code)
