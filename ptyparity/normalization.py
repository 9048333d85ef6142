"""Normalisation scalars that tie data units to model units (SPEC §2, §9).

Plain NumPy functions. The SPEC rules (:func:`input_norm`, :func:`probe_norm`,
:func:`intensity_scale`) are the defaults; the upstream PtychoPINN variants selected by
``ModelConfig.input_normalization`` / ``probe_normalization`` live next to them
(:func:`set_input_norm`, :func:`ptychopinn_probe_norm`), dispatched by
:func:`model_input_norm` and :func:`model_probe_norm`. :mod:`ptyparity.physics`
re-exports the SPEC functions under their old names.
"""

from __future__ import annotations

import math

import numpy as np

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


# --- upstream PtychoPINN variants (SPEC §9) ------------------------------------------


def set_input_norm(diffraction_groups):
    """``input_normalization = "per_set"``: the factor from the set of groups being run.

    Parameters
    ----------
    diffraction_groups : ndarray, shape (B, N, N, C)
        Measured amplitudes of the set's groups (a pattern in two groups counts twice).

    Returns
    -------
    input_norm : float
        ``sqrt((N/2)**2 / mean_{b,c} sum_xy d**2)``: the mean over the set's (group, channel)
        patterns of ``sum X**2`` is ``(N/2)**2``. Upstream recomputes it for every set it is
        given, so the same pattern gets a different ``X`` in a different set.
    """
    groups = np.asarray(diffraction_groups)
    if groups.ndim != 4 or groups.shape[1] != groups.shape[2]:
        raise ValueError(f"diffraction_groups must have shape (B, N, N, C), got {groups.shape}")
    return input_norm(np.moveaxis(groups, -1, 1).reshape(-1, groups.shape[1], groups.shape[2]))


def ptychopinn_probe_disk(n):
    """Disk of the upstream probe normalisation: pixel centres within ``n/4`` of the array centre.

    Pixel ``(i, j)`` has its centre at ``(i + 0.5, j + 0.5)`` and the array centre is
    ``(n/2, n/2)``; unlike :func:`ptyparity.physics.probe_disk_mask` (the ``probe_mask``
    disk, centred on pixel ``(n/2, n/2)``) this disk is symmetric about the array centre.

    Returns
    -------
    disk : ndarray, shape (n, n), float64 of 0/1
    """
    centres = np.arange(n, dtype=np.float64) + 0.5 - n / 2
    return (np.hypot(centres[:, None], centres[None, :]) <= n / 4).astype(np.float64)


def ptychopinn_probe_norm(probe):
    """``probe_normalization = "ptychopinn"``: ``1 / (4 mean_xy |disk * probe|)``.

    The mean is over all ``N**2`` pixels (zeros outside the disk included), so
    ``P = probe_norm * probe = probe / (4 mean|disk probe|)``.
    """
    probe = np.asarray(probe)
    disk = ptychopinn_probe_disk(probe.shape[-1])
    mean_abs = float(np.mean(np.abs(probe.astype(np.complex128)) * disk))
    if not mean_abs > 0:
        raise ValueError("probe is zero inside the central disk of radius N/4; the ptychopinn probe norm is undefined")
    return 1.0 / (4.0 * mean_abs)


def model_probe_norm(probe, *, probe_normalization="spec"):
    """``probe_norm`` under either convention (:func:`probe_norm` or :func:`ptychopinn_probe_norm`)."""
    if probe_normalization == "spec":
        return probe_norm(probe)
    if probe_normalization == "ptychopinn":
        return ptychopinn_probe_norm(probe)
    raise ValueError(f"probe_normalization must be 'spec' or 'ptychopinn', got {probe_normalization!r}")


def model_input_norm(diffraction, *, input_normalization="dataset"):
    """``input_norm`` under either convention.

    Parameters
    ----------
    diffraction : ndarray
        ``(M, N, N)`` training patterns for ``"dataset"`` (:func:`input_norm`), or the
        ``(B, N, N, C)`` groups of the set being run for ``"per_set"`` (:func:`set_input_norm`).
    input_normalization : {"dataset", "per_set"}
    """
    if input_normalization == "dataset":
        return input_norm(diffraction)
    if input_normalization == "per_set":
        return set_input_norm(diffraction)
    raise ValueError(f"input_normalization must be 'dataset' or 'per_set', got {input_normalization!r}")
