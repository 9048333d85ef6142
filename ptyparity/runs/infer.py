"""The ``infer`` run: reconstruct a dataset with a bundle and record what it saw."""

from __future__ import annotations

import numpy as np

from ptyparity import __version__, descriptions, names, record, tracking, tracking_notes
from ptyparity.data import dataset_digest
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
    tc, m = rec.train_cfg, rec.model_cfg
    tags, chash = _tags(rec, model_uri)
    with record.infer_run(data, data_path=data_path, implementation=record.IMPLEMENTATION, version=__version__,
                          backend=name, gridsize=m.gridsize, object_big=m.object_big, probe_big=m.probe_big,
                          seed=tc.seed, config_hash=chash, train_run_id=tags.pop(names.TAG_TRAIN_RUN_ID, None),
                          model_uri=model_uri, tags=tags, experiment=experiment, run_name=run_name) as run:
        api, _model = rec.model(name)
        limit = patch_stats_limit or tc.patch_stats_limit
        run.log_params({**config_params(tc), **api.versions(), "patch_stats_limit": limit})
        run.log_scales(**scale_params(rec.scales))
        metrics = _dump(run, rec, data, name, limit, log_dump=debug_dump, log_patch_stats=log_patch_stats)
        recon = rec.reconstruct(data, backend=name)
        metrics.update(run.log_canvas(recon.canvas, recon.count, positions=recon.groups.pos,
                                      title=f"{name} reconstruction"))
        pair = pair_key(dataset_digest(data), chash, tc.seed)
        tracking_notes.describe_run(descriptions.infer_description(
            {**tags, **metrics, names.TAG_PAIR_KEY: pair, names.TAG_MODEL_URI: model_uri, names.TAG_BACKEND: name,
             "intensity_scale": rec.scales.intensity_scale, "data_path": data_path}))
        return InferResult(run_id=run.run_id, metrics=metrics)


def _tags(rec, model_uri):
    """Where the model came from (tags) and the config hash of its training."""
    meta = rec.bundle.meta
    chash = meta.get("config_hash") or backend_independent_hash(rec.bundle.train_cfg)
    tags = {names.TAG_BUNDLE_BACKEND: rec.bundle.backend or ""}
    if meta.get("train_run_id"):
        tags[names.TAG_TRAIN_RUN_ID] = meta["train_run_id"]
    version = tracking.model_version_of(model_uri)
    if version:
        tags[names.TAG_MODEL_NAME], tags[names.TAG_MODEL_VERSION] = version
    return tags, chash


def _dump(run, rec, data, backend, limit, *, log_dump, log_patch_stats):
    """Patch statistics and the debug dump of the first ``limit`` inference groups (logged through
    the record API; the scale factors are logged even without ``log_patch_stats``)."""
    from ptyparity.inference import raw_groups

    groups = rec.groups_for(data)
    which = np.arange(min(limit, len(groups)))
    taps = rec.taps(data, backend=backend, groups=groups, which=which)
    return run.log_patches("infer", taps["amp_patches"], taps["phase_patches"], taps=taps,
                           diffraction=raw_groups(data.diff3d, groups, which), log_dump=log_dump,
                           patch_metrics=log_patch_stats)
