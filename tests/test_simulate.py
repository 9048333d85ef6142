"""The seeded simulator (SPEC §2)."""

import numpy as np
import pytest

from ptyparity.errors import PtyparityError
from ptyparity.simulate import SimConfig, expected_counts, simulate, write_dataset


@pytest.fixture(scope="module")
def small():
    return simulate(SimConfig(N=32, object_size_px=128, nphotons=1e5, seed=11))


def test_mean_photons_per_pattern(small):
    train, test = small
    for d in (train, test):
        counts = d.diff3d.astype(np.float64) ** 2
        assert np.mean(counts.sum(axis=(1, 2))) == pytest.approx(1e5, rel=0.02)


def test_counts_are_poisson(small):
    train, _ = small
    counts = train.diff3d.astype(np.float64) ** 2
    assert np.allclose(counts, np.round(counts), atol=1e-2)  # integers: sqrt of counts stored
    lam = expected_counts(train.obj, train.probe, train.positions, nphotons=1e5)
    bright = lam > 20
    z = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
    assert abs(z.mean()) < 0.02
    assert z.var() == pytest.approx(1.0, abs=0.05)


def test_same_seed_is_reproducible_and_splits_differ(small):
    again = simulate(SimConfig(N=32, object_size_px=128, nphotons=1e5, seed=11))
    assert np.array_equal(again[0].diff3d, small[0].diff3d)
    assert not np.allclose(small[0].obj, small[1].obj)


def test_object_ranges_and_defaults():
    cfg = SimConfig(N=64)
    assert (cfg.object_size, cfg.scan_step, cfg.edge_phase) == (512, 8.0, 8.0)
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=0))
    amp, phase = np.abs(train.obj), np.angle(train.obj)
    assert amp.min() >= 0.1 - 1e-6 and amp.max() <= 1 + 1e-6
    assert phase.min() >= -np.pi / 2 - 1e-6 and phase.max() <= np.pi / 2 + 1e-6
    assert train.positions.min() >= 16 and train.positions.max() <= 96 - 16


def test_images_family():
    train, test = simulate(SimConfig(N=32, object_family="images", object_size_px=96, seed=0))
    assert train.obj.shape == (96, 96)
    assert not np.allclose(np.abs(train.obj), np.abs(test.obj))


@pytest.mark.parametrize("kwargs, match", [
    ({"N": 48}, "N must be one of"),
    ({"object_family": "noise"}, "object family must be one of"),
    ({"nphotons": 0}, "nphotons must be > 0"),
    ({"object_size_px": 40}, "object size must be >= 2N"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(PtyparityError, match=match):
        SimConfig(**kwargs)


def test_write_refuses_to_overwrite(tmp_path):
    cfg = SimConfig(N=32, object_size_px=96)
    write_dataset(cfg, tmp_path)
    before = (tmp_path / "train.npz").read_bytes()
    with pytest.raises(PtyparityError, match="already exists.*--overwrite"):
        write_dataset(cfg, tmp_path)
    assert (tmp_path / "train.npz").read_bytes() == before
