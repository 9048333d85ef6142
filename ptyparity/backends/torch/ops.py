"""Differentiable torch copies of :mod:`ptyparity.physics`.

Same function names, arguments and canonical layouts as the NumPy reference:
group arrays are channel-last ``(B, N, N, C)``, :func:`translate` acts on the last
two axes ``(..., H, W)`` and shifts are ``[x, y]`` pixels in ``(..., 2)``. Every op
takes a keyword-only ``precision``: ``"float32"`` (float32 / complex64, the
default) or ``"float64"`` (float64 / complex128, the parity-verification precision,
``TrainConfig.precision``); its inputs (tensors, or NumPy arrays converted with
:func:`to_backend`) are cast to that precision, so are its results, and the
autograd graph is kept. Results live on the device of the first array argument.
The TensorFlow backend's ops have the same signatures.

Constants (support mask, stabilisers) come from :mod:`ptyparity.physics`, so both
backends use literally the same numbers.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ptyparity import physics
from ptyparity.backends.contract import CONVERSIONS, OP_NAMES, check_precision
from ptyparity.errors import PtyparityError
from ptyparity.physics import AMPLITUDE_EPS, LOG_EPS, MERGE_EPS, MERGE_WEIGHTINGS

__all__ = [*CONVERSIONS, *OP_NAMES]

# --- conversion ----------------------------------------------------------------------

_SINGLE = {np.dtype(np.float64): np.float32, np.dtype(np.complex128): np.complex64}
_DOUBLE = {np.dtype(np.float16): np.float64, np.dtype(np.float32): np.float64, np.dtype(np.complex64): np.complex128}
_REAL = {"float32": torch.float32, "float64": torch.float64}
_COMPLEX = {"float32": torch.complex64, "float64": torch.complex128}


def real_dtype(precision):
    """The torch real dtype of a precision name ("float32" or "float64")."""
    return _REAL[check_precision(precision)]


def complex_dtype(precision):
    """The torch complex dtype of a precision name ("float32" or "float64")."""
    return _COMPLEX[check_precision(precision)]


def to_backend(array, *, device=None, precision="float32"):
    """NumPy (or array-like) to a torch tensor on ``device`` (CPU when None). Copies.

    ``precision="float32"`` (default): float64 -> float32, complex128 -> complex64;
    ``"float64"`` (parity verification): float32 -> float64, complex64 -> complex128.
    Other dtypes (ints, bools) are kept."""
    arr = np.asarray(array)
    table = _SINGLE if check_precision(precision) == "float32" else _DOUBLE
    arr = np.array(arr, dtype=table.get(arr.dtype, arr.dtype), order="C")  # a C-ordered copy, 0-d kept
    return torch.from_numpy(arr).to(device)


def to_numpy(tensor):
    """A tensor (on any device, with or without grad) as a NumPy array; arrays and
    Python scalars pass through ``np.asarray``."""
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().resolve_conj().resolve_neg().numpy()
    return np.asarray(tensor)


def _tensor(x):
    """A tensor as is; anything else as a tensor of a C-ordered NumPy copy (0-d kept)."""
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, order="C"))


def _cast(x, dtype, device):
    """``x`` as a ``dtype`` tensor on ``device`` (if given); one already so is returned as is."""
    t = _tensor(x)
    return t.to(device=t.device if device is None else device, dtype=dtype)


def _real(x, precision, device=None):
    return _cast(x, _REAL[precision], device)


def _complex(x, precision, device=None):  # real inputs get a zero imaginary part
    return _cast(x, _COMPLEX[precision], device)


def _like(x, precision, device=None):  # complex stays complex, anything else becomes real
    t = _tensor(x)
    return _cast(t, (_COMPLEX if t.is_complex() else _REAL)[precision], device)


# --- translation, padding ------------------------------------------------------------


def _tent(diff, shift):
    """``max(0, 1 - |diff - shift|)`` for exact-integer ``diff`` (rows, cols), ``shift`` (...)."""
    # (i - j) is an exact integer; subtracting the shift second keeps the entries
    # near the diagonal exact in float32 (Sterbenz), so integer shifts are permutations.
    return torch.clamp(1.0 - torch.abs(diff - shift[..., None, None]), min=0.0)


def tent_matrix(n, shift, *, precision="float32"):
    """Bilinear-interpolation matrix (..., n, n) for a ``shift`` (...) in pixels along an
    axis of length ``n`` (content moves by ``+shift``): ``T[i, j] = max(0, 1 - |i - shift - j|)``."""
    shift = _real(shift, check_precision(precision))
    idx = torch.arange(n, device=shift.device)
    return _tent((idx[:, None] - idx[None, :]).to(shift.dtype), shift)  # (..., n, n)


def _window_tents(shift, n, size):
    """Columns ``start:start + n``, ``start = (size - n) // 2``, of both axes' tents of
    ``shift`` (..., 2) ``[x, y]``: ``(t_x, t_y)``, each (..., size, n). ``t_y x t_x^T``
    translates an (n, n) ``x`` zero-padded to (size, size) without the padding; as
    ``T(-s) = T(s)^T`` exactly (exact integer difference, symmetric rounding),
    ``t_y^T canvas t_x`` is the centred n-crop of ``translate(canvas, -shift)``."""
    idx = torch.arange(max(size, n), device=shift.device)
    diff = (idx[:size, None] - idx[None, :n] - (size - n) // 2).to(shift.dtype)  # (size, n)
    return _tent(diff, shift.movedim(-1, 0)).unbind(0)  # axis first: each tent contiguous


def _planes(z):  # complex (..., H, W) -> real (..., H, 2, W): the tents act on both as views
    return torch.stack((z.real, z.imag), dim=-2)


def _complex_of(planes):  # real (..., H, 2, W) -> complex (..., H, W)
    return torch.complex(*planes.unbind(-2))


def translate(img, shift, *, precision="float32"):
    """Shift real or complex images ``img`` (..., H, W) by sub-pixel amounts with bilinear
    interpolation, zero outside: ``shift`` (..., 2) ``[t_x, t_y]`` pixels, broadcast
    against the leading axes of ``img``, gives ``out[y, x] = img(y - t_y, x - t_x)``,
    shape (..., H, W), computed as ``T_y @ img @ T_x^T``."""
    img = _like(img, check_precision(precision))
    if img.ndim < 2:
        raise PtyparityError(f"img must have at least 2 dimensions (..., H, W), got shape {tuple(img.shape)}")
    shift = _real(shift, precision, img.device)
    if shift.shape[-1:] != (2,):
        raise PtyparityError(f"shift must have shape (..., 2) as [x, y], got {tuple(shift.shape)}")
    h, w = img.shape[-2:]
    t_x, t_y = (_window_tents(shift, h, h) if h == w else  # square: both tents at once
                [tent_matrix(m, shift[..., i], precision=precision) for i, m in enumerate((w, h))])
    if not img.is_complex():
        return t_y @ img @ t_x.mT
    rows = t_y @ _planes(img).reshape(*img.shape[:-2], h, 2 * w)  # (..., H, 2W): rows mixed
    out = rows.reshape(*rows.shape[:-2], 2 * h, w) @ t_x.mT  # (..., 2H, W): columns mixed
    return _complex_of(out.reshape(*out.shape[:-2], h, 2, w))


def pad_center(img, size, *, precision="float32"):
    """Zero-pad the last two axes of ``img`` symmetrically to ``size x size``."""
    img = _like(img, check_precision(precision))
    n = img.shape[-1]
    before = (size - n) // 2
    after = size - n - before
    return torch.nn.functional.pad(img, (before, after, before, after))


def crop_center(img, size, *, precision="float32"):
    """Central ``size x size`` window of the last two axes of ``img``."""
    img = _like(img, check_precision(precision))
    start = (img.shape[-1] - size) // 2
    return img[..., start : start + size, start : start + size]


# --- merging -------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _support_mask(n, probe_big):
    return physics.support_mask(n, probe_big=probe_big)


def merge_weights(probe, *, probe_big=False, merge_weighting="support", precision="float32"):
    """Merge weights ``w``, shape (N, N) (see :func:`ptyparity.physics.merge_weights`),
    on the probe's device: ``m``, or ``m |P|**2 / max |P|**2`` with ``|P|**2`` from
    ``re**2 + im**2``."""
    if merge_weighting not in MERGE_WEIGHTINGS:
        raise PtyparityError(f"merge_weighting must be one of {', '.join(MERGE_WEIGHTINGS)}; "
                             f"got {merge_weighting!r}")
    probe = _complex(probe, check_precision(precision))
    m = torch.tensor(_support_mask(probe.shape[-1], probe_big), dtype=_REAL[precision], device=probe.device)
    if merge_weighting == "support":
        return m
    p2 = probe.real**2 + probe.imag**2
    return m * p2 / p2.max()


def _group_rel(rel, b, c, precision, device):  # rel (B, C, 2), checked
    rel = _real(rel, precision, device)
    if tuple(rel.shape) != (b, c, 2):
        raise PtyparityError(f"rel must have shape (B, {c}, 2), got {tuple(rel.shape)}")
    return rel


def merge_patches(patches, rel, weights, max_offset, *, count_weights=None, precision="float32"):
    """Merge each group's C patches onto a padded canvas (``object_big``).

    ``patches`` (B, N, N, C) complex, offsets ``rel`` (B, C, 2) ``[x, y]`` from each
    group's centre, merge ``weights`` ``w`` (N, N) (:func:`merge_weights`) and
    ``count_weights`` ``w_cnt`` (N, N) of the denominator (default ``weights``) give
    the canvas (B, Pd, Pd), ``Pd = N + 2 * max_offset``:
    ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w_cnt), rel_c) + 1e-3)``.
    """
    patches = _complex(patches, check_precision(precision))
    b, n, _, c = patches.shape
    rel = _group_rel(rel, b, c, precision, patches.device)
    w = _real(weights, precision, patches.device)  # (N, N)
    w_cnt = w if count_weights is None else _real(count_weights, precision, patches.device)
    tents = _window_tents(rel, n, n + 2 * int(max_offset))
    return _complex_of(_merge(_patch_planes(patches.real, patches.imag, w), tents, w_cnt))


def _patch_planes(re, im, w):
    """The weighted patches ``w o_c`` of channel-last ``re``, ``im`` (B, N, N, C) as
    real planes (B, C, N, 2, N): each row's real part, then its imaginary part."""
    return torch.stack((re.permute(0, 3, 1, 2), im.permute(0, 3, 1, 2)), dim=-2) * w[:, None, :]


def _merge(planes, tents, w_cnt):
    """:func:`merge_patches` on the patch planes (B, C, N, 2, N) of :func:`_patch_planes`,
    given the :func:`_window_tents` ``(t_x, t_y)`` (B, C, Pd, N) of ``rel``; returns the
    canvas planes (B, Pd, 2, Pd).

    ``t_y x t_x^T`` is ``translate(pad(x), rel)`` without the padding's zero rows and
    columns (:func:`_window_tents`): a third fewer multiplications than translating the
    padded patch, no padded copy, and the real and imaginary parts go through each product
    together as one real matrix, never as complex numbers (whose ``.real`` / ``.imag``
    gradients cost a zero-filled complex buffer each).
    """
    t_x, t_y = tents
    b, c, n, k, _ = planes.shape
    size = t_x.shape[-2]
    rows = t_y @ planes.reshape(b, c, n, k * n)  # (B, C, Pd, kN): rows placed
    num = (rows.reshape(b, c, k * size, n) @ t_x.mT).reshape(b, c, size, k, size).sum(dim=1)  # (B, Pd, k, Pd)
    cnt = (t_y @ w_cnt @ t_x.mT).sum(dim=1)  # (B, C, Pd, Pd) summed to (B, Pd, Pd)
    return num / (cnt + MERGE_EPS)[:, :, None, :]


def extract_patches(canvas, rel, n, *, precision="float32"):
    """Each channel's patch cut back out of a merged canvas (B, Pd, Pd):
    ``crop_N(translate(canvas, -rel_c))``, shape (B, N, N, C)."""
    canvas = _like(canvas, check_precision(precision))
    rel = _real(rel, precision, canvas.device)
    planes = _planes(canvas) if canvas.is_complex() else canvas[:, :, None]  # (B, Pd, k, Pd)
    out = _extract(planes, _window_tents(rel, n, canvas.shape[-1]))  # (B, C, N, k, N)
    out = _complex_of(out) if canvas.is_complex() else out[:, :, :, 0]
    return out.permute(0, 2, 3, 1)  # (B, C, N, N) -> (B, N, N, C)


def _extract(planes, tents):
    """:func:`extract_patches` on canvas planes (B, Pd, k, Pd), given the
    :func:`_window_tents` ``(t_x, t_y)`` of ``+rel``: the crop of
    ``T_y(-rel) canvas T_x(-rel)^T`` is ``t_y^T canvas t_x``. Returns (B, C, N, k, N)."""
    t_x, t_y = tents  # (B, C, Pd, N)
    b, c, size, n = t_x.shape
    k = planes.shape[-2]
    # A group's C row windows in one matmul against its canvas: (B, C N, Pd) @ (B, Pd, k Pd).
    rows = t_y.mT.reshape(b, c * n, size) @ planes.reshape(b, size, k * size)
    return (rows.reshape(b, c, n * k, size) @ t_x).reshape(b, c, n, k, n)  # columns


def _merge_weight_pair(probe, probe_big, merge_weighting, merge_normalization, precision):
    """``(w_num, w_cnt)`` of :func:`ptyparity.physics.merge_weight_pair`: in torch from
    the probe for "spec", the reference's probe-independent constants for "ptychopinn"."""
    if merge_normalization == "spec":
        w = merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting, precision=precision)
        return w, w
    n = probe.shape[-1]
    pair = physics.merge_weight_pair(np.zeros((n, n), np.complex64), probe_big=probe_big,
                                     merge_weighting=merge_weighting, merge_normalization=merge_normalization)
    return tuple(torch.tensor(w, dtype=_REAL[precision], device=probe.device) for w in pair)


# --- far field -----------------------------------------------------------------------


def illuminate(obj, probe, *, precision="float32"):
    """Exit wave ``P * o``: ``obj`` (B, N, N, C) times ``probe`` (N, N), channel-last."""
    obj = _complex(obj, check_precision(precision))
    return obj * _complex(probe, precision, obj.device)[:, :, None]  # (N, N, 1) broadcasts over (B, N, N, C)


def predicted_intensity(psi, *, precision="float32"):
    """Far-field intensity ``fftshift(|FFT2(psi)|**2) / N**2`` over axes (-3, -2) of the
    channel-last exit waves ``psi`` (..., N, N, C), complex; real, same shape. From
    ``re**2 + im**2`` (no ``abs``: its gradient is undefined at 0)."""
    psi = _complex(psi, check_precision(precision))
    n = psi.shape[-2]
    f = torch.fft.fft2(psi, dim=(-3, -2))
    return torch.fft.fftshift(f.real**2 + f.imag**2, dim=(-3, -2)) / n**2


def diffract(psi, *, precision="float32"):
    """Measured-style amplitude ``sqrt(fftshift(|FFT2(psi)|**2) / N**2)``."""
    return torch.sqrt(predicted_intensity(psi, precision=precision))


def predicted_amplitude(intensity, *, precision="float32"):
    """``sqrt(I + 1e-12)``: an amplitude with a finite gradient at zero intensity."""
    return torch.sqrt(_real(intensity, check_precision(precision)) + AMPLITUDE_EPS)


# --- losses (mean over all elements, as in the reference; shape ()) --------------------


def _poisson_nll(lam, y):
    return lam - y * torch.log(lam + LOG_EPS)


def _lam_and_y(intensity, target_amplitude, log_scale, precision):
    """``lam = exp(log_scale)**2 * I_hat`` and ``y = target**2`` (gradient to log_scale kept)."""
    intensity = _real(intensity, check_precision(precision))
    y = _real(target_amplitude, precision, intensity.device) ** 2
    return torch.exp(2.0 * _real(log_scale, precision, intensity.device)) * intensity, y


def poisson_loss(intensity, target_amplitude, log_scale, *, precision="float32"):
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
    lam, y = _lam_and_y(intensity, target_amplitude, log_scale, precision)
    return torch.mean(_poisson_nll(lam, y))


def poisson_saturated(target_amplitude, *, precision="float32"):
    """The Poisson loss with ``lam = y``: the data-dependent constant, shape ()."""
    y = _real(target_amplitude, check_precision(precision)) ** 2
    return torch.mean(_poisson_nll(y, y))


def poisson_deviance(intensity, target_amplitude, log_scale, *, precision="float32"):
    """Poisson loss minus its value at ``lam = y`` (zero for a perfect model), shape ().

    Subtracted element by element before the mean: the reference's difference of means
    without cancelling two large float32 means."""
    lam, y = _lam_and_y(intensity, target_amplitude, log_scale, precision)
    return torch.mean(_poisson_nll(lam, y) - _poisson_nll(y, y))


def mae_loss(amplitude, target_amplitude, log_scale, *, precision="float32"):
    """Mean ``|exp(log_scale) * A_hat - s X|`` over all elements, shape ()."""
    amplitude = _real(amplitude, check_precision(precision))
    target = _real(target_amplitude, precision, amplitude.device)
    scale = torch.exp(_real(log_scale, precision, amplitude.device))
    return torch.mean(torch.abs(scale * amplitude - target))


# --- the physics half of the network, end to end -----------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0, merge_weighting="support",
                    probe_big=False, log_scale=0.0, merge_normalization="spec", precision="float32"):
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
        Merge the C patches onto one canvas (margin ``max_offset``) and extract them again.
    max_offset : int
    merge_weighting : {"support", "probe"}
    probe_big : bool
    log_scale : float or 0-d Tensor
        ``exp(log_scale)`` turns model amplitudes into count units (gradient kept).
    merge_normalization : {"spec", "ptychopinn"}
        See :func:`ptyparity.physics.merge_weight_pair`.
    precision : {"float32", "float64"}

    Returns
    -------
    taps : dict of Tensor
        ``object_patches``, ``object_canvas`` (object_big only), ``object_extracted``,
        ``exit_wave``, ``pred_intensity``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    amp = _real(amp, check_precision(precision))
    phase = _real(phase, precision, amp.device)
    probe = _complex(probe, precision, amp.device)
    if amp.shape != phase.shape or amp.ndim != 4:
        raise PtyparityError(f"amp and phase must both have shape (B, N, N, C), got {tuple(amp.shape)} "
                             f"and {tuple(phase.shape)}")
    if object_big and rel is None:
        raise PtyparityError("object_big needs rel offsets of shape (B, C, 2)")
    re, im = amp * torch.cos(phase), amp * torch.sin(phase)  # (B, N, N, C)
    obj = torch.complex(re, im)
    taps = {"object_patches": obj}
    if object_big:
        # On real planes from the patches to the extracted patches (merge_patches and
        # extract_patches in one); the complex canvas is only the tap.
        w, w_cnt = _merge_weight_pair(probe, probe_big, merge_weighting, merge_normalization, precision)
        rel = _group_rel(rel, amp.shape[0], amp.shape[3], precision, amp.device)
        tents = _window_tents(rel, amp.shape[1], amp.shape[1] + 2 * int(max_offset))  # merge's and extract's
        canvas = _merge(_patch_planes(re, im, w), tents, w_cnt)  # (B, Pd, 2, Pd)
        taps["object_canvas"] = _complex_of(canvas)
        extracted = _complex_of(_extract(canvas, tents)).permute(0, 2, 3, 1)  # (B, N, N, C)
    else:
        extracted = obj
    taps["object_extracted"] = extracted
    taps["exit_wave"] = psi = illuminate(extracted, probe, precision=precision)
    taps["pred_intensity"] = inten = predicted_intensity(psi, precision=precision)
    taps["pred_amplitude"] = predicted_amplitude(inten, precision=precision)
    taps["pred_amplitude_counts"] = torch.exp(_real(log_scale, precision, inten.device)) * taps["pred_amplitude"]
    return taps
