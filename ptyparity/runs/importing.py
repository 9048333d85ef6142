"""The ``import`` run: a real PtychoPINN checkpoint becomes a registered ptyparity model.

:func:`ptyparity.ptychopinn.read_checkpoint` reads the archive (zipfile + json + h5py, no
pickle), :func:`~ptyparity.ptychopinn.import_model` adds the dataset's probe and input
normalisation, :func:`~ptyparity.ptychopinn.write_bundle` writes an ordinary checksummed
bundle; this module records all of it in one run and registers the bundle, so the
imported model runs wherever a ptyparity bundle runs (``infer``, ``compare``,
``train --init-from``).
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from ptyparity import descriptions, names, tracking, tracking_notes
from ptyparity.runs.common import ImportResult, scale_params


def run_import(checkpoint_path, data_path, *, name=names.PTYCHOPINN_MODEL_NAME, config_yaml=None,
               upstream_commit=None, register=True, experiment=names.DEFAULT_EXPERIMENT, run_name=None):
    """Import a PtychoPINN ``wts.h5.zip`` inside an ``import`` run and register it.

    Everything is read and checked before the run opens, so a corrupt archive or a
    contradicting YAML leaves no run behind.

    Parameters
    ----------
    checkpoint_path : path
        The archive PtychoPINN's ``model_manager.save`` wrote.
    data_path : path
        The PtychoPINN-format dataset the model was trained on (its ``probeGuess``
        becomes the model probe).
    name : str
        Registered model name.
    config_yaml : path, optional
        The training YAML; its ``model`` section must agree with the checkpoint.
    upstream_commit : str, optional
        The PtychoPINN commit the model was trained with (tag ``ptyparity.upstream_commit``).
    register : bool
        Register the bundle under ``name``.

    Returns
    -------
    result : ImportResult
    """
    from ptyparity import ptychopinn
    from ptyparity.data import load_npz

    ckpt = ptychopinn.read_checkpoint(checkpoint_path, config_yaml=config_yaml)
    data = load_npz(data_path)
    imported = ptychopinn.import_model(ckpt, data, upstream_commit=upstream_commit)
    prov = imported.provenance
    tags = {names.TAG_SOURCE: prov["source"], names.TAG_SOURCE_SHA256: prov["sha256"],
            names.TAG_DATASET_DIGEST: prov["dataset_digest"]}
    if upstream_commit:
        tags[names.TAG_UPSTREAM_COMMIT] = upstream_commit
    with tracking.start_run("import", experiment=experiment, run_name=run_name, tags=tags) as run:
        params = _params(imported, checkpoint_path, config_yaml)
        tracking.log_params(params)
        tracking.log_dataset(data, name="import", digest=prov["dataset_digest"], source=data_path,
                             context="import")
        tracking.log_dict(_record(imported), names.CONFIG_JSON)
        with tempfile.TemporaryDirectory() as tmp:
            directory = ptychopinn.write_bundle(imported, os.path.join(tmp, "bundle"))
            model_uri, version = tracking.log_bundle_model(directory,
                                                           registered_model_name=name if register else None)
        if version is not None:
            tracking.tag_model_version(name, version, {**tags, names.TAG_IMPORT_RUN_ID: run.info.run_id})
            tracking.set_tags({names.TAG_MODEL_NAME: name, names.TAG_MODEL_VERSION: version})
            tracking_notes.describe_registered_model(name, descriptions.registered_model_description(name))
            tracking_notes.describe_model_version(name, version, descriptions.model_version_description(
                {**tags, "source_kind": "import", "source_run_id": run.info.run_id}))
        tracking_notes.describe_run(descriptions.import_description(
            {**params, **tags, "model_name": name, "model_version": version}))
        return ImportResult(run_id=run.info.run_id, model_uri=model_uri, registered_name=name if register else None,
                            registered_version=version, model_cfg=imported.model_cfg, scales=imported.scales,
                            provenance=prov)


def _params(imported, checkpoint_path, config_yaml):
    """The architecture, the conventions, the scalars and where they came from."""
    m = imported.model_cfg
    return {"N": m.N, "gridsize": m.gridsize, "n_filters_scale": m.n_filters_scale, "object_big": m.object_big,
            "probe_big": m.probe_big, "probe_mask": m.probe_mask, "merge_weighting": m.merge_weighting,
            "max_offset": m.max_offset, "intensity_scale_trainable": m.intensity_scale_trainable,
            **m.conventions, "conventions": m.conventions, **scale_params(imported.scales),
            "source_file": os.path.basename(os.fspath(checkpoint_path)),
            "config_yaml": os.fspath(config_yaml) if config_yaml else None,
            "keras_version": imported.provenance.get("keras_version") or ""}


def _record(imported):
    """``config.json`` of the import run: what ``bundle.json`` carries, minus the probe array."""
    return {"model_config": dataclasses.asdict(imported.model_cfg), "train_config": imported.train_config,
            "scales": dataclasses.asdict(imported.scales), "provenance": imported.provenance}
