"""Differentiable torch copies of :mod:`ptyparity.physics`.

Same function names, arguments and canonical layouts as the NumPy reference:
group arrays are channel-last ``(B, N, N, C)``, :func:`translate` acts on the last
two axes ``(..., H, W)`` and shifts are ``[x, y]`` pixels in ``(..., 2)``. Everything
computes in float32 / complex64 and keeps the autograd graph. Inputs may be torch
tensors or NumPy arrays (converted with :func:`to_backend`); results are tensors on
the device of the first array argument. Given float64 / complex128 *tensors* (the
``precision="float64"`` verification mode), every op keeps double precision.

Constants (support mask, stabilisers) come from :mod:`ptyparity.physics`, so both
backends use literally the same numbers.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ptyparity import physics
from ptyparity.physics import AMPLITUDE_EPS, LOG_EPS, MERGE_EPS, MERGE_WEIGHTINGS

__all__ = [
    "to_backend", "to_numpy", "real_dtype", "complex_dtype",
    "tent_matrix", "translate", "pad_center", "crop_center",
    "merge_patches", "extract_patches", "illuminate",
    "predicted_intensity", "diffract", "predicted_amplitude",
    "poisson_loss", "poisson_saturated", "poisson_deviance", "mae_loss",
    "forward_physics",
]

# --- conversion ----------------------------------------------------------------------

_SINGLE = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
_DOUBLE = {np.dtype(np.float16): np.float64, np.dtype(np.float32): np.float64, np.dtype(np.complex64): np.complex128}
PRECISIONS = ("float32", "float64")
_REAL = {"float32": torch.float32, "float64": torch.float64}
_COMPLEX = {"float32": torch.complex64, "float64": torch.complex128}


def real_dtype(precision):
    """The torch real dtype of a precision name ("float32" or "float64")."""
    _check_precision(precision)
    return _REAL[precision]


def complex_dtype(precision):
    """The torch complex dtype of a precision name ("float32" or "float64")."""
    _check_precision(precision)
    return _COMPLEX[precision]


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


def to_backend(array, *, device=None, precision="float32"):
    """NumPy (or array-like) to a torch tensor. Copies.

    ``precision="float32"`` (default): float64 -> float32, complex128 -> complex64.
    ``precision="float64"`` (parity verification): float32 -> float64,
    complex64 -> complex128, double precision kept. Other dtypes (ints, bools) are
    kept in both."""
    _check_precision(precision)
    arr = np.asarray(array)
    table = _SINGLE if precision == "float32" else _DOUBLE
    arr = np.array(arr, dtype=table.get(arr.dtype, arr.dtype), order="C")  # a C-ordered copy, 0-d kept
    return torch.from_numpy(arr).to(device)


def to_numpy(tensor):
    """A tensor (on any device, with or without grad) as a NumPy array; arrays and
    Python scalars pass through ``np.asarray``."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(tensor)


def _as_tensor(x, *, device=None, dtype=None):
    """``x`` as a tensor (NumPy converted with :func:`to_backend`), optionally moved."""
    t = x if isinstance(x, torch.Tensor) else to_backend(x)
    if device is not None or dtype is not None:
        t = t.to(device=device if device is not None else t.device, dtype=dtype or t.dtype)
    return t


def _real_dtype(t):
    """float32 for complex64 / float32 tensors (float64 for double precision)."""
    return t.real.dtype if t.is_complex() else (t.dtype if t.is_floating_point() else torch.float32)


def _apply_real(fn, x):
    """Apply a real-linear map to a real or complex tensor (real and imaginary parts
    separately, so real tent matrices never need a complex matmul)."""
    if x.is_complex():
        return torch.complex(fn(x.real), fn(x.imag))
    return fn(x)


# --- translation, padding ------------------------------------------------------------


def tent_matrix(n, shift):
    """Bilinear-interpolation matrix for a shift along one axis.

    Parameters
    ----------
    n : int
        Length of the axis.
    shift : float or Tensor, shape (...)
        Shift in pixels; content moves by ``+shift``.

    Returns
    -------
    tent : Tensor, shape (..., n, n)
        ``T[i, j] = max(0, 1 - |i - shift - j|)`` in the dtype of ``shift``
        (float32 for Python floats and NumPy input).
    """
    shift = _as_tensor(shift)
    if not shift.is_floating_point():
        shift = shift.to(torch.float32)
    idx = torch.arange(n, device=shift.device)
    # (i - j) is an exact integer; subtracting the shift second keeps the entries
    # near the diagonal exact in float32 (Sterbenz), so integer shifts are permutations.
    diff = (idx[:, None] - idx[None, :]).to(shift.dtype)  # (n, n)
    return torch.clamp(1.0 - torch.abs(diff - shift[..., None, None]), min=0.0)  # (..., n, n)


def translate(img, shift):
    """Shift images by sub-pixel amounts with bilinear interpolation, zero outside.

    Parameters
    ----------
    img : Tensor, shape (..., H, W)
        Real or complex images.
    shift : Tensor or array_like, shape (..., 2)
        ``[t_x, t_y]`` in pixels, broadcast against the leading axes of ``img``.

    Returns
    -------
    out : Tensor, shape (..., H, W)
        ``out[y, x] = img(y - t_y, x - t_x)``, computed as ``T_y @ img @ T_x^T``.
    """
    img = _as_tensor(img)
    if img.ndim < 2:
        raise ValueError(f"img must have at least 2 dimensions (..., H, W), got shape {tuple(img.shape)}")
    shift = _as_tensor(shift, device=img.device, dtype=_real_dtype(img))
    if shift.shape[-1:] != (2,):
        raise ValueError(f"shift must have shape (..., 2) as [x, y], got {tuple(shift.shape)}")
    h, w = img.shape[-2:]
    t_y = tent_matrix(h, shift[..., 1])  # (..., H, H)
    t_x = tent_matrix(w, shift[..., 0])  # (..., W, W)
    if not img.is_complex():
        return t_y @ img @ t_x.transpose(-1, -2)
    # Complex: one real matmul per side instead of two, with re/im side by side.
    ri = torch.view_as_real(img)  # (..., H, W, 2)
    left = t_y @ ri.reshape(*ri.shape[:-2], w * 2)  # rows mixed: (..., H, 2W)
    planes = left.reshape(*left.shape[:-1], w, 2).movedim(-1, -3)  # (..., 2, H, W)
    right = planes.reshape(*planes.shape[:-3], 2 * h, w) @ t_x.transpose(-1, -2)  # (..., 2H, W)
    out = right.reshape(*right.shape[:-2], 2, h, w).movedim(-3, -1).contiguous()  # (..., H, W, 2)
    return torch.view_as_complex(out)


def pad_center(img, size):
    """Zero-pad the last two axes of ``img`` symmetrically to ``size x size``."""
    img = _as_tensor(img)
    n = img.shape[-1]
    before = (size - n) // 2
    after = size - n - before
    return torch.nn.functional.pad(img, (before, after, before, after))


def crop_center(img, size):
    """Central ``size x size`` window of the last two axes of ``img``."""
    n = img.shape[-1]
    start = (n - size) // 2
    return img[..., start : start + size, start : start + size]


# --- merging -------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _support_mask(n, probe_big):
    return physics.support_mask(n, probe_big=probe_big)


def _merge_weights(probe, *, probe_big, merge_weighting):
    """Torch version of :func:`ptyparity.physics.merge_weights` (a constant of the
    probe), computed on the probe's device: ``m`` or ``m |P|**2 / max |P|**2``, (N, N)."""
    if merge_weighting not in MERGE_WEIGHTINGS:
        raise ValueError(f"merge_weighting must be one of {MERGE_WEIGHTINGS}, got {merge_weighting!r}")
    n = probe.shape[-1]
    m = torch.tensor(_support_mask(n, probe_big), device=probe.device)  # (N, N), a copy of the cached mask
    if merge_weighting == "support":
        return m
    p2 = probe.real**2 + probe.imag**2 if probe.is_complex() else probe**2
    return m * p2 / p2.max()


def merge_patches(patches, rel, weights, max_offset):
    """Merge each group's C patches onto a padded canvas (``object_big``).

    Parameters
    ----------
    patches : Tensor, shape (B, N, N, C), complex
    rel : Tensor or array_like, shape (B, C, 2)
        Offsets ``[x, y]`` of each channel from its group centre, pixels.
    weights : Tensor or array_like, shape (N, N)
        Merge weights (see :func:`ptyparity.physics.merge_weights`).
    max_offset : int
        Canvas margin: the canvas side is ``Pd = N + 2 * max_offset``.

    Returns
    -------
    canvas : Tensor, shape (B, Pd, Pd), complex
        ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w), rel_c) + 1e-3)``.
    """
    patches = _as_tensor(patches)
    b, n, _, c = patches.shape
    rel = _as_tensor(rel, device=patches.device, dtype=_real_dtype(patches))
    if tuple(rel.shape) != (b, c, 2):
        raise ValueError(f"rel must have shape {(b, c, 2)}, got {tuple(rel.shape)}")
    size = n + 2 * int(max_offset)
    w = _as_tensor(weights, device=patches.device, dtype=_real_dtype(patches))  # (N, N)
    planes = patches.permute(0, 3, 1, 2)  # (B, C, N, N)
    num = translate(pad_center(planes * w, size), rel).sum(dim=1)  # (B, Pd, Pd)
    cnt = translate(pad_center(w, size), rel).sum(dim=1)  # (Pd, Pd) shifted by (B, C) -> (B, Pd, Pd)
    return num / (cnt + MERGE_EPS)


def extract_patches(canvas, rel, n):
    """Cut each channel's patch back out of a merged canvas.

    Parameters
    ----------
    canvas : Tensor, shape (B, Pd, Pd), complex
    rel : Tensor or array_like, shape (B, C, 2)
    n : int
        Patch size N.

    Returns
    -------
    patches : Tensor, shape (B, N, N, C)
        ``crop_N(translate(canvas, -rel_c))`` for each channel.
    """
    canvas = _as_tensor(canvas)
    rel = _as_tensor(rel, device=canvas.device, dtype=_real_dtype(canvas))
    shifted = translate(canvas[:, None], -rel)  # (B, 1, Pd, Pd) by (B, C, 2) -> (B, C, Pd, Pd)
    return crop_center(shifted, n).permute(0, 2, 3, 1)  # (B, C, N, N) -> (B, N, N, C)


# --- far field -----------------------------------------------------------------------


def illuminate(obj, probe):
    """Exit wave ``P * o``: ``obj`` (B, N, N, C) times ``probe`` (N, N), channel-last."""
    obj = _as_tensor(obj)
    probe = _as_tensor(probe, device=obj.device)
    return obj * probe[:, :, None]  # (N, N, 1) broadcasts over (B, N, N, C)


def predicted_intensity(psi):
    """Far-field intensity ``fftshift(|FFT2(psi)|**2) / N**2`` over axes (-3, -2).

    Parameters
    ----------
    psi : Tensor, shape (..., N, N, C), complex
        Exit waves, channel-last.

    Returns
    -------
    intensity : Tensor, shape (..., N, N, C), real
        From ``re**2 + im**2`` (no ``abs``: its gradient is undefined at 0).
    """
    psi = _as_tensor(psi)
    n = psi.shape[-2]
    f = torch.fft.fft2(psi, dim=(-3, -2))
    return torch.fft.fftshift(f.real**2 + f.imag**2, dim=(-3, -2)) / n**2


def diffract(psi):
    """Measured-style amplitude ``sqrt(fftshift(|FFT2(psi)|**2) / N**2)``."""
    return torch.sqrt(predicted_intensity(psi))


def predicted_amplitude(intensity):
    """``sqrt(I + 1e-12)``: an amplitude with a finite gradient at zero intensity."""
    return torch.sqrt(_as_tensor(intensity) + AMPLITUDE_EPS)


# --- losses (mean over all elements, as in the reference) ---------------------------


def _scale_tensor(log_scale, like):
    """``log_scale`` (float or 0-d tensor, gradient kept) as a tensor next to ``like``."""
    return _as_tensor(log_scale, device=like.device, dtype=like.dtype)


def _poisson_nll(lam, y):
    return lam - y * torch.log(lam + LOG_EPS)


def poisson_loss(intensity, target_amplitude, log_scale):
    """Poisson negative log-likelihood ``mean(lam - y log(lam + 1e-8))``.

    Parameters
    ----------
    intensity : Tensor, shape (B, N, N, C)
        Predicted intensity ``I_hat`` (model units).
    target_amplitude : Tensor, shape (B, N, N, C)
        Measured amplitude in count units, ``s * X``.
    log_scale : float or 0-d Tensor
        ``lam = exp(log_scale)**2 * I_hat``; a tensor keeps its gradient.

    Returns
    -------
    loss : Tensor, shape ()
    """
    intensity = _as_tensor(intensity)
    y = _as_tensor(target_amplitude, device=intensity.device) ** 2
    lam = torch.exp(2.0 * _scale_tensor(log_scale, intensity)) * intensity
    return torch.mean(_poisson_nll(lam, y))


def poisson_saturated(target_amplitude):
    """The Poisson loss with ``lam = y``: the data-dependent constant, shape ()."""
    y = _as_tensor(target_amplitude) ** 2
    return torch.mean(_poisson_nll(y, y))


def poisson_deviance(intensity, target_amplitude, log_scale):
    """Poisson loss minus its value at ``lam = y`` (zero for a perfect model), shape ().

    Subtracted element by element before the mean, which equals the reference's
    difference of means but avoids cancelling two large float32 means.
    """
    intensity = _as_tensor(intensity)
    y = _as_tensor(target_amplitude, device=intensity.device) ** 2
    lam = torch.exp(2.0 * _scale_tensor(log_scale, intensity)) * intensity
    return torch.mean(_poisson_nll(lam, y) - _poisson_nll(y, y))


def mae_loss(amplitude, target_amplitude, log_scale):
    """Mean ``|exp(log_scale) * A_hat - s X|`` over all elements, shape ()."""
    amplitude = _as_tensor(amplitude)
    target = _as_tensor(target_amplitude, device=amplitude.device)
    return torch.mean(torch.abs(torch.exp(_scale_tensor(log_scale, amplitude)) * amplitude - target))


# --- the physics half of the network, end to end -----------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0,
                    merge_weighting="support", probe_big=False, log_scale=0.0):
    """Everything after the network's heads: patches to predicted amplitudes.

    Parameters
    ----------
    amp, phase : Tensor, shape (B, N, N, C)
        Activated head outputs (amplitude in [0, 1], phase in rad).
    probe : Tensor or ndarray, shape (N, N), complex
        The scaled, optionally masked probe ``P`` the model illuminates with.
    rel : Tensor or ndarray, shape (B, C, 2), optional
        Channel offsets from the group centre; required when ``object_big``.
    object_big : bool
        Merge the C patches onto one canvas and extract them again.
    max_offset : int
        Canvas margin for ``object_big``.
    merge_weighting : {"support", "probe"}
    probe_big : bool
    log_scale : float or 0-d Tensor
        ``exp(log_scale)`` turns model amplitudes into count units (gradient kept).

    Returns
    -------
    taps : dict of Tensor
        ``object_patches``, ``object_canvas`` (object_big only), ``object_extracted``,
        ``exit_wave``, ``pred_intensity``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    amp = _as_tensor(amp)
    phase = _as_tensor(phase, device=amp.device)
    probe = _as_tensor(probe, device=amp.device)
    if amp.shape != phase.shape or amp.ndim != 4:
        raise ValueError(f"amp and phase must both have shape (B, N, N, C), got {tuple(amp.shape)} "
                         f"and {tuple(phase.shape)}")
    obj = torch.complex(amp * torch.cos(phase), amp * torch.sin(phase))  # (B, N, N, C) complex64
    taps = {"object_patches": obj}
    if object_big:
        if rel is None:
            raise ValueError("object_big needs rel offsets of shape (B, C, 2)")
        w = _merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting)  # (N, N)
        canvas = merge_patches(obj, rel, w, max_offset)  # (B, Pd, Pd)
        taps["object_canvas"] = canvas
        extracted = extract_patches(canvas, rel, obj.shape[1])  # (B, N, N, C)
    else:
        extracted = obj
    taps["object_extracted"] = extracted
    psi = illuminate(extracted, probe)
    taps["exit_wave"] = psi
    inten = predicted_intensity(psi)
    taps["pred_intensity"] = inten
    taps["pred_amplitude"] = predicted_amplitude(inten)
    taps["pred_amplitude_counts"] = torch.exp(_scale_tensor(log_scale, inten)) * taps["pred_amplitude"]
    return taps
