"""What both backends must do (:mod:`ptyparity.backends.contract`), tested once for each
through the ``backend`` fixture: the API and ops signatures, the taps of every network
configuration, weights, the forward pass against the NumPy references, bad input.
Training behaviour is in ``test_contract_fit.py``.
"""

import importlib
import inspect
import types

import numpy as np
import pytest

from ptyparity import architecture, physics, reference_network
from ptyparity.backends import BackendAPI, contract, load_backend
from ptyparity.errors import PtyparityError
from tests.backends.helpers import (BATCH, MAX_OFFSET, N, group_batch, model_cfg, model_probe, network_module,
                                    training_set)
from tests.conftest import BACKENDS, OP_RTOL, TAP_RTOL, assert_close_rel

COMPLEX_TAPS = {"object_patches", "object_canvas", "object_extracted", "exit_wave"}
VERSION_KEYS = {"torch": {"torch_version", "lightning_version"}, "tensorflow": {"tensorflow_version", "keras_version"}}


def build(api, cfg=None, *, seed=0, log_scale=0.4, **kwargs):
    cfg = cfg or model_cfg()
    weights = architecture.init_weights(cfg, seed=seed, log_scale=log_scale)
    return api.build(cfg, model_probe(cfg.N), weights, **kwargs)


def with_random_biases(weights, seed=0):
    """Nonzero biases, so a dropped or misplaced bias shows."""
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-0.05, 0.05, w.shape).astype(np.float32) if name.endswith(".bias") else w
            for name, w in weights.items()}


# --- the API and the ops: names and signatures ----------------------------------------------


def test_api_module_satisfies_the_protocol(backend):
    assert contract.signature_mismatches(backend) == []
    assert isinstance(backend, BackendAPI)
    assert load_backend(backend.NAME) is backend and backend.NAME in BACKENDS


def test_signature_check_names_what_drifted():
    good = {name: getattr(load_backend("torch"), name) for name in ("versions", "get_weights", "forward", "fit")}
    drifted = types.SimpleNamespace(NAME="fake", **good, build=lambda cfg, probe, weights, *, precision="float32": 0)
    problems = contract.signature_mismatches(drifted)
    assert len(problems) == 1 and problems[0].startswith("build(cfg, probe, weights, *, precision='float32')")
    assert contract.signature_mismatches(types.SimpleNamespace()) == [
        "NAME is missing or not a str", "versions is missing", "build is missing", "get_weights is missing",
        "forward is missing", "fit is missing"]


def test_versions_are_the_frameworks(backend):
    versions = backend.versions()
    assert set(versions) == VERSION_KEYS[backend.NAME]
    for key, value in versions.items():  # "<module>_version": that module's __version__
        assert value == importlib.import_module(key.removesuffix("_version")).__version__


def test_ops_have_the_reference_names_and_one_signature():
    torch_ops, tf_ops = (importlib.import_module(f"ptyparity.backends.{b}.ops") for b in BACKENDS)
    assert list(torch_ops.__all__) == list(tf_ops.__all__) == [*contract.CONVERSIONS, *contract.OP_NAMES]
    for name in torch_ops.__all__:
        assert inspect.signature(getattr(torch_ops, name)) == inspect.signature(getattr(tf_ops, name)), name
    for name in contract.OP_NAMES:
        params = list(inspect.signature(getattr(torch_ops, name)).parameters.values())
        precision = params.pop()
        assert (precision.name, precision.kind, precision.default) == (
            "precision", inspect.Parameter.KEYWORD_ONLY, "float32"), name
        assert params == list(inspect.signature(getattr(physics, name)).parameters.values()), name


# --- taps ------------------------------------------------------------------------------------


@pytest.mark.parametrize("probe_big", [False, True])
@pytest.mark.parametrize("object_big", [False, True])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_tap_names_shapes_and_dtypes(backend, gridsize, object_big, probe_big):
    cfg = model_cfg(gridsize=gridsize, object_big=object_big, probe_big=probe_big)
    scaled, rel = group_batch(cfg, np.random.default_rng(1))
    taps = backend.forward(build(backend, cfg), scaled, rel)
    assert tuple(taps) == contract.tap_names(cfg)  # the names of ptyparity.names.TAP_NAMES, in forward order
    assert ("object_canvas" in taps) == object_big
    for name, tap in taps.items():
        shape = (BATCH, cfg.canvas_size, cfg.canvas_size) if name == "object_canvas" else (BATCH, N, N, cfg.channels)
        assert isinstance(tap, np.ndarray) and tap.shape == shape, name
        assert tap.dtype == (np.complex64 if name in COMPLEX_TAPS else np.float32), name
        assert np.all(np.isfinite(tap)), name


def test_float64_build_computes_in_float64(backend):
    cfg = model_cfg()
    scaled, rel = group_batch(cfg, np.random.default_rng(2))
    single = backend.forward(build(backend, cfg), scaled, rel)
    model = build(backend, cfg, precision="float64")
    double = backend.forward(model, scaled, rel, precision="float64")
    for name, tap in double.items():
        assert tap.dtype == (np.complex128 if name in COMPLEX_TAPS else np.float64), name
        assert_close_rel(single[name], tap, TAP_RTOL, name)
    assert any(not np.array_equal(single[n], double[n]) for n in double)  # really another precision
    assert {w.dtype for w in backend.get_weights(model).values()} == {np.dtype(np.float32)}  # canonical form


def test_forward_keeps_the_named_taps_for_any_batch_size(backend):
    cfg = model_cfg()
    model = build(backend, cfg)
    for b in (1, 3, 7):
        scaled, rel = group_batch(cfg, np.random.default_rng(b), batch=b)
        full = backend.forward(model, scaled, rel)
        kept = backend.forward(model, scaled, rel, keep=["pred_amplitude", "amp_patches"])
        assert list(kept) == ["pred_amplitude", "amp_patches"]
        for name, tap in kept.items():
            assert tap.shape[0] == b
            np.testing.assert_array_equal(tap, full[name], err_msg=name)


def test_encoder_input_and_count_units_use_log_scale(backend):
    cfg = model_cfg()
    scaled, rel = group_batch(cfg, np.random.default_rng(3))
    taps = backend.forward(build(backend, cfg, log_scale=1.7), scaled, rel)
    log_scale = float(np.float32(1.7))
    assert_close_rel(taps["encoder_input"], scaled / np.exp(log_scale), OP_RTOL, "encoder_input")
    assert_close_rel(taps["pred_amplitude_counts"], np.exp(log_scale) * taps["pred_amplitude"].astype(np.float64),
                     OP_RTOL, "pred_amplitude_counts")


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("probe_big", [False, True])
def test_patches_outside_the_support(backend, probe_big, gridsize):
    """Zero amplitude and phase outside the central N/2 window (sigmoid inside) unless
    ``probe_big``, whose full-N head predicts everywhere."""
    cfg = model_cfg(probe_big=probe_big, gridsize=gridsize)
    taps = backend.forward(build(backend, cfg), *group_batch(cfg, np.random.default_rng(4)))
    outside = physics.support_mask(N) == 0
    amp, phase = taps["amp_patches"], taps["phase_patches"]
    if probe_big:
        assert amp.min() > 0
    else:
        assert np.all(amp[:, outside] == 0) and np.all(phase[:, outside] == 0)
        assert 0 < amp[:, ~outside].min() and amp[:, ~outside].max() < 1


# --- weights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("probe_big", [False, True])
def test_weights_round_trip_bit_identical(backend, probe_big):
    cfg = model_cfg(probe_big=probe_big)
    weights = with_random_biases(architecture.init_weights(cfg, seed=3, log_scale=-0.7))
    got = backend.get_weights(backend.build(cfg, model_probe(), weights))
    assert {k: v.shape for k, v in got.items()} == architecture.weight_shapes(cfg)
    for name, w in weights.items():
        assert got[name].dtype == np.float32 and got[name].tobytes() == w.tobytes(), name


def test_fresh_network_holds_the_shared_init_weights(backend):
    cfg = model_cfg()
    model = network_module(backend).PtychoPINN(cfg, model_probe(), log_scale=1.25, seed=7)
    expected = architecture.init_weights(cfg, seed=7, log_scale=1.25)
    got = backend.get_weights(model)
    assert got.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


# --- the forward pass against the NumPy references --------------------------------------------


@pytest.mark.parametrize("n, gridsize, object_big, probe_big, merge", [
    (32, 2, True, False, "support"), (32, 2, True, True, "support"), (32, 2, False, False, "support"),
    (32, 1, False, True, "support"), (32, 1, True, False, "support"), (32, 2, True, False, "probe"),
    (32, 2, True, True, "ptychopinn"), (64, 2, False, False, "support"), (64, 2, False, True, "support")])
def test_forward_matches_the_numpy_reference_network(backend, n, gridsize, object_big, probe_big, merge):
    """Every tap of the whole network (conv ladder, heads, physics) within SPEC §8's
    tolerance of :func:`ptyparity.reference_network.forward` on the same weights."""
    options = {"merge_normalization": "ptychopinn"} if merge == "ptychopinn" else {"merge_weighting": merge}
    cfg = model_cfg(N=n, gridsize=gridsize, object_big=object_big, probe_big=probe_big, **options)
    weights = with_random_biases(architecture.init_weights(cfg, seed=4, log_scale=2.3), seed=n)
    probe = model_probe(n)
    scaled, rel = group_batch(cfg, np.random.default_rng(9))
    taps = backend.forward(backend.build(cfg, probe, weights), scaled, rel)
    reference = reference_network.forward(cfg, weights, probe, scaled, rel)
    assert tuple(reference) == tuple(taps)
    for name, ref in reference.items():
        assert_close_rel(taps[name], ref, TAP_RTOL, name)


@pytest.mark.parametrize("object_big, probe_big, merge_weighting, gridsize", [
    (False, False, "support", 2), (False, True, "support", 2), (True, False, "support", 2),
    (True, True, "support", 2), (True, False, "probe", 2), (True, False, "support", 1)])
def test_physics_taps_match_numpy_on_the_networks_own_heads(backend, object_big, probe_big, merge_weighting,
                                                            gridsize):
    cfg = model_cfg(object_big=object_big, probe_big=probe_big, merge_weighting=merge_weighting, gridsize=gridsize)
    scaled, rel = group_batch(cfg, np.random.default_rng(5))
    model = build(backend, cfg, seed=5, log_scale=2.3)
    taps = backend.forward(model, scaled, rel)
    reference = physics.forward_physics(
        taps["amp_patches"], taps["phase_patches"], model_probe(), rel=rel, object_big=object_big,
        max_offset=MAX_OFFSET, merge_weighting=merge_weighting, probe_big=probe_big,
        log_scale=float(backend.get_weights(model)["log_scale"]))
    assert set(reference) == set(taps) - {"encoder_input", "amp_patches", "phase_patches"}
    for name, ref in reference.items():
        assert_close_rel(taps[name], ref, TAP_RTOL, name)


# --- bad input: one PtyparityError, one line, the same words in both backends ------------------


def _forward(api, *, model=None, cfg=None, transform=lambda x, rel: (x, rel), **kwargs):
    cfg = cfg or model_cfg()
    x, rel = transform(*group_batch(cfg, np.random.default_rng(0)))
    return api.forward(model or build(api, cfg), x, rel, **kwargs)


def _fit(api, *, cfg=None, **kwargs):
    ts = training_set(max_epochs=1)
    return api.fit(build(api, cfg or ts.cfg.model, log_scale=ts.scales.log_scale), ts, quiet=True, **kwargs)


def _build(api, *, cfg=None, probe=None, weights=None, **kwargs):
    cfg = cfg or model_cfg()
    weights = architecture.init_weights(cfg, seed=0, log_scale=0.0) if weights is None else weights
    return api.build(cfg, model_probe() if probe is None else probe, weights, **kwargs)


def _drop(name):
    weights = architecture.init_weights(model_cfg(), seed=0, log_scale=0.0)
    del weights[name]
    return weights


def _reshape(name, shape):
    weights = architecture.init_weights(model_cfg(), seed=0, log_scale=0.0)
    weights[name] = np.zeros(shape, np.float32)
    return weights


BAD_INPUT = {
    "channels": (lambda api: _forward(api, transform=lambda x, rel: (x[..., :1], rel)),
                 "scaled_diffraction must have shape (B, 32, 32, 4), got (2, 32, 32, 1)"),
    "rank": (lambda api: _forward(api, transform=lambda x, rel: (x[0], rel)), "scaled_diffraction must have shape"),
    "rel_shape": (lambda api: _forward(api, transform=lambda x, rel: (x, rel[:, :3])), "rel must have shape (2, 4, 2)"),
    "complex": (lambda api: _forward(api, transform=lambda x, rel: (x + 0j, rel)), "must hold real numbers"),
    "unknown_tap": (lambda api: _forward(api, keep=("amp_patches", "no_such_tap")), "unknown taps ['no_such_tap']"),
    "canvas_without_object_big": (lambda api: _forward(api, cfg=model_cfg(object_big=False), keep=["object_canvas"]),
                                  "unknown taps ['object_canvas']"),
    "keep_string": (lambda api: _forward(api, keep="amp_patches"), "not one string"),
    "forward_precision": (lambda api: _forward(api, precision="float64"), "the model computes in float32, not float64"),
    "forward_precision_name": (lambda api: _forward(api, precision="double"), "precision must be one of"),
    "build_precision_name": (lambda api: _build(api, precision="float16"), "precision must be one of"),
    "probe_shape": (lambda api: _build(api, probe=model_probe(64)), "probe must be a complex (32, 32) array"),
    "probe_real": (lambda api: _build(api, probe=np.ones((N, N), np.float32)), "probe must be a complex"),
    "missing_weight": (lambda api: _build(api, weights=_drop("amp_head.conv.bias")), "missing"),
    "weight_shape": (lambda api: _build(api, weights=_reshape("encoder.0.conv1.kernel", (3, 3, 1, 64))),
                     "weight 'encoder.0.conv1.kernel' has shape (3, 3, 1, 64), expected (3, 3, 4, 64)"),
    "weights_of_another_config": (
        lambda api: _build(api, weights=architecture.init_weights(model_cfg(probe_big=True), seed=0, log_scale=0.0)),
        "weights do not match the model config"),
    "model_for_another_config": (lambda api: _fit(api, cfg=model_cfg(merge_weighting="probe")),
                                 "model was built for merge_weighting='probe', but the training set is for "
                                 "merge_weighting='support'"),
    "accelerator": (lambda api: _fit(api, accelerator="tpu"), "accelerator must be one of cpu, gpu, auto"),
    "devices": (lambda api: _fit(api, devices=0), "devices must be a positive integer"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_one_line(backend, case):
    call, expected = BAD_INPUT[case]
    with pytest.raises(PtyparityError) as info:
        call(backend)
    message = str(info.value)
    assert expected in message and "\n" not in message, message


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_reads_the_same_in_both_backends(case):
    call, _ = BAD_INPUT[case]
    messages = []
    for name in BACKENDS:
        with pytest.raises(PtyparityError) as info:
            call(load_backend(name))
        messages.append(str(info.value))
    assert messages[0] == messages[1]
