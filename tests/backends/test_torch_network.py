"""The PyTorch network's own behaviour (SPEC §4): parameter counts, the OIHW kernel
layout, the ``nn.Module`` call, ``channels_last`` memory and autograd. What both
backends must do (taps, weights, references, bad input) is in ``test_contract.py``."""

import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from ptyparity import architecture, physics
from ptyparity.backends.torch import api, network, ops
from ptyparity.config import ModelConfig
from ptyparity.errors import PtyparityError
from tests.backends.helpers import model_cfg as _cfg
from tests.backends.helpers import model_probe
from tests.conftest import F64_RTOL, OP_RTOL, assert_close_rel

LOG_SCALE = 0.4


def _probe(n):
    return model_probe(n)


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


# --- kernel layout ---------------------------------------------------------------------


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


# --- build and the nn.Module call --------------------------------------------------------


def test_build_hands_out_an_eval_model_with_channels_last_kernels():
    cfg = _cfg()
    model = api.build(cfg, _probe(cfg.N), architecture.init_weights(cfg, seed=3, log_scale=LOG_SCALE))
    assert not model.training
    for spec in architecture.all_convs(cfg):
        assert model.get_submodule(spec.name).weight.is_contiguous(memory_format=torch.channels_last), spec.name


def test_inference_path_never_imports_lightning():
    """Loading a bundle and running its torch forward (what ``infer`` and the MLflow pyfunc
    do) needs torch only: Lightning, ~3 s of import per process, is ``fit``'s alone. A fresh
    interpreter, since this test process may already hold Lightning."""
    data = pathlib.Path(__file__).parents[1] / "data"
    code = ("import sys, numpy as np; from ptyparity import bundle; "
            f"rec = bundle.load({str(data / 'bundle_v1')!r}); api, model = rec.model('torch'); "
            f"batch = np.load({str(data / 'bundle_v1_expected.npz')!r}, allow_pickle=False); "
            "taps = api.forward(model, batch['scaled_diffraction'], batch['rel'], keep=['amp_patches']); "
            "api.versions(); "
            "print(taps['amp_patches'].shape == batch['amp_patches'].shape, 'torch' in sys.modules, "
            "sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True []", out.stdout + out.stderr


def test_forward_rejects_wrong_input_shape():
    cfg = _cfg()
    x, rel = _inputs(cfg)
    with pytest.raises(PtyparityError, match="scaled_diffraction must have shape"):
        _model(cfg)(x[..., :1], rel)


def test_forward_object_big_needs_rel():
    cfg = _cfg(object_big=True)
    x, _ = _inputs(cfg)
    with pytest.raises(PtyparityError, match="rel"):
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
    """d/dls mean(lam - y log(lam + eps)) with lam = e^{2 ls} I is mean(2 lam (1 - y / (lam + eps)));
    an exact claim, so in float64."""
    rng = np.random.default_rng(0)
    inten = rng.exponential(3.0, size=(2, 32, 32, 4))
    target = np.sqrt(rng.poisson(6.0, size=inten.shape))
    ls = torch.tensor(LOG_SCALE, dtype=torch.float64, requires_grad=True)
    ops.poisson_loss(inten, target, ls, precision="float64").backward()
    lam = np.exp(2 * LOG_SCALE) * inten
    expected = np.mean(2 * lam * (1 - target**2 / (lam + physics.LOG_EPS)))
    assert ls.grad.item() == pytest.approx(expected, rel=F64_RTOL)


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
