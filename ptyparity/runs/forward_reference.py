"""The ``compare --forward --reference`` run: judge any implementation's dumped forward pass.

The dump (an NPZ in PtychoPINN's key names, as its ``ref_outputs.npz``, or in ptyparity's
own tap names) holds the inputs it was fed; ptyparity runs the given bundle on exactly
those inputs and measures, per tap, ``max|ours - dump| / max|dump|`` with the dump as the
reference. The first tap in forward order beyond the tolerance is where the two
implementations part. The matching and the errors are plain functions
(:mod:`ptyparity.ptychopinn.taps`); this module runs the model and records the outcome.
"""

from __future__ import annotations

import os
import zipfile

import numpy as np

from ptyparity import descriptions, names, parity, tracking, tracking_notes
from ptyparity.errors import PtyparityError
from ptyparity.runs.common import CompareResult

# The implementations a dump can be judged against: ptyparity's backends and its NumPy reference.
IMPLEMENTATIONS = ("torch", "tensorflow", "numpy")
BACKEND_CHOICES = {"torch": ("torch",), "tensorflow": ("tensorflow",), "both": ("torch", "tensorflow"),
                   "numpy": ("numpy",), "all": IMPLEMENTATIONS}


def run_compare_forward_reference(reference_path, model_uri, *, backend="both", tolerance=1e-4,
                                  experiment=names.DEFAULT_EXPERIMENT, run_name=None):
    """Judge a dumped forward pass against ``model_uri`` run by ptyparity on the dump's inputs.

    Everything is computed and checked before the run opens: a bad dump (no inputs,
    unknown tap names, a shape that differs from the model's) is one
    :class:`PtyparityError` and leaves no run.

    Parameters
    ----------
    reference_path : path
        The NPZ dump (``X_input`` + ``positions_input`` and upstream tap keys, or
        ``scaled_diffraction`` + ``rel`` and :data:`ptyparity.names.TAP_NAMES` keys).
    model_uri : str
        The bundle (``models:/…``, ``runs:/…`` or a directory).
    backend : {"torch", "tensorflow", "both", "numpy", "all"}
        Which of ptyparity's implementations run the model ("numpy": the reference network).
    tolerance : float
        The largest allowed relative error of a tap.

    Returns
    -------
    result : CompareResult
        ``verdict`` pass or fail; ``reason`` the first divergent tap ("" when none); one
        check ``forward.<key>`` per judged key (the worst over the implementations run).
    """
    from ptyparity import bundle
    from ptyparity.ptychopinn import taps as upstream

    if backend not in BACKEND_CHOICES:
        raise PtyparityError(f"backend must be one of {', '.join(BACKEND_CHOICES)}; got {backend!r}")
    if not (isinstance(tolerance, (int, float)) and tolerance > 0):
        raise PtyparityError(f"the tap tolerance must be a number > 0, got {tolerance!r}")
    dump = _read_dump(reference_path)
    style, scaled, rel = upstream.reference_inputs(dump)
    keys = upstream.judged_keys(dump, style, names.TAP_NAMES)
    rec = bundle.load(model_uri)
    cfg = rec.model_cfg
    if scaled.shape[1:] != (cfg.N, cfg.N, cfg.channels):
        raise PtyparityError(f"the reference dump's inputs are {scaled.shape[1:]} patterns per group but the model "
                             f"takes ({cfg.N}, {cfg.N}, {cfg.channels}); judge it against a matching model")
    ours, errors = {}, {}
    for name in BACKEND_CHOICES[backend]:
        ours[name] = _model_arrays(rec, name, scaled, rel, style)
        errors[name] = upstream.reference_errors(ours[name], dump, keys)
    worst = {k: max(e[k] for e in errors.values()) if all(np.isfinite(e[k]) for e in errors.values())
             else float("nan") for k in keys}
    first = parity.first_divergent_tap(worst, tolerance, keys)
    checks = tuple(parity.Check(f"forward.{k}", worst[k], tolerance, bool(worst[k] <= tolerance),
                                "max|ours - reference| / max|reference|") for k in keys)
    failed = tuple(c.name for c in checks if not c.passed)
    status = "fail" if failed else "pass"
    tags = {names.PARITY_MODE: "forward_reference", names.TAG_MODEL_URI: model_uri,
            names.PARITY_REFERENCE_FILE: os.path.abspath(reference_path), names.PARITY_REFERENCE_STYLE: style}
    with tracking.start_run("compare", experiment=experiment, run_name=run_name, tags=tags) as run:
        tracking.log_params({f"{names.THRESHOLD_PREFIX}tap_rtol": tolerance, "n_groups": int(scaled.shape[0]),
                             "implementations": ",".join(errors)})
        tracking.log_metrics({c.name: c.value for c in checks})
        tracking.log_metrics({f"forward.{impl}.{k}": v for impl, errs in errors.items() for k, v in errs.items()})
        verdict_tags = {names.PARITY_STATUS: status, names.PARITY_VERDICT: status,
                        names.PARITY_FAILED_CHECKS: ",".join(failed) or names.NONE_LISTED,
                        names.PARITY_FIRST_DIVERGENT_TAP: first or names.NONE_LISTED}
        tracking.set_tags(verdict_tags)
        tracking_notes.describe_run(descriptions.compare_description({**tags, **verdict_tags}))
        tracking.log_dict(_jsonable({"status": status, "first_divergent_tap": first, "tolerance": tolerance,
                                     "style": style, "reference_file": os.path.abspath(reference_path),
                                     "model_uri": model_uri, "order": keys, "tap_errors": worst,
                                     "tap_errors_by_implementation": errors}), names.PARITY_FORWARD_REFERENCE)
        _log_figures(errors, tolerance, first, dump, ours)
        return CompareResult(run_id=run.info.run_id, verdict=status, parity_status=status, quality_status="",
                             checks=checks, failed_checks=failed, reason=first or "")


def _read_dump(path):
    """The dump's arrays (never unpickled), or one line naming why it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise ValueError("a single array, not an NPZ of named arrays")
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise PtyparityError(f"{path}: no such reference dump; give the NPZ of dumped taps") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PtyparityError(f"{path}: not a readable NPZ of plain arrays ({first}); save the dump with "
                             "numpy.savez") from None


def _model_arrays(rec, implementation, scaled, rel, style):
    """The model's taps on the dump's inputs, under the dump's key names."""
    from ptyparity.ptychopinn import taps as upstream

    if implementation == "numpy":
        from ptyparity import reference_network

        taps = reference_network.forward(rec.model_cfg, rec.bundle.weights, rec.bundle.probe, scaled, rel)
    else:
        api, model = rec.model(implementation)
        taps = api.forward(model, scaled, rel)
    if style == "ptyparity":
        return taps
    log_scale = float(np.asarray(rec.bundle.weights["log_scale"]))
    return {**upstream.to_upstream(taps),
            **upstream.constants_to_upstream(rec.bundle.probe, rec.scales.intensity_scale, log_scale)}


def _log_figures(errors, tolerance, first, dump, ours):
    """The per-tap error bars and, when a tap diverges, its reference, ours and difference."""
    from ptyparity import report

    tracking.log_figure(report.tap_error_figure(errors, tolerance), names.parity_figure(names.FORWARD_REFERENCE_FIGURE))
    if first is None or np.ndim(dump[first]) < 2:
        return
    worst = max(errors, key=lambda impl: errors[impl][first] if np.isfinite(errors[impl][first]) else np.inf)
    tracking.log_figure(report.tap_difference_figure(dump[first], ours[worst][first], title=f"{first} ({worst})"),
                        names.parity_figure(names.FORWARD_REFERENCE_TAP_FIGURE))


def _jsonable(obj):
    """NaN as None, so the JSON artifact stays standard."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj
