"""The parity matrix: both backends against the NumPy reference and each other, cell by cell.

A *cell* is one point of the configuration space (:data:`AXES`: object_big, probe_big,
gridsize, N, merge_weighting, loss_mode, intensity_scale_trainable, precision; the grid
itself is :mod:`ptyparity.matrix_grid`, re-exported here). In every
cell one seeded set of canonical weights runs through :func:`ptyparity.reference_network.forward`
and through both backends (each model built once) on the same :data:`BATCH_GROUPS` groups of
data simulated at that N; each tap's ``max|a - b| / max|b|`` is judged against its
tolerance (:func:`tap_tolerance`), and the first tap in forward order beyond it is where
the implementations part. With ``train_steps = K`` both backends also take K deterministic
optimiser steps from those weights over the same batches, and their per-step deviance and
loss trajectories are compared (:func:`trajectory_check`).

Tolerances follow ``tests/README.md``: SPEC §8's 1e-4 for one forward pass in float32;
1e-10 where the claim is exact (torch vs TensorFlow in float64, and the float64 network
taps against the reference); for float32 trajectories ten times a noise floor measured in
the same cell (the same steps with every weight moved by one float32 ulp).

Pure: NumPy in, plain data out; the frameworks come in through
:func:`ptyparity.backends.load_backend` (once per process), nothing is recorded here
(:mod:`ptyparity.runs.matrix` does that).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time

import numpy as np

from ptyparity import architecture, reference_network
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.matrix_grid import AXES, FIXED, QUICK_CELLS, cell_grid, cell_id, parse_axes
from ptyparity.names import TAP_NAMES

__all__ = ["AXES", "FIXED", "QUICK_CELLS", "cell_grid", "cell_id", "parse_axes", "CellResult", "run_cell",
           "run_matrix", "load_backends", "summary", "tap_tolerance", "trajectory_check", "one_ulp"]

COMPARISONS = ("torch_vs_reference", "tensorflow_vs_reference", "torch_vs_tensorflow")
NETWORK_TAPS = ("encoder_input", "amp_patches", "phase_patches")  # float64 in the reference
TAP_RTOL = 1e-4  # SPEC §8: one forward pass, the same weights, float32
F64_RTOL = 1e-10  # exact claims in float64 (rounding measured ~1e-15)
F32_EPS = float(np.finfo(np.float32).eps)
FLOOR_FACTOR = 10.0  # "within the noise": up to ten times the floor measured in the cell
TRAJECTORY_KEYS = ("train_step_deviance", "train_step_loss")
BATCH_GROUPS = 4  # groups per forward batch and per training step
N_FILTERS_SCALE = 1  # the CPU width: PtychoPINN's 2 runs the same code ~3x slower
BIAS_SCALE = 0.05  # nonzero biases, so a backend that drops them cannot pass


def tap_tolerance(tap, precision, comparison):
    """The largest allowed ``max|a - b| / max|b|`` of ``tap`` in one comparison.

    float32: SPEC §8's ``TAP_RTOL``. float64: ``F64_RTOL`` between the backends and for the
    reference's network taps; the reference's physics half runs in single precision
    (:func:`ptyparity.physics.forward_physics`), so its taps bound a float64 backend only
    to ``TAP_RTOL``.
    """
    if precision != "float64":
        return TAP_RTOL
    if comparison == "torch_vs_tensorflow" or tap in NETWORK_TAPS:
        return F64_RTOL
    return TAP_RTOL


def relative_error(ours, reference):
    """``max|ours - reference| / max|reference|``; inf when a tap is missing or its shape differs."""
    if ours is None or reference is None:
        return float("inf")
    ours, reference = np.asarray(ours), np.asarray(reference)
    if ours.shape != reference.shape:
        return float("inf")
    if not reference.size:
        return 0.0
    diff = np.abs(ours.astype(np.complex128 if np.iscomplexobj(ours) else np.float64) - reference)
    return float(np.max(diff)) / max(float(np.max(np.abs(reference))), 1e-30)


def one_ulp(weights, seed=5):
    """Every weight but ``log_scale`` moved by one float32 ulp, up or down at random: a
    start no float32 computation can tell from rounding (the noise floor's probe)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if name == architecture.LOG_SCALE:
            out[name] = w
            continue
        out[name] = np.nextafter(w, np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf).astype(np.float32))
    return out


def trajectory_error(a, b):
    """Largest ``|a - b| / |b|`` over the steps of every :data:`TRAJECTORY_KEYS` history."""
    worst = 0.0
    for key in TRAJECTORY_KEYS:
        x, y = np.asarray(a[key], np.float64), np.asarray(b[key], np.float64)
        if x.shape != y.shape or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(np.abs(y), 1e-300))))
    return worst


def trajectory_check(histories, precision, ulp_histories=None):
    """Torch against TensorFlow over K training steps.

    Parameters
    ----------
    histories : dict
        ``{"torch": history, "tensorflow": history}`` of ``fit``.
    precision : {"float32", "float64"}
    ulp_histories : dict, optional
        The same fits from :func:`one_ulp` weights (required in float32).

    Returns
    -------
    check : dict
        ``error`` (the largest relative difference), ``floor`` (float32: the larger one-ulp
        drift of the two backends, at least ``F32_EPS``; float64: None), ``tolerance``
        and ``passed``.
    """
    error = trajectory_error(histories["torch"], histories["tensorflow"])
    if precision == "float64":
        floor, tolerance = None, F64_RTOL
    else:
        floor = max([F32_EPS] + [trajectory_error(ulp_histories[b], histories[b]) for b in histories])
        tolerance = FLOOR_FACTOR * floor
    return {"error": error, "floor": floor, "tolerance": tolerance, "passed": bool(error <= tolerance)}


@dataclasses.dataclass(frozen=True)
class CellResult:
    """The outcome of one cell.

    Attributes
    ----------
    cell : dict
        Axis -> value.
    status : {"pass", "fail", "error"}
    errors, tolerances : dict
        ``{comparison: {tap: value}}`` for :data:`COMPARISONS`, taps in forward order.
    first_divergent_tap, first_divergent_comparison : str or None
        The first tap (forward order) beyond its tolerance, and in which comparison.
    worst_ratio : float
        The largest error / tolerance over every tap and comparison (and the trajectory).
    trajectory : dict or None
        :func:`trajectory_check` with ``steps``, when trained.
    seconds : float
    error : str or None
        The exception's first line, for status "error".
    """

    cell: dict
    status: str
    errors: dict
    tolerances: dict
    first_divergent_tap: str | None
    first_divergent_comparison: str | None
    worst_ratio: float
    trajectory: dict | None
    seconds: float
    error: str | None = None

    @property
    def id(self):
        return cell_id(self.cell)

    def as_dict(self):
        return {"id": self.id, **dataclasses.asdict(self)}


def judge_taps(reference, torch_taps, tf_taps, precision):
    """Per-comparison errors and tolerances, and the first divergent ``(tap, comparison)``."""
    pairs = {"torch_vs_reference": (torch_taps, reference), "tensorflow_vs_reference": (tf_taps, reference),
             "torch_vs_tensorflow": (torch_taps, tf_taps)}
    taps = [t for t in TAP_NAMES if t in reference or t in torch_taps or t in tf_taps]
    errors = {c: {t: relative_error(ours.get(t), ref.get(t)) for t in taps} for c, (ours, ref) in pairs.items()}
    tolerances = {c: {t: tap_tolerance(t, precision, c) for t in taps} for c in pairs}
    first = next(((t, c) for t in taps for c in COMPARISONS if not errors[c][t] <= tolerances[c][t]), (None, None))
    return errors, tolerances, first


def _model_config(cell):
    return ModelConfig(N=cell["N"], gridsize=cell["gridsize"], n_filters_scale=N_FILTERS_SCALE,
                       object_big=cell["object_big"], probe_big=cell["probe_big"],
                       merge_weighting=cell["merge_weighting"],
                       intensity_scale_trainable=cell["intensity_scale_trainable"])


@functools.lru_cache(maxsize=4)
def simulated_data(n, seed):
    """Training data simulated at ``n``: a 3N object scanned every N/8 px (289 patterns)."""
    from ptyparity.simulate import SimConfig, simulate

    return simulate(SimConfig(N=n, object_size_px=3 * n, seed=seed))[0]


def cell_training_set(cell, *, train_steps, seed):
    """The cell's groups, scales and batches: K steps of :data:`BATCH_GROUPS` groups, no validation."""
    from ptyparity.training import prepare, resolve_config

    raw = simulated_data(cell["N"], seed)
    cfg = TrainConfig(model=_model_config(cell), n_groups=BATCH_GROUPS * max(1, train_steps),
                      batch_size=BATCH_GROUPS, max_epochs=1, val_fraction=0.0,
                      loss_mode=cell.get("loss_mode", FIXED["loss_mode"]), deterministic=True, seed=seed,
                      precision=cell["precision"])
    return prepare(raw, resolve_config(cfg, raw))


def cell_weights(model_cfg, *, seed, log_scale):
    """The shared start: :func:`ptyparity.architecture.init_weights` plus seeded nonzero biases."""
    weights = architecture.init_weights(model_cfg, seed=seed, log_scale=log_scale)
    rng = np.random.default_rng([seed, 1])
    for name in sorted(weights):
        if name.endswith(".bias"):
            weights[name] = rng.uniform(-BIAS_SCALE, BIAS_SCALE, weights[name].shape).astype(np.float32)
    return weights


def run_cell(cell, apis, *, train_steps=0, seed=0):
    """Run one cell on both backends and the reference (see the module docstring).

    Parameters
    ----------
    cell : dict
        One of :func:`cell_grid`.
    apis : dict
        ``{"torch": api, "tensorflow": api}`` from :func:`ptyparity.backends.load_backend`.

    Returns
    -------
    result : CellResult
        An exception inside a backend is a cell with status "error", not a crash.
    """
    start = time.perf_counter()
    try:
        return _run_cell(cell, apis, train_steps, seed, start)
    except Exception as exc:  # a backend that crashes on a cell fails that cell
        line = (str(exc).strip().splitlines() or [""])[0]
        return CellResult(cell=dict(cell), status="error", errors={}, tolerances={}, first_divergent_tap=None,
                          first_divergent_comparison=None, worst_ratio=float("inf"), trajectory=None,
                          seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {line}")


def _run_cell(cell, apis, train_steps, seed, start):
    ts = cell_training_set(cell, train_steps=train_steps, seed=seed)
    model_cfg, precision = ts.cfg.model, cell["precision"]
    weights = cell_weights(model_cfg, seed=seed, log_scale=ts.scales.log_scale)
    scaled, rel = ts.batch(ts.train_idx[:BATCH_GROUPS])
    reference = reference_network.forward(model_cfg, weights, ts.probe, scaled, rel)
    models = {name: api.build(model_cfg, ts.probe, weights, precision=precision) for name, api in apis.items()}
    taps = {name: apis[name].forward(model, scaled, rel) for name, model in models.items()}
    errors, tolerances, (tap, comparison) = judge_taps(reference, taps["torch"], taps["tensorflow"], precision)
    ratios = [errors[c][t] / tolerances[c][t] for c in errors for t in errors[c]]
    trajectory = None
    if train_steps:
        histories = {name: apis[name].fit(model, ts, quiet=True, deterministic=True) for name, model in models.items()}
        ulp = None
        if precision != "float64":
            start_ulp = one_ulp(weights)
            ulp = {name: api.fit(api.build(model_cfg, ts.probe, start_ulp, precision=precision), ts, quiet=True,
                                 deterministic=True) for name, api in apis.items()}
        trajectory = {"steps": len(histories["torch"]["train_step_deviance"]),
                      **trajectory_check(histories, precision, ulp)}
        ratios.append(trajectory["error"] / trajectory["tolerance"])
    worst = max(ratios) if all(np.isfinite(ratios)) else float("inf")
    passed = tap is None and (trajectory is None or trajectory["passed"])
    return CellResult(cell=dict(cell), status="pass" if passed else "fail", errors=errors, tolerances=tolerances,
                      first_divergent_tap=tap, first_divergent_comparison=comparison, worst_ratio=float(worst),
                      trajectory=trajectory, seconds=time.perf_counter() - start)


def load_backends():
    """Both backend APIs, each framework imported once per process; TensorFlow's retracing
    warnings (one new model per cell, by design) silenced."""
    from ptyparity.backends import load_backend

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    return {name: load_backend(name) for name in ("torch", "tensorflow")}


def run_matrix(cells, *, train_steps=0, seed=0, apis=None, on_cell=None):
    """Every cell in order.

    Parameters
    ----------
    cells : list of dict
        From :func:`cell_grid`.
    apis : dict, optional
        Default :func:`load_backends`.
    on_cell : callable, optional
        Called with each :class:`CellResult` as it completes.

    Returns
    -------
    results : list of CellResult
    """
    apis = apis or load_backends()
    results = []
    for cell in cells:
        result = run_cell(cell, apis, train_steps=train_steps, seed=seed)
        results.append(result)
        if on_cell is not None:
            on_cell(result)
    return results


def summary(results, *, axes, train_steps, seed, seconds):
    """The JSON-able record of a matrix (``matrix/summary.json``)."""
    failed = [r.id for r in results if r.status != "pass"]
    return {"status": "fail" if failed else "pass", "n_cells": len(results), "n_failed": len(failed),
            "failed_cells": failed, "axes": {k: list(v) for k, v in axes.items()}, "train_steps": train_steps,
            "seed": seed, "n_filters_scale": N_FILTERS_SCALE, "batch_groups": BATCH_GROUPS,
            "seconds": seconds, "taps": list(TAP_NAMES), "comparisons": list(COMPARISONS),
            "tolerance_rules": {"float32": TAP_RTOL, "float64_exact": F64_RTOL,
                                "float32_trajectory": f"{FLOOR_FACTOR:g} x one-ulp noise floor (>= {F32_EPS:.3g})"},
            "cells": [r.as_dict() for r in results]}
