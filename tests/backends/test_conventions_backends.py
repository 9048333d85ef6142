"""The upstream PtychoPINN conventions (``ModelConfig`` fields of SPEC §9) in both backends,
each against the NumPy references on identical weights (``reference_network.forward``,
``physics``, ``normalization``): ``head_layout`` "ptychopinn" with and without
``probe_big`` (the border branch) and ``object_big``, ``merge_normalization`` "ptychopinn",
and, through :func:`ptyparity.inference.forward_groups` and :func:`ptyparity.training.prepare`,
``input_normalization`` "per_set" and ``probe_normalization`` "ptychopinn".
"""

import dataclasses
import importlib

import numpy as np
import pytest

from ptyparity import architecture, normalization, physics, reference_network
from ptyparity.config import PTYCHOPINN_CONVENTIONS, TrainConfig
from ptyparity.inference import forward_groups, raw_groups, run_input_norm
from ptyparity.training import inference_set, prepare, resolve_config
from tests.backends.helpers import N, group_batch, model_cfg, model_probe, raw_data
from tests.backends.test_contract import with_random_biases
from tests.conftest import F64_RTOL, TAP_RTOL, assert_close_rel, rel_diff

NETWORK_TAPS = ("encoder_input", "amp_patches", "phase_patches")


def _ptychopinn_cfg(**overrides):
    values = dict(head_layout="ptychopinn")
    values.update(overrides)
    return model_cfg(**values)


def _weights(cfg, seed=4):
    return with_random_biases(architecture.init_weights(cfg, seed=seed, log_scale=2.3), seed=seed)


@pytest.mark.parametrize("n, gridsize, f, probe_big, object_big, merge", [
    (32, 2, 1, False, False, "spec"), (32, 2, 1, False, True, "spec"), (32, 2, 1, True, False, "spec"),
    (32, 2, 1, True, True, "spec"), (32, 2, 1, False, True, "ptychopinn"), (32, 2, 1, True, True, "ptychopinn"),
    (32, 1, 2, True, True, "ptychopinn"), (64, 2, 1, False, True, "ptychopinn"), (64, 1, 1, True, False, "spec")])
def test_ptychopinn_head_layout_matches_the_numpy_reference(backend, n, gridsize, f, probe_big, object_big, merge):
    """Every tap within SPEC §8's tolerance of :func:`reference_network.forward` (both head
    branches, the border mask, swish, the physics with either merge normalisation)."""
    cfg = _ptychopinn_cfg(N=n, gridsize=gridsize, n_filters_scale=f, probe_big=probe_big, object_big=object_big,
                          merge_normalization=merge)
    weights = _weights(cfg, seed=n + gridsize)
    probe = model_probe(n)
    scaled, rel = group_batch(cfg, np.random.default_rng(9))
    taps = backend.forward(backend.build(cfg, probe, weights), scaled, rel)
    reference = reference_network.forward(cfg, weights, probe, scaled, rel)
    assert tuple(reference) == tuple(taps)
    for name, ref in reference.items():
        assert_close_rel(taps[name], ref, TAP_RTOL, name)


@pytest.mark.parametrize("probe_big", [False, True])
def test_ptychopinn_network_is_the_reference_in_float64(backend, probe_big):
    """The same math exactly: a float64 build's network taps equal the float64 reference's
    to rounding (the physics taps of the reference pass through complex64, so not those)."""
    cfg = _ptychopinn_cfg(probe_big=probe_big, merge_normalization="ptychopinn")
    weights = _weights(cfg)
    scaled, rel = group_batch(cfg, np.random.default_rng(3))
    taps = backend.forward(backend.build(cfg, model_probe(), weights, precision="float64"), scaled, rel)
    reference = reference_network.forward(cfg, weights, model_probe(), scaled, rel)
    for name in NETWORK_TAPS:
        assert taps[name].dtype == np.float64
        assert_close_rel(taps[name], reference[name], F64_RTOL, name)


@pytest.mark.parametrize("probe_big", [False, True])
def test_ptychopinn_weights_round_trip_bit_identical(backend, probe_big):
    cfg = _ptychopinn_cfg(probe_big=probe_big)
    weights = _weights(cfg, seed=3)
    got = backend.get_weights(backend.build(cfg, model_probe(), weights))
    assert {k: v.shape for k, v in got.items()} == architecture.weight_shapes(cfg)
    heads = {k for k in got if "_head." in k}
    expected = {"conv"} | ({"border_conv1", "border_conv2", "border_conv3"} if probe_big else set())
    assert {k.split(".")[1] for k in heads} == expected
    for name, w in weights.items():
        assert got[name].dtype == np.float32 and got[name].tobytes() == w.tobytes(), name


def test_border_branch_adds_only_outside_the_support(backend):
    """With probe_big the central N/2 window is the probe_big=False head, bit for bit (the
    border branch is multiplied by zero there); outside it the border branch alone, nonzero."""
    cfg = _ptychopinn_cfg(probe_big=True)
    plain_cfg = dataclasses.replace(cfg, probe_big=False)
    weights = _weights(cfg)
    plain_weights = {k: v for k, v in weights.items() if "border_conv" not in k}
    scaled, rel = group_batch(cfg, np.random.default_rng(5))
    big = backend.forward(backend.build(cfg, model_probe(), weights), scaled, rel, keep=NETWORK_TAPS[1:])
    plain = backend.forward(backend.build(plain_cfg, model_probe(), plain_weights), scaled, rel,
                            keep=NETWORK_TAPS[1:])
    inside = physics.support_mask(N) == 1
    for name in NETWORK_TAPS[1:]:
        np.testing.assert_array_equal(big[name][:, inside], plain[name][:, inside], err_msg=name)
        assert np.all(plain[name][:, ~inside] == 0), name
        assert np.all(big[name][:, ~inside] != 0), name  # swish of a random conv: never exactly 0


def _per_set_setup():
    """A simulated dataset, its inference groups and a model with every upstream convention."""
    data = raw_data()
    cfg = model_cfg(probe_big=True, **PTYCHOPINN_CONVENTIONS)
    ts = prepare(data, resolve_config(TrainConfig(model=cfg, n_groups=32, batch_size=8), data))
    groups = inference_set(data, cfg, neighbor_count=7, seed=0)
    weights = _weights(cfg, seed=11)
    weights["log_scale"] = np.float32(ts.scales.log_scale)
    return data, ts, groups, weights


def test_every_ptychopinn_convention_through_forward_groups(backend):
    """``input_normalization`` "per_set" (one factor over the groups run, recomputed for
    another set) and ``probe_normalization`` "ptychopinn" feed the backend exactly what the
    NumPy references compute, and its taps match :func:`reference_network.forward`."""
    data, ts, groups, weights = _per_set_setup()
    cfg = ts.cfg.model
    # the probe of the training set is upstream's: probeGuess / (4 mean|disk probeGuess|)
    disk = normalization.ptychopinn_probe_disk(N)
    expected_probe = data.probe / (4 * np.mean(np.abs(data.probe) * disk))
    assert_close_rel(ts.probe, expected_probe, 1e-6, "probe")
    model = backend.build(cfg, ts.probe, weights)
    which = np.arange(5, 5 + 7)  # a set of 7 groups in batches of 3, 3, 1
    taps = forward_groups(backend, model, data.diff3d, groups, ts.scales, which=which, batch_size=3,
                          input_normalization="per_set")
    raw = np.moveaxis(data.diff3d[groups.indices[which]], 1, -1).astype(np.float64)  # (7, N, N, C)
    norm = np.sqrt((N / 2) ** 2 / np.mean(np.sum(raw**2, axis=(1, 2))))  # the set's factor, written out
    assert run_input_norm(data.diff3d, groups, ts.scales, which, input_normalization="per_set") == \
        pytest.approx(norm, rel=1e-12)
    assert abs(norm / ts.scales.input_norm - 1) > 1e-3  # per_set is not the training factor here
    scaled = (raw * norm * ts.scales.data_scale).astype(np.float32)
    reference = reference_network.forward(cfg, weights, ts.probe, scaled, groups.rel[which])
    assert tuple(reference) == tuple(taps)
    for name, ref in reference.items():
        assert_close_rel(taps[name], ref, TAP_RTOL, name)
    # "dataset" runs the same groups with the bundle's fixed factor instead
    fixed = forward_groups(backend, model, data.diff3d, groups, ts.scales, which=which, keep=["encoder_input"])
    assert_close_rel(fixed["encoder_input"], raw_groups(data.diff3d, groups, which) * ts.scales.input_norm,
                     TAP_RTOL, "encoder_input (dataset)")


def test_per_set_training_factor_is_the_training_groups():
    """Training with "per_set" computes the factor once over all training groups (train and
    validation), as upstream does over its training set; every batch uses it."""
    data, ts, _, _ = _per_set_setup()
    raw = np.moveaxis(data.diff3d[ts.groups.indices], 1, -1).astype(np.float64)
    expected = np.sqrt((N / 2) ** 2 / np.mean(np.sum(raw**2, axis=(1, 2))))
    assert ts.scales.input_norm == pytest.approx(expected, rel=1e-12)
    assert ts.scales.data_scale == pytest.approx(1 / expected, rel=1e-12)  # intensity_scale_mode "dataset"
    scaled, _ = ts.batch(ts.train_idx[:4])
    np.testing.assert_allclose(scaled, raw[ts.train_idx[:4]] * expected * ts.scales.data_scale, rtol=1e-6)


def test_ptychopinn_training_steps_agree_across_backends_in_float64():
    """All upstream conventions with probe_big: the two backends take the same float64
    optimisation steps, and the gradients reach the border branch."""
    data = raw_data()
    cfg = model_cfg(probe_big=True, **PTYCHOPINN_CONVENTIONS)
    tc = resolve_config(TrainConfig(model=cfg, n_groups=34, batch_size=16, max_epochs=1, seed=0,
                                    deterministic=True, precision="float64"), data)
    ts = prepare(data, tc)
    weights = architecture.init_weights(ts.cfg.model, seed=0, log_scale=ts.scales.log_scale)
    histories, trained = {}, {}
    for name in ("torch", "tensorflow"):
        api = importlib.import_module(f"ptyparity.backends.{name}.api")
        model = api.build(ts.cfg.model, ts.probe, weights)
        histories[name] = api.fit(model, ts, quiet=True, deterministic=True)
        trained[name] = api.get_weights(model)
    for key in ("train_step_deviance", "val_deviance"):
        rel = rel_diff(histories["tensorflow"][key], histories["torch"][key])
        assert len(rel) and rel.max() <= F64_RTOL, (key, rel)
    for name in ("amp_head.border_conv1.kernel", "phase_head.border_conv3.kernel", "amp_head.conv.kernel"):
        for backend_name, w in trained.items():
            assert not np.array_equal(w[name], weights[name]), (backend_name, name)
        ulp = np.spacing(np.maximum(np.abs(trained["torch"][name]), np.abs(trained["tensorflow"][name])))
        assert np.all(np.abs(trained["torch"][name] - trained["tensorflow"][name]) <= ulp), name
