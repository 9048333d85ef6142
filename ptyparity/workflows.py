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
