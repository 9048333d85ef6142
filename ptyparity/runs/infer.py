"""The ``infer`` run: reconstruct a dataset with a bundle and record what it saw."""

from __future__ import annotations

import numpy as np

from ptyparity import descriptions, names, tracking, tracking_notes
from ptyparity.data import dataset_digest
from ptyparity.runs import common
from ptyparity.runs.common import InferResult, backend_independent_hash, config_params, pair_key, scale_params


def run_infer(model_uri, data_path, *, backend=None, experiment=names.DEFAULT_EXPERIMENT, run_name=None,
              debug_dump=True, log_patch_stats=True, patch_stats_limit=None, measurement="auto", verify=True):
    """Run a bundle on a raw dataset inside an ``infer`` run.

    Records the bundle's scalars as params (``intensity_scale`` is the value loaded),
    the patch statistics and debug dump of the first ``patch_stats_limit`` groups
    (default: the bundle's training setting), the stitched canvas
    (``stitched/canvas.npz`` + PNG) and, when the data has ``objectGuess``, ``gt.*``
    metrics beside the flat-guess ones.

    Parameters
    ----------
    model_uri : str
        ``models:/…``, ``runs:/…`` or a bundle directory.
    data_path : path
        Raw NPZ.
    backend : {"torch", "tensorflow"}, optional
        Run on this backend instead of the bundle's own.
    verify : bool
        Refuse an edited bundle (``False`` only for tests of what a tampered bundle does).

    Returns
    -------
    result : InferResult
    """
    from ptyparity import bundle
    from ptyparity.data import load_npz

    rec = bundle.load(model_uri, verify=verify)
    data = load_npz(data_path, measurement=measurement)
    rec.check_data(data)
    name = rec.backend_name(backend)
    tc = rec.train_cfg
    digest = dataset_digest(data)
    tags = _tags(rec, model_uri, digest)
    with tracking.start_run("infer", backend=name, experiment=experiment, run_name=run_name, tags=tags) as run:
        api, _model = rec.model(name)
        limit = patch_stats_limit or tc.patch_stats_limit
        tracking.log_params({**config_params(tc), **scale_params(rec.scales), **api.versions(),
                             "patch_stats_limit": limit})
        tracking.log_dataset(data, name="infer", digest=digest, source=data_path, context="inference")
        metrics = _dump(rec, data, name, limit, log_dump=debug_dump)
        recon = _log_canvas(rec, data, name)
        metrics.update(_gt_scores(recon, data))
        tracking.log_metrics({k: v for k, v in metrics.items()
                              if log_patch_stats or not k.startswith(names.PATCH_PREFIX)})
        tracking_notes.describe_run(descriptions.infer_description(
            {**tags, **metrics, names.TAG_BACKEND: name, "intensity_scale": rec.scales.intensity_scale,
             "data_path": data_path}))
        return InferResult(run_id=run.info.run_id, metrics=metrics)


def _tags(rec, model_uri, digest):
    """Where the model came from and the pair key of (data, training config, seed)."""
    meta = rec.bundle.meta
    chash = meta.get("config_hash") or backend_independent_hash(rec.bundle.train_cfg)
    tags = {names.TAG_DATASET_DIGEST: digest, names.TAG_CONFIG_HASH: chash,
            names.TAG_PAIR_KEY: pair_key(digest, chash, rec.train_cfg.seed), names.TAG_MODEL_URI: model_uri,
            names.TAG_BUNDLE_BACKEND: rec.bundle.backend or ""}
    if meta.get("train_run_id"):
        tags[names.TAG_TRAIN_RUN_ID] = meta["train_run_id"]
    version = tracking.model_version_of(model_uri)
    if version:
        tags[names.TAG_MODEL_NAME], tags[names.TAG_MODEL_VERSION] = version
    return tags


def _dump(rec, data, backend, limit, *, log_dump):
    """Patch statistics and the debug dump of the first ``limit`` inference groups."""
    from ptyparity.inference import raw_groups

    groups = rec.groups_for(data)
    which = np.arange(min(limit, len(groups)))
    taps = rec.taps(data, backend=backend, groups=groups, which=which)
    return common.debug_dump(taps, raw_groups(data.diff3d, groups, which), rec.support(), names.DEBUG_DUMP,
                             log_dump=log_dump)


def _log_canvas(rec, data, backend):
    """Stitch the whole dataset; log ``stitched/canvas.npz`` and its figure."""
    from ptyparity import report

    recon = rec.reconstruct(data, backend=backend)
    tracking.log_npz({"canvas": recon.canvas, "count": recon.count, "pos": recon.groups.pos.astype(np.float32)},
                     names.CANVAS_NPZ)
    tracking.log_figure(report.canvas_figure(recon.canvas, reference=data.obj, title=f"{backend} reconstruction"),
                        names.CANVAS_PNG)
    return recon


def _gt_scores(recon, data):
    """``gt.*`` scores against ``objectGuess`` and the flat guess's (empty without one)."""
    from ptyparity import metrics as canvas_metrics

    if data.obj is None:
        return {}
    region = canvas_metrics.covered_region(recon.count)
    scores = canvas_metrics.compare_canvases(recon.canvas, data.obj, region)
    flat = canvas_metrics.flat_guess_scores(data.obj, region)
    return {**{f"{names.GT_PREFIX}{k}": v for k, v in scores.items()},
            **{f"{names.GT_PREFIX}{k}{names.FLAT_SUFFIX}": v for k, v in flat.items()}}
