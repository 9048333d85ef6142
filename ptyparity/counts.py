"""Whether a raw dataset can hold photon counts (:func:`count_sanity`).

The Poisson loss assumes ``diff3d**2`` are raw detector counts. A normalised, scaled or
flat-fielded export, or amplitudes and intensities swapped, train to nonsense without an
error, so ``ptyparity train`` refuses such data (``--force`` trains anyway) and
``ptyparity inspect`` shows why. :mod:`ptyparity.data` re-exports :func:`count_sanity`
and :class:`DataWarning`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# What raw photon counts look like, and the tolerances the checks use.
MIN_MEAN_PHOTONS = 1.0  # below one photon per pattern there is nothing to count
# A whole count squared back from a float32 amplitude is off by at most ~1 ulp relative
# (sqrt rounds by eps/2, squaring doubles it); the 4x and the absolute 0.01 are margin.
COUNT_ABS_TOL, COUNT_REL_TOL = 0.01, 4 * float(np.finfo(np.float32).eps)
COUNT_JUDGE_TOL = 0.25  # values whose tolerance exceeds this cannot tell whole from fractional
MAX_OFF_INTEGER = 0.1  # share of off-integer intensities tolerated (a few repaired pixels)
# Of true sqrt(Poisson) amplitudes >= sqrt(2) at most ~25% are whole (the perfect squares
# 4, 9, ...); counts stored as amplitude are all whole.
MIN_WHOLE_AMPLITUDES = 0.9
MIN_JUDGED = 100  # fewer judged values say nothing either way
# Patterns per pass. The checks build a dozen float64 temporaries of their input; on the
# whole stack (13 MB of float32 at N=32, 3,249 patterns) those cost 0.1 s on a settled heap
# and 0.6-0.9 s in a training process (fresh pages), on 64 patterns ~0.05 s either way.
CHUNK_PATTERNS = 64


@dataclass(frozen=True)
class DataWarning:
    """Why a dataset cannot be photon counts: ``code`` (stable, for scripts and tags) and a one-line
    ``message`` naming the likely cause and the fix."""

    code: str
    message: str


def _chunks(diff3d):
    """``diff3d`` (M, N, N) as float64 blocks of :data:`CHUNK_PATTERNS` patterns."""
    for start in range(0, diff3d.shape[0], CHUNK_PATTERNS):
        yield diff3d[start : start + CHUNK_PATTERNS].astype(np.float64)


def _off_integer_fraction(diff3d, power):
    """Share of the non-zero ``diff3d**power`` (power 2: intensities, 4: their squares) that are
    no whole number; None when too few values can be told."""
    judged = off = 0
    for amp in _chunks(diff3d):
        values = amp**2
        if power == 4:
            values **= 2
        values = values[values > 0]
        tol = COUNT_ABS_TOL + COUNT_REL_TOL * values
        telling = tol <= COUNT_JUDGE_TOL
        v, t = values[telling], tol[telling]
        nearest = np.round(v)
        judged += v.size
        off += int(np.count_nonzero((np.abs(v - nearest) > t) | (nearest == 0)))  # 0 < v < 1 is never a count
    return None if judged < MIN_JUDGED else off / judged


def _whole_amplitude_fraction(diff3d):
    """Share of the amplitudes >= 1.2 (true counts >= 2) that are whole numbers; None when too few."""
    big = whole = 0
    for amp in _chunks(diff3d):
        values = amp[amp >= 1.2]
        big += values.size
        whole += int(np.count_nonzero(np.abs(values - np.round(values)) <= COUNT_ABS_TOL + COUNT_REL_TOL * values))
    return None if big < MIN_JUDGED else whole / big


def count_sanity(data):
    """The reasons ``data`` cannot hold photon counts (empty when it can).

    ``diff3d`` is sqrt(counts), so ``diff3d**2`` must be whole numbers averaging at least
    :data:`MIN_MEAN_PHOTONS` per pattern; simulated data (Poisson counts) passes. Codes:
    ``zero_patterns``, ``low_photons`` (a normalised export), ``amplitude_read_as_intensity``,
    ``intensity_read_as_amplitude``, ``non_integer``. The whole-number checks are skipped when
    ``low_photons`` fires: values far below one photon are no counts at all.

    Parameters
    ----------
    data : RawData

    Returns
    -------
    warnings : list of DataWarning
    """
    per_pattern = np.concatenate([(amp**2).sum(axis=(1, 2)) for amp in _chunks(data.diff3d)])
    out = []
    zero = int(np.count_nonzero(per_pattern == 0))
    if zero:
        out.append(DataWarning("zero_patterns", f"{zero} of {data.n_patterns} patterns are all zero (dead frames or "
                                                "a failed export); drop them from the NPZ"))
    mean = float(per_pattern.mean())
    if mean < MIN_MEAN_PHOTONS:
        out.append(DataWarning("low_photons", f"mean {mean:.3g} photons/pattern (< {MIN_MEAN_PHOTONS:g}): normalised "
                                              "values, not photon counts (a normalised export such as ptychodus' "
                                              "PtychoPINN export?); export the raw detector counts"))
        return out
    off = _off_integer_fraction(data.diff3d, 2)
    if off is not None and off > MAX_OFF_INTEGER:
        fourth = _off_integer_fraction(data.diff3d, 4) if data.measurement == "intensity" else None
        if fourth is not None and fourth <= MAX_OFF_INTEGER:
            out.append(DataWarning("amplitude_read_as_intensity",
                                   "diff3d**2 is not whole counts but diff3d**4 is: the file holds amplitudes "
                                   "read as intensity; pass --measurement amplitude"))
        else:
            out.append(DataWarning("non_integer", f"{off:.0%} of the intensities diff3d**2 are not whole photon "
                                                  "counts (scaled, flat-fielded or interpolated data?); the Poisson "
                                                  "loss assumes raw counts"))
    elif data.measurement == "amplitude":
        whole = _whole_amplitude_fraction(data.diff3d)
        if whole is not None and whole >= MIN_WHOLE_AMPLITUDES:
            out.append(DataWarning("intensity_read_as_amplitude",
                                   f"{whole:.0%} of the amplitudes diff3d >= 1.2 are whole numbers: the file "
                                   "looks like photon counts (intensity) read as amplitude; pass "
                                   "--measurement intensity"))
    return out
