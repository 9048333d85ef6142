"""The debug-dump patch grid: which pixel of the logged picture shows which patch, on which scale."""

import numpy as np
import pytest

from ptyparity import report


def _patches(b=3, n=8, c=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, n, n, c)) * np.arange(1, b * c + 1).reshape(b, 1, 1, c)


def test_mosaic_places_each_panel_min_max_scaled_row_by_row():
    panels = np.moveaxis(_patches(), -1, 1).reshape(12, 8, 8)
    panels[5] = 7.0  # a constant panel: all 0, not NaN
    mosaic = report.patch_mosaic(panels, 3, 4, gap=2, title_gap=3)
    assert mosaic.shape == (3 * (8 + 3), 4 * (8 + 2) - 2)
    for i, p in enumerate(panels):
        r, k = divmod(i, 4)
        shown = mosaic[r * 11 + 3:r * 11 + 11, k * 10:k * 10 + 8]
        expected = np.zeros_like(p) if i == 5 else (p - p.min()) / (p.max() - p.min())
        np.testing.assert_allclose(shown, expected, rtol=0, atol=1e-15)
    assert np.isnan(mosaic).sum() == mosaic.size - 12 * 64  # every other pixel is background


def test_mosaic_shared_scale_keeps_values_and_leaves_missing_panels_empty():
    panels = np.moveaxis(_patches(b=1, c=3), -1, 1).reshape(3, 8, 8)
    mosaic = report.patch_mosaic(panels, 1, 4, normalise=False, gap=1, title_gap=0)
    for k in range(3):
        np.testing.assert_array_equal(mosaic[:, k * 9:k * 9 + 8], panels[k])
    assert np.isnan(mosaic[:, 27:]).all()


@pytest.mark.parametrize("normalise", [True, False])
def test_patch_grid_figure_shows_the_mosaic_with_one_title_per_panel(normalise):
    patches = _patches(b=5, n=32, c=4)  # 20 panels, the first 16 shown
    fig = report.patch_grid_figure(patches, normalise=normalise)
    try:
        (ax,) = fig.axes
        (image,) = ax.images
        panels = np.moveaxis(patches, -1, 1).reshape(20, 32, 32)[:16]
        expected = report.patch_mosaic(panels, 4, 4, normalise=normalise, gap=2, title_gap=5)
        np.testing.assert_array_equal(np.ma.filled(image.get_array(), np.nan), expected)
        lo, hi = float(panels.min()), float(panels.max())
        assert image.get_clim() == ((0.0, 1.0) if normalise else (lo, hi))
        assert [t.get_text() for t in ax.texts] == [f"g{i // 4} c{i % 4}" for i in range(16)]
        assert ("each min-max scaled" in fig.get_suptitle()) == normalise
        assert report.figure_png(fig).startswith(b"\x89PNG")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
