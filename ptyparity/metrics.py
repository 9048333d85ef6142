"""Canvas agreement metrics shared by ground-truth scoring and parity checks.

Conventions (SPEC §7): the region is the bounding box of the pixels whose stitch
count exceeds 0.5 in every canvas given; amplitudes are aligned by the
least-squares scalar; the phase offset is removed with the circular mean of the
phase difference and the result re-wrapped; SSIM/PSNR use the reference's
peak-to-peak over the region as ``data_range``.
"""

from __future__ import annotations

import numpy as np

COUNT_THRESHOLD = 0.5
# skimage gives +inf dB for identical images, which a metric store cannot chart;
# 100 dB is far beyond any float32 disagreement, so it stands in for "identical".
PSNR_CAP_DB = 100.0


def covered_region(*counts, threshold=COUNT_THRESHOLD):
    """Bounding box of the pixels covered (count > threshold) in every count map.

    Parameters
    ----------
    *counts : ndarray, shape (H, W)
        Stitch counts from :func:`ptyparity.stitching.stitch_patches`.

    Returns
    -------
    region : tuple of slice
        ``(rows, cols)``, usable as ``canvas[region]``.
    """
    covered = np.ones(np.shape(counts[0]), bool)
    for c in counts:
        covered &= np.asarray(c) > threshold
    if not covered.any():
        raise ValueError("no pixel is covered in every canvas; nothing to compare")
    rows = np.flatnonzero(covered.any(axis=1))
    cols = np.flatnonzero(covered.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def align_amplitude(amp, ref):
    """``a * amp`` with the least-squares scalar ``a = <amp, ref> / <amp, amp>``."""
    amp = np.asarray(amp, np.float64)
    ref = np.asarray(ref, np.float64)
    denom = float(np.sum(amp * amp))
    scale = float(np.sum(amp * ref)) / denom if denom > 0 else 0.0
    return scale * amp


def wrap_phase(phase):
    """Wrap to ``(-pi, pi]``."""
    return np.angle(np.exp(1j * np.asarray(phase, np.float64)))


def remove_phase_offset(phase, ref):
    """``phase`` plus the circular mean of ``ref - phase``, re-wrapped."""
    phase = np.asarray(phase, np.float64)
    offset = np.angle(np.mean(np.exp(1j * (np.asarray(ref, np.float64) - phase))))
    return wrap_phase(phase + offset)


def _scores(pred, ref, *, wrapped=False):
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    diff = wrap_phase(pred - ref) if wrapped else pred - ref
    data_range = float(np.ptp(ref)) or 1.0
    if wrapped:
        # PSNR/SSIM on the wrapped difference: pred is re-expressed as ref + d.
        pred = ref + diff
    mse = float(np.mean(diff**2))
    if not np.isfinite(mse):
        psnr = float("nan")  # min(cap, nan) would report a NaN canvas as identical
    elif mse == 0:
        psnr = PSNR_CAP_DB
    else:
        psnr = min(PSNR_CAP_DB, float(peak_signal_noise_ratio(ref, pred, data_range=data_range)))
    win = min(7, *ref.shape)
    win -= 1 - win % 2  # SSIM needs an odd window no larger than the image
    ssim = float(structural_similarity(ref, pred, data_range=data_range, win_size=win))
    return {"mae": float(np.mean(np.abs(diff))), "psnr": psnr, "ssim": ssim}


def compare_canvases(pred, ref, region):
    """Amplitude and phase agreement of a complex canvas with a reference.

    Parameters
    ----------
    pred, ref : ndarray, shape (H, W), complex
        Canvases in the same object coordinates.
    region : tuple of slice
        From :func:`covered_region`.

    Returns
    -------
    scores : dict of float
        ``amp.mae``, ``amp.psnr``, ``amp.ssim``, ``phase.mae``, ``phase.psnr``,
        ``phase.ssim``, after amplitude alignment and phase-offset removal.
    """
    pred = np.asarray(pred)[region]
    ref = np.asarray(ref)[region]
    ref_amp, ref_phase = np.abs(ref), np.angle(ref)
    amp = align_amplitude(np.abs(pred), ref_amp)
    phase = remove_phase_offset(np.angle(pred), ref_phase)
    out = {f"amp.{k}": v for k, v in _scores(amp, ref_amp).items()}
    out.update({f"phase.{k}": v for k, v in _scores(phase, ref_phase, wrapped=True).items()})
    return out


def flat_guess_scores(ref, region):
    """:func:`compare_canvases` for a constant object (amplitude 1, phase 0).

    A constant already scores SSIM ~0.1-0.2 against structured objects, so every
    ground-truth score is reported beside this baseline.
    """
    flat = np.ones(np.shape(ref), np.complex128)
    return compare_canvases(flat, ref, region)
