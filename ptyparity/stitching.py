"""Cutting patches out of an object and stitching predicted patches back (SPEC §3).

A position is a patch centre: for integer ``pos`` the patch covers object pixels
``pos - N/2 … pos + N/2 - 1``. Fractional positions are handled with the same
bilinear :func:`ptyparity.physics.translate` the physics uses. The two functions
are a forward/adjoint pair; both are backend independent.
"""

from __future__ import annotations

import math

import numpy as np

from ptyparity.physics import _out_dtype, translate


def extract_object_patches(obj, pos, n):
    """Cut ``N x N`` patches centred at ``pos`` out of an object, zero outside it.

    Parameters
    ----------
    obj : ndarray, shape (H, W), complex or real
        The object in object-pixel coordinates.
    pos : ndarray, shape (..., 2)
        Patch centres ``[x, y]``, pixels.
    n : int
        Patch size N.

    Returns
    -------
    patches : ndarray, shape (..., N, N)
        ``patch[i, j] = obj(pos_y - N/2 + i, pos_x - N/2 + j)`` (bilinear).
    """
    obj = np.asarray(obj)
    pos = np.asarray(pos, np.float64)
    lead = pos.shape[:-1]
    flat = pos.reshape(-1, 2)
    margin = n + 2
    padded = np.pad(obj, margin)
    base = np.floor(flat).astype(np.int64)
    frac = flat - base
    # An (N+1)-wide window starting at floor(pos) - N/2, shifted left by the fraction.
    ar = np.arange(n + 1)
    rows = base[:, 1, None] - n // 2 + margin + ar  # (K, N+1)
    cols = base[:, 0, None] - n // 2 + margin + ar
    windows = padded[rows[:, :, None], cols[:, None, :]]
    if frac.any():
        patches = translate(windows, -frac)[:, :n, :n]
    else:  # integer centres (a raster scan): a shift by 0 is the window itself, exactly, and
        # skipping its (N+1)^2 matrix products is most of the cost at N=64 (38 s for 13k patches)
        patches = windows[:, :n, :n].astype(_out_dtype(windows))
    return patches.reshape(lead + (n, n))


def canvas_shape_for(pos, n):
    """Canvas extent without ground truth: ``[0, ceil(max pos) + N/2)`` per axis, (H, W)."""
    pos = np.asarray(pos, np.float64).reshape(-1, 2)
    return (int(math.ceil(pos[:, 1].max())) + n // 2, int(math.ceil(pos[:, 0].max())) + n // 2)


def stitch_patches(patches, pos, *, crop=None, canvas_shape=None):
    """Average the central crops of predicted patches onto an object-sized canvas.

    Parameters
    ----------
    patches : ndarray, shape (B, N, N, C), complex
        Predicted object patches, channel-last (``object_extracted`` when
        ``object_big``, else ``object_patches``).
    pos : ndarray, shape (B, C, 2)
        Absolute centre ``[x, y]`` of each (group, channel) patch, pixels.
    crop : int, optional
        Side of the central window that is kept (default N/2, the support).
    canvas_shape : tuple of int, optional
        ``(H, W)`` of the canvas, e.g. ``objectGuess.shape``; default from
        :func:`canvas_shape_for`.

    Returns
    -------
    canvas : ndarray, shape (H, W), complex64
        Overlap-weighted average; zero where nothing was stitched.
    count : ndarray, shape (H, W), float32
        Summed (bilinear) overlap weights; metrics use ``count > 0.5``.
    """
    patches = np.asarray(patches)
    pos = np.asarray(pos, np.float64)
    if patches.ndim != 4:
        raise ValueError(f"patches must have shape (B, N, N, C), got {patches.shape}")
    b, n, _, c = patches.shape
    if pos.shape != (b, c, 2):
        raise ValueError(f"pos must have shape {(b, c, 2)}, got {pos.shape}")
    crop = n // 2 if crop is None else int(crop)
    if not 1 <= crop <= n:
        raise ValueError(f"crop must be in [1, {n}], got {crop}")
    if canvas_shape is None:
        canvas_shape = canvas_shape_for(pos, n)
    h, w = canvas_shape

    planes = np.moveaxis(patches, -1, 1).reshape(b * c, n, n)
    flat = pos.reshape(b * c, 2)
    start = n // 2 - crop // 2
    tiles = np.zeros((b * c, crop + 1, crop + 1), np.complex128)
    tiles[:, :crop, :crop] = planes[:, start : start + crop, start : start + crop]
    ones = np.zeros((b * c, crop + 1, crop + 1))
    ones[:, :crop, :crop] = 1.0
    base = np.floor(flat).astype(np.int64)
    frac = flat - base
    # The crop's first pixel sits at pos - crop/2; the fraction moves it right/down.
    tiles = _shift_right_down(tiles, frac)
    weights = _shift_right_down(ones, frac)

    margin = crop + 2
    hp, wp = h + 2 * margin, w + 2 * margin
    top = base[:, 1] - crop // 2 + margin
    left = base[:, 0] - crop // 2 + margin
    # A tile that does not fit the padded canvas lies wholly in its margin (margin > crop + 1),
    # which is cut off below: it is skipped.
    inside = (top >= 0) & (left >= 0) & (top + crop + 1 <= hp) & (left + crop + 1 <= wp)
    # One slice-add per tile: the tiles are small and contiguous, so this beats np.add.at
    # several times over.
    num = np.zeros((hp, wp), np.complex128)
    cnt = np.zeros((hp, wp))
    side = crop + 1
    for k, r, q in zip(np.flatnonzero(inside).tolist(), top[inside].tolist(), left[inside].tolist()):
        num[r : r + side, q : q + side] += tiles[k]
        cnt[r : r + side, q : q + side] += weights[k]
    num = num[margin : margin + h, margin : margin + w]
    cnt = cnt[margin : margin + h, margin : margin + w]
    canvas = np.where(cnt > 1e-6, num / np.maximum(cnt, 1e-6), 0)
    return canvas.astype(np.complex64), cnt.astype(np.float32)


_CHUNK = 256  # tiles per pass of the bilinear shift


def _shift_right_down(tiles, frac):
    """``translate(tiles, frac)`` for fractions in [0, 1), computed as the two-tap bilinear sum.

    The same terms as :func:`ptyparity.physics.translate`'s tent matrices (whose only
    non-zero entries are ``1 - t`` and ``t`` for such shifts) without the dense
    ``(K, n, n)`` matrix products, which made stitching ~8k patches/s at N=64; rows whose
    fraction is zero (integer positions) are left as they are, exactly as the identity
    tent matrix leaves them. Content shifted past the last row/column is dropped (the
    tiles carry one zero row and column for it).

    Parameters
    ----------
    tiles : ndarray, shape (K, H, W), float64 or complex128
    frac : ndarray, shape (K, 2)
        ``[t_x, t_y]`` in [0, 1).
    """
    moving = np.flatnonzero(np.any(frac != 0, axis=1))
    if moving.size == 0:
        return tiles
    out = tiles.copy()
    for lo in range(0, moving.size, _CHUNK):  # a chunk stays in cache through the passes over it
        rows = moving[lo : lo + _CHUNK]
        part = tiles[rows]
        t_x = frac[rows, 0, None, None]
        t_y = frac[rows, 1, None, None]
        across = part * (1 - t_x)
        across[:, :, 1:] += part[:, :, :-1] * t_x
        down = across * (1 - t_y)
        down[:, 1:, :] += across[:, :-1, :] * t_y
        out[rows] = down
    return out
