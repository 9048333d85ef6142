"""What the tracked workflows share: their results, the params every train and infer
run logs, the pair key, and the debug dump.

Nothing here opens a run; the workflow modules do (one run each).
"""

from __future__ import annotations

import dataclasses

from ptyparity import names, tracking
from ptyparity.config import TrainConfig

# --- results ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SimulateResult:
    run_id: str
    paths: dict  # {"train": abspath, "test": abspath}
    digests: dict  # {"train": sha256, "test": sha256}
    summary: dict  # {"train": summarize(...), "test": ...}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    run_id: str
    model_uri: str  # runs:/<run_id>/model
    registered_version: str | None
    history: dict
    final_metrics: dict


@dataclasses.dataclass(frozen=True)
class ImportResult:
    run_id: str
    model_uri: str  # runs:/<run_id>/model
    registered_name: str | None
    registered_version: str | None
    model_cfg: object  # ModelConfig with the upstream conventions
    scales: object  # training.Scales
    provenance: dict


@dataclasses.dataclass(frozen=True)
class InferResult:
    run_id: str
    metrics: dict


@dataclasses.dataclass(frozen=True)
class CompareResult:
    """The outcome of a compare run (pair or forward mode).

    Attributes
    ----------
    run_id : str
    verdict : {"pass", "fail", "inconclusive", "error"}
    parity_status : {"pass", "fail", "error"}
        The agreement checks only.
    quality_status : {"pass", "fail", "none", ""}
        The ground-truth skill checks ("none": no ground truth; "": not evaluated).
    checks : tuple of parity.Check
    failed_checks, skipped_checks : tuple of str
    reason : str
        Why the pair could not be compared (error), or the first divergent tap
        (forward mode).
    """

    run_id: str
    verdict: str
    parity_status: str
    quality_status: str
    checks: tuple
    failed_checks: tuple
    skipped_checks: tuple = ()
    reason: str = ""

    @property
    def exit_code(self):
        """0 pass, 1 fail or inconclusive, 2 error."""
        return {"pass": 0, "fail": 1, "inconclusive": 1}.get(self.verdict, 2)


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    run_id: str
    verdict: str
    parity_status: str
    runs: dict  # step name -> run id
    compare_exit_code: int


# --- the record of a train or infer run --------------------------------------------------


def config_params(cfg: TrainConfig):
    """Param names shared by train and infer runs of both backends (SPEC §7)."""
    m = cfg.model
    return {
        "N": m.N, "gridsize": m.gridsize, "n_filters_scale": m.n_filters_scale, "object_big": m.object_big,
        "probe_big": m.probe_big, "probe_mask": m.probe_mask, "merge_weighting": m.merge_weighting,
        "max_offset": m.max_offset, "intensity_scale_trainable": m.intensity_scale_trainable,
        "neighbor_count": cfg.neighbor_count, "n_groups": cfg.n_groups, "batch_size": cfg.batch_size,
        "max_epochs": cfg.max_epochs, "learning_rate": cfg.learning_rate, "loss_mode": cfg.loss_mode,
        "intensity_scale_mode": cfg.intensity_scale_mode, "seed": cfg.seed,
        "deterministic": cfg.deterministic, "val_fraction": cfg.val_fraction, "precision": cfg.precision,
    }


def scale_params(scales):
    """The bundle scalars as params (``intensity_scale`` is the one in effect)."""
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


def debug_dump(taps, raw, support, prefix, *, log_dump):
    """Patch statistics of some groups, and with ``log_dump`` their dump artifacts.

    Parameters
    ----------
    taps : dict of ndarray
        Every tap of the dumped groups, ``(b, N, N, C)`` each.
    raw : ndarray, shape (b, N, N, C)
        Their measured amplitudes.
    support : ndarray, shape (N, N)
    prefix : str
        Artifact directory (:data:`ptyparity.names.DEBUG_DUMP` or its initial/final).
    log_dump : bool
        Log ``patch_stats.json``, the two patch grids and ``taps.npz`` under ``prefix``.

    Returns
    -------
    metrics : dict of float
        ``patch.*`` aggregates, ``mean_input_scale``, ``mean_physics_scale``.
    """
    from ptyparity.record_run import dump_patches

    return dump_patches(taps, raw, support, prefix, log_dump=log_dump)  # the record API's, one computation
