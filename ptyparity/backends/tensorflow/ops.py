"""Differentiable TensorFlow copies of :mod:`ptyparity.physics`.

Same function names, arguments and canonical layouts as the NumPy reference:
group arrays are channel-last ``(B, N, N, C)``, :func:`translate` acts on the last
two axes ``(..., H, W)``, shifts are ``[x, y]`` in ``(..., 2)``. Every op takes a
keyword-only ``precision``: ``"float32"`` (float32 / complex64, the default) or
``"float64"`` (float64 / complex128, the parity-verification precision,
``TrainConfig.precision``); its inputs (NumPy arrays, tensors or variables) are
converted to that precision and so are its results, eagerly and inside
``tf.function``. The torch backend's ops have the same signatures.

Complex arithmetic is kept to what has clean gradients: real matrices act on the
real and imaginary parts separately, and intensities come from ``re**2 + im**2``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from ptyparity import physics
from ptyparity.backends.contract import CONVERSIONS, OP_NAMES, check_precision
from ptyparity.errors import PtyparityError
from ptyparity.physics import AMPLITUDE_EPS, LOG_EPS, MERGE_EPS, MERGE_WEIGHTINGS

__all__ = [*CONVERSIONS, *OP_NAMES]


# --- conversion -----------------------------------------------------------------------

_REAL = {"float32": tf.float32, "float64": tf.float64}
_COMPLEX = {"float32": tf.complex64, "float64": tf.complex128}
_NARROW = {tf.float64: tf.float32, tf.complex128: tf.complex64}
_WIDEN = {tf.float16: tf.float64, tf.float32: tf.float64, tf.complex64: tf.complex128}
_NUMPY_FLOATS = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.complex64, np.complex128))


def real_dtype(precision):
    """The TF real dtype of a precision name ("float32" or "float64")."""
    return _REAL[check_precision(precision)]


def complex_dtype(precision):
    """The TF complex dtype of a precision name ("float32" or "float64")."""
    return _COMPLEX[check_precision(precision)]


def to_backend(array, *, device=None, precision="float32"):
    """NumPy array (or tensor, or variable) -> tf tensor, placed on ``device``
    (a ``tf.device`` name; TF's default placement when None).

    ``precision="float32"`` (default): float64 -> float32, complex128 -> complex64.
    ``precision="float64"``: float32 -> float64, complex64 -> complex128. Other dtypes
    (ints, bools) are kept in both. Variables are read as tensors (gradient kept).
    """
    table = _NARROW if check_precision(precision) == "float32" else _WIDEN
    with tf.device(device) if device is not None else contextlib.nullcontext():
        if isinstance(array, tf.Tensor):
            tensor = array
        elif isinstance(array, tf.Variable) or hasattr(array, "__tf_tensor__"):
            tensor = tf.convert_to_tensor(array)
        else:
            arr = np.asarray(array)
            target = table.get(tf.as_dtype(arr.dtype)) if arr.dtype in _NUMPY_FLOATS else None
            return tf.convert_to_tensor(arr if target is None else arr.astype(target.as_numpy_dtype))
        target = table.get(tensor.dtype)
        return tensor if target is None else tf.cast(tensor, target)


def to_numpy(tensor):
    """tf tensor or variable (or anything array-like) -> NumPy array."""
    if hasattr(tensor, "numpy"):
        return np.asarray(tensor.numpy())
    return np.asarray(tensor)


def _real(x, precision):
    """``x`` as a real tensor in ``precision`` (gradient kept)."""
    return tf.cast(to_backend(x, precision=precision), _REAL[precision])


def _complex(x, precision):
    """``x`` as a complex tensor in ``precision`` (real inputs get a zero imaginary part)."""
    x = to_backend(x, precision=precision)
    if x.dtype.is_complex:
        return tf.cast(x, _COMPLEX[precision])
    return tf.complex(tf.cast(x, _REAL[precision]), tf.zeros_like(x, _REAL[precision]))


def _like(x, precision):
    """``x`` in ``precision``, complex if it is complex, else real."""
    x = to_backend(x, precision=precision)
    return tf.cast(x, (_COMPLEX if x.dtype.is_complex else _REAL)[precision])


def _scale_complex(z, w):
    """Complex ``z`` times real ``w`` (broadcast), without a complex cast of ``w``."""
    return tf.complex(tf.math.real(z) * w, tf.math.imag(z) * w)


def _divide_complex(z, d):
    """Complex ``z`` divided by real ``d`` (broadcast)."""
    return tf.complex(tf.math.real(z) / d, tf.math.imag(z) / d)


# --- translation ----------------------------------------------------------------------


def tent_matrix(n, shift, *, precision="float32"):
    """Bilinear-interpolation matrix for a shift along one axis.

    Parameters
    ----------
    n : int
        Length of the axis.
    shift : float or tensor, shape (...)
        Shift in pixels; content moves by ``+shift``.

    Returns
    -------
    tent : tensor, shape (..., n, n)
        ``T[i, j] = max(0, 1 - |i - shift - j|)``. Built in float64 and rounded once,
        so the entries equal the reference's to float32 precision for any canvas size.
    """
    shift = tf.cast(_real(shift, check_precision(precision)), tf.float64)[..., None, None]  # exact widening
    i = tf.range(n, dtype=tf.float64)[:, None]
    j = tf.range(n, dtype=tf.float64)[None, :]
    return tf.cast(tf.maximum(1.0 - tf.abs(i - shift - j), 0.0), _REAL[precision])


def _broadcast_batch(x, static_batch, dynamic_batch, *tail):
    """``x`` broadcast to shape ``batch + tail``, keeping every statically known dim."""
    if static_batch.is_fully_defined():
        return tf.broadcast_to(x, static_batch.as_list() + list(tail))
    out = tf.broadcast_to(x, tf.concat([dynamic_batch, tf.constant(tail, dynamic_batch.dtype)], axis=0))
    out.set_shape(static_batch.concatenate(tail))
    return out


def translate(img, shift, *, precision="float32"):
    """Shift images by sub-pixel amounts with bilinear interpolation, zero outside.

    Parameters
    ----------
    img : tensor, shape (..., H, W)
        Real or complex images.
    shift : tensor, shape (..., 2)
        ``[t_x, t_y]`` in pixels, broadcast against the leading axes of ``img``.

    Returns
    -------
    out : tensor, shape (..., H, W)
        ``out[y, x] = img(y - t_y, x - t_x)``, computed as ``T_y @ img @ T_x^T``
        (exact for integer shifts).
    """
    img = _like(img, check_precision(precision))
    shift = _real(shift, precision)
    if img.shape.rank is not None and img.shape.rank < 2:
        raise PtyparityError(f"img must have at least 2 dimensions (..., H, W), got shape {img.shape}")
    if shift.shape.rank is not None and shift.shape[-1] != 2:
        raise PtyparityError(f"shift must have shape (..., 2) as [x, y], got {shift.shape}")
    h, w = img.shape[-2], img.shape[-1]
    # Every operand is broadcast to the full batch shape first: TF 2.21's oneDNN
    # BatchMatMulV2 corrupts the heap when it broadcasts a (B, 1, H, W) batch
    # against a plain (H, W) matrix (the gridsize-1 merge), so it never has to.
    static = tf.broadcast_static_shape(img.shape[:-2], shift.shape[:-1])
    dynamic = tf.broadcast_dynamic_shape(tf.shape(img)[:-2], tf.shape(shift)[:-1])
    img = _broadcast_batch(img, static, dynamic, h, w)  # (..., H, W)
    t_y = _broadcast_batch(tent_matrix(h, shift[..., 1], precision=precision), static, dynamic, h, h)
    t_x = _broadcast_batch(tent_matrix(w, shift[..., 0], precision=precision), static, dynamic, w, w)

    def apply(plane):  # T_y @ plane @ T_x^T: (..., H, H) @ (..., H, W) @ (..., W, W)
        return tf.linalg.matmul(tf.linalg.matmul(t_y, plane), t_x, transpose_b=True)

    if img.dtype.is_complex:
        return tf.complex(apply(tf.math.real(img)), apply(tf.math.imag(img)))
    return apply(img)


def pad_center(img, size, *, precision="float32"):
    """Zero-pad the last two axes of ``img`` symmetrically to ``size x size``."""
    img = _like(img, check_precision(precision))
    n = img.shape[-1]
    before = (size - n) // 2
    after = size - n - before
    return tf.pad(img, [[0, 0]] * (img.shape.rank - 2) + [[before, after], [before, after]])


def crop_center(img, size, *, precision="float32"):
    """Central ``size x size`` window of the last two axes of ``img``."""
    img = _like(img, check_precision(precision))
    start = (img.shape[-1] - size) // 2
    return img[..., start : start + size, start : start + size]


# --- object_big merge and extraction ----------------------------------------------------


def merge_weights(probe, *, probe_big=False, merge_weighting="support", precision="float32"):
    """Merge weights ``w``, shape (N, N) (see :func:`ptyparity.physics.merge_weights`):
    ``m``, or ``m |P|**2 / max |P|**2`` with ``|P|**2`` from ``re**2 + im**2``."""
    if merge_weighting not in MERGE_WEIGHTINGS:
        raise PtyparityError(f"merge_weighting must be one of {', '.join(MERGE_WEIGHTINGS)}; "
                             f"got {merge_weighting!r}")
    probe = _complex(probe, check_precision(precision))
    m = tf.constant(physics.support_mask(probe.shape[-1], probe_big=probe_big), _REAL[precision])
    if merge_weighting == "support":
        return m
    p2 = tf.math.real(probe) ** 2 + tf.math.imag(probe) ** 2
    return m * p2 / tf.reduce_max(p2)


def merge_patches(patches, rel, weights, max_offset, *, count_weights=None, precision="float32"):
    """Merge each group's C patches onto a padded canvas (``object_big``).

    ``patches`` (B, N, N, C) complex, offsets ``rel`` (B, C, 2) ``[x, y]`` from each
    group's centre, merge ``weights`` ``w`` (N, N) (:func:`merge_weights`) and
    ``count_weights`` ``w_cnt`` (N, N) of the denominator (default ``weights``) give
    the canvas (B, Pd, Pd), ``Pd = N + 2 * max_offset``:
    ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w_cnt), rel_c) + 1e-3)``.
    """
    patches = _complex(patches, check_precision(precision))
    rel = _real(rel, precision)
    _, n, _, c = patches.shape
    if rel.shape.rank != 3 or rel.shape[1] != c or rel.shape[2] != 2:
        raise PtyparityError(f"rel must have shape (B, {c}, 2), got {rel.shape}")
    size = n + 2 * int(max_offset)
    w = _real(weights, precision)  # (N, N)
    w_cnt = w if count_weights is None else _real(count_weights, precision)
    planes = tf.transpose(patches, [0, 3, 1, 2])  # (B, C, N, N)
    padded = pad_center(_scale_complex(planes, w), size, precision=precision)
    num = tf.reduce_sum(translate(padded, rel, precision=precision), axis=1)  # (B, Pd, Pd)
    # w_cnt broadcast over (B, C) by the shifts: (B, C, Pd, Pd) summed to (B, Pd, Pd)
    cnt = tf.reduce_sum(translate(pad_center(w_cnt, size, precision=precision), rel, precision=precision), axis=1)
    return _divide_complex(num, cnt + MERGE_EPS)


def extract_patches(canvas, rel, n, *, precision="float32"):
    """Each channel's patch cut back out of a merged canvas (B, Pd, Pd):
    ``crop_N(translate(canvas, -rel_c))``, shape (B, N, N, C)."""
    canvas = _like(canvas, check_precision(precision))
    rel = _real(rel, precision)
    shifted = translate(canvas[:, None], -rel, precision=precision)  # (B, C, Pd, Pd)
    return tf.transpose(crop_center(shifted, n, precision=precision), [0, 2, 3, 1])  # (B, N, N, C)


def _merge_weight_pair(probe, probe_big, merge_weighting, merge_normalization, precision):
    """``(w_num, w_cnt)`` of :func:`ptyparity.physics.merge_weight_pair`: in TF from the
    probe for "spec", the reference's probe-independent constants for "ptychopinn"."""
    if merge_normalization == "spec":
        w = merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting, precision=precision)
        return w, w
    n = int(probe.shape[-1])
    pair = physics.merge_weight_pair(np.zeros((n, n), np.complex64), probe_big=probe_big,
                                     merge_weighting=merge_weighting, merge_normalization=merge_normalization)
    return tuple(tf.constant(w, _REAL[precision]) for w in pair)


# --- far field ------------------------------------------------------------------------------


def illuminate(obj, probe, *, precision="float32"):
    """Exit wave ``P * o``: obj (B, N, N, C) times probe (N, N), complex."""
    return _complex(obj, check_precision(precision)) * _complex(probe, precision)[:, :, None]


def predicted_intensity(psi, *, precision="float32"):
    """Far-field intensity ``fftshift(|FFT2(psi)|**2) / N**2`` over the spatial axes.

    Parameters
    ----------
    psi : tensor, shape (..., N, N, C), complex
        Exit waves, channel-last.

    Returns
    -------
    intensity : tensor, shape (..., N, N, C), real
        From ``re**2 + im**2`` of the spectrum (no ``abs`` in the gradient path).
    """
    psi = _complex(psi, check_precision(precision))
    rank = psi.shape.rank
    n = psi.shape[-2]
    lead = list(range(rank - 3))
    planes = tf.transpose(psi, lead + [rank - 1, rank - 3, rank - 2])  # (..., C, N, N): fft2d wants the last two
    f = tf.signal.fft2d(planes)
    inten = tf.math.real(f) ** 2 + tf.math.imag(f) ** 2
    inten = tf.signal.fftshift(inten, axes=(-2, -1)) / float(n**2)
    return tf.transpose(inten, lead + [rank - 2, rank - 1, rank - 3])  # back to (..., N, N, C)


def diffract(psi, *, precision="float32"):
    """Measured-style amplitude ``sqrt(fftshift(|FFT2(psi)|**2) / N**2)``."""
    return tf.sqrt(predicted_intensity(psi, precision=precision))


def predicted_amplitude(intensity, *, precision="float32"):
    """``sqrt(I + 1e-12)``: an amplitude with a finite gradient at zero intensity."""
    return tf.sqrt(_real(intensity, check_precision(precision)) + AMPLITUDE_EPS)


# --- losses (means over all elements; 0-d tensors) ------------------------------------


def poisson_loss(intensity, target_amplitude, log_scale, *, precision="float32"):
    """``mean(lam - y log(lam + 1e-8))`` with ``lam = exp(log_scale)**2 * I_hat``,
    ``y = target_amplitude**2`` (count units). ``log_scale`` may be a variable."""
    lam = tf.exp(2.0 * _real(log_scale, check_precision(precision))) * _real(intensity, precision)
    y = tf.square(_real(target_amplitude, precision))
    return tf.reduce_mean(lam - y * tf.math.log(lam + LOG_EPS))


def poisson_saturated(target_amplitude, *, precision="float32"):
    """The Poisson loss with ``lam = y``: the data-dependent constant of the loss."""
    y = tf.square(_real(target_amplitude, check_precision(precision)))
    return tf.reduce_mean(y - y * tf.math.log(y + LOG_EPS))


def poisson_deviance(intensity, target_amplitude, log_scale, *, precision="float32"):
    """Poisson loss minus its value at ``lam = y`` (zero for a perfect model).

    Computed element by element as ``lam - y - y log((lam + 1e-8) / (y + 1e-8))``
    before the mean, which is the same quantity with less float32 cancellation.
    """
    lam = tf.exp(2.0 * _real(log_scale, check_precision(precision))) * _real(intensity, precision)
    y = tf.square(_real(target_amplitude, precision))
    return tf.reduce_mean(lam - y - y * tf.math.log((lam + LOG_EPS) / (y + LOG_EPS)))


def mae_loss(amplitude, target_amplitude, log_scale, *, precision="float32"):
    """Mean ``|exp(log_scale) * A_hat - s X|`` over all elements."""
    pred = tf.exp(_real(log_scale, check_precision(precision))) * _real(amplitude, precision)
    return tf.reduce_mean(tf.abs(pred - _real(target_amplitude, precision)))


# --- the physics half of the network, end to end ------------------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0, merge_weighting="support",
                    probe_big=False, log_scale=0.0, merge_normalization="spec", precision="float32"):
    """Everything after the network's heads: patches to predicted amplitudes.

    Parameters
    ----------
    amp, phase : tensor, shape (B, N, N, C)
        Activated head outputs (amplitude in [0, 1], phase in rad).
    probe : array or tensor, shape (N, N), complex
        The scaled, optionally masked probe ``P``.
    rel : tensor, shape (B, C, 2), optional
        Channel offsets from the group centre; required when ``object_big``.
    object_big : bool
    max_offset : int
    merge_weighting : {"support", "probe"}
    probe_big : bool
    log_scale : float, 0-d tensor or variable
        ``exp(log_scale)`` turns model amplitudes into count units; a variable keeps
        its gradient path.
    merge_normalization : {"spec", "ptychopinn"}
        See :func:`ptyparity.physics.merge_weight_pair`.
    precision : {"float32", "float64"}

    Returns
    -------
    taps : dict of tensor
        ``object_patches``, ``object_canvas`` (object_big only), ``object_extracted``,
        ``exit_wave``, ``pred_intensity``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    amp, phase = _real(amp, check_precision(precision)), _real(phase, precision)
    if amp.shape.rank != 4 or amp.shape != phase.shape:
        raise PtyparityError(f"amp and phase must both have shape (B, N, N, C), got {amp.shape} and {phase.shape}")
    if object_big and rel is None:
        raise PtyparityError("object_big needs rel offsets of shape (B, C, 2)")
    obj = tf.complex(amp * tf.cos(phase), amp * tf.sin(phase))  # (B, N, N, C)
    taps = {"object_patches": obj}
    if object_big:
        w, w_cnt = _merge_weight_pair(probe, probe_big, merge_weighting, merge_normalization, precision)
        canvas = merge_patches(obj, rel, w, max_offset, count_weights=w_cnt, precision=precision)  # (B, Pd, Pd)
        taps["object_canvas"] = canvas
        extracted = extract_patches(canvas, rel, obj.shape[1], precision=precision)  # (B, N, N, C)
    else:
        extracted = obj
    taps["object_extracted"] = extracted
    psi = illuminate(extracted, probe, precision=precision)
    taps["exit_wave"] = psi
    inten = predicted_intensity(psi, precision=precision)
    taps["pred_intensity"] = inten
    taps["pred_amplitude"] = predicted_amplitude(inten, precision=precision)
    taps["pred_amplitude_counts"] = tf.exp(_real(log_scale, precision)) * taps["pred_amplitude"]
    return taps
