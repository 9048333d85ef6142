"""Upstream PtychoPINN dump keys <-> ptyparity taps, in one place.

PtychoPINN's forward-pass dump (the fixture's ``ref_outputs.npz``) uses its own names and
layouts: ``(B*C, N, N, 1)`` stacks with row ``b*C + c`` where ptyparity has ``(B, N, N, C)``,
the canvas as ``(B, Pd, Pd, 1)``, amplitude patches cropped to N/2, the predicted intensity
in count units. :data:`UPSTREAM_TAPS` maps each upstream key, in forward order, to the
ptyparity tap it comes from and a function that rearranges ptyparity's taps into the
upstream array, so any dump can be judged against ptyparity's run of the same model.

Inputs: upstream feeds ``X_input`` = ptyparity's ``scaled_diffraction`` ``s * X`` and
``positions_input`` ``(B, 1, 2, C)`` = ``-(pos - centre)`` in ``[x, y]`` order, i.e. ``-rel``.
Upstream then translates each patch by minus what it is fed, so with ptyparity's
:func:`~ptyparity.physics.translate` (content moves by ``+t``) its merge is SPEC's merge at
``+rel``: the sign is a property of the inputs, not a convention of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ptyparity.physics import crop_center


@dataclass(frozen=True)
class UpstreamTap:
    """One upstream dump key: the ptyparity tap it derives from and how."""

    source: str  # the ptyparity tap (ptyparity.names.TAP_NAMES) it is computed from
    convert: Callable  # taps dict -> the array in upstream's layout
    what: str


def _stack(x):
    """(B, N, N, C) -> (B*C, N, N, 1), row ``b*C + c`` (upstream's flat patch stack)."""
    b, n, m, c = x.shape
    return np.moveaxis(x, -1, 1).reshape(b * c, n, m, 1)


def _half(x):
    """Central N/2 crop of (B, N, N, C) over axes (1, 2)."""
    return np.moveaxis(crop_center(np.moveaxis(x, -1, 1), x.shape[1] // 2), 1, -1)


def _trimmed(taps):
    canvas = taps["object_canvas"]  # (B, Pd, Pd)
    n = taps["object_patches"].shape[1]
    return crop_center(canvas, n)[..., None]


UPSTREAM_TAPS = {
    "normed_input": UpstreamTap("encoder_input", lambda t: t["encoder_input"], "what the first conv sees"),
    "X_normalized": UpstreamTap("encoder_input", lambda t: t["encoder_input"], "X = raw * input_norm"),
    "decoder_amp_full": UpstreamTap("amp_patches", lambda t: t["amp_patches"], "activated amplitude, padded"),
    "decoder_phase_full": UpstreamTap("phase_patches", lambda t: t["phase_patches"], "activated phase, padded"),
    "obj_patch_amp": UpstreamTap("amp_patches", lambda t: _half(t["amp_patches"]), "amplitude, central N/2"),
    "obj_patch_phase": UpstreamTap("phase_patches", lambda t: _half(t["phase_patches"]), "phase, central N/2"),
    "obj_patches_complex_padded": UpstreamTap("object_patches", lambda t: t["object_patches"],
                                              "amp * exp(i phase), (B, N, N, C)"),
    "obj_region_padded": UpstreamTap("object_canvas", lambda t: t["object_canvas"][..., None],
                                     "merged canvas (B, Pd, Pd, 1)"),
    "obj_trimmed": UpstreamTap("object_canvas", _trimmed, "central N crop of the canvas"),
    "obj_trimmed_amp": UpstreamTap("object_canvas", lambda t: np.abs(_trimmed(t)), "|obj_trimmed|"),
    "obj_trimmed_phase": UpstreamTap("object_canvas", lambda t: np.angle(_trimmed(t)), "angle(obj_trimmed)"),
    "illuminated_patches": UpstreamTap("object_extracted", lambda t: _stack(t["object_extracted"]),
                                       "patches cut back out, before the probe, (B*C, N, N, 1)"),
    "probe_illuminated": UpstreamTap("exit_wave", lambda t: _stack(t["exit_wave"]), "P * patch, (B*C, N, N, 1)"),
    "pred_diff_unscaled": UpstreamTap("pred_amplitude", lambda t: t["pred_amplitude"], "far-field amplitude"),
    "pred_amp": UpstreamTap("pred_amplitude_counts", lambda t: t["pred_amplitude_counts"],
                            "amplitude * exp(log_scale)"),
    "pred_intensity": UpstreamTap("pred_amplitude_counts",
                                  lambda t: np.asarray(t["pred_amplitude_counts"], np.float64) ** 2,
                                  "pred_amp**2, count units"),
}
# Upstream input keys -> what ptyparity's forward takes.
UPSTREAM_INPUTS = {"X_input": "scaled_diffraction", "positions_input": "-rel, (B, 1, 2, C)"}


def inputs_from_upstream(dump):
    """ptyparity's forward inputs from an upstream dump.

    Parameters
    ----------
    dump : mapping
        Holds ``X_input`` (B, N, N, C) and ``positions_input`` (B, 1, 2, C).

    Returns
    -------
    scaled_diffraction : ndarray, shape (B, N, N, C), float32
    rel : ndarray, shape (B, C, 2), float64
        ``-positions_input`` rearranged to ``[x, y]`` per channel.
    """
    x = np.asarray(dump["X_input"], np.float32)
    pos = np.asarray(dump["positions_input"], np.float64)
    if x.ndim != 4 or pos.shape != (x.shape[0], 1, 2, x.shape[-1]):
        raise ValueError(f"X_input {x.shape} and positions_input {pos.shape} are not (B, N, N, C) and (B, 1, 2, C)")
    return x, -np.moveaxis(pos[:, 0], 1, 2)


def inputs_to_upstream(scaled_diffraction, rel):
    """The inverse of :func:`inputs_from_upstream`: ``{"X_input", "positions_input"}``."""
    rel = np.asarray(rel, np.float64)
    return {"X_input": np.asarray(scaled_diffraction, np.float32),
            "positions_input": np.moveaxis(-rel, 1, 2)[:, None].astype(np.float32)}


def probe_to_upstream(probe):
    """The model probe (N, N) in upstream's ``probe_model`` layout (1, N, N, 1)."""
    return np.asarray(probe)[None, :, :, None]


def to_upstream(taps, keys=None):
    """ptyparity taps rearranged as upstream's dump, for the keys whose source tap exists."""
    keys = UPSTREAM_TAPS if keys is None else keys
    return {k: UPSTREAM_TAPS[k].convert(taps) for k in keys if UPSTREAM_TAPS[k].source in taps}


def relative_error(actual, reference):
    """``max |actual - reference| / max |reference|`` (SPEC §8's forward-parity measure)."""
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    if actual.shape != reference.shape:
        raise ValueError(f"shape {actual.shape} != reference shape {reference.shape}")
    if not reference.size:
        return 0.0
    scale = float(np.max(np.abs(reference)))
    err = float(np.max(np.abs(actual.astype(np.complex128) - reference.astype(np.complex128))))
    return err / scale if scale > 0 else err


def upstream_tap_errors(taps, dump):
    """Relative error of every upstream key present in both, in forward order.

    Returns
    -------
    errors : dict of str to float
        Upstream key -> :func:`relative_error` (ptyparity rearranged vs upstream's array).
    """
    return {key: relative_error(value, dump[key]) for key, value in to_upstream(taps).items() if key in dump}


# --- judging a dumped forward pass (compare --forward --reference) ---------------------------
# Upstream dump keys that are inputs or context (grouping, raw data, ground truth), not judged.
UPSTREAM_CONTEXT_KEYS = frozenset({
    "X_input", "positions_input", "diffraction_grouped_raw", "normalize_data_factor", "coords_nn",
    "coords_offsets_global", "positions_abs_xy", "nn_indices", "raw_indices", "data_subset_rows",
    "subset_nn_indices", "group_seed", "group_K", "group_nsamples", "intensity_scale_from_log", "probeGuess",
    "N", "gridsize", "padded_size", "Y_gt_patches"})
# Model constants an upstream dump may hold, judged before the taps: they depend on no input.
UPSTREAM_CONSTANTS = ("probe_model", "intensity_scale", "log_scale")
# A dump in ptyparity's own names: these inputs, and taps named as in ptyparity.names.TAP_NAMES.
PTYPARITY_INPUTS = ("scaled_diffraction", "rel")
STYLES = ("ptychopinn", "ptyparity")


def reference_style(dump):
    """``"ptychopinn"`` (``X_input`` + ``positions_input``) or ``"ptyparity"`` (``scaled_diffraction``
    + ``rel``): whose key names a dump uses, told by its inputs.

    Raises
    ------
    PtyparityError
        When it holds neither pair of inputs.
    """
    from ptyparity.errors import PtyparityError

    if all(k in dump for k in UPSTREAM_INPUTS):
        return "ptychopinn"
    if all(k in dump for k in PTYPARITY_INPUTS):
        return "ptyparity"
    raise PtyparityError("the reference dump has no inputs to rerun: it needs X_input + positions_input "
                         "(PtychoPINN names) or scaled_diffraction + rel (ptyparity names); add them to the NPZ")


def reference_inputs(dump):
    """The style of a dump and the forward inputs it holds.

    Returns
    -------
    style : {"ptychopinn", "ptyparity"}
    scaled_diffraction : ndarray, shape (B, N, N, C), float32
    rel : ndarray, shape (B, C, 2), float64
    """
    from ptyparity.errors import PtyparityError

    style = reference_style(dump)
    try:
        if style == "ptychopinn":
            scaled, rel = inputs_from_upstream(dump)
        else:
            scaled = np.asarray(dump["scaled_diffraction"], np.float32)
            rel = np.asarray(dump["rel"], np.float64)
            if scaled.ndim != 4 or rel.shape != (scaled.shape[0], scaled.shape[-1], 2):
                raise ValueError(f"scaled_diffraction {scaled.shape} and rel {rel.shape} are not (B, N, N, C) "
                                 "and (B, C, 2)")
    except ValueError as exc:
        raise PtyparityError(f"the reference dump's inputs do not fit: {exc}") from None
    return style, scaled, rel


def judged_keys(dump, style, tap_names):
    """The dump's keys that will be judged, in forward order.

    Parameters
    ----------
    dump : mapping
    style : {"ptychopinn", "ptyparity"}
    tap_names : sequence of str
        ptyparity's taps in forward order (``ptyparity.names.TAP_NAMES``).

    Raises
    ------
    PtyparityError
        For a key that is neither an input, context nor a known tap, or a dump with no tap.
    """
    from ptyparity.errors import PtyparityError

    if style == "ptychopinn":
        order, ignored = (*UPSTREAM_CONSTANTS, *UPSTREAM_TAPS), UPSTREAM_CONTEXT_KEYS
    else:
        order, ignored = tuple(tap_names), frozenset(PTYPARITY_INPUTS)
    unknown = sorted(set(dump) - set(order) - ignored)
    if unknown:
        raise PtyparityError(f"the reference dump has unknown tap name(s) {unknown} for {style} key names; "
                             f"known: {', '.join(order)}")
    keys = [k for k in order if k in dump]
    if not keys:
        raise PtyparityError(f"the reference dump holds inputs but no tap to judge; add any of {', '.join(order)}")
    return keys


def constants_to_upstream(probe, intensity_scale, log_scale):
    """A model's constants under upstream's dump names (:data:`UPSTREAM_CONSTANTS`)."""
    return {"probe_model": probe_to_upstream(probe), "intensity_scale": np.float64(intensity_scale),
            "log_scale": np.float32(log_scale)}


def reference_errors(ours, dump, keys):
    """``max|ours - dump| / max|dump|`` per key, the dump as reference, in the order of ``keys``.

    Parameters
    ----------
    ours : mapping
        The model's arrays under the dump's key names (``to_upstream`` + ``constants_to_upstream``,
        or ptyparity's taps).
    dump : mapping
    keys : sequence of str
        From :func:`judged_keys`.

    Raises
    ------
    PtyparityError
        For a key the model does not compute, or a shape that differs from the model's.
    """
    from ptyparity.errors import PtyparityError

    missing = [k for k in keys if k not in ours]
    if missing:
        raise PtyparityError(f"the model does not compute {missing} (e.g. object_canvas needs object_big); "
                             "drop them from the reference dump")
    errors = {}
    for key in keys:
        mine, ref = np.asarray(ours[key]), np.asarray(dump[key])
        if mine.shape != ref.shape:
            raise PtyparityError(f"reference tap {key!r} has shape {ref.shape} but the model's is {mine.shape}; "
                                 "dump the same groups in the documented layout")
        errors[key] = relative_error(mine, ref)
    return errors
