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
def test_patch_grid_image_shows_the_mosaic_with_one_title_per_panel(normalise):
    patches = _patches(b=5, n=32, c=4)  # 20 panels, the first 16 shown
    image = report.patch_grid_image(patches, normalise=normalise)
    panels = np.moveaxis(patches, -1, 1).reshape(20, 32, 32)[:16]
    mosaic = report.patch_mosaic(panels, 4, 4, normalise=normalise, gap=2, title_gap=5)
    zoom = round(report.PANEL_PX / 32)
    top, side = report.TITLE_BAND_PX, report.MARGIN_PX
    pixels = np.asarray(image)
    assert image.mode == "L"
    assert pixels.shape == (mosaic.shape[0] * zoom + top + side, mosaic.shape[1] * zoom + 2 * side)
    # every mosaic pixel is a zoom x zoom block of its grey level on the grid's scale
    vmin, vmax = (0.0, 1.0) if normalise else (panels.min(), panels.max())
    expected = np.where(np.isnan(mosaic), 255, np.rint((mosaic - vmin) / (vmax - vmin) * 255))
    shown = pixels[top:top + mosaic.shape[0] * zoom, side:side + mosaic.shape[1] * zoom]
    blocks = shown.reshape(mosaic.shape[0], zoom, mosaic.shape[1], zoom)
    panel_rows = ~np.isnan(mosaic).all(axis=1)  # the title gaps carry the labels' text
    assert (blocks[panel_rows] == blocks[panel_rows][:, :1, :, :1]).all()
    np.testing.assert_array_equal(blocks[panel_rows, 0, :, 0], expected[panel_rows])
    # a label above every panel (dark text in its title gap), nothing above a missing one
    for i in range(16):
        r, k = divmod(i, 4)
        gap_rows = slice(top + r * 37 * zoom, top + (r * 37 + 5) * zoom)
        assert pixels[gap_rows, side + k * 34 * zoom:side + (k * 34 + 32) * zoom].min() < 128, i
    heading = pixels[:top]
    assert heading.min() < 128 and heading[:, :side].min() == 255  # the title, centred


def test_patch_grid_image_headings_name_the_scale():
    patches = _patches(b=1, n=8, c=1)
    normalised, shared = (np.asarray(report.patch_grid_image(patches, normalise=flag))[:report.TITLE_BAND_PX]
                          for flag in (True, False))
    assert not np.array_equal(normalised, shared)  # "each min-max scaled" / "shared scale [lo, hi]"
    import io

    buf = io.BytesIO()
    report.patch_grid_image(patches).save(buf, format="png")
    assert buf.getvalue().startswith(b"\x89PNG")


def test_loss_figure_titles_sit_where_matplotlib_would_place_them():
    """The loss figure pins its titles' height to skip matplotlib's placement pass; the picture
    must be the one the automatic placement draws (log-scale axes included)."""
    import io

    plt = report.pyplot()
    epochs = 8
    history = {key: list(np.geomspace(1.0, 0.05, epochs) * (1 + 0.1 * i))
               for i, key in enumerate(("train_loss", "val_loss", "train_deviance", "val_deviance"))}
    history["learning_rate"] = [1e-3] * 4 + [5e-4] * 4

    def pixels(fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="rgba")
        return buf.getvalue()

    fig = report.loss_figure(history)
    try:
        pinned = pixels(fig)
        for ax in fig.axes:
            assert not ax._autotitlepos
            ax._autotitlepos = True  # matplotlib's own placement again (no public switch back)
        assert pixels(fig) == pinned
    finally:
        plt.close(fig)
