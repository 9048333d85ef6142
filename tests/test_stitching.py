"""Patch extraction and stitching: the end-to-end position convention."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ptyparity import grouping
from ptyparity.simulate import SimConfig, simulate
from ptyparity.stitching import canvas_shape_for, extract_object_patches, stitch_patches


def test_integer_extraction_is_a_slice(rng):
    obj = rng.normal(size=(64, 80)) + 1j * rng.normal(size=(64, 80))
    patch = extract_object_patches(obj, np.array([30.0, 20.0]), 16)  # x=30, y=20
    np.testing.assert_allclose(patch, obj[20 - 8 : 20 + 8, 30 - 8 : 30 + 8])


@pytest.mark.parametrize("dtype", [np.complex64, np.float32, np.int16])
def test_integer_extraction_equals_the_zero_shift_exactly(rng, dtype):
    # Integer centres skip the bilinear shift; what they return must be, bit for bit and in
    # dtype, what the shift by zero returns (translate of the same windows).
    from ptyparity.physics import translate

    obj = (rng.normal(size=(48, 56)) * 50).astype(np.float64)
    obj = (obj + 1j * obj[::-1]).astype(dtype) if np.dtype(dtype).kind == "c" else obj.astype(dtype)
    pos = np.array([[8.0, 8.0], [30.0, 20.0], [50.0, 44.0], [0.0, 3.0]])  # two reach past the edge
    got = extract_object_patches(obj, pos, 16)
    padded = np.pad(obj, 18)
    windows = np.stack([padded[int(y) - 8 + 18 : int(y) + 9 + 18, int(x) - 8 + 18 : int(x) + 9 + 18]
                        for x, y in pos])
    expected = translate(windows, np.zeros((len(pos), 2)))[:, :16, :16]
    assert got.dtype == expected.dtype
    assert got.tobytes() == expected.tobytes()


def test_fractional_extraction_interpolates(rng):
    obj = rng.normal(size=(64, 64))
    half = extract_object_patches(obj, np.array([30.5, 20.0]), 16)
    a = extract_object_patches(obj, np.array([30.0, 20.0]), 16)
    b = extract_object_patches(obj, np.array([31.0, 20.0]), 16)
    np.testing.assert_allclose(half, (a + b) / 2, atol=1e-12)


def test_canvas_shape_without_ground_truth():
    pos = np.array([[[20.2, 40.0]], [[100.0, 60.7]]])
    assert canvas_shape_for(pos, 32) == (61 + 16, 100 + 16)


def _ssim(a, b):
    return structural_similarity(b, a, data_range=float(np.ptp(b)))


@pytest.mark.parametrize("jitter", [0.0, 0.7])
def test_stitching_ground_truth_patches_reproduces_the_object(jitter):
    # Patches cut from objectGuess at grouped scan positions, stitched back: proves
    # the position conventions of cutting, grouping and stitching agree end to end.
    train, _ = simulate(SimConfig(N=32, object_size_px=160, jitter_px=jitter, seed=3))
    groups = grouping.inference_groups(train.positions, gridsize=2, seed=0)
    patches = np.moveaxis(extract_object_patches(train.obj, groups.pos, 32), 1, -1)  # (B, N, N, C)
    canvas, count = stitch_patches(patches, groups.pos, canvas_shape=train.obj.shape)
    covered = count > 0.5
    rows = np.flatnonzero(covered.any(1))
    cols = np.flatnonzero(covered.any(0))
    region = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    ssim_amp = _ssim(np.abs(canvas[region]), np.abs(train.obj[region]))
    ssim_phase = _ssim(np.angle(canvas[region]), np.angle(train.obj[region]))
    # Integer positions (the simulator's default) must be exact. Jittered ones are
    # interpolated twice (cut, then stitch), a blur measured at SSIM ~0.97/0.99.
    floor = 0.99 if jitter == 0 else 0.95
    assert ssim_amp >= floor and ssim_phase >= floor, (ssim_amp, ssim_phase)
    if jitter == 0:
        assert np.abs(canvas[covered] - train.obj[covered]).max() < 1e-5


def test_stitching_a_shifted_object_is_detected(rng):
    # A one-pixel error in the convention must be visible: stitch at pos + 1.
    train, _ = simulate(SimConfig(N=32, object_size_px=160, seed=4))
    groups = grouping.inference_groups(train.positions, gridsize=1, seed=0)
    patches = np.moveaxis(extract_object_patches(train.obj, groups.pos, 32), 1, -1)
    canvas, count = stitch_patches(patches, groups.pos + 1.0, canvas_shape=train.obj.shape)
    covered = count > 0.5
    assert np.abs(canvas[covered] - train.obj[covered]).max() > 0.1


def test_stitch_rejects_mismatched_positions(rng):
    with pytest.raises(ValueError, match="pos must have shape"):
        stitch_patches(np.zeros((2, 32, 32, 4), np.complex64), np.zeros((2, 1, 2)))


def test_fast_bilinear_shift_is_the_physics_translate(rng):
    # stitching's two-tap shift (its speed-up) against the tent-matrix translate it replaces,
    # in float64: zero fractions (left as they are), fractional ones, and a mix.
    from ptyparity.physics import translate
    from ptyparity.stitching import _shift_right_down

    tiles = rng.normal(size=(600, 9, 9)) + 1j * rng.normal(size=(600, 9, 9))
    tiles[:, -1, :] = tiles[:, :, -1] = 0
    frac = rng.uniform(0, 1, size=(600, 2))
    frac[::3] = 0
    frac[1::3, 0] = 0
    np.testing.assert_allclose(_shift_right_down(tiles, frac), translate(tiles, frac), rtol=0, atol=1e-13)


def test_stitching_skips_tiles_outside_the_canvas():
    patches = np.ones((3, 16, 16, 1), np.complex64)
    pos = np.array([[[-400.0, 20.0]], [[20.0, 20.0]], [[20.3, 900.0]]])
    canvas, count = stitch_patches(patches, pos, canvas_shape=(40, 40))
    only, count_only = stitch_patches(patches[1:2], pos[1:2], canvas_shape=(40, 40))
    np.testing.assert_array_equal(canvas, only)
    np.testing.assert_array_equal(count, count_only)
    assert count.sum() == 64.0
