"""Parity checks between a Torch and a TF run (SPEC §8): :func:`evaluate`, a pure function
from one :class:`Evidence` per side (recorded numbers and canvases) to a :class:`Verdict`.

Each :class:`Check` passes, fails, or is skipped when its evidence does not exist (an external
implementation without a train run). No framework or MLflow import here. Defaults and their
calibration: README, "Parity thresholds".
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ptyparity import metrics as canvas_metrics
from ptyparity.errors import PtyparityError

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
# Tolerances and shares must be >= 0; the var factor >= 1 (else [1/f, f] is empty: no pair could pass).
_NON_NEGATIVE = ("consistency_rtol", "ratio_tolerance", "collapsed_fraction_max", "orientation_margin")

RATIO_METRICS = {"var_zero_mean": "patch.amp.var_zero_mean", "mean_input_scale": "mean_input_scale",
                 "mean_physics_scale": "mean_physics_scale", "patch_mean": "patch.amp.mean"}
CONSISTENCY_KEYS = ("mean_input_scale", "mean_physics_scale", "intensity_scale")
CANVAS_CHECKS = {"canvas.amp.ssim": "canvas_amp_ssim_min", "canvas.phase.ssim": "canvas_phase_ssim_min",
                 "canvas.orientation": "orientation_margin"}  # check -> its threshold
BACKENDS = ("torch", "tensorflow")
KINDS = ("agreement", "quality")
STATUSES = ("pass", "fail", "skipped")


@dataclass(frozen=True)
class Check:
    """One parity check: ``name`` is its metric key in the compare run (``ratio.var_zero_mean``);
    ``value`` is NaN when its inputs were missing or not finite (it then fails); ``detail`` is one
    line for humans; ``kind`` "agreement" counts for ``parity.status``, "quality" (gt skill) for
    ``quality.status``; ``status`` is derived from ``passed`` unless given as "skipped" (evidence
    absent; ``passed`` False, counted by neither status).
    """

    name: str
    value: float
    threshold: float
    passed: bool
    detail: str = ""
    kind: str = "agreement"
    status: str = ""

    def __post_init__(self):
        derived = "pass" if self.passed else "fail"
        status = self.status or derived
        if self.kind not in KINDS or status not in (derived, "skipped") or (status == "skipped" and self.passed):
            raise ValueError(f"Check {self.name}: kind {self.kind!r} (one of {KINDS}), status {status!r} "
                             f"(pass/fail as passed={self.passed}, or skipped with passed False)")
        object.__setattr__(self, "status", status)

    def as_dict(self):
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "pass": self.passed,
                "detail": self.detail, "kind": self.kind, "status": self.status}


def _skipped(name, threshold, reason, kind="agreement"):
    return Check(name, math.nan, threshold, False, reason, kind=kind, status="skipped")


def _number(mapping, key):
    """``mapping[key]`` as a float; None when absent, NaN when not a number."""
    if key not in mapping or mapping[key] is None:
        return None
    try:
        return float(mapping[key])
    except (TypeError, ValueError):
        return math.nan


def _bad(*values):
    """A note for a detail when some value is not finite (such a check fails, never passes)."""
    return "" if all(math.isfinite(v) for v in values) else " (not a finite number)"


def consistency_checks(backend, train, infer, *, rtol):
    """Train vs infer of one backend: ``mean_input_scale``, ``mean_physics_scale`` and the
    ``intensity_scale`` param agree to ``rtol`` (relative to train). ``train``/``infer`` are
    ``{key: value}`` dicts; ``train=None`` (no train run) gives three skipped checks.
    """
    checks = []
    for key in CONSISTENCY_KEYS:
        name = f"{backend}.consistency.{key}"
        if train is None:
            checks.append(_skipped(name, rtol, "no train run (external implementation): train vs infer not checked"))
            continue
        a, b = _number(infer, key), _number(train, key)
        if a is None or b is None:
            checks.append(Check(name, math.nan, rtol, False,
                                f"{key} missing from the {'train' if b is None else 'infer'} run"))
            continue
        diff = abs(a - b) / max(abs(b), 1e-30) if math.isfinite(a) and math.isfinite(b) else math.nan
        detail = f"train {b:.6g} vs infer {a:.6g}" + _bad(a, b)
        if key == "intensity_scale" and a == 1.0 and b != 1.0:
            detail += " (a default 1.0 that training never chose)"
        checks.append(Check(name, diff, rtol, diff <= rtol, detail))
    return checks


def _ratio(a, b):
    """``(a / b, note)``; NaN or inf with a note when the ratio says nothing."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return math.nan, " (not a finite number)"
    if b == 0:
        if a == 0:
            return math.nan, " (both are 0: ratio undefined, e.g. zero variance on both sides)"
        return math.copysign(math.inf, a), " (tf is 0: ratio infinite)"
    return a / b, ""


def ratio_checks(torch_metrics, tf_metrics, *, tolerance, var_factor=None):
    """``torch / tf`` of patch statistics and scale factors, each within ``1 +- tolerance``;
    ``var_zero_mean``, given ``var_factor``, within ``[1/var_factor, var_factor]`` instead (its
    valid spread is larger). A NaN, infinite or undefined (0/0) ratio fails."""
    checks = []
    for name, key in RATIO_METRICS.items():
        a, b = _number(torch_metrics, key), _number(tf_metrics, key)
        if a is None or b is None:
            where = " and ".join(s for s, v in (("torch", a), ("tf", b)) if v is None)
            checks.append(Check(f"ratio.{name}", math.nan, tolerance, False, f"{key} missing ({where})"))
            continue
        ratio, note = _ratio(a, b)
        detail = f"torch {a:.4g} / tf {b:.4g}{note}"
        if name == "var_zero_mean" and var_factor is not None:
            ok = 1.0 / var_factor <= ratio <= var_factor
            checks.append(Check(f"ratio.{name}", ratio, var_factor, ok,
                                detail + f" (allowed x1/{var_factor:g}..x{var_factor:g})"))
            continue
        checks.append(Check(f"ratio.{name}", ratio, tolerance, abs(ratio - 1.0) <= tolerance, detail))
    return checks


def collapse_checks(torch_metrics, tf_metrics, *, max_fraction):
    """Neither backend may have more than ``max_fraction`` collapsed amplitude patches."""
    checks = []
    for backend, m in zip(BACKENDS, (torch_metrics, tf_metrics)):
        value = _number(m, "patch.amp.collapsed_fraction")
        detail = "share of near-constant amplitude patches"
        if value is None:
            value, detail = math.nan, "patch.amp.collapsed_fraction missing"
        checks.append(Check(f"{backend}.collapsed_fraction", value, max_fraction, value <= max_fraction,
                            detail + _bad(value)))
    return checks


def gt_skill_checks(torch_metrics, tf_metrics, *, margin):
    """Each backend's ground-truth SSIM beats the flat guess (kind ``quality``). A part (amp,
    phase) neither side scored gives no check; one side only: a skipped check for the other."""
    checks = []
    sides = dict(zip(BACKENDS, (torch_metrics, tf_metrics)))
    for part in ("amp", "phase"):
        key, flat = f"gt.{part}.ssim", f"gt.{part}.ssim_flat"
        values = {b: (_number(m, key), _number(m, flat)) for b, m in sides.items()}
        have = {b: None not in v for b, v in values.items()}
        if not any(have.values()):
            continue
        for backend, (s, f) in values.items():
            name = f"{backend}.gt_skill.{part}"
            if not have[backend]:
                checks.append(_skipped(name, margin, f"{key} or {flat} missing on this side only", kind="quality"))
                continue
            skill = s - f if math.isfinite(s) and math.isfinite(f) else math.nan
            checks.append(Check(name, skill, margin, skill > margin,
                                f"SSIM {s:.3f} vs flat guess {f:.3f}" + _bad(s, f), kind="quality"))
    return checks


ORIENTATIONS = {  # the 8 symmetries of a square, applied to the torch crop
    "identity": lambda a: a, "mirrored_180": lambda a: a[::-1, ::-1],
    "flipped_vertical": lambda a: a[::-1, :], "flipped_horizontal": lambda a: a[:, ::-1],
    "transposed": lambda a: a.T, "rotated_90": lambda a: np.rot90(a, 1),
    "rotated_270": lambda a: np.rot90(a, -1), "anti_transposed": lambda a: np.rot90(a, 2).T,
}


def orientation_scores(canvas, reference):
    """Amplitude SSIM of each orientation of ``canvas`` against ``reference`` (complex crops of
    one region); orientations that change the shape of a non-square crop are left out."""
    scores = {}
    full = (slice(None), slice(None))
    for name, fn in ORIENTATIONS.items():
        cand = fn(canvas)
        if cand.shape != reference.shape:
            continue
        scores[name] = canvas_metrics.compare_canvases(cand, reference, full)["amp.ssim"]
    return scores


def canvas_checks(torch_canvas, torch_count, tf_canvas, tf_count, *, thresholds):
    """Stitched-canvas agreement, TF as reference, on the region both counts cover.

    Canvases are (H, W) complex, counts (H, W). Returns ``(checks, scores, best_orientation)``:
    the checks ``canvas.amp.ssim``, ``canvas.phase.ssim`` (floors) and ``canvas.orientation``;
    the scores ``canvas.{amp,phase}.{mae,psnr,ssim}`` and ``canvas.orientation.<name>`` SSIMs
    (metrics); the best orientation, "" when it cannot be scored.
    """
    if np.shape(torch_canvas) != np.shape(tf_canvas):
        raise PtyparityError(f"canvases differ in shape: torch {np.shape(torch_canvas)} vs tf {np.shape(tf_canvas)};"
                             " compare infer runs made on the same data")
    try:
        region = canvas_metrics.covered_region(torch_count, tf_count)
    except ValueError as exc:  # no pixel covered in both: every canvas check fails, nothing to score
        return [Check(n, math.nan, thresholds[k], False, str(exc)) for n, k in CANVAS_CHECKS.items()], {}, ""
    scores = {f"canvas.{k}": v for k, v in canvas_metrics.compare_canvases(torch_canvas, tf_canvas, region).items()}
    orient = orientation_scores(torch_canvas[region], tf_canvas[region])
    scores.update({f"canvas.orientation.{k}": v for k, v in orient.items()})
    checks = [
        Check(name, scores[name], thresholds[key], scores[name] >= thresholds[key],
              f"torch vs tf {part} SSIM" + _bad(scores[name]))
        for name, key, part in (("canvas.amp.ssim", "canvas_amp_ssim_min", "amplitude"),
                                ("canvas.phase.ssim", "canvas_phase_ssim_min", "phase"))]
    margin = thresholds["orientation_margin"]
    if not all(math.isfinite(v) for v in orient.values()):
        # max() over NaNs would pick "identity" and pass; a canvas that cannot be scored fails.
        checks.append(Check("canvas.orientation", math.nan, margin, False, "orientation SSIM not a finite number"))
        return checks, scores, ""
    best = max(orient, key=orient.get)
    gain = orient[best] - orient["identity"]
    ok = best == "identity" or gain <= margin
    checks.append(Check("canvas.orientation", gain, margin, ok,
                        "as stitched" if ok else f"torch canvas matches tf best when {best} "
                                                 f"(SSIM {orient[best]:.3f} vs identity {orient['identity']:.3f})"))
    return checks, scores, best


def verdict(checks):
    """``("pass" | "fail", [names of failed checks])``; skipped checks count for neither."""
    failed = [c.name for c in checks if c.status == "fail"]
    return ("fail" if failed else "pass"), failed


def first_divergent_tap(tap_errors, tolerance, order):
    """The first tap in forward ``order`` whose relative error exceeds ``tolerance`` (or is NaN), or None."""
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


@dataclass(frozen=True, eq=False)
class Evidence:
    """One side of a pair, as plain numbers and arrays (no MLflow objects).

    ``infer``: the infer run's metrics plus its param ``intensity_scale``; ``train``: the same
    for its train run, or None (an external implementation: its checks are skipped);
    ``canvas`` (H, W) complex and ``count`` (H, W) from ``stitched/canvas.npz``, both or
    neither (None skips the canvas checks); ``name`` for the report ("ptyparity-torch").
    """

    infer: dict
    train: dict | None = None
    canvas: np.ndarray | None = None
    count: np.ndarray | None = None
    name: str = ""

    def __post_init__(self):
        if not isinstance(self.infer, dict) or not (self.train is None or isinstance(self.train, dict)):
            raise TypeError("Evidence.infer must be a dict and Evidence.train a dict or None")
        if (self.canvas is None) != (self.count is None):
            raise PtyparityError(f"evidence {self.name!r}: give the canvas and its stitch count together")
        if self.canvas is not None and (np.ndim(self.canvas) != 2 or np.shape(self.canvas) != np.shape(self.count)):
            raise PtyparityError(f"evidence {self.name!r}: canvas {np.shape(self.canvas)} and count "
                                 f"{np.shape(self.count)} must be 2-D arrays of one shape")


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`evaluate`: ``parity_status`` pass|fail (agreement checks only, tag
    ``parity.status``), ``quality_status`` pass|fail|none (gt skill, tag ``quality.status``),
    ``verdict`` pass|fail|inconclusive (tag ``parity.verdict``), every check (skipped ones too),
    the names of failed and skipped checks, the ``canvas.*`` scores (empty without both canvases)
    and the best orientation ("" when there is none).
    """

    parity_status: str
    quality_status: str
    verdict: str
    checks: tuple
    failed_checks: tuple
    skipped_checks: tuple
    canvas_scores: dict
    best_orientation: str

    @property
    def exit_code(self):  # pass 0; fail and inconclusive 1
        return 0 if self.verdict == "pass" else 1


def validate_thresholds(thresholds=None):
    """``DEFAULT_THRESHOLDS`` updated with ``thresholds``; PtyparityError for an unknown key,
    a non-number, a non-finite value, a negative tolerance or a var factor below 1."""
    thr = dict(DEFAULT_THRESHOLDS)
    for key, value in (thresholds or {}).items():
        if key not in DEFAULT_THRESHOLDS:
            raise PtyparityError(f"unknown parity threshold {key!r}; allowed: {', '.join(DEFAULT_THRESHOLDS)}")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise PtyparityError(f"parity threshold {key} must be a finite number, got {value!r}")
        if key in _NON_NEGATIVE and value < 0:
            raise PtyparityError(f"parity threshold {key} must be >= 0, got {value!r}")
        if key == "var_ratio_max_factor" and value < 1:
            raise PtyparityError(f"parity threshold var_ratio_max_factor must be >= 1 (range [1/f, f]), got {value!r}")
        thr[key] = float(value)
    return thr


def _canvas_part(torch, tf, thr):
    missing = [e.name or side for e, side in zip((torch, tf), BACKENDS) if e.canvas is None]
    if missing:
        reason = f"no stitched canvas from {' and '.join(missing)}"
        return [_skipped(n, thr[k], reason) for n, k in CANVAS_CHECKS.items()], {}, ""
    return canvas_checks(torch.canvas, torch.count, tf.canvas, tf.count, thresholds=thr)


def evaluate(torch, tf, thresholds=None):
    """Every parity check of a torch/tensorflow pair, and the verdict.

    ``torch`` and ``tf`` are :class:`Evidence` (TF is the canvas reference); ``thresholds``
    overrides ``DEFAULT_THRESHOLDS`` (see :func:`validate_thresholds`). Returns a :class:`Verdict`.

    Checks of kind ``agreement``: train-vs-infer consistency per backend (skipped without a
    train run), torch/tf ratios, collapse guards, canvas floors and orientation (skipped without
    both canvases); of kind ``quality``: gt skill per backend. A missing or non-finite input
    fails the check that reads it. Verdict: parity fail -> fail; parity pass and quality none
    or pass -> pass; parity pass and every (not skipped) quality check failed (neither side
    beats the flat guess) -> inconclusive; else (one side has skill, the other not) -> fail.
    """
    if not isinstance(torch, Evidence) or not isinstance(tf, Evidence):
        raise TypeError("evaluate(torch, tf) takes two Evidence objects")
    thr = validate_thresholds(thresholds)
    checks = []
    for backend, ev in zip(BACKENDS, (torch, tf)):
        checks += consistency_checks(backend, ev.train, ev.infer, rtol=thr["consistency_rtol"])
    checks += ratio_checks(torch.infer, tf.infer, tolerance=thr["ratio_tolerance"],
                           var_factor=thr["var_ratio_max_factor"])
    checks += collapse_checks(torch.infer, tf.infer, max_fraction=thr["collapsed_fraction_max"])
    canvas, scores, best = _canvas_part(torch, tf, thr)
    checks += canvas
    checks += gt_skill_checks(torch.infer, tf.infer, margin=thr["gt_skill_margin"])

    agreement = [c for c in checks if c.kind == "agreement" and c.status != "skipped"]
    quality = [c for c in checks if c.kind == "quality" and c.status != "skipped"]
    parity_status = "fail" if any(c.status == "fail" for c in agreement) else "pass"
    quality_status = "none" if not quality else "fail" if any(c.status == "fail" for c in quality) else "pass"
    if parity_status == "fail":
        outcome = "fail"
    elif quality_status != "fail":
        outcome = "pass"
    else:
        outcome = "inconclusive" if all(c.status == "fail" for c in quality) else "fail"
    return Verdict(parity_status=parity_status, quality_status=quality_status, verdict=outcome,
                   checks=tuple(checks), failed_checks=tuple(c.name for c in checks if c.status == "fail"),
                   skipped_checks=tuple(c.name for c in checks if c.status == "skipped"),
                   canvas_scores=scores, best_orientation=best)
