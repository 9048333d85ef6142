"""Per-patch statistics (SPEC §6) on known answers."""

import numpy as np
import pytest

from ptyparity.physics import support_mask
from ptyparity.stats import patch_stats


def test_known_values_restricted_to_support():
    m = support_mask(32)
    patches = np.zeros((2, 32, 32, 1))
    checker = np.indices((32, 32)).sum(0) % 2  # 0/1 checkerboard: mean 0.5, var 0.25
    patches[0, :, :, 0] = 0.25 + 0.5 * checker
    patches[1, :, :, 0] = 0.6
    patches[:, m == 0, :] = 5.0  # outside the support: must not count
    per, agg = patch_stats(patches, m)
    assert per["mean"][:, 0] == pytest.approx([0.5, 0.6])
    assert per["var"][:, 0] == pytest.approx([0.0625, 0.0])
    assert per["std"][0, 0] == pytest.approx(0.25)
    assert (per["min"][0, 0], per["max"][0, 0]) == (0.25, 0.75)
    assert agg["var_zero_mean"] == pytest.approx(0.0625 / 2)
    assert agg["collapsed_fraction"] == pytest.approx(0.5)
    assert agg["max"] == pytest.approx(0.75)


def test_saturation_amp_and_phase():
    m = support_mask(32, probe_big=True)
    amp = np.full((1, 32, 32, 1), 0.5)
    amp[0, :8] = 0.99
    _, agg = patch_stats(amp, m)
    assert agg["frac_saturated"] == pytest.approx(0.25)
    phase = np.zeros((1, 32, 32, 1))
    phase[0, :16] = 0.97 * np.pi
    _, agg = patch_stats(phase, m, kind="phase")
    assert agg["frac_saturated"] == pytest.approx(0.5)


def test_collapse_is_relative_to_the_mean():
    m = support_mask(32)
    rng = np.random.default_rng(0)
    tiny = 1e-4 + 1e-9 * rng.normal(size=(1, 32, 32, 1))
    _, agg = patch_stats(tiny, m)
    assert agg["collapsed_fraction"] == 1.0
    lively = 1e-4 * (1 + 0.1 * rng.normal(size=(1, 32, 32, 1)))
    _, agg = patch_stats(lively, m)
    assert agg["collapsed_fraction"] == 0.0


def test_bad_shape():
    with pytest.raises(ValueError, match=r"\(B, N, N, C\)"):
        patch_stats(np.zeros((32, 32)), support_mask(32))
