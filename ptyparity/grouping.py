"""Seeded neighbour grouping of scan positions (SPEC §2).

Computed once in NumPy and fed unchanged to whichever backend trains or infers, so
both backends see identical groups in identical order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ptyparity.errors import PtyparityError

MAX_REDRAWS = 1000


@dataclass(frozen=True)
class Groups:
    """Grouped scan positions.

    Attributes
    ----------
    indices : ndarray, shape (B, C), int64
        Scan indices of each group's channels; channel 0 is the seed.
    pos : ndarray, shape (B, C, 2), float64
        Absolute positions ``[x, y]`` in object pixels (patch centres).
    centre : ndarray, shape (B, 2), float64
        ``g = mean_c pos``.
    rel : ndarray, shape (B, C, 2), float64
        ``pos - g`` (no sign flips).
    """

    indices: np.ndarray
    pos: np.ndarray
    centre: np.ndarray
    rel: np.ndarray

    def __len__(self):
        return len(self.indices)

    def subset(self, which):
        """The groups selected by an index array or slice, in that order."""
        return Groups(self.indices[which], self.pos[which], self.centre[which], self.rel[which])


def scan_step(positions):
    """Median nearest-neighbour distance of the scan positions, pixels."""
    from scipy.spatial import cKDTree

    positions = np.asarray(positions, np.float64)
    if len(positions) < 2:
        raise PtyparityError("need at least 2 scan positions to estimate the scan step")
    dist, _ = cKDTree(positions).query(positions, k=2)
    return float(np.median(dist[:, 1]))


def default_max_offset(positions):
    """``ceil(1.5 * scan_step)`` from the positions' median nearest-neighbour distance."""
    return int(math.ceil(1.5 * scan_step(positions) - 1e-9))


def _make_groups(positions, indices):
    pos = positions[indices]
    centre = pos.mean(axis=1)
    return Groups(indices=indices, pos=pos, centre=centre, rel=pos - centre[:, None, :])


def group_positions(positions, *, gridsize, n_groups=None, neighbor_count=7, max_offset=None,
                    seed=0, seeds=None, enforce_max_offset=True):
    """Form groups of ``C = gridsize**2`` neighbouring scan positions.

    Parameters
    ----------
    positions : ndarray, shape (M, 2)
        Scan positions ``[x, y]``, pixels.
    gridsize : int
        Groups have ``C = gridsize**2`` channels.
    n_groups : int, optional
        Number of groups. Seeds are drawn without replacement while
        ``n_groups <= M``, with replacement beyond. Ignored when ``seeds`` is given.
    neighbor_count : int
        Partners are drawn without replacement from the seed's ``neighbor_count``
        nearest other positions; must be ``>= C - 1``.
    max_offset : int, optional
        Groups whose per-component ``max |rel|`` exceeds this are redrawn.
        Default ``ceil(1.5 * scan_step)``.
    seed : int
        Seed of the NumPy generator; the same seed gives the same groups.
    seeds : ndarray of int, optional
        Explicit seed positions (inference: every scan position seeds one group).
    enforce_max_offset : bool
        Redraw groups beyond ``max_offset`` (SPEC §2). False keeps the first draw, as
        PtychoPINN does (``ModelConfig.group_offsets = "unlimited"``).

    Returns
    -------
    groups : Groups
    """
    positions = np.asarray(positions, np.float64)
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise PtyparityError(f"positions must have shape (M, 2), got {positions.shape}")
    if gridsize < 1:
        raise PtyparityError(f"gridsize must be >= 1, got {gridsize}")
    c = gridsize**2
    m = len(positions)
    if neighbor_count < c - 1:
        raise PtyparityError(
            f"neighbor_count={neighbor_count} is too small for gridsize={gridsize}: each group needs "
            f"{c - 1} partners; use --neighbor-count >= {c - 1}")
    if c > 1 and neighbor_count > m - 1:
        raise PtyparityError(
            f"neighbor_count={neighbor_count} needs at least {neighbor_count + 1} scan positions, "
            f"the data has {m}; lower --neighbor-count")
    if max_offset is None:
        max_offset = default_max_offset(positions) if m > 1 else 0
    rng = np.random.default_rng(seed)
    if seeds is None:
        if n_groups is None or n_groups < 1:
            raise PtyparityError(f"n_groups must be >= 1, got {n_groups}")
        seeds = rng.choice(m, size=n_groups, replace=n_groups > m)
    seeds = np.asarray(seeds, np.int64)
    if c == 1:
        return _make_groups(positions, seeds[:, None])

    from scipy.spatial import cKDTree

    # k + 1 because each position is its own nearest neighbour.
    _, nbrs = cKDTree(positions).query(positions, k=neighbor_count + 1)
    candidates = nbrs[:, 1:]  # (M, neighbor_count)

    def draw(which):
        # A random permutation of each row's candidates; the first C-1 are the partners.
        keys = rng.random((len(which), neighbor_count))
        order = np.argsort(keys, axis=1)[:, : c - 1]
        partners = np.take_along_axis(candidates[seeds[which]], order, axis=1)
        return np.concatenate([seeds[which, None], partners], axis=1)

    indices = draw(np.arange(len(seeds)))
    if not enforce_max_offset:
        return _make_groups(positions, indices)
    for _ in range(MAX_REDRAWS):
        pos = positions[indices]
        rel = pos - pos.mean(axis=1, keepdims=True)
        bad = np.flatnonzero(np.abs(rel).max(axis=(1, 2)) > max_offset + 1e-9)
        if bad.size == 0:
            return _make_groups(positions, indices)
        indices[bad] = draw(bad)
    raise PtyparityError(
        f"{bad.size} group(s) still exceed max_offset={max_offset} px after {MAX_REDRAWS} redraws; "
        f"raise --max-offset or lower --neighbor-count")


def inference_groups(positions, *, gridsize, neighbor_count=7, max_offset=None, seed=0, enforce_max_offset=True):
    """Groups for inference: every scan position seeds exactly one group.

    Partners are drawn with ``seed + 1`` so that inference never reuses the training
    draw; the result is computed once and fed to either backend.
    """
    m = len(np.asarray(positions))
    return group_positions(positions, gridsize=gridsize, neighbor_count=neighbor_count,
                           max_offset=max_offset, seed=seed + 1, seeds=np.arange(m),
                           enforce_max_offset=enforce_max_offset)
