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

# Stabilisers fixed by the contract; both backends use the same constants.
MERGE_EPS = 1e-3
AMPLITUDE_EPS = 1e-12
LOG_EPS = 1e-8

MERGE_WEIGHTINGS = ("support", "probe")


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


def merge_patches(patches, rel, weights, max_offset):
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

    Returns
    -------
    canvas : ndarray, shape (B, Pd, Pd), complex
        ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w), rel_c) + 1e-3)``.
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
    cnt = translate(pad_center(np.broadcast_to(w, (b, c, n, n)), size), rel).sum(axis=1)
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


# --- normalisation (SPEC §2) -------------------------------------------------------

INTENSITY_SCALE_MODES = ("dataset", "closed_form")


def input_norm(diff3d):
    """Factor that gives the training diffraction a mean pattern energy ``(N/2)**2``.

    Parameters
    ----------
    diff3d : ndarray, shape (M, N, N)
        Measured amplitudes.

    Returns
    -------
    input_norm : float
        ``sqrt((N/2)**2 / mean_m sum_xy diff3d**2)``.
    """
    diff3d = np.asarray(diff3d)
    n = diff3d.shape[-1]
    energy = np.mean(np.sum(diff3d.astype(np.float64) ** 2, axis=(-2, -1)))
    if not energy > 0:
        raise ValueError("diffraction data has zero energy; input_norm is undefined")
    return float(math.sqrt((n / 2) ** 2 / energy))


def probe_norm(probe):
    """Factor that lets an object of amplitude 0.5 reproduce the mean data energy.

    ``sqrt((N/2)**2 / (0.5**2 * sum_xy |probe|**2))`` for ``probe`` of shape (N, N),
    computed on the probe the model actually uses (after masking).
    """
    probe = np.asarray(probe)
    n = probe.shape[-1]
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    if not power > 0:
        raise ValueError("probe is all zeros; probe_norm is undefined")
    return float(math.sqrt((n / 2) ** 2 / (0.25 * power)))


def intensity_scale(mode, *, input_norm, n, nphotons=None):
    """The fixed scale ``s`` from normalised input ``X`` to count units.

    Parameters
    ----------
    mode : {"dataset", "closed_form"}
        ``dataset``: ``s = 1 / input_norm`` (so ``s * X == diff3d``);
        ``closed_form``: ``s = sqrt(nphotons) / (N/2)``.
    input_norm : float
    n : int
        Patch size N.
    nphotons : float, optional
        Mean photons per pattern; required for ``closed_form``.
    """
    if mode not in INTENSITY_SCALE_MODES:
        raise ValueError(f"intensity_scale_mode must be one of {INTENSITY_SCALE_MODES}, got {mode!r}")
    if mode == "dataset":
        return float(1.0 / input_norm)
    if nphotons is None or not nphotons > 0:
        raise ValueError("intensity_scale_mode 'closed_form' needs nphotons > 0")
    return float(math.sqrt(nphotons) / (n / 2))


# --- the physics half of the network, end to end -----------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0,
                    merge_weighting="support", probe_big=False, log_scale=0.0):
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
        w = merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting)
        canvas = merge_patches(obj, rel, w, max_offset)
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
