"""The upstream-convention options (SPEC §9) in the config, the NumPy reference physics and
the NumPy reference network, each against an independent known answer; SPEC stays the default."""

import dataclasses
import json
import math
import pathlib

import numpy as np
import pytest
from scipy.signal import correlate2d

from ptyparity import architecture, normalization, physics, reference_network
from ptyparity.config import (CONVENTION_CHOICES, PTYCHOPINN_CONVENTIONS, SPEC_CONVENTIONS, ModelConfig, TrainConfig,
                              config_hash, model_config_from_dict)
from ptyparity.errors import PtyparityError
from tests.conftest import TAP_RTOL
from ptyparity.names import TAP_NAMES

V1_BUNDLE_JSON = pathlib.Path(__file__).parent / "data" / "bundle_v1" / "bundle.json"


# --- config --------------------------------------------------------------------------


def test_spec_is_the_default_of_every_convention():
    assert ModelConfig().conventions == SPEC_CONVENTIONS
    assert set(SPEC_CONVENTIONS) == set(PTYCHOPINN_CONVENTIONS) == set(CONVENTION_CHOICES)
    assert PTYCHOPINN_CONVENTIONS == {"head_layout": "ptychopinn", "probe_normalization": "ptychopinn",
                                      "input_normalization": "per_set", "merge_normalization": "ptychopinn",
                                      "group_offsets": "unlimited"}


@pytest.mark.parametrize("field", sorted(CONVENTION_CHOICES))
def test_unknown_convention_value_is_one_clear_error(field):
    with pytest.raises(PtyparityError, match=f"^{field} must be one of"):
        ModelConfig(**{field: "upstream"})


def test_ptychopinn_merge_needs_support_weighting():
    with pytest.raises(PtyparityError, match="merge_weighting 'support'"):
        ModelConfig(merge_normalization="ptychopinn", merge_weighting="probe")


def test_config_hash_of_spec_configs_is_unchanged():
    # The hashes the code gave before the convention fields existed (git HEAD 41a053a): existing
    # runs' config_hash and pair_key tags must keep matching.
    assert config_hash(dataclasses.asdict(TrainConfig())) == "ff5a23cfe6ceeef4"
    assert config_hash(dataclasses.asdict(ModelConfig())) == "467b48c0ded6285f"
    # The property behind it: default conventions hash as if absent, at either nesting level.
    values = dataclasses.asdict(TrainConfig(model=ModelConfig(N=64, gridsize=1)))
    stripped = dict(values, model={k: v for k, v in values["model"].items() if k not in SPEC_CONVENTIONS})
    assert config_hash(values) == config_hash(stripped)


@pytest.mark.parametrize("field", sorted(CONVENTION_CHOICES))
def test_a_non_default_convention_changes_the_hash(field):
    other = CONVENTION_CHOICES[field][1]
    base = dataclasses.asdict(TrainConfig())
    changed = dataclasses.asdict(TrainConfig(model=ModelConfig(**{field: other})))
    assert config_hash(changed) != config_hash(base)


def test_old_bundle_configs_read_as_spec():
    model_config = json.loads(V1_BUNDLE_JSON.read_text())["model_config"]
    assert not set(model_config) & set(CONVENTION_CHOICES)  # written before the fields existed
    assert model_config_from_dict(model_config).conventions == SPEC_CONVENTIONS


# --- normalisation -----------------------------------------------------------------------


def test_ptychopinn_probe_disk_counts_pixel_centres():
    # Independent count: pixel (i, j) has its centre at (i + 0.5, j + 0.5), the array centre is (n/2, n/2).
    for n in (32, 64):
        expected = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                if (i + 0.5 - n / 2) ** 2 + (j + 0.5 - n / 2) ** 2 <= (n / 4) ** 2:
                    expected[i, j] = 1
        disk = normalization.ptychopinn_probe_disk(n)
        assert np.array_equal(disk, expected)
        assert np.array_equal(disk, disk[::-1]) and np.array_equal(disk, disk[:, ::-1])  # symmetric about the centre
    assert normalization.ptychopinn_probe_disk(64).sum() == 812


def test_ptychopinn_probe_norm_known_answer(rng):
    n = 32
    n_disk = normalization.ptychopinn_probe_disk(n).sum()
    # A constant probe a: mean|disk P| = a n_disk / n**2, so the norm is n**2 / (4 a n_disk).
    a = 0.7 - 0.2j
    assert normalization.ptychopinn_probe_norm(np.full((n, n), a)) == pytest.approx(n**2 / (4 * abs(a) * n_disk),
                                                                                    rel=1e-12)
    # Only pixels inside the disk count: changing one outside leaves it unchanged.
    probe = (rng.normal(size=(n, n)) + 1j * rng.normal(size=(n, n))).astype(np.complex64)
    corner = probe.copy()
    corner[0, 0] = 100.0
    assert normalization.ptychopinn_probe_norm(corner) == normalization.ptychopinn_probe_norm(probe)
    # The README's formula, written as the mean of the normalised probe's disk amplitude: 1/4.
    model_probe = normalization.ptychopinn_probe_norm(probe) * probe
    inside = normalization.ptychopinn_probe_disk(n) > 0
    assert np.abs(model_probe[inside]).sum() / n**2 == pytest.approx(0.25, rel=1e-6)


def test_model_probe_norm_dispatches_and_rejects_unknown(rng):
    probe = rng.normal(size=(32, 32)) + 1j * rng.normal(size=(32, 32))
    assert normalization.model_probe_norm(probe) == normalization.probe_norm(probe)
    assert (normalization.model_probe_norm(probe, probe_normalization="ptychopinn")
            == normalization.ptychopinn_probe_norm(probe))
    with pytest.raises(ValueError, match="probe_normalization"):
        normalization.model_probe_norm(probe, probe_normalization="upstream")
    with pytest.raises(ValueError, match="central disk"):
        normalization.ptychopinn_probe_norm(np.pad(np.zeros((28, 28)), 2, constant_values=1.0))


def test_per_set_input_norm_counts_each_pattern_once_per_group():
    n = 32
    # Three constant patterns of amplitude 1, 2, 3 (energies n**2 * {1, 4, 9}); pattern 2 is in both groups.
    patterns = np.stack([np.full((n, n), v) for v in (1.0, 2.0, 3.0)])
    groups = np.moveaxis(patterns[np.array([[0, 2], [1, 2]])], 1, -1)  # (B=2, N, N, C=2)
    mean_energy = n**2 * (1 + 9 + 4 + 9) / 4
    expected = math.sqrt((n / 2) ** 2 / mean_energy)
    assert normalization.set_input_norm(groups) == pytest.approx(expected, rel=1e-12)
    x = groups * normalization.set_input_norm(groups)
    assert np.mean(np.sum(x**2, axis=(1, 2))) == pytest.approx((n / 2) ** 2, rel=1e-12)
    # Not the dataset rule, which counts each pattern once.
    assert normalization.input_norm(patterns) != pytest.approx(expected, rel=1e-3)
    assert normalization.model_input_norm(groups, input_normalization="per_set") == normalization.set_input_norm(groups)
    with pytest.raises(ValueError, match="input_normalization"):
        normalization.model_input_norm(groups, input_normalization="per_group")
    with pytest.raises(ValueError, match=r"\(B, N, N, C\)"):
        normalization.set_input_norm(patterns)


# --- merge ---------------------------------------------------------------------------------


def test_ptychopinn_merge_equals_spec_without_probe_big(rng):
    n, c = 32, 4
    inner = rng.normal(size=(2, n // 2, n // 2, c)) + 1j * rng.normal(size=(2, n // 2, n // 2, c))
    patches = np.pad(inner, ((0, 0), (n // 4, n // 4), (n // 4, n // 4), (0, 0)))  # zero outside the window
    rel = rng.uniform(-3, 3, size=(2, c, 2))
    probe = np.ones((n, n), np.complex64)
    spec = physics.merge_patches(patches, rel, physics.merge_weights(probe), 4)
    w_num, w_cnt = physics.merge_weight_pair(probe, merge_normalization="ptychopinn")
    upstream = physics.merge_patches(patches, rel, w_num, 4, count_weights=w_cnt)
    np.testing.assert_allclose(upstream, spec, rtol=1e-12, atol=1e-12)


def test_ptychopinn_merge_with_probe_big_known_answer():
    # C patches of ones everywhere at offset 0: the numerator is C over the whole N x N, the
    # count C on the centred N/2 window only.
    n, c, margin = 16, 4, 2
    patches = np.ones((1, n, n, c), np.complex128)
    rel = np.zeros((1, c, 2))
    probe = np.ones((n, n))
    w_num, w_cnt = physics.merge_weight_pair(probe, probe_big=True, merge_normalization="ptychopinn")
    canvas = physics.merge_patches(patches, rel, w_num, margin, count_weights=w_cnt)[0]
    expected = np.zeros((n + 2 * margin,) * 2)
    expected[margin:margin + n, margin:margin + n] = c / physics.MERGE_EPS
    lo = margin + n // 4
    expected[lo:lo + n // 2, lo:lo + n // 2] = c / (c + physics.MERGE_EPS)
    np.testing.assert_allclose(canvas, expected, rtol=1e-12)
    # SPEC with probe_big weights everything: C / (C + eps) on the whole N x N.
    w = physics.merge_weights(probe, probe_big=True)
    spec = physics.merge_patches(patches, rel, w, margin)[0]
    np.testing.assert_allclose(spec[margin:margin + n, margin:margin + n], c / (c + physics.MERGE_EPS), rtol=1e-12)
    with pytest.raises(ValueError, match="merge_weighting 'support'"):
        physics.merge_weight_pair(probe, merge_weighting="probe", merge_normalization="ptychopinn")


def test_forward_physics_passes_the_merge_normalization(rng):
    n, c = 32, 4
    amp = rng.uniform(0.2, 1, size=(1, n, n, c))  # nonzero everywhere, as with probe_big
    phase = rng.uniform(-1, 1, size=(1, n, n, c))
    rel = rng.uniform(-2, 2, size=(1, c, 2))
    probe = np.ones((n, n), np.complex64)
    common = dict(rel=rel, object_big=True, max_offset=3, probe_big=True)
    spec = physics.forward_physics(amp, phase, probe, **common)
    upstream = physics.forward_physics(amp, phase, probe, merge_normalization="ptychopinn", **common)
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    w_num, w_cnt = physics.merge_weight_pair(probe, probe_big=True, merge_normalization="ptychopinn")
    expected = physics.merge_patches(obj, rel, w_num, 3, count_weights=w_cnt)
    np.testing.assert_allclose(upstream["object_canvas"], expected, rtol=1e-6)
    assert not np.allclose(upstream["object_canvas"], spec["object_canvas"], rtol=1e-2)


# --- the reference network ------------------------------------------------------------------


def test_conv3x3_matches_scipy_correlate(rng):
    x = rng.normal(size=(2, 9, 7, 3))
    kernel = rng.normal(size=(3, 3, 3, 5))
    bias = rng.normal(size=5)
    expected = np.zeros((2, 9, 7, 5))
    for b in range(2):
        for o in range(5):
            expected[b, :, :, o] = bias[o] + sum(correlate2d(x[b, :, :, i], kernel[:, :, i, o], mode="same")
                                                 for i in range(3))
    np.testing.assert_allclose(reference_network.conv3x3(x, kernel, bias), expected, rtol=1e-12, atol=1e-12)


def test_pool_upsample_and_activations_known_answers():
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    assert reference_network.maxpool2(x)[0, :, :, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    up = reference_network.upsample2(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1))[0, :, :, 0]
    assert up.tolist() == [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]
    z = np.array([-800.0, -1.0, 0.0, 2.0, 800.0])
    np.testing.assert_allclose(reference_network.sigmoid(z), [0.0, 1 / (1 + math.e), 0.5, 1 / (1 + math.exp(-2)), 1.0],
                               rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(reference_network.swish(z), z / (1 + np.exp(-np.clip(z, -700, 700))), rtol=1e-12,
                               atol=1e-300)


def _random_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    weights = architecture.init_weights(cfg, seed=seed, log_scale=math.log(30.0))
    for name, value in weights.items():
        if name.endswith(".bias"):
            weights[name] = rng.normal(scale=0.05, size=value.shape).astype(np.float32)
    return weights


def _inputs(cfg, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, size=(2, cfg.N, cfg.N, cfg.channels)).astype(np.float32)
    rel = rng.uniform(-3, 3, size=(2, cfg.channels, 2))
    probe = (rng.normal(size=(cfg.N, cfg.N)) + 1j * rng.normal(size=(cfg.N, cfg.N))).astype(np.complex64)
    return x, rel, probe


def test_head_slice_equals_a_zero_padded_kernel():
    # head_layout "ptychopinn" reads all decoder channels but the last 4; a SPEC head whose kernel
    # is zero on those 4 input channels computes the same network.
    upstream_cfg = ModelConfig(N=32, n_filters_scale=1, max_offset=3, head_layout="ptychopinn")
    spec_cfg = ModelConfig(N=32, n_filters_scale=1, max_offset=3)
    weights = _random_weights(upstream_cfg, seed=3)
    padded = dict(weights)
    for branch in architecture.BRANCHES:
        kernel = weights[f"{branch}_head.conv.kernel"]
        assert kernel.shape[2] == architecture.decoder_filters(spec_cfg)[-1] - architecture.HEAD_BORDER_CHANNELS
        padded[f"{branch}_head.conv.kernel"] = np.pad(kernel, ((0, 0), (0, 0), (0, 4), (0, 0)))
    x, rel, probe = _inputs(spec_cfg, seed=4)
    upstream = reference_network.forward(upstream_cfg, weights, probe, x, rel)
    spec = reference_network.forward(spec_cfg, padded, probe, x, rel)
    assert set(upstream) == set(TAP_NAMES)
    for name in TAP_NAMES:
        np.testing.assert_allclose(upstream[name], spec[name], rtol=1e-6, atol=1e-6 * np.abs(spec[name]).max(),
                                   err_msg=name)
    assert np.abs(upstream["amp_patches"]).max() > 0.1


@pytest.mark.parametrize("n, f", [(32, 2), (64, 1)])
def test_probe_big_border_branch_shapes(n, f):
    cfg = ModelConfig(N=n, n_filters_scale=f, probe_big=True, head_layout="ptychopinn")
    width = 2048 * f // n
    shapes = architecture.weight_shapes(cfg)
    decoder_out = architecture.decoder_filters(cfg)[-1]
    for branch in architecture.BRANCHES:
        assert shapes[f"{branch}_head.conv.kernel"] == (3, 3, decoder_out - 4, 4)
        assert shapes[f"{branch}_head.border_conv1.kernel"] == (3, 3, 4, width)
        assert shapes[f"{branch}_head.border_conv2.kernel"] == (3, 3, width, width)
        assert shapes[f"{branch}_head.border_conv3.kernel"] == (3, 3, width, 4)
    assert not any("up_conv" in name for name in shapes)


def test_probe_big_border_branch_known_answer():
    # Border branch with zero kernels and a constant last bias v: its output is swish(v) at every
    # pixel, kept only outside the central N/2 window; inside, the head is the probe_big=false head.
    n = 32
    cfg = ModelConfig(N=n, n_filters_scale=1, probe_big=True, head_layout="ptychopinn", max_offset=3)
    plain_cfg = dataclasses.replace(cfg, probe_big=False)
    weights = _random_weights(cfg, seed=5)
    v = {"amp": 0.7, "phase": -1.3}
    for branch in architecture.BRANCHES:
        for k in (1, 2, 3):
            weights[f"{branch}_head.border_conv{k}.kernel"][:] = 0.0
        weights[f"{branch}_head.border_conv3.bias"][:] = v[branch]
    plain = {k: w for k, w in weights.items() if "border" not in k}
    x, rel, probe = _inputs(cfg, seed=6)
    taps = reference_network.forward(cfg, weights, probe, x, rel)
    ref = reference_network.forward(plain_cfg, plain, probe, x, rel)
    border = physics.border_mask(n).astype(np.float64)[None, :, :, None]
    for branch in architecture.BRANCHES:
        bias = float(np.float32(v[branch]))  # weights are float32
        swish_v = bias / (1 + math.exp(-bias))
        expected = ref[f"{branch}_patches"] + border * swish_v
        np.testing.assert_allclose(taps[f"{branch}_patches"], expected, rtol=1e-12, atol=1e-12)
    assert physics.border_mask(n).sum() == n * n - (n // 2) ** 2


def test_probe_big_border_branch_upsamples_its_features():
    # One ReLU'd feature map through border_conv1/2 at N/2, nearest 2x upsampling, border_conv3:
    # with identity-like kernels (centre tap 1 on channel 0) the N-pixel output is the upsampled
    # N/2 input channel, so 2x2 blocks are equal.
    n = 32
    cfg = ModelConfig(N=n, n_filters_scale=1, probe_big=True, head_layout="ptychopinn", max_offset=3)
    weights = _random_weights(cfg, seed=7)
    specs = {s.name: s for s in architecture.all_convs(cfg)}
    for k in (1, 2, 3):
        name = f"amp_head.border_conv{k}"
        kernel = np.zeros(specs[name].kernel_shape, np.float32)
        kernel[1, 1, 0, 0] = 1.0
        weights[f"{name}.kernel"] = kernel
        weights[f"{name}.bias"] = np.zeros(specs[name].c_out, np.float32)
    rng = np.random.default_rng(8)
    features = rng.uniform(0.1, 2.0, size=(1, n // 2, n // 2, architecture.decoder_filters(cfg)[-1]))
    head = reference_network.head(cfg, weights, "amp", features, reference_network.amplitude_activation)
    main = reference_network.head(dataclasses.replace(cfg, probe_big=False),
                                  {k: w for k, w in weights.items() if "border" not in k}, "amp", features,
                                  reference_network.amplitude_activation)
    up = np.repeat(np.repeat(features[0, :, :, -4], 2, axis=0), 2, axis=1)  # the first of the last 4 channels
    expected = main[0, :, :, 0] + physics.border_mask(n) * reference_network.swish(up)
    np.testing.assert_allclose(head[0, :, :, 0], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("object_big, probe_big", [(True, False), (True, True), (False, False)])
def test_reference_network_matches_the_torch_backend_on_spec_layouts(object_big, probe_big):
    # The reference is an independent implementation of the SPEC network the backends already
    # implement; on the SPEC layouts it must give the backend's taps (SPEC §8's 1e-4).
    from ptyparity.backends import load_backend

    cfg = ModelConfig(N=32, n_filters_scale=1, max_offset=3, object_big=object_big, probe_big=probe_big)
    weights = _random_weights(cfg, seed=9)
    x, rel, probe = _inputs(cfg, seed=10)
    api = load_backend("torch")
    backend = api.forward(api.build(cfg, probe, weights), x, rel.astype(np.float32))
    reference = reference_network.forward(cfg, weights, probe, x, rel.astype(np.float32))
    assert set(backend) == set(reference)
    for name, value in reference.items():
        err = np.abs(np.asarray(backend[name]) - value).max() / np.abs(value).max()
        assert err <= TAP_RTOL, (name, err)
