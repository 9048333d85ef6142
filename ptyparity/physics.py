"""NumPy reference of the PtychoPINN physics: the judge both backends must match.

Every function is a plain array function with no framework import. Group-level
arrays use the canonical channel-last layout ``(B, N, N, C)`` (``C = gridsize**2``);
image-level operations (:func:`translate`) act on the last two axes ``(..., H, W)``.
Positions and shifts are ``[x, y]`` pixels (x = column, y = row).

The reference computes in float64 / complex128 and returns the input's dtype, so a
float32 backend is compared against a more accurate result than its own.
"""

from __future__ import annotations

import math

import numpy as np

# The SPEC normalisation rules moved to ptyparity.normalization; re-exported for old callers.
from ptyparity.normalization import INTENSITY_SCALE_MODES, input_norm, intensity_scale, probe_norm  # noqa: F401

# Stabilisers fixed by the contract; both backends use the same constants.
MERGE_EPS = 1e-3
AMPLITUDE_EPS = 1e-12
LOG_EPS = 1e-8

MERGE_WEIGHTINGS = ("support", "probe")
MERGE_NORMALIZATIONS = ("spec", "ptychopinn")


def _out_dtype(*arrays):
    """The dtype a result is returned in: complex if any input is complex, at the
    inputs' precision (float32/complex64 stay single precision)."""
    dt = np.result_type(*[np.asarray(a).dtype for a in arrays])
    if dt.kind not in "fc":
        dt = np.dtype(np.float64)
    return dt


def tent_matrix(n, shift):
    """Bilinear-interpolation matrix for a shift along one axis.

    Parameters
    ----------
    n : int
        Length of the axis.
    shift : float or array_like, shape (...)
        Shift in pixels; content moves by ``+shift``.

    Returns
    -------
    tent : ndarray, shape (..., n, n)
        ``T[i, j] = max(0, 1 - |i - shift - j|)``, so ``(T @ v)[i] = v(i - shift)``
        with zeros outside the axis. Integer shifts give exact permutations.
    """
    shift = np.asarray(shift, dtype=np.float64)[..., None, None]
    i = np.arange(n, dtype=np.float64)[:, None]
    j = np.arange(n, dtype=np.float64)[None, :]
    return np.maximum(0.0, 1.0 - np.abs(i - shift - j))


def translate(img, shift):
    """Shift images by sub-pixel amounts with bilinear interpolation, zero outside.

    Parameters
    ----------
    img : ndarray, shape (..., H, W)
        Real or complex images.
    shift : array_like, shape (..., 2)
        ``[t_x, t_y]`` in pixels, broadcast against the leading axes of ``img``.

    Returns
    -------
    out : ndarray, shape (..., H, W)
        ``out[y, x] = img(y - t_y, x - t_x)``: content moves by ``+t``.

    Notes
    -----
    Computed as ``T_y @ img @ T_x^T`` with :func:`tent_matrix`, the separable form
    that is exact for integer shifts and identical in NumPy, torch and TF.
    """
    img = np.asarray(img)
    shift = np.asarray(shift, dtype=np.float64)
    if img.ndim < 2:
        raise ValueError(f"img must have at least 2 dimensions (..., H, W), got shape {img.shape}")
    if shift.shape[-1:] != (2,):
        raise ValueError(f"shift must have shape (..., 2) as [x, y], got {shift.shape}")
    h, w = img.shape[-2:]
    t_y = tent_matrix(h, shift[..., 1])
    t_x = tent_matrix(w, shift[..., 0])
    work = img.astype(np.complex128 if np.iscomplexobj(img) else np.float64)
    out = t_y @ work @ np.swapaxes(t_x, -1, -2)
    return out.astype(_out_dtype(img), copy=False)


def pad_center(img, size):
    """Zero-pad the last two axes of ``img`` symmetrically to ``size x size``."""
    n = img.shape[-1]
    before = (size - n) // 2
    after = size - n - before
    pad = [(0, 0)] * (img.ndim - 2) + [(before, after), (before, after)]
    return np.pad(img, pad)


def crop_center(img, size):
    """Central ``size x size`` window of the last two axes of ``img``."""
    n = img.shape[-1]
    start = (n - size) // 2
    return img[..., start : start + size, start : start + size]


def support_mask(n, *, probe_big=False):
    """Support ``m`` of a predicted patch.

    Returns
    -------
    mask : ndarray, shape (n, n), float32
        Ones on the central ``n/2 x n/2`` window when ``probe_big`` is false,
        ones everywhere when true.
    """
    if probe_big:
        return np.ones((n, n), np.float32)
    mask = np.zeros((n, n), np.float32)
    mask[n // 4 : n // 4 + n // 2, n // 4 : n // 4 + n // 2] = 1.0
    return mask


def border_mask(n):
    """``1 - support_mask(n)``, (n, n) float32: where the ``ptychopinn`` probe_big branch adds."""
    return (1.0 - support_mask(n)).astype(np.float32)


def probe_disk_mask(n):
    """Hard disk of radius ``n/4`` centred at pixel ``(n/2, n/2)``, shape (n, n)."""
    yy, xx = np.mgrid[0:n, 0:n]
    r = np.hypot(yy - n / 2, xx - n / 2)
    return (r <= n / 4).astype(np.float32)


def effective_probe(probe, *, probe_mask=False):
    """The probe the model illuminates with: ``probe`` times the disk mask if asked."""
    probe = np.asarray(probe)
    if probe_mask:
        probe = probe * probe_disk_mask(probe.shape[-1])
    return probe.astype(np.complex64)


def merge_weights(probe, *, probe_big=False, merge_weighting="support"):
    """Weights ``w`` used when merging a group's patches.

    Parameters
    ----------
    probe : ndarray, shape (N, N), complex
        The probe the model uses (after masking).
    probe_big : bool
        Chooses the support (see :func:`support_mask`).
    merge_weighting : {"support", "probe"}
        ``"support"``: ``w = m``; ``"probe"``: ``w = m * |P|**2 / max |P|**2``.

    Returns
    -------
    w : ndarray, shape (N, N), float32
    """
    if merge_weighting not in MERGE_WEIGHTINGS:
        raise ValueError(f"merge_weighting must be one of {MERGE_WEIGHTINGS}, got {merge_weighting!r}")
    n = probe.shape[-1]
    m = support_mask(n, probe_big=probe_big)
    if merge_weighting == "support":
        return m
    p2 = np.abs(probe) ** 2
    return (m * p2 / p2.max()).astype(np.float32)


def merge_weight_pair(probe, *, probe_big=False, merge_weighting="support", merge_normalization="spec"):
    """Numerator and count weights ``(w_num, w_cnt)``, each (N, N) float32, of the merge.

    ``merge_normalization`` "spec": both are :func:`merge_weights` (same other arguments).
    "ptychopinn" (upstream; needs ``merge_weighting = "support"``): patches summed
    unweighted (``w_num = 1``), counted with the centred N/2 window (``w_cnt =
    support_mask(N)`` whatever ``probe_big``). Without probe_big the patches are zero
    outside that window, so both conventions give the same canvas.
    """
    if merge_normalization not in MERGE_NORMALIZATIONS:
        raise ValueError(f"merge_normalization must be one of {MERGE_NORMALIZATIONS}, got {merge_normalization!r}")
    if merge_normalization == "spec":
        w = merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting)
        return w, w
    if merge_weighting != "support":
        raise ValueError(f"merge_normalization 'ptychopinn' needs merge_weighting 'support', got {merge_weighting!r}")
    n = probe.shape[-1]
    return np.ones((n, n), np.float32), support_mask(n)


def merge_patches(patches, rel, weights, max_offset, *, count_weights=None):
    """Merge each group's C patches onto a padded canvas (``object_big``).

    Parameters
    ----------
    patches : ndarray, shape (B, N, N, C), complex
        Object patches of each group.
    rel : ndarray, shape (B, C, 2)
        Offsets ``[x, y]`` of each channel from its group centre, pixels.
    weights : ndarray, shape (N, N)
        Merge weights from :func:`merge_weights`.
    max_offset : int
        Canvas margin: the canvas side is ``Pd = N + 2 * max_offset``.
    count_weights : ndarray, shape (N, N), optional
        Weights ``w_cnt`` of the denominator when they differ from ``weights``
        (:func:`merge_weight_pair`); default ``weights``.

    Returns
    -------
    canvas : ndarray, shape (B, Pd, Pd), complex
        ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w_cnt), rel_c) + 1e-3)``.
    """
    patches = np.asarray(patches)
    b, n, _, c = patches.shape
    rel = np.asarray(rel, dtype=np.float64)
    if rel.shape != (b, c, 2):
        raise ValueError(f"rel must have shape {(b, c, 2)}, got {rel.shape}")
    size = n + 2 * int(max_offset)
    planes = np.moveaxis(patches, -1, 1)  # (B, C, N, N)
    w = np.asarray(weights, dtype=np.float64)
    num = translate(pad_center(planes.astype(np.complex128) * w, size), rel).sum(axis=1)
    w_cnt = w if count_weights is None else np.asarray(count_weights, dtype=np.float64)
    cnt = translate(pad_center(np.broadcast_to(w_cnt, (b, c, n, n)), size), rel).sum(axis=1)
    return (num / (cnt + MERGE_EPS)).astype(_out_dtype(patches), copy=False)


def extract_patches(canvas, rel, n):
    """Cut each channel's patch back out of a merged canvas.

    Parameters
    ----------
    canvas : ndarray, shape (B, Pd, Pd), complex
    rel : ndarray, shape (B, C, 2)
    n : int
        Patch size N.

    Returns
    -------
    patches : ndarray, shape (B, N, N, C)
        ``crop_N(translate(canvas, -rel_c))`` for each channel.
    """
    canvas = np.asarray(canvas)
    rel = np.asarray(rel, dtype=np.float64)
    shifted = translate(canvas[:, None], -rel)  # (B, C, Pd, Pd)
    return np.moveaxis(crop_center(shifted, n), 1, -1)


def illuminate(obj, probe):
    """Exit wave ``P * o``.

    Parameters
    ----------
    obj : ndarray, shape (B, N, N, C), complex
    probe : ndarray, shape (N, N), complex

    Returns
    -------
    psi : ndarray, shape (B, N, N, C), complex
    """
    obj = np.asarray(obj)
    probe = np.asarray(probe)
    return (obj * probe[:, :, None]).astype(_out_dtype(obj, probe), copy=False)


def predicted_intensity(psi):
    """Far-field intensity ``fftshift(|FFT2(psi)|**2) / N**2`` over axes (1, 2).

    Parameters
    ----------
    psi : ndarray, shape (..., N, N, C), complex
        Exit waves, channel-last.

    Returns
    -------
    intensity : ndarray, shape (..., N, N, C), real
        Energy-preserving: ``intensity.sum((-3, -2)) == (|psi|**2).sum((-3, -2))``.
        Computed from ``re**2 + im**2`` (the backends must too: ``abs`` has an
        undefined gradient at 0).
    """
    psi = np.asarray(psi)
    n = psi.shape[-2]
    f = np.fft.fft2(psi.astype(np.complex128), axes=(-3, -2))
    inten = np.fft.fftshift(f.real**2 + f.imag**2, axes=(-3, -2)) / n**2
    real_dt = np.float32 if psi.dtype in (np.complex64, np.float32) else np.float64
    return inten.astype(real_dt, copy=False)


def diffract(psi):
    """Measured-style amplitude ``sqrt(fftshift(|FFT2(psi)|**2) / N**2)``.

    Equals ``|fft2(psi, norm="ortho")|`` shifted; see :func:`predicted_intensity`
    for shapes.
    """
    return np.sqrt(predicted_intensity(psi))


def predicted_amplitude(intensity):
    """``sqrt(I + 1e-12)``: an amplitude with a finite gradient at zero intensity."""
    return np.sqrt(np.asarray(intensity) + AMPLITUDE_EPS)


def poisson_loss(intensity, target_amplitude, log_scale):
    """Poisson negative log-likelihood, mean over all elements.

    Parameters
    ----------
    intensity : ndarray, shape (B, N, N, C)
        Predicted intensity ``I_hat`` (model units).
    target_amplitude : ndarray, shape (B, N, N, C)
        Measured amplitude in count units, ``s * X``.
    log_scale : float
        ``lam = exp(log_scale)**2 * I_hat``.

    Returns
    -------
    loss : float
        ``mean(lam - y log(lam + 1e-8))`` with ``y = target_amplitude**2``.
    """
    lam = math.exp(2.0 * float(log_scale)) * np.asarray(intensity, np.float64)
    y = np.asarray(target_amplitude, np.float64) ** 2
    return float(np.mean(lam - y * np.log(lam + LOG_EPS)))


def poisson_saturated(target_amplitude):
    """The Poisson loss with ``lam = y``: the data-dependent constant of the loss."""
    y = np.asarray(target_amplitude, np.float64) ** 2
    return float(np.mean(y - y * np.log(y + LOG_EPS)))


def poisson_deviance(intensity, target_amplitude, log_scale):
    """Poisson loss minus its value at ``lam = y`` (zero for a perfect model)."""
    return poisson_loss(intensity, target_amplitude, log_scale) - poisson_saturated(target_amplitude)


def mae_loss(amplitude, target_amplitude, log_scale):
    """Mean ``|exp(log_scale) * A_hat - s X|`` over all elements."""
    pred = math.exp(float(log_scale)) * np.asarray(amplitude, np.float64)
    return float(np.mean(np.abs(pred - np.asarray(target_amplitude, np.float64))))


# --- the physics half of the network, end to end -----------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0,
                    merge_weighting="support", probe_big=False, log_scale=0.0, merge_normalization="spec"):
    """Everything after the network's heads: patches to predicted amplitudes.

    Parameters
    ----------
    amp, phase : ndarray, shape (B, N, N, C)
        Activated head outputs (amplitude in [0, 1], phase in rad).
    probe : ndarray, shape (N, N), complex
        The scaled, optionally masked probe ``P`` the model illuminates with.
    rel : ndarray, shape (B, C, 2), optional
        Channel offsets from the group centre; required when ``object_big``.
    object_big : bool
        Merge the C patches onto one canvas and extract them again.
    max_offset : int
        Canvas margin for ``object_big``.
    merge_weighting : {"support", "probe"}
    probe_big : bool
    log_scale : float
        ``exp(log_scale)`` turns model amplitudes into count units.
    merge_normalization : {"spec", "ptychopinn"}
        See :func:`merge_weight_pair`.

    Returns
    -------
    taps : dict of ndarray
        ``object_patches``, ``object_canvas`` (object_big only), ``object_extracted``,
        ``exit_wave``, ``pred_intensity``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    amp = np.asarray(amp, np.float64)
    phase = np.asarray(phase, np.float64)
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    taps = {"object_patches": obj}
    if object_big:
        if rel is None:
            raise ValueError("object_big needs rel offsets of shape (B, C, 2)")
        w_num, w_cnt = merge_weight_pair(probe, probe_big=probe_big, merge_weighting=merge_weighting,
                                         merge_normalization=merge_normalization)
        canvas = merge_patches(obj, rel, w_num, max_offset, count_weights=w_cnt)
        taps["object_canvas"] = canvas
        extracted = extract_patches(canvas, rel, obj.shape[1])
    else:
        extracted = obj
    taps["object_extracted"] = extracted
    psi = illuminate(extracted, probe)
    taps["exit_wave"] = psi
    inten = predicted_intensity(psi)
    taps["pred_intensity"] = inten
    taps["pred_amplitude"] = predicted_amplitude(inten).astype(np.float32)
    taps["pred_amplitude_counts"] = (math.exp(float(log_scale)) * taps["pred_amplitude"]).astype(np.float32)
    return taps
