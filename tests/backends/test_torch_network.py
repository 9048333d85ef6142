"""The PyTorch PtychoPINN network (SPEC §4, §6) and torch-only gradient checks."""

import math

import numpy as np
import pytest
import torch

from ptyparity import architecture, physics
from ptyparity.backends.torch import network, ops
from ptyparity.config import ModelConfig
from ptyparity.errors import PtyparityError
from tests.conftest import OP_RTOL, TAP_RTOL, assert_close_rel

LOG_SCALE = 0.4
MAX_OFFSET = 6
TAPS = ("encoder_input", "amp_patches", "phase_patches", "object_patches", "object_extracted",
        "exit_wave", "pred_intensity", "pred_amplitude", "pred_amplitude_counts")


def _probe(n):
    """A smoothed disk with a quadratic phase, like the simulation's probe."""
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    r2 = (xx**2 + yy**2) / (n / 4) ** 2
    return (np.exp(-r2**2) * np.exp(1j * 2.0 * r2)).astype(np.complex64)


def _cfg(**kw):
    base = dict(N=32, gridsize=2, n_filters_scale=1, object_big=True, probe_big=False, max_offset=MAX_OFFSET)
    base.update(kw)
    return ModelConfig(**base)


def _inputs(cfg, b=2, seed=0):
    """Count-unit diffraction (B, N, N, C) and realistic offsets rel (B, C, 2)."""
    rng = np.random.default_rng(seed)
    x = np.sqrt(rng.poisson(4.0, size=(b, cfg.N, cfg.N, cfg.channels))).astype(np.float32)
    pos = rng.integers(0, cfg.max_offset + 1, size=(b, cfg.channels, 2)).astype(np.float64)
    rel = (pos - pos.mean(axis=1, keepdims=True)).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(rel)


def _model(cfg, seed=0):
    return network.PtychoPINN(cfg, _probe(cfg.N), log_scale=LOG_SCALE, seed=seed)


# --- parameters ------------------------------------------------------------------------


def _hand_param_count(n, gridsize, f, probe_big):
    """Parameter count written out from the SPEC §4 ladder, independently of
    ``architecture``: 3x3 convs hold ``9 c_in c_out + c_out`` parameters."""
    def conv(c_in, c_out):
        return 9 * c_in * c_out + c_out

    c = gridsize**2
    L = int(round(math.log2(n))) - 3
    total, c_in = 0, c
    for i in range(L):  # encoder: 128 f / 2**(L-1-i), two convs per stage
        width = 128 * f // 2 ** (L - 1 - i)
        total += conv(c_in, width) + conv(width, width)
        c_in = width
    assert c_in == 128 * f
    branch, c_in = 0, 128 * f
    for j in range(L - 1):  # decoder: 32 f * 2**(L-2-j), two convs per stage
        width = 32 * f * 2 ** (L - 2 - j)
        branch += conv(c_in, width) + conv(width, width)
        c_in = width
    assert c_in == 32 * f
    if probe_big:
        branch += conv(c_in, 32 * f) + conv(32 * f, c)
    else:
        branch += conv(c_in, c)
    return total + 2 * branch  # amplitude and phase branches


@pytest.mark.parametrize("probe_big", [False, True])
@pytest.mark.parametrize("f", [1, 2])
@pytest.mark.parametrize("n", [32, 64, 128])
def test_param_count(n, f, probe_big):
    cfg = ModelConfig(N=n, gridsize=2, n_filters_scale=f, probe_big=probe_big)
    model = network.PtychoPINN(cfg, _probe(n), log_scale=LOG_SCALE)
    conv_params = sum(p.numel() for name, p in model.named_parameters() if name != "log_scale")
    assert conv_params == architecture.param_count(cfg)
    assert conv_params == _hand_param_count(n, 2, f, probe_big)
    assert model.log_scale.numel() == 1
    assert len(list(model.parameters())) == 2 * len(architecture.all_convs(cfg)) + 1


def test_param_count_known_value_n32():
    """Spelled out for N=32, gridsize 2, f=1, probe_big false: encoder 4->64->64,
    64->128->128; each decoder 128->32->32; each head 32->4."""
    expected = (9 * 4 * 64 + 64) + (9 * 64 * 64 + 64) + (9 * 64 * 128 + 128) + (9 * 128 * 128 + 128) \
        + 2 * ((9 * 128 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 4 + 4))
    assert _hand_param_count(32, 2, 1, False) == expected
    assert architecture.param_count(_cfg()) == expected


# --- canonical weights -----------------------------------------------------------------


@pytest.mark.parametrize("probe_big", [False, True])
def test_weights_round_trip_is_bit_identical(probe_big):
    cfg = _cfg(probe_big=probe_big)
    source = _model(cfg, seed=1)
    weights = network.get_weights(source)
    assert {k: v.shape for k, v in weights.items()} == architecture.weight_shapes(cfg)
    assert all(v.dtype == np.float32 for v in weights.values())
    target = _model(cfg, seed=2)
    before = network.get_weights(target)
    assert any(not np.array_equal(before[k], weights[k]) for k in weights if k.endswith(".kernel"))
    network.set_weights(target, weights)
    after = network.get_weights(target)
    for name in weights:
        np.testing.assert_array_equal(after[name], weights[name], err_msg=name)


def test_fresh_model_starts_from_init_weights():
    cfg = _cfg()
    expected = architecture.init_weights(cfg, seed=7, log_scale=LOG_SCALE)
    got = network.get_weights(network.PtychoPINN(cfg, _probe(cfg.N), log_scale=LOG_SCALE, seed=7))
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_build_model_loads_init_weights_unchanged():
    cfg = _cfg(probe_big=True)
    weights = architecture.init_weights(cfg, seed=3, log_scale=-1.25)
    model = network.build_model(cfg, _probe(cfg.N), weights)
    got = network.get_weights(model)
    assert set(got) == set(weights)
    for name in weights:
        np.testing.assert_array_equal(got[name], weights[name], err_msg=name)
    assert model.log_scale.item() == np.float32(-1.25)


def test_kernels_are_hwio_cross_correlation():
    """Known answer for the layout: the first conv equals a NumPy 'same'
    cross-correlation with the canonical HWIO kernel, then ReLU."""
    cfg = _cfg()
    model = _model(cfg, seed=5)
    weights = network.get_weights(model)
    kernel = weights["encoder.0.conv1.kernel"].astype(np.float64)  # (3, 3, C, F)
    bias = np.linspace(-0.1, 0.1, kernel.shape[-1])
    weights["encoder.0.conv1.bias"] = bias.astype(np.float32)
    network.set_weights(model, weights)
    x = np.random.default_rng(0).normal(size=(1, cfg.N, cfg.N, cfg.channels)).astype(np.float32)
    xp = np.pad(x[0].astype(np.float64), ((1, 1), (1, 1), (0, 0)))  # (N+2, N+2, C)
    ref = np.zeros((cfg.N, cfg.N, kernel.shape[-1]))
    for dy in range(3):
        for dx in range(3):
            ref += xp[dy : dy + cfg.N, dx : dx + cfg.N, :] @ kernel[dy, dx]
    ref = np.maximum(ref + bias, 0.0)
    with torch.no_grad():
        out = model.encoder[0]["conv1"](torch.from_numpy(x).permute(0, 3, 1, 2))  # (1, F, N, N)
    assert_close_rel(out[0].permute(1, 2, 0).numpy(), ref, OP_RTOL, "encoder.0.conv1")


def test_set_weights_rejects_wrong_shape():
    cfg = _cfg()
    model = _model(cfg)
    weights = network.get_weights(model)
    weights["amp_head.conv.kernel"] = np.zeros((3, 3, 32, 1), np.float32)
    with pytest.raises(PtyparityError, match="amp_head.conv.kernel"):
        network.set_weights(model, weights)


def test_set_weights_rejects_missing_name():
    cfg = _cfg()
    model = _model(cfg)
    weights = network.get_weights(model)
    del weights["log_scale"]
    with pytest.raises(PtyparityError, match="missing"):
        network.set_weights(model, weights)


def test_set_weights_rejects_config_mismatch():
    weights = network.get_weights(_model(_cfg(probe_big=True)))
    with pytest.raises(PtyparityError):
        network.build_model(_cfg(probe_big=False), _probe(32), weights)


def test_probe_must_match_n():
    with pytest.raises(ValueError, match="probe"):
        network.PtychoPINN(_cfg(), _probe(64), log_scale=LOG_SCALE)


# --- forward pass ----------------------------------------------------------------------


@pytest.mark.parametrize("probe_big", [False, True])
@pytest.mark.parametrize("object_big", [False, True])
@pytest.mark.parametrize("gridsize", [1, 2])
def test_tap_shapes(gridsize, object_big, probe_big):
    cfg = _cfg(gridsize=gridsize, object_big=object_big, probe_big=probe_big)
    x, rel = _inputs(cfg, b=2)
    with torch.no_grad():
        taps = _model(cfg)(x, rel)
    expected = set(TAPS) | ({"object_canvas"} if object_big else set())
    assert set(taps) == expected
    c = gridsize**2
    complex_taps = {"object_patches", "object_extracted", "exit_wave", "object_canvas"}
    for name in TAPS:
        assert tuple(taps[name].shape) == (2, 32, 32, c), name
        assert taps[name].dtype == (torch.complex64 if name in complex_taps else torch.float32), name
    if object_big:
        assert tuple(taps["object_canvas"].shape) == (2, cfg.canvas_size, cfg.canvas_size)


def test_encoder_input_and_count_units():
    cfg = _cfg()
    x, rel = _inputs(cfg)
    with torch.no_grad():
        taps = _model(cfg)(x, rel)
    np.testing.assert_allclose(taps["encoder_input"].numpy(), x.numpy() / np.exp(LOG_SCALE), rtol=1e-6)
    np.testing.assert_allclose(taps["pred_amplitude_counts"].numpy(),
                               np.exp(LOG_SCALE) * taps["pred_amplitude"].numpy(), rtol=1e-6)


@pytest.mark.parametrize("probe_big", [False, True])
def test_amplitude_outside_support(probe_big):
    cfg = _cfg(probe_big=probe_big)
    x, rel = _inputs(cfg)
    with torch.no_grad():
        taps = _model(cfg)(x, rel)
    outside = physics.support_mask(cfg.N) == 0  # central N/2 window is the support
    amp = taps["amp_patches"].numpy()[:, outside]  # (B, n_outside, C)
    phase = taps["phase_patches"].numpy()[:, outside]
    if probe_big:  # the full-N head predicts everywhere: sigmoid > 0
        assert amp.min() > 0
    else:
        assert np.all(amp == 0) and np.all(phase == 0)
        inside = taps["amp_patches"].numpy()[:, ~outside]
        assert inside.min() > 0 and inside.max() < 1


def _numpy_heads(cfg, weights, scaled_diffraction):
    """The SPEC §4 ladder in float64 NumPy, channel-last, from canonical weights:
    an independent reference for the conv stack (pooling, upsampling, heads)."""
    def conv(x, name, relu):  # 3x3 'same' cross-correlation, HWIO kernel
        k, b = weights[f"{name}.kernel"].astype(np.float64), weights[f"{name}.bias"].astype(np.float64)
        h, w = x.shape[1:3]
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = sum(xp[:, dy : dy + h, dx : dx + w, :] @ k[dy, dx] for dy in range(3) for dx in range(3)) + b
        return np.maximum(out, 0.0) if relu else out

    def pool(x):  # maxpool 2x2: (B, H, W, F) -> (B, H/2, W/2, F)
        b, h, w, f = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, f).max(axis=(2, 4))

    def up(x):  # nearest upsample x2
        return x.repeat(2, axis=1).repeat(2, axis=2)

    L = cfg.n_stages
    h = scaled_diffraction.astype(np.float64) / np.exp(float(weights["log_scale"]))
    for i in range(L):
        h = pool(conv(conv(h, f"encoder.{i}.conv1", True), f"encoder.{i}.conv2", True))
    out = {}
    for branch, act in [("amp", lambda t: 1 / (1 + np.exp(-t))), ("phase", lambda t: np.pi * np.tanh(t))]:
        g = h
        for j in range(L - 1):
            g = up(conv(conv(g, f"{branch}_decoder.{j}.conv1", True), f"{branch}_decoder.{j}.conv2", True))
        if cfg.probe_big:
            g = act(conv(conv(up(g), f"{branch}_head.up_conv", True), f"{branch}_head.conv", False))
        else:
            q = cfg.N // 4
            g = np.pad(act(conv(g, f"{branch}_head.conv", False)), ((0, 0), (q, q), (q, q), (0, 0)))
        out[f"{branch}_patches"] = g
    return out


@pytest.mark.parametrize("probe_big", [False, True])
@pytest.mark.parametrize("n", [32, 64])
def test_network_heads_match_numpy_ladder(n, probe_big):
    cfg = _cfg(N=n, probe_big=probe_big, object_big=False)
    model = _model(cfg, seed=4)
    weights = network.get_weights(model)
    for name in weights:  # nonzero biases so every bias is exercised
        if name.endswith(".bias"):
            weights[name] = np.random.default_rng(len(name)).uniform(-0.05, 0.05, weights[name].shape).astype(np.float32)
    network.set_weights(model, weights)
    x, rel = _inputs(cfg, b=2, seed=9)
    with torch.no_grad():
        taps = model(x, rel)
    ref = _numpy_heads(cfg, weights, x.numpy())
    for name, r in ref.items():
        assert_close_rel(taps[name].numpy(), r, TAP_RTOL, name)


@pytest.mark.parametrize("object_big,probe_big,merge_weighting", [
    (False, False, "support"), (True, False, "support"), (True, False, "probe"), (True, True, "support"),
    (False, True, "support")])
def test_physics_taps_match_numpy(object_big, probe_big, merge_weighting):
    """The network's physics taps equal the NumPy reference run on its own head outputs."""
    cfg = _cfg(object_big=object_big, probe_big=probe_big, merge_weighting=merge_weighting)
    model = _model(cfg, seed=11)
    x, rel = _inputs(cfg, b=2, seed=3)
    with torch.no_grad():
        taps = model(x, rel)
    weights = network.get_weights(model)
    ref = physics.forward_physics(taps["amp_patches"].numpy(), taps["phase_patches"].numpy(), _probe(cfg.N),
                                  rel=rel.numpy(), object_big=object_big, max_offset=cfg.max_offset,
                                  merge_weighting=merge_weighting, probe_big=probe_big,
                                  log_scale=float(weights["log_scale"]))
    for name, r in ref.items():
        assert_close_rel(ops.to_numpy(taps[name]), r, TAP_RTOL, name)


def test_forward_rejects_wrong_input_shape():
    cfg = _cfg()
    x, rel = _inputs(cfg)
    with pytest.raises(ValueError, match="scaled_diffraction"):
        _model(cfg)(x[..., :1], rel)


def test_forward_object_big_needs_rel():
    cfg = _cfg(object_big=True)
    x, _ = _inputs(cfg)
    with pytest.raises(ValueError, match="rel"):
        _model(cfg)(x)


# --- gradients -------------------------------------------------------------------------


@pytest.mark.parametrize("trainable", [False, True])
def test_log_scale_gradient_only_when_trainable(trainable):
    cfg = _cfg(intensity_scale_trainable=trainable)
    model = _model(cfg)
    x, rel = _inputs(cfg)
    taps = model(x, rel)
    ops.poisson_loss(taps["pred_intensity"], x, model.log_scale).backward()
    assert model.log_scale.requires_grad == trainable
    if trainable:
        assert model.log_scale.grad is not None and model.log_scale.grad.item() != 0.0
    else:
        assert model.log_scale.grad is None
    kernel_grad = model.get_submodule("encoder.0.conv1").weight.grad
    assert kernel_grad is not None and torch.isfinite(kernel_grad).all() and kernel_grad.abs().max() > 0


def test_poisson_loss_log_scale_gradient_known_answer():
    """d/dls mean(lam - y log(lam + eps)) with lam = e^{2 ls} I is mean(2 lam (1 - y / (lam + eps)))."""
    rng = np.random.default_rng(0)
    inten = rng.exponential(3.0, size=(2, 32, 32, 4))
    target = np.sqrt(rng.poisson(6.0, size=inten.shape))
    ls = torch.tensor(LOG_SCALE, requires_grad=True)
    ops.poisson_loss(ops.to_backend(inten), ops.to_backend(target), ls).backward()
    lam = np.exp(2 * LOG_SCALE) * inten
    expected = np.mean(2 * lam * (1 - target**2 / (lam + physics.LOG_EPS)))
    assert ls.grad.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("loss", ["poisson", "mae"])
@pytest.mark.parametrize("object_big", [False, True])
def test_gradient_finite_where_exit_wave_is_zero(loss, object_big):
    """Zero amplitude gives an exit wave and far field of exactly 0, where sqrt or
    |.| would have an infinite/NaN gradient; the contract's re**2 + im**2 and
    sqrt(I + 1e-12) keep the gradient finite."""
    n, c = 32, 4
    amp = torch.zeros(1, n, n, c, requires_grad=True)
    phase = torch.zeros(1, n, n, c, requires_grad=True)
    rel = torch.tensor([[[-0.75, -0.25], [0.25, -0.25], [-0.25, 0.75], [0.75, -0.25]]])
    taps = ops.forward_physics(amp, phase, _probe(n), rel=rel, object_big=object_big, max_offset=2,
                               log_scale=LOG_SCALE)
    assert taps["exit_wave"].abs().max() == 0 and taps["pred_intensity"].max() == 0
    target = torch.full((1, n, n, c), 2.0)
    if loss == "poisson":
        value = ops.poisson_loss(taps["pred_intensity"], target, LOG_SCALE)
    else:
        value = ops.mae_loss(taps["pred_amplitude"], target, LOG_SCALE)
    value.backward()
    assert torch.isfinite(amp.grad).all() and torch.isfinite(phase.grad).all()
