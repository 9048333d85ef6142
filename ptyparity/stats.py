"""Per-patch statistics of predicted amplitude and phase patches (SPEC §6).

These are the numbers that expose a collapsing network (patches of near-zero
variance) or a wrong ``intensity_scale``; both backends report them under the same
names so the comparison can take their ratios.
"""

from __future__ import annotations

import numpy as np

PER_PATCH_KEYS = ("mean", "std", "min", "max", "var")
AGGREGATE_KEYS = ("mean", "std", "min", "max", "var_zero_mean", "var_zero_mean_p05",
                  "collapsed_fraction", "frac_saturated")
COLLAPSE_REL_VAR = 1e-6
SATURATION_LOW, SATURATION_HIGH = 0.02, 0.98


def patch_stats(patches, support, *, kind="amp"):
    """Statistics of each (group, channel) plane restricted to the support.

    Parameters
    ----------
    patches : ndarray, shape (B, N, N, C), real
        The ``amp_patches`` (or ``phase_patches``) tap.
    support : ndarray, shape (N, N)
        Support mask ``m``; only pixels with ``m > 0`` count.
    kind : {"amp", "phase"}
        Sets the saturation test: amplitude (sigmoid output) is saturated below
        0.02 or above 0.98; phase (``pi * tanh``) when ``phase / pi`` mapped to
        ``[0, 1]`` is, i.e. ``|phase| > 0.96 pi``.

    Returns
    -------
    per_patch : dict of ndarray, each shape (B, C)
        ``mean``, ``std`` (population), ``min``, ``max``, ``var``.
    aggregates : dict of float
        Means of the per-patch ``mean``/``std``, the overall ``min``/``max``,
        ``var_zero_mean`` (mean of per-patch ``var``), ``var_zero_mean_p05`` (its 5th
        percentile), ``collapsed_fraction`` (share of patches with
        ``var < 1e-6 * max(mean**2, 1e-12)``) and ``frac_saturated``.
    """
    if kind not in ("amp", "phase"):
        raise ValueError(f"kind must be 'amp' or 'phase', got {kind!r}")
    patches = np.asarray(patches, np.float64)
    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (B, N, N, C), got {patches.shape}")
    mask = np.asarray(support) > 0
    values = np.moveaxis(patches, -1, 1)[..., mask]  # (B, C, n_support)
    mean = values.mean(axis=-1)
    var = ((values - mean[..., None]) ** 2).mean(axis=-1)
    per_patch = {"mean": mean, "std": np.sqrt(var), "min": values.min(axis=-1),
                 "max": values.max(axis=-1), "var": var}
    unit = values if kind == "amp" else (values / np.pi + 1.0) / 2.0
    saturated = (unit < SATURATION_LOW) | (unit > SATURATION_HIGH)
    collapsed = var < COLLAPSE_REL_VAR * np.maximum(mean**2, 1e-12)
    aggregates = {
        "mean": float(mean.mean()),
        "std": float(per_patch["std"].mean()),
        "min": float(values.min()),
        "max": float(values.max()),
        "var_zero_mean": float(var.mean()),
        "var_zero_mean_p05": float(np.percentile(var, 5)),
        "collapsed_fraction": float(collapsed.mean()),
        "frac_saturated": float(saturated.mean()),
    }
    return per_patch, aggregates


def tap_summary(taps, raw_diffraction, support):
    """Everything the record keeps about a batch of taps (SPEC §6-7).

    Parameters
    ----------
    taps : dict of ndarray
        At least ``amp_patches`` and ``phase_patches``; ``encoder_input`` (with
        ``raw_diffraction``) gives ``mean_input_scale``, ``pred_amplitude`` and
        ``pred_amplitude_counts`` give ``mean_physics_scale``; each ``(B, N, N, C)``.
    raw_diffraction : ndarray, shape (B, N, N, C), or None
        The measured amplitudes ``diff3d`` of the same groups.
    support : ndarray, shape (N, N)

    Returns
    -------
    metrics : dict of float
        ``patch.amp.<stat>``, ``patch.phase.<stat>``, and the measured scale factors
        ``mean_input_scale`` (from ``diff3d`` to the encoder input) and
        ``mean_physics_scale`` (from ``A_hat`` to count units).
    per_patch : dict
        JSON-able per-patch values ``{"amp": {stat: [[...]]}, "phase": {...}}``.
    """
    metrics = {}
    per_patch = {}
    for kind, key in (("amp", "amp_patches"), ("phase", "phase_patches")):
        per, agg = patch_stats(taps[key], support, kind=kind)
        per_patch[kind] = {k: v.tolist() for k, v in per.items()}
        metrics.update({f"patch.{kind}.{k}": v for k, v in agg.items()})
    # An implementation recorded through ptyparity.record may hand over only the patches: each
    # scale factor is measured when the arrays it is measured from are there.
    if raw_diffraction is not None and "encoder_input" in taps:
        raw = np.asarray(raw_diffraction, np.float64)
        metrics["mean_input_scale"] = float(np.mean(taps["encoder_input"], dtype=np.float64) / raw.mean())
    if "pred_amplitude" in taps and "pred_amplitude_counts" in taps:
        metrics["mean_physics_scale"] = float(np.mean(taps["pred_amplitude_counts"], dtype=np.float64)
                                              / np.mean(taps["pred_amplitude"], dtype=np.float64))
    return metrics, per_patch
