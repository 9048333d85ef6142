"""Cutting patches out of an object and stitching predicted patches back (SPEC §3).

A position is a patch centre: for integer ``pos`` the patch covers object pixels
``pos - N/2 … pos + N/2 - 1``. Fractional positions are handled with the same
bilinear :func:`ptyparity.physics.translate` the physics uses. The two functions
are a forward/adjoint pair; both are backend independent.
"""

from __future__ import annotations

import math

import numpy as np

from ptyparity.physics import translate


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
    patches = translate(windows, -frac)[:, :n, :n]
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
    ones = np.zeros((crop + 1, crop + 1))
    ones[:crop, :crop] = 1.0
    base = np.floor(flat).astype(np.int64)
    frac = flat - base
    # The crop's first pixel sits at pos - crop/2; the fraction moves it right/down.
    tiles = translate(tiles, frac)
    weights = translate(np.broadcast_to(ones, tiles.shape), frac)

    margin = crop + 2
    num = np.zeros((h + 2 * margin, w + 2 * margin), np.complex128)
    cnt = np.zeros((h + 2 * margin, w + 2 * margin))
    ar = np.arange(crop + 1)
    rows = np.clip(base[:, 1, None] - crop // 2 + margin + ar, 0, h + 2 * margin - 1)
    cols = np.clip(base[:, 0, None] - crop // 2 + margin + ar, 0, w + 2 * margin - 1)
    np.add.at(num, (rows[:, :, None], cols[:, None, :]), tiles)
    np.add.at(cnt, (rows[:, :, None], cols[:, None, :]), weights)
    num = num[margin : margin + h, margin : margin + w]
    cnt = cnt[margin : margin + h, margin : margin + w]
    canvas = np.where(cnt > 1e-6, num / np.maximum(cnt, 1e-6), 0)
    return canvas.astype(np.complex64), cnt.astype(np.float32)
