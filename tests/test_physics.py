"""Known-answer tests of the NumPy reference physics (SPEC §3)."""

import numpy as np
import pytest

from ptyparity import physics
from ptyparity.simulate import make_probe
from ptyparity.stitching import extract_object_patches


def random_complex(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)


def test_diffract_conserves_energy(rng):
    psi = random_complex(rng, (3, 32, 32, 4))
    amp = physics.diffract(psi)
    energy_in = np.sum(np.abs(psi.astype(np.complex128)) ** 2, axis=(1, 2))
    energy_out = np.sum(amp.astype(np.float64) ** 2, axis=(1, 2))
    np.testing.assert_allclose(energy_out, energy_in, rtol=1e-5)


def test_diffract_is_shifted_ortho_fft_magnitude(rng):
    psi = random_complex(rng, (2, 32, 32, 1))
    expected = np.fft.fftshift(np.abs(np.fft.fft2(psi, axes=(1, 2), norm="ortho")), axes=(1, 2))
    np.testing.assert_allclose(physics.diffract(psi), expected, rtol=1e-5, atol=1e-6)


def test_diffract_puts_dc_at_the_centre():
    psi = np.ones((1, 32, 32, 1), np.complex64)
    amp = physics.diffract(psi)[0, :, :, 0]
    assert np.unravel_index(np.argmax(amp), amp.shape) == (16, 16)
    assert amp[16, 16] == pytest.approx(32.0, rel=1e-6)


def test_integer_translate_is_exact(rng):
    img = rng.normal(size=(16, 12))
    out = physics.translate(img, [3, -2])
    expected = np.zeros_like(img)
    expected[0:14, 3:12] = img[2:16, 0:9]
    assert np.array_equal(out, expected)


def test_translate_moves_content_by_plus_t():
    # An impulse off the diagonal of a non-square image: a transposed or mirrored
    # implementation puts it somewhere else.
    img = np.zeros((16, 12))
    img[2, 5] = 1.0  # row (y) 2, column (x) 5
    out = physics.translate(img, [3, 4])  # t_x = 3, t_y = 4
    assert np.argwhere(out).tolist() == [[6, 8]]


def test_subpixel_translate_splits_bilinearly():
    img = np.zeros((8, 8))
    img[3, 3] = 1.0
    out = physics.translate(img, [0.25, 0.5])
    expected = {(3, 3): 0.75 * 0.5, (3, 4): 0.25 * 0.5, (4, 3): 0.75 * 0.5, (4, 4): 0.25 * 0.5}
    for (r, c), v in expected.items():
        assert out[r, c] == pytest.approx(v)
    assert out.sum() == pytest.approx(1.0)


def test_translate_batched_complex_matches_loop(rng):
    img = random_complex(rng, (2, 3, 10, 10))
    shift = rng.uniform(-2, 2, (2, 3, 2))
    out = physics.translate(img, shift)
    assert out.dtype == np.complex64
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(out[i, j], physics.translate(img[i, j], shift[i, j]), rtol=1e-6)


def test_translate_rejects_bad_shift():
    with pytest.raises(ValueError, match="shift must have shape"):
        physics.translate(np.zeros((4, 4)), [1, 2, 3])


def test_support_mask_is_central_half():
    m = physics.support_mask(32)
    assert m.sum() == 16 * 16
    assert m[8, 8] == 1 and m[23, 23] == 1 and m[7, 8] == 0 and m[24, 23] == 0
    assert physics.support_mask(32, probe_big=True).sum() == 32 * 32


def test_merge_weights_probe_mode_is_normalised_probe_power():
    probe = make_probe(32)
    w = physics.merge_weights(probe, merge_weighting="probe")
    assert w.max() == pytest.approx(1.0, rel=1e-5)
    assert np.all(w[physics.support_mask(32) == 0] == 0)
    with pytest.raises(ValueError, match="merge_weighting"):
        physics.merge_weights(probe, merge_weighting="mean")


def _object_and_group(rng, offsets):
    obj = random_complex(rng, (96, 96))
    centre = np.array([48.0, 48.0])
    pos = centre + np.asarray(offsets, np.float64)  # (C, 2)
    patches = extract_object_patches(obj, pos, 32)  # (C, N, N)
    return obj, centre, pos, np.moveaxis(patches, 0, -1)[None]


@pytest.mark.parametrize("weighting", ["support", "probe"])
def test_merge_of_consistent_patches_reproduces_the_object(rng, weighting):
    offsets = [[-2, -2], [2, -2], [-2, 2], [2, 2]]  # integer centre: no interpolation
    obj, centre, pos, patches = _object_and_group(rng, offsets)
    rel = (pos - centre)[None]
    w = physics.merge_weights(make_probe(32), merge_weighting=weighting)
    canvas = physics.merge_patches(patches, rel, w, 6)[0]
    weight_sum = physics.translate(physics.pad_center(np.broadcast_to(w, (4, 32, 32)), 44), rel[0]).sum(0)
    reference = extract_object_patches(obj, centre, 44)
    covered = weight_sum > 0.5
    assert covered.sum() > 16 * 16
    err = np.abs(canvas - reference)[covered].max()
    assert err <= 4e-3 * np.abs(reference).max()  # only the 1e-3 merge epsilon separates them


def test_merge_then_extract_returns_each_channel_on_its_support(rng):
    obj, centre, pos, patches = _object_and_group(rng, [[-3, -1], [1, -3], [-1, 3], [3, 1]])
    rel = (pos - centre)[None]
    w = physics.support_mask(32)
    canvas = physics.merge_patches(patches, rel, w, 6)
    back = physics.extract_patches(canvas, rel, 32)
    m = w > 0
    ratio = np.abs(back[0][m] - patches[0][m]).max() / np.abs(patches).max()
    assert ratio < 2e-3  # = eps / (count + eps) with count >= 1 on the support


def test_single_channel_merge_extract_is_identity_up_to_eps(rng):
    patches = random_complex(rng, (2, 32, 32, 1))
    rel = rng.integers(-3, 4, (2, 1, 2)).astype(float)  # integer: no interpolation blur
    w = physics.support_mask(32)
    back = physics.extract_patches(physics.merge_patches(patches, rel, w, 4), rel, 32)
    m = w > 0
    np.testing.assert_allclose(back[:, m], patches[:, m] / (1 + physics.MERGE_EPS), rtol=1e-4, atol=1e-5)


def test_illuminate_multiplies_by_probe(rng):
    obj = random_complex(rng, (2, 32, 32, 4))
    probe = make_probe(32)
    np.testing.assert_allclose(physics.illuminate(obj, probe), obj * probe[:, :, None], rtol=1e-6)


def test_poisson_loss_and_deviance(rng):
    inten = rng.uniform(0.1, 2.0, (2, 8, 8, 1))
    target = np.sqrt(rng.poisson(30 * inten))
    log_scale = 0.5 * np.log(30.0)
    lam = 30 * inten
    y = target**2
    assert physics.poisson_loss(inten, target, log_scale) == pytest.approx(
        np.mean(lam - y * np.log(lam + 1e-8)), rel=1e-12)
    assert physics.poisson_deviance(target**2, target, 0.0) == pytest.approx(0.0, abs=1e-9)
    assert physics.poisson_deviance(inten, target, log_scale) > 0


def test_mae_loss(rng):
    amp = rng.uniform(0, 1, (2, 8, 8, 1))
    target = rng.uniform(0, 3, (2, 8, 8, 1))
    assert physics.mae_loss(amp, target, np.log(3.0)) == pytest.approx(np.mean(np.abs(3 * amp - target)))


def test_normalisations_give_the_contract_energies(rng):
    diff = rng.uniform(0, 10, (5, 32, 32)).astype(np.float32)
    norm = physics.input_norm(diff)
    energy = np.mean(np.sum((diff.astype(np.float64) * norm) ** 2, axis=(1, 2)))
    assert energy == pytest.approx(16.0**2, rel=1e-9)
    probe = make_probe(32)
    pn = physics.probe_norm(probe)
    assert np.sum(np.abs(0.5 * pn * probe.astype(np.complex128)) ** 2) == pytest.approx(16.0**2, rel=1e-6)
    assert physics.intensity_scale("dataset", input_norm=norm, n=32) == pytest.approx(1 / norm)
    assert physics.intensity_scale("closed_form", input_norm=norm, n=32, nphotons=1e6) == pytest.approx(1e3 / 16)
    with pytest.raises(ValueError, match="nphotons"):
        physics.intensity_scale("closed_form", input_norm=norm, n=32)


def test_forward_physics_taps_are_consistent(rng):
    amp = rng.uniform(0, 1, (2, 32, 32, 4)) * physics.support_mask(32)[:, :, None]
    phase = rng.uniform(-1, 1, (2, 32, 32, 4))
    probe = make_probe(32)
    rel = rng.uniform(-4, 4, (2, 4, 2))
    taps = physics.forward_physics(amp, phase, probe, rel=rel, object_big=True, max_offset=6, log_scale=np.log(2))
    assert taps["object_canvas"].shape == (2, 44, 44)
    np.testing.assert_allclose(taps["pred_amplitude_counts"], 2 * taps["pred_amplitude"], rtol=1e-6)
    np.testing.assert_allclose(taps["pred_amplitude"] ** 2, taps["pred_intensity"] + 1e-12, rtol=1e-5)
    flat = physics.forward_physics(amp, phase, probe)
    assert "object_canvas" not in flat
    np.testing.assert_allclose(flat["object_extracted"], flat["object_patches"])
