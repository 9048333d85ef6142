"""``ptyparity check-run RUN_ID``: what a train or infer run lacks for each compare check.

Reads the run the way ``compare`` reads it (:mod:`ptyparity.runs.compare`) and names, per
check of :func:`ptyparity.parity.evaluate`, every record it would miss and how to add it with
:mod:`ptyparity.record`. A run is complete when nothing is missing: then every check compare
can make on it gets its evidence (none is skipped or fails for want of a record).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ptyparity import names, parity, tracking, tracking_record
from ptyparity.errors import PtyparityError

# Where each number compare reads comes from, and how a record.RunRecord user adds it.
HOW = {
    "mean_input_scale": "metric mean_input_scale (log_patches with diffraction= and encoder_input=)",
    "mean_physics_scale": "metric mean_physics_scale (log_patches with pred_amplitude= and pred_amplitude_counts=)",
    "intensity_scale": "param intensity_scale (log_scales(intensity_scale=...))",
    "patch.amp.var_zero_mean": "metric patch.amp.var_zero_mean (log_patches)",
    "patch.amp.mean": "metric patch.amp.mean (log_patches)",
    "patch.amp.collapsed_fraction": "metric patch.amp.collapsed_fraction (log_patches)",
}
GT_PARTS = ("amp", "phase")


@dataclasses.dataclass(frozen=True)
class Need:
    """One compare check (or ``report``: what the parity report shows) and what the run lacks for it."""

    check: str
    lacks: tuple = ()


@dataclasses.dataclass(frozen=True)
class CheckRunResult:
    """What ``check-run`` found: the run, who made it, and one :class:`Need` per check."""

    run_id: str
    kind: str
    backend: str
    implementation: str
    needs: tuple

    @property
    def gaps(self):
        return tuple(n for n in self.needs if n.lacks)

    @property
    def exit_code(self):
        """0 complete, 1 something is missing."""
        return 1 if self.gaps else 0


def _values(run):
    """Metrics plus the ``intensity_scale`` param, as compare's ``_numbers`` reads them."""
    values = dict(run.data.metrics)
    if "intensity_scale" in run.data.params:
        values["intensity_scale"] = run.data.params["intensity_scale"]
    return values


def _lacking(values, keys, where=""):
    return tuple(HOW.get(k, f"metric {k}") + where for k in keys if k not in values)


def _run_state(run, backend):
    """What any compare needs of the run itself."""
    lacks = []
    if run.info.status != "FINISHED":
        lacks.append(f"a FINISHED status (the run is {run.info.status}; compare takes finished runs only)")
    if backend not in parity.BACKENDS:
        lacks.append(f"tag {names.TAG_BACKEND} = torch or tensorflow (it is {backend!r})")
    if not tracking.run_tag(run, names.TAG_PAIR_KEY):
        lacks.append(f"tag {names.TAG_PAIR_KEY} (record.infer_run sets it)")
    return Need("run", tuple(lacks))


def _train_of(run):
    """``(train run or None, why it is missing)``."""
    train_id = tracking.run_tag(run, names.TAG_TRAIN_RUN_ID)
    if not train_id:
        return None, f"tag {names.TAG_TRAIN_RUN_ID} (record.infer_run(train_run_id=...); without it compare skips this)"
    try:
        return tracking.get_run(train_id), ""
    except PtyparityError:
        return None, f"its train run {train_id} (not in this tracking store)"


def _canvas_lacks(run_id, artifacts):
    if names.CANVAS_NPZ not in artifacts:
        return (f"artifact {names.CANVAS_NPZ} (log_reconstruction or log_canvas)",)
    try:
        with np.load(tracking.download_artifact(run_id, names.CANVAS_NPZ), allow_pickle=False) as npz:
            canvas, count = npz["canvas"], npz["count"]
    except (KeyError, ValueError, OSError) as exc:
        return (f"a readable {names.CANVAS_NPZ} with arrays canvas and count ({str(exc).splitlines()[0]})",)
    if canvas.ndim != 2 or canvas.shape != count.shape:
        return (f"{names.CANVAS_NPZ} with canvas and count of one 2-D shape (got {canvas.shape}, {count.shape})",)
    return ()


def _infer_needs(run, side):
    values, artifacts = _values(run), tracking_record.list_artifacts(run.info.run_id)
    train, why = _train_of(run)
    train_values = _values(train) if train is not None else {}
    needs = []
    for key in parity.CONSISTENCY_KEYS:
        lacks = _lacking(values, [key])
        lacks += (why,) if train is None else _lacking(train_values, [key], f" on the train run {train.info.run_id}")
        needs.append(Need(f"{side}.consistency.{key}", lacks))
    for name, key in parity.RATIO_METRICS.items():
        needs.append(Need(f"ratio.{name}", _lacking(values, [key])))
    needs.append(Need(f"{side}.collapsed_fraction", _lacking(values, ["patch.amp.collapsed_fraction"])))
    canvas = _canvas_lacks(run.info.run_id, artifacts)
    needs += [Need(name, canvas) for name in parity.CANVAS_CHECKS]
    for part in GT_PARTS:
        keys = [f"{names.GT_PREFIX}{part}.ssim", f"{names.GT_PREFIX}{part}.ssim{names.FLAT_SUFFIX}"]
        lacks = tuple(f"metric {k} (log_reconstruction on data with objectGuess)" for k in keys if k not in values)
        needs.append(Need(f"{side}.gt_skill.{part}", lacks))
    report = [names.PATCH_STATS, names.PATCH_GRID_NORMALISED]
    needs.append(Need("report", tuple(f"artifact {p} (log_patches with log_dump=True)" for p in report
                                      if p not in artifacts)))
    return needs


def _train_needs(run, side):
    values, artifacts = _values(run), tracking_record.list_artifacts(run.info.run_id)
    needs = [Need(f"{side}.consistency.{key}", _lacking(values, [key])) for key in parity.CONSISTENCY_KEYS]
    lacks = [] if "train_loss" in values else ["metric train_loss per epoch (log_epoch)"]
    steps = set(tracking_record.metric_steps(run.info.run_id, "patch.amp.var_zero_mean"))
    if len(steps) < 2:
        lacks.append("patch.* metrics at the start and the end of training (log_patches 'initial' and 'final')")
    for prefix in (names.DEBUG_DUMP_INITIAL, names.DEBUG_DUMP_FINAL):
        if f"{prefix}/{names.PATCH_STATS_FILE}" not in artifacts:
            lacks.append(f"artifact {prefix}/{names.PATCH_STATS_FILE} (log_patches with log_dump=True)")
    needs.append(Need("report", tuple(lacks)))
    return needs


def check_run(run_id):
    """What run ``run_id`` lacks for each compare check.

    Returns
    -------
    result : CheckRunResult

    Raises
    ------
    PtyparityError
        An unknown run id, or a run that is neither a train nor an infer run.
    """
    run = tracking.get_run(run_id)
    kind = tracking.run_tag(run, names.TAG_KIND)
    if kind not in ("train", "infer"):
        raise PtyparityError(f"run {run_id} is a {kind or 'non-ptyparity'} run; check-run checks train and infer "
                             "runs (the ones compare reads)")
    backend = tracking.run_tag(run, names.TAG_BACKEND) or ""
    needs = [_run_state(run, backend)]
    needs += _infer_needs(run, backend) if kind == "infer" else _train_needs(run, backend)
    implementation = " ".join(filter(None, (tracking.run_tag(run, names.TAG_IMPLEMENTATION),
                                            tracking.run_tag(run, names.TAG_IMPLEMENTATION_VERSION)))) or "ptyparity"
    return CheckRunResult(run_id=run_id, kind=kind, backend=backend, implementation=implementation,
                          needs=tuple(needs))
