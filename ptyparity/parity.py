"""Parity checks between a Torch and a TF run (SPEC §8): plain functions over the
numbers and canvases the runs recorded.

Every check is a :class:`Check` with a value, a threshold and a pass flag; the
compare workflow logs each value as a metric and each threshold as a param, and
the verdict is ``pass`` only when every check passes. Defaults and how they were
calibrated are documented in the README ("Parity thresholds").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptyparity import metrics as canvas_metrics

# Defaults; each is a param of the compare run and can be overridden.
DEFAULT_THRESHOLDS = {
    # train vs infer of one backend: the same scalars must come back (float32 rounding only).
    "consistency_rtol": 1e-6,
    # torch/tf ratios of the scale factors and the patch mean: |ratio - 1| <= 10%.
    "ratio_tolerance": 0.10,
    # torch/tf ratio of var_zero_mean within [1/f, f]: two trainings of ONE backend with
    # different seeds differ by up to x1.30 (scripts/calibrate_thresholds.py), so +-10%
    # would fail valid pairs; the bugs it guards against move it by orders of magnitude.
    "var_ratio_max_factor": 1.5,
    # share of collapsed (near-constant) amplitude patches allowed in either backend.
    "collapsed_fraction_max": 0.25,
    # TF-vs-Torch stitched canvas agreement (TF as reference).
    # (same-backend seed-to-seed minimum measured 0.83 amplitude, 0.73 phase)
    "canvas_amp_ssim_min": 0.75,
    "canvas_phase_ssim_min": 0.65,
    # each backend's ground-truth SSIM must beat the flat guess by this much.
    "gt_skill_margin": 0.0,
    # another orientation of the torch canvas must not match TF better than this.
    "orientation_margin": 0.05,
}

RATIO_METRICS = {
    "var_zero_mean": "patch.amp.var_zero_mean",
    "mean_input_scale": "mean_input_scale",
    "mean_physics_scale": "mean_physics_scale",
    "patch_mean": "patch.amp.mean",
}
CONSISTENCY_KEYS = ("mean_input_scale", "mean_physics_scale", "intensity_scale")


@dataclass(frozen=True)
class Check:
    """One parity check.

    Attributes
    ----------
    name : str
        Metric key of the compare run, e.g. ``ratio.var_zero_mean``.
    value : float
    threshold : float
    passed : bool
    detail : str
        One line for humans (what was compared, which way it failed).
    """

    name: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""

    def as_dict(self):
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "pass": self.passed,
                "detail": self.detail}


def _rel_diff(a, b):
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-30)


def consistency_checks(backend, train, infer, *, rtol):
    """Train vs infer of one backend: ``mean_input_scale``, ``mean_physics_scale``,
    ``intensity_scale`` must agree to ``rtol``.

    Parameters
    ----------
    backend : str
    train, infer : dict
        ``{key: value}`` with the three keys (metrics, and the ``intensity_scale``
        param) of the train and the infer run.
    """
    checks = []
    for key in CONSISTENCY_KEYS:
        if key not in train or key not in infer:
            checks.append(Check(f"{backend}.consistency.{key}", math.nan, rtol, False,
                                f"{key} missing from the {'train' if key not in train else 'infer'} run"))
            continue
        diff = _rel_diff(infer[key], train[key])
        detail = f"train {float(train[key]):.6g} vs infer {float(infer[key]):.6g}"
        if key == "intensity_scale" and float(infer[key]) == 1.0 and float(train[key]) != 1.0:
            detail += " (a default 1.0 that training never chose)"
        checks.append(Check(f"{backend}.consistency.{key}", diff, rtol, diff <= rtol, detail))
    return checks


def ratio_checks(torch_metrics, tf_metrics, *, tolerance, var_factor=None):
    """``torch / tf`` of patch statistics and scale factors.

    Each ratio must lie within ``1 +- tolerance``; ``var_zero_mean``, when
    ``var_factor`` is given, within ``[1/var_factor, var_factor]`` instead (its
    valid spread is larger, see ``DEFAULT_THRESHOLDS``).
    """
    checks = []
    for name, key in RATIO_METRICS.items():
        a, b = torch_metrics.get(key), tf_metrics.get(key)
        if a is None or b is None:
            checks.append(Check(f"ratio.{name}", math.nan, tolerance, False, f"{key} missing"))
            continue
        ratio = float(a) / float(b) if float(b) != 0 else math.inf
        detail = f"torch {float(a):.4g} / tf {float(b):.4g}"
        if name == "var_zero_mean" and var_factor is not None:
            ok = 1.0 / var_factor <= ratio <= var_factor
            checks.append(Check(f"ratio.{name}", ratio, var_factor, ok, detail + f" (allowed x1/{var_factor:g}..x{var_factor:g})"))
            continue
        ok = abs(ratio - 1.0) <= tolerance
        checks.append(Check(f"ratio.{name}", ratio, tolerance, ok, detail))
    return checks


def collapse_checks(torch_metrics, tf_metrics, *, max_fraction):
    """Neither backend may have more than ``max_fraction`` collapsed amplitude patches."""
    checks = []
    for backend, m in (("torch", torch_metrics), ("tensorflow", tf_metrics)):
        value = float(m.get("patch.amp.collapsed_fraction", math.nan))
        checks.append(Check(f"{backend}.collapsed_fraction", value, max_fraction,
                            value <= max_fraction, "share of near-constant amplitude patches"))
    return checks


def gt_skill_checks(torch_metrics, tf_metrics, *, margin):
    """Each backend's ground-truth SSIM beats the flat guess (when ground truth exists)."""
    checks = []
    for backend, m in (("torch", torch_metrics), ("tensorflow", tf_metrics)):
        for part in ("amp", "phase"):
            key, flat = f"gt.{part}.ssim", f"gt.{part}.ssim_flat"
            if key not in m or flat not in m:
                continue
            skill = float(m[key]) - float(m[flat])
            checks.append(Check(f"{backend}.gt_skill.{part}", skill, margin, skill > margin,
                                f"SSIM {float(m[key]):.3f} vs flat guess {float(m[flat]):.3f}"))
    return checks


ORIENTATIONS = {
    "identity": lambda a: a,
    "mirrored_180": lambda a: a[::-1, ::-1],
    "flipped_vertical": lambda a: a[::-1, :],
    "flipped_horizontal": lambda a: a[:, ::-1],
    "transposed": lambda a: a.T,
    "rotated_90": lambda a: np.rot90(a, 1),
    "rotated_270": lambda a: np.rot90(a, -1),
    "anti_transposed": lambda a: np.rot90(a, 2).T,
}


def orientation_scores(canvas, reference):
    """Amplitude SSIM of each orientation of ``canvas`` against ``reference``.

    Both are complex crops of the same (common) region; orientations that change
    the shape of a non-square crop are skipped.
    """
    ref = np.abs(reference)
    scores = {}
    full = (slice(None), slice(None))
    for name, fn in ORIENTATIONS.items():
        cand = fn(canvas)
        if cand.shape != reference.shape:
            continue
        scores[name] = canvas_metrics.compare_canvases(cand, reference, full)["amp.ssim"]
    return scores


def canvas_checks(torch_canvas, torch_count, tf_canvas, tf_count, *, thresholds):
    """Stitched-canvas agreement, TF as reference, on the commonly covered region.

    Returns
    -------
    checks : list of Check
        ``canvas.amp.ssim``, ``canvas.phase.ssim`` (floors) and ``canvas.orientation``.
    scores : dict of float
        ``canvas.amp.{mae,psnr,ssim}``, ``canvas.phase.{…}``, and
        ``canvas.orientation.<name>`` SSIMs, all logged as metrics.
    best_orientation : str
    """
    if torch_canvas.shape != tf_canvas.shape:
        raise ValueError(f"canvases differ in shape: torch {torch_canvas.shape} vs tf {tf_canvas.shape}")
    region = canvas_metrics.covered_region(torch_count, tf_count)
    scores = {f"canvas.{k}": v for k, v in canvas_metrics.compare_canvases(torch_canvas, tf_canvas, region).items()}
    orient = orientation_scores(torch_canvas[region], tf_canvas[region])
    best = max(orient, key=orient.get)
    scores.update({f"canvas.orientation.{k}": v for k, v in orient.items()})
    checks = [
        Check("canvas.amp.ssim", scores["canvas.amp.ssim"], thresholds["canvas_amp_ssim_min"],
              scores["canvas.amp.ssim"] >= thresholds["canvas_amp_ssim_min"], "torch vs tf amplitude SSIM"),
        Check("canvas.phase.ssim", scores["canvas.phase.ssim"], thresholds["canvas_phase_ssim_min"],
              scores["canvas.phase.ssim"] >= thresholds["canvas_phase_ssim_min"], "torch vs tf phase SSIM"),
    ]
    gain = orient[best] - orient["identity"]
    ok = best == "identity" or gain <= thresholds["orientation_margin"]
    checks.append(Check("canvas.orientation", gain, thresholds["orientation_margin"], ok,
                        "as stitched" if ok else f"torch canvas matches tf best when {best.replace('_', ' ')} "
                                                 f"(SSIM {orient[best]:.3f} vs {orient['identity']:.3f})"))
    return checks, scores, best


def verdict(checks):
    """``("pass" | "fail", [names of failed checks])``."""
    failed = [c.name for c in checks if not c.passed]
    return ("fail" if failed else "pass"), failed


def first_divergent_tap(tap_errors, tolerance, order):
    """The first tap in forward ``order`` whose relative error exceeds ``tolerance``, or None."""
    for name in order:
        if name in tap_errors and not tap_errors[name] <= tolerance:
            return name
    return None


def tap_errors(reference_taps, other_taps):
    """``max|a - b| / max|ref|`` per shared tap (TF as reference)."""
    out = {}
    for name, ref in reference_taps.items():
        if name not in other_taps:
            continue
        ref = np.asarray(ref)
        diff = float(np.max(np.abs(np.asarray(other_taps[name]) - ref))) if ref.size else 0.0
        out[name] = diff / max(float(np.max(np.abs(ref))), 1e-30)
    return out
