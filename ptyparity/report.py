"""Figures for the MLflow record and the CLI. matplotlib is imported lazily (Agg).

Every function takes arrays or :class:`~ptyparity.data.RawData` and returns a
``matplotlib.figure.Figure``; callers log it (``tracking.log_figure``) or save it.
"""

from __future__ import annotations

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _panel(fig, ax, img, title, cmap="gray"):
    im = ax.imshow(img, cmap=cmap)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def object_figure(obj, *, title="object"):
    """Amplitude and phase of a complex object, side by side."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    _panel(fig, axes[0], np.abs(obj), f"{title} amplitude")
    _panel(fig, axes[1], np.angle(obj), f"{title} phase (rad)", cmap="twilight")
    fig.tight_layout()
    return fig


def probe_figure(probe):
    """Probe amplitude and phase."""
    return object_figure(probe, title="probe")


def diffraction_figure(diff3d, *, n_patterns=4):
    """The first few diffraction patterns, log10(1 + counts)."""
    plt = _plt()
    idx = np.linspace(0, len(diff3d) - 1, n_patterns).astype(int)
    fig, axes = plt.subplots(1, n_patterns, figsize=(3 * n_patterns, 3))
    for ax, i in zip(np.atleast_1d(axes), idx):
        _panel(fig, ax, np.log10(1 + diff3d[i].astype(np.float64) ** 2), f"pattern {i}: log10(1+counts)",
               cmap="magma")
    fig.tight_layout()
    return fig


def dataset_figure(data, *, title=""):
    """One-page preview of a dataset: object (if any), probe, scan, diffraction."""
    plt = _plt()
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    axes = axes.ravel()
    if data.obj is not None:
        _panel(fig, axes[0], np.abs(data.obj), "objectGuess amplitude")
        _panel(fig, axes[1], np.angle(data.obj), "objectGuess phase (rad)", cmap="twilight")
    else:
        for ax in axes[:2]:
            ax.text(0.5, 0.5, "no ground truth", ha="center", va="center")
            ax.set_axis_off()
    axes[2].scatter(data.xcoords, data.ycoords, s=2)
    axes[2].invert_yaxis()
    axes[2].set_aspect("equal")
    axes[2].set_title(f"scan positions (M={data.n_patterns})", fontsize=9)
    _panel(fig, axes[3], np.abs(data.probe), "probe amplitude")
    _panel(fig, axes[4], np.angle(data.probe), "probe phase (rad)", cmap="twilight")
    _panel(fig, axes[5], np.log10(1 + data.diff3d[0].astype(np.float64) ** 2), "pattern 0: log10(1+counts)",
           cmap="magma")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
