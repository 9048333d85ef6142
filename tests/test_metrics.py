"""Canvas metrics: alignment conventions and their invariances."""

import numpy as np
import pytest

from ptyparity import metrics
from ptyparity.simulate import SimConfig, simulate


@pytest.fixture(scope="module")
def obj():
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=5))
    return train.obj


def full(obj):
    return (slice(0, obj.shape[0]), slice(0, obj.shape[1]))


def test_identical_canvases_score_perfectly(obj):
    s = metrics.compare_canvases(obj, obj, full(obj))
    assert s["amp.mae"] == 0 and s["phase.mae"] == pytest.approx(0, abs=1e-12)
    assert s["amp.ssim"] == pytest.approx(1.0) and s["phase.ssim"] == pytest.approx(1.0)
    assert s["amp.psnr"] == metrics.PSNR_CAP_DB


def test_amplitude_scale_and_phase_offset_are_removed(obj):
    other = 2.5 * obj * np.exp(1j * 0.7)
    s = metrics.compare_canvases(other, obj, full(obj))
    assert s["amp.mae"] < 1e-6 and s["phase.mae"] < 1e-6
    assert s["amp.ssim"] > 0.9999 and s["phase.ssim"] > 0.9999


def test_phase_offset_across_the_wrap(obj):
    other = np.abs(obj) * np.exp(1j * (np.angle(obj) + 3.0))  # wraps past pi
    s = metrics.compare_canvases(other, obj, full(obj))
    assert s["phase.mae"] < 1e-6


def test_mirrored_canvas_scores_low(obj):
    s = metrics.compare_canvases(obj[::-1, ::-1], obj, full(obj))
    assert s["amp.ssim"] < 0.5 and s["phase.ssim"] < 0.5


def test_flat_guess_is_a_weak_baseline(obj):
    flat = metrics.flat_guess_scores(obj, full(obj))
    assert flat["amp.ssim"] < 0.3
    noisy = obj + 0.02 * np.random.default_rng(0).normal(size=obj.shape)
    assert metrics.compare_canvases(noisy, obj, full(obj))["amp.ssim"] > flat["amp.ssim"] + 0.3


def test_covered_region_is_the_common_bounding_box():
    a = np.zeros((10, 10))
    b = np.zeros((10, 10))
    a[2:8, 1:6] = 1
    b[3:9, 2:9] = 1
    rows, cols = metrics.covered_region(a, b)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (3, 8, 2, 6)
    with pytest.raises(ValueError, match="no pixel is covered"):
        metrics.covered_region(np.zeros((4, 4)))



def test_nan_canvas_scores_nan_psnr_not_the_cap(obj):
    pred = obj.copy()
    pred[5, 7] = np.nan
    scores = metrics.compare_canvases(pred, obj, full(obj))
    assert np.isnan(scores["amp.psnr"]) and np.isnan(scores["phase.psnr"])
    assert metrics.compare_canvases(obj, obj, full(obj))["amp.psnr"] == metrics.PSNR_CAP_DB
