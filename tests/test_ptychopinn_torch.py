"""PtychoPINN's PyTorch port (``ptycho_torch``): state dicts import when their modules map 1:1
onto ptyparity's convs, and otherwise one error lists the modules without counterpart."""

import numpy as np
import pytest

from ptyparity import architecture, ptychopinn
from ptyparity.config import PTYCHOPINN_CONVENTIONS, ModelConfig
from ptyparity.errors import PtyparityError


def _torch_state(cfg, rng, *, cbam=False):
    """A state dict laid out like a plain port: role-named 3x3 convs (OIHW) and identity scalars."""
    import torch

    state = {}
    for spec in architecture.all_convs(cfg):
        block, _, conv = spec.name.rpartition(".")
        prefix = {"amp_head": "decoder_amp.head", "phase_head": "decoder_phase.head"}.get(block, block)
        prefix = prefix.replace("amp_decoder", "decoder_amp.blocks").replace("phase_decoder", "decoder_phase.blocks")
        # An "autoencoder." root, as ports often have: its role is read from words, not substrings.
        prefix = "autoencoder." + prefix.replace("encoder.", "encoder.blocks.")
        state[f"{prefix}.{conv}.weight"] = torch.tensor(rng.normal(size=(spec.c_out, spec.c_in, 3, 3)),
                                                        dtype=torch.float32)
        state[f"{prefix}.{conv}.bias"] = torch.tensor(rng.normal(size=spec.c_out), dtype=torch.float32)
    for key in ("forward_model.alpha", "forward_model.beta", "rect_scaler.s1", "rect_scaler.s2"):
        state[key] = torch.tensor(1.0)
    if cbam:
        state["autoencoder.encoder.blocks.0.attention.ChannelGate.mlp.1.weight"] = torch.zeros(2, 32)
        state["autoencoder.encoder.blocks.0.attention.ChannelGate.mlp.1.bias"] = torch.zeros(2)
        state["autoencoder.encoder.blocks.0.attention.ChannelGate.mlp.3.weight"] = torch.zeros(32, 2)
        state["autoencoder.encoder.blocks.0.attention.ChannelGate.mlp.3.bias"] = torch.zeros(32)
        state["autoencoder.encoder.blocks.0.attention.SpatialGate.compress.weight"] = torch.zeros(1, 2, 7, 7)
    return state


def test_torch_state_dict_maps_one_to_one(tmp_path, rng):
    import torch

    cfg = ModelConfig(N=64, gridsize=2, n_filters_scale=1, max_offset=7, **PTYCHOPINN_CONVENTIONS)
    state = _torch_state(cfg, rng)
    torch.save(state, tmp_path / "model.pth")
    weights = ptychopinn.read_torch_state_dict(tmp_path / "model.pth", cfg)
    assert set(weights) == set(architecture.weight_shapes(cfg)) - {"log_scale"}
    head = state["autoencoder.decoder_amp.head.conv.weight"].numpy()
    assert head.shape == (4, 28, 3, 3)  # OIHW, as the port stores it
    assert np.array_equal(weights["amp_head.conv.kernel"], np.transpose(head, (2, 3, 1, 0)))
    bias = state["autoencoder.decoder_phase.blocks.1.conv2.bias"].numpy()
    assert np.array_equal(weights["phase_decoder.1.conv2.bias"], bias)


def test_torch_state_dict_with_cbam_lists_the_modules_without_counterpart(tmp_path, rng):
    import torch

    cfg = ModelConfig(N=64, gridsize=2, n_filters_scale=1, max_offset=7, **PTYCHOPINN_CONVENTIONS)
    state = _torch_state(cfg, rng, cbam=True)
    state["forward_model.beta"] = torch.tensor(2.0)
    torch.save(state, tmp_path / "model.pth")
    with pytest.raises(PtyparityError) as info:
        ptychopinn.read_torch_state_dict(tmp_path / "model.pth", cfg)
    msg = str(info.value)
    assert "\n" not in msg and "4 module(s) have no counterpart" in msg
    gate = "autoencoder.encoder.blocks.0.attention"
    for module in (f"{gate}.ChannelGate.mlp.1", f"{gate}.ChannelGate.mlp.3", f"{gate}.SpatialGate.compress",
                   "forward_model.beta"):
        assert module in msg
    assert "forward_model.alpha" not in msg  # 1.0: an identity, accepted


def test_torch_files_that_are_not_state_dicts_are_refused(tmp_path, rng):
    import torch

    cfg = ModelConfig(N=64, gridsize=2, n_filters_scale=1, max_offset=7, **PTYCHOPINN_CONVENTIONS)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(PtyparityError, match="not a state dict of tensors"):
        ptychopinn.read_torch_state_dict(tmp_path / "list.pth", cfg)
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    with pytest.raises(PtyparityError, match=r"not loadable with torch.load\(weights_only=True\)"):
        ptychopinn.read_torch_state_dict(tmp_path / "junk.pth", cfg)
    state = _torch_state(cfg, rng)
    for leaf in ("weight", "bias"):
        del state[f"autoencoder.decoder_phase.head.conv.{leaf}"]
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(PtyparityError, match=r"lacks 2 conv weight\(s\).*phase_head.conv.kernel"):
        ptychopinn.read_torch_state_dict(tmp_path / "short.pth", cfg)
