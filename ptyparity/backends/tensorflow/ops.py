"""Differentiable TensorFlow copies of :mod:`ptyparity.physics`.

Same function names, arguments and canonical layouts as the NumPy reference:
group arrays are channel-last ``(B, N, N, C)``, :func:`translate` acts on the last
two axes ``(..., H, W)``, shifts are ``[x, y]`` in ``(..., 2)``. Everything computes
in float32 / complex64, works eagerly and inside ``tf.function``, and accepts NumPy
arrays or tensors (NumPy float64/complex128 inputs are narrowed to single precision).
Inside :func:`computing_in` ``("float64")`` everything computes in float64 /
complex128 instead (the parity-verification precision, ``TrainConfig.precision``).

Complex arithmetic is kept to what has clean gradients: real matrices act on the
real and imaginary parts separately, and intensities come from ``re**2 + im**2``.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from ptyparity import physics
from ptyparity.physics import AMPLITUDE_EPS, LOG_EPS, MERGE_EPS, MERGE_WEIGHTINGS

__all__ = [
    "to_backend", "to_numpy", "tent_matrix", "translate", "pad_center", "crop_center",
    "merge_weights", "merge_patches", "extract_patches", "illuminate", "predicted_intensity",
    "diffract", "predicted_amplitude", "poisson_loss", "poisson_saturated", "poisson_deviance",
    "mae_loss", "forward_physics",
]


# --- conversion -----------------------------------------------------------------------


PRECISIONS = ("float32", "float64")
_REAL = {"float32": tf.float32, "float64": tf.float64}
_COMPLEX = {"float32": tf.complex64, "float64": tf.complex128}
_NARROW = {tf.float64: tf.float32, tf.complex128: tf.complex64}
_WIDEN = {tf.float16: tf.float64, tf.float32: tf.float64, tf.complex64: tf.complex128}
_NUMPY_FLOATS = tuple(np.dtype(t) for t in (np.float16, np.float32, np.float64, np.complex64, np.complex128))
_current = ["float32"]  # the precision the ops compute in; see computing_in


def _check_precision(precision):
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")


@contextlib.contextmanager
def computing_in(precision):
    """Within the block (and so in any graph traced within it) the ops compute in
    ``precision``: "float32" (float32 / complex64, the default) or "float64"
    (float64 / complex128, the parity-verification mode)."""
    _check_precision(precision)
    _current.append(precision)
    try:
        yield
    finally:
        _current.pop()


def current_precision():
    """The precision the ops compute in now ("float32" unless inside :func:`computing_in`)."""
    return _current[-1]


def _rdt():
    return _REAL[_current[-1]]


def _cdt():
    return _COMPLEX[_current[-1]]


def to_backend(array, precision=None):
    """NumPy array (or tensor) -> tf tensor in ``precision`` (default: the current one,
    see :func:`computing_in`).

    "float32": float64 -> float32, complex128 -> complex64 (float32 / complex64 kept).
    "float64": float32 -> float64, complex64 -> complex128 (double precision kept).
    Integer and boolean arrays keep their dtype. Keras/TF variables are read as tensors.
    """
    precision = current_precision() if precision is None else precision
    _check_precision(precision)
    table = _NARROW if precision == "float32" else _WIDEN
    if isinstance(array, tf.Tensor):
        tensor = array
    elif isinstance(array, tf.Variable) or hasattr(array, "__tf_tensor__"):
        tensor = tf.convert_to_tensor(array)
    else:
        arr = np.asarray(array)
        target = table.get(tf.as_dtype(arr.dtype)) if arr.dtype in _NUMPY_FLOATS else None
        if target is not None:
            arr = arr.astype(target.as_numpy_dtype)
        return tf.convert_to_tensor(arr)
    target = table.get(tensor.dtype)
    return tensor if target is None else tf.cast(tensor, target)


def to_numpy(tensor):
    """tf tensor or variable (or anything array-like) -> NumPy array."""
    if hasattr(tensor, "numpy"):
        return np.asarray(tensor.numpy())
    return np.asarray(tensor)


def _real(x):
    """``x`` as a float32 tensor (float64 under ``computing_in("float64")``)."""
    return tf.cast(to_backend(x), _rdt())


def _complex(x):
    """``x`` as a complex64 tensor (complex128 under ``computing_in("float64")``; real
    inputs get a zero imaginary part)."""
    x = to_backend(x)
    if x.dtype.is_complex:
        return tf.cast(x, _cdt())
    return tf.complex(tf.cast(x, _rdt()), tf.zeros_like(x, _rdt()))


def _scale_complex(z, w):
    """Complex ``z`` times real ``w`` (broadcast), without a complex cast of ``w``."""
    return tf.complex(tf.math.real(z) * w, tf.math.imag(z) * w)


def _divide_complex(z, d):
    """Complex ``z`` divided by real ``d`` (broadcast)."""
    return tf.complex(tf.math.real(z) / d, tf.math.imag(z) / d)


def _scalar(value):
    """A python float, 0-d tensor or (Keras) variable as a float32 0-d tensor, keeping
    the gradient path to a variable."""
    return tf.cast(to_backend(value), _rdt())


# --- translation ----------------------------------------------------------------------


def tent_matrix(n, shift):
    """Bilinear-interpolation matrix for a shift along one axis.

    Parameters
    ----------
    n : int
        Length of the axis.
    shift : float or tensor, shape (...)
        Shift in pixels; content moves by ``+shift``.

    Returns
    -------
    tent : tensor, shape (..., n, n), float32
        ``T[i, j] = max(0, 1 - |i - shift - j|)``. Built in float64 and rounded once,
        so the entries equal the reference's to float32 precision for any canvas size.
    """
    shift = tf.cast(to_backend(shift), tf.float64)[..., None, None]
    i = tf.range(n, dtype=tf.float64)[:, None]
    j = tf.range(n, dtype=tf.float64)[None, :]
    return tf.cast(tf.maximum(1.0 - tf.abs(i - shift - j), 0.0), _rdt())


def _broadcast_batch(x, static_batch, dynamic_batch, *tail):
    """``x`` broadcast to shape ``batch + tail``, keeping every statically known dim."""
    if static_batch.is_fully_defined():
        return tf.broadcast_to(x, static_batch.as_list() + list(tail))
    out = tf.broadcast_to(x, tf.concat([dynamic_batch, tf.constant(tail, dynamic_batch.dtype)], axis=0))
    out.set_shape(static_batch.concatenate(tail))
    return out


def translate(img, shift):
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
    img = to_backend(img)
    shift = _real(shift)
    if img.shape.rank is not None and img.shape.rank < 2:
        raise ValueError(f"img must have at least 2 dimensions (..., H, W), got shape {img.shape}")
    if shift.shape.rank is not None and shift.shape[-1] != 2:
        raise ValueError(f"shift must have shape (..., 2) as [x, y], got {shift.shape}")
    h, w = img.shape[-2], img.shape[-1]
    # Every operand is broadcast to the full batch shape first: TF 2.21's oneDNN
    # BatchMatMulV2 corrupts the heap when it broadcasts a (B, 1, H, W) batch
    # against a plain (H, W) matrix (the gridsize-1 merge), so it never has to.
    static = tf.broadcast_static_shape(img.shape[:-2], shift.shape[:-1])
    dynamic = tf.broadcast_dynamic_shape(tf.shape(img)[:-2], tf.shape(shift)[:-1])
    img = _broadcast_batch(img, static, dynamic, h, w)  # (..., H, W)
    t_y = _broadcast_batch(tent_matrix(h, shift[..., 1]), static, dynamic, h, h)  # (..., H, H)
    t_x = _broadcast_batch(tent_matrix(w, shift[..., 0]), static, dynamic, w, w)  # (..., W, W)

    def apply(plane):  # T_y @ plane @ T_x^T
        return tf.linalg.matmul(tf.linalg.matmul(t_y, plane), t_x, transpose_b=True)

    if img.dtype.is_complex:
        img = tf.cast(img, _cdt())
        return tf.complex(apply(tf.math.real(img)), apply(tf.math.imag(img)))
    return apply(tf.cast(img, _rdt()))


def pad_center(img, size):
    """Zero-pad the last two axes of ``img`` symmetrically to ``size x size``."""
    img = to_backend(img)
    n = img.shape[-1]
    before = (size - n) // 2
    after = size - n - before
    return tf.pad(img, [[0, 0]] * (img.shape.rank - 2) + [[before, after], [before, after]])


def crop_center(img, size):
    """Central ``size x size`` window of the last two axes of ``img``."""
    img = to_backend(img)
    n = img.shape[-1]
    start = (n - size) // 2
    return img[..., start : start + size, start : start + size]


# --- object_big merge and extraction ----------------------------------------------------


def merge_weights(probe, *, probe_big=False, merge_weighting="support"):
    """Merge weights ``w`` (see :func:`ptyparity.physics.merge_weights`), shape (N, N).

    A NumPy probe gives the reference's constant exactly; a tensor probe is handled
    in TF (``|P|**2`` from ``re**2 + im**2``).
    """
    if merge_weighting not in MERGE_WEIGHTINGS:
        raise ValueError(f"merge_weighting must be one of {MERGE_WEIGHTINGS}, got {merge_weighting!r}")
    if not tf.is_tensor(probe):
        return tf.constant(physics.merge_weights(np.asarray(probe), probe_big=probe_big,
                                                 merge_weighting=merge_weighting))
    n = probe.shape[-1]
    m = tf.constant(physics.support_mask(n, probe_big=probe_big))
    if merge_weighting == "support":
        return m
    probe = _complex(probe)
    p2 = tf.math.real(probe) ** 2 + tf.math.imag(probe) ** 2
    return m * p2 / tf.reduce_max(p2)


def merge_patches(patches, rel, weights, max_offset):
    """Merge each group's C patches onto a padded canvas (``object_big``).

    Parameters
    ----------
    patches : tensor, shape (B, N, N, C), complex
    rel : tensor, shape (B, C, 2)
        Offsets ``[x, y]`` of each channel from its group centre, pixels.
    weights : tensor, shape (N, N)
        Merge weights (:func:`merge_weights`).
    max_offset : int
        Canvas margin: the canvas side is ``Pd = N + 2 * max_offset``.

    Returns
    -------
    canvas : tensor, shape (B, Pd, Pd), complex64
        ``sum_c translate(pad(w o_c), rel_c) / (sum_c translate(pad(w), rel_c) + 1e-3)``.
    """
    patches = _complex(patches)
    rel = _real(rel)
    _, n, _, c = patches.shape
    if rel.shape.rank != 3 or rel.shape[1] != c or rel.shape[2] != 2:
        raise ValueError(f"rel must have shape (B, {c}, 2), got {rel.shape}")
    size = n + 2 * int(max_offset)
    w = _real(weights)  # (N, N)
    planes = tf.transpose(patches, [0, 3, 1, 2])  # (B, C, N, N)
    num = tf.reduce_sum(translate(pad_center(_scale_complex(planes, w), size), rel), axis=1)  # (B, Pd, Pd)
    cnt = tf.reduce_sum(translate(pad_center(w, size), rel), axis=1)  # (B, Pd, Pd), w broadcast over (B, C)
    return _divide_complex(num, cnt + MERGE_EPS)


def extract_patches(canvas, rel, n):
    """Cut each channel's patch back out of a merged canvas.

    Parameters
    ----------
    canvas : tensor, shape (B, Pd, Pd), complex
    rel : tensor, shape (B, C, 2)
    n : int
        Patch size N.

    Returns
    -------
    patches : tensor, shape (B, N, N, C)
        ``crop_N(translate(canvas, -rel_c))`` for each channel.
    """
    canvas = to_backend(canvas)
    rel = _real(rel)
    shifted = translate(canvas[:, None], -rel)  # (B, C, Pd, Pd)
    return tf.transpose(crop_center(shifted, n), [0, 2, 3, 1])  # (B, N, N, C)


# --- far field ------------------------------------------------------------------------------


def illuminate(obj, probe):
    """Exit wave ``P * o``: obj (B, N, N, C) times probe (N, N), complex64."""
    return _complex(obj) * _complex(probe)[:, :, None]


def predicted_intensity(psi):
    """Far-field intensity ``fftshift(|FFT2(psi)|**2) / N**2`` over the spatial axes.

    Parameters
    ----------
    psi : tensor, shape (..., N, N, C), complex
        Exit waves, channel-last.

    Returns
    -------
    intensity : tensor, shape (..., N, N, C), float32
        From ``re**2 + im**2`` of the spectrum (no ``abs`` in the gradient path).
    """
    psi = _complex(psi)
    rank = psi.shape.rank
    n = psi.shape[-2]
    lead = list(range(rank - 3))
    planes = tf.transpose(psi, lead + [rank - 1, rank - 3, rank - 2])  # (..., C, N, N): fft2d wants the last two
    f = tf.signal.fft2d(planes)
    inten = tf.math.real(f) ** 2 + tf.math.imag(f) ** 2
    inten = tf.signal.fftshift(inten, axes=(-2, -1)) / float(n**2)
    return tf.transpose(inten, lead + [rank - 2, rank - 1, rank - 3])  # back to (..., N, N, C)


def diffract(psi):
    """Measured-style amplitude ``sqrt(fftshift(|FFT2(psi)|**2) / N**2)``."""
    return tf.sqrt(predicted_intensity(psi))


def predicted_amplitude(intensity):
    """``sqrt(I + 1e-12)``: an amplitude with a finite gradient at zero intensity."""
    return tf.sqrt(_real(intensity) + AMPLITUDE_EPS)


# --- losses (means over all elements; 0-d float32 tensors) ----------------------------


def poisson_loss(intensity, target_amplitude, log_scale):
    """``mean(lam - y log(lam + 1e-8))`` with ``lam = exp(log_scale)**2 * I_hat``,
    ``y = target_amplitude**2`` (count units). ``log_scale`` may be a variable."""
    lam = tf.exp(2.0 * _scalar(log_scale)) * _real(intensity)
    y = tf.square(_real(target_amplitude))
    return tf.reduce_mean(lam - y * tf.math.log(lam + LOG_EPS))


def poisson_saturated(target_amplitude):
    """The Poisson loss with ``lam = y``: the data-dependent constant of the loss."""
    y = tf.square(_real(target_amplitude))
    return tf.reduce_mean(y - y * tf.math.log(y + LOG_EPS))


def poisson_deviance(intensity, target_amplitude, log_scale):
    """Poisson loss minus its value at ``lam = y`` (zero for a perfect model).

    Computed element by element as ``lam - y - y log((lam + 1e-8) / (y + 1e-8))``
    before the mean, which is the same quantity with less float32 cancellation.
    """
    lam = tf.exp(2.0 * _scalar(log_scale)) * _real(intensity)
    y = tf.square(_real(target_amplitude))
    return tf.reduce_mean(lam - y - y * tf.math.log((lam + LOG_EPS) / (y + LOG_EPS)))


def mae_loss(amplitude, target_amplitude, log_scale):
    """Mean ``|exp(log_scale) * A_hat - s X|`` over all elements."""
    pred = tf.exp(_scalar(log_scale)) * _real(amplitude)
    return tf.reduce_mean(tf.abs(pred - _real(target_amplitude)))


# --- the physics half of the network, end to end ------------------------------------------


def forward_physics(amp, phase, probe, *, rel=None, object_big=False, max_offset=0,
                    merge_weighting="support", probe_big=False, log_scale=0.0):
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

    Returns
    -------
    taps : dict of tensor
        ``object_patches``, ``object_canvas`` (object_big only), ``object_extracted``,
        ``exit_wave``, ``pred_intensity``, ``pred_amplitude``, ``pred_amplitude_counts``.
    """
    if object_big and rel is None:
        raise ValueError("object_big needs rel offsets of shape (B, C, 2)")
    amp = _real(amp)
    phase = _real(phase)
    obj = tf.complex(amp * tf.cos(phase), amp * tf.sin(phase))  # (B, N, N, C)
    taps = {"object_patches": obj}
    if object_big:
        w = merge_weights(probe, probe_big=probe_big, merge_weighting=merge_weighting)
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
    taps["pred_amplitude_counts"] = tf.exp(_scalar(log_scale)) * taps["pred_amplitude"]
    return taps

