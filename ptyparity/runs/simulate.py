"""The ``simulate`` run: write the seeded train/test datasets and record them."""

from __future__ import annotations

import dataclasses
import os

from ptyparity import names, tracking
from ptyparity.data import dataset_digest
from ptyparity.runs.common import SimulateResult
from ptyparity.simulate import SimConfig, check_out_dir, write_dataset


def run_simulate(cfg: SimConfig, out_dir, *, experiment=names.DEFAULT_EXPERIMENT, run_name=None, overwrite=False,
                 log_data=True):
    """Simulate ``train.npz``/``test.npz`` into ``out_dir`` inside a ``simulate`` run.

    The run records the config as params, the train digest as
    ``ptyparity.dataset_digest`` (test digest as ``ptyparity.test_dataset_digest``),
    both datasets as MLflow dataset inputs, preview PNGs under ``preview/`` and,
    with ``log_data``, the NPZ files under ``data/``.

    Returns
    -------
    result : SimulateResult
    """
    from ptyparity.data import summarize

    check_out_dir(out_dir, overwrite=overwrite)  # before the run opens: a refusal leaves no run behind
    with tracking.start_run("simulate", experiment=experiment, run_name=run_name) as run:
        paths, data = write_dataset(cfg, out_dir, overwrite=overwrite)
        digests = {split: dataset_digest(d) for split, d in data.items()}
        tracking.set_tags({names.TAG_DATASET_DIGEST: digests["train"],
                           names.TAG_TEST_DATASET_DIGEST: digests["test"]})
        params = _params(cfg)
        tracking.log_params(params)
        summary = {split: summarize(d) for split, d in data.items()}
        tracking.log_metrics({"n_patterns": data["train"].n_patterns,
                              "photons_per_pattern_mean": summary["train"]["photons_per_pattern_mean"],
                              "test_photons_per_pattern_mean": summary["test"]["photons_per_pattern_mean"]})
        for split, d in data.items():
            tracking.log_dataset(d, name=f"ptyparity-{split}", digest=digests[split], source=paths[split],
                                 context="training" if split == "train" else "testing")
        tracking.log_dict({"config": params, "digests": digests, "summary": summary}, names.SIMULATE_JSON)
        _log_previews(data)
        if log_data:
            for path in paths.values():
                tracking.log_artifact(path, names.DATA_DIR)
        return SimulateResult(run_id=run.info.run_id, paths={k: os.path.abspath(v) for k, v in paths.items()},
                              digests=digests, summary=summary)


def _params(cfg):
    """The config, with the sizes that ``None`` resolved to under their own names."""
    params = dataclasses.asdict(cfg)
    params.update(object_size_px=cfg.object_size, scan_step_px=cfg.scan_step, probe_edge_phase_rad=cfg.edge_phase)
    return params


def _log_previews(data):
    from ptyparity import report

    train = data["train"]
    tracking.log_figure(report.object_figure(train.obj, title="train object"), names.PREVIEW_OBJECT_TRAIN)
    tracking.log_figure(report.object_figure(data["test"].obj, title="test object"), names.PREVIEW_OBJECT_TEST)
    tracking.log_figure(report.probe_figure(train.probe), names.PREVIEW_PROBE)
    tracking.log_figure(report.diffraction_figure(train.diff3d), names.PREVIEW_DIFFRACTION)
