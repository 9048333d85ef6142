"""The PtychoPINN network in PyTorch (SPEC §4), read top to bottom.

Layers come from :func:`ptyparity.architecture.conv_layers`, so every convolution's
module path *is* its canonical name (``encoder.0.conv1``, ``amp_head.conv``, …) and
weights move to and from the backend-neutral HWIO dict without a lookup table. The
conv stack runs channel-first ``(B, C, H, W)`` with ``channels_last`` memory inside;
every tap leaves in the canonical channel-last layout ``(B, N, N, C)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ptyparity import architecture, physics
from ptyparity.architecture import HEAD_BORDER_CHANNELS, LOG_SCALE
from ptyparity.backends import contract
from ptyparity.backends.torch import ops
from ptyparity.errors import PtyparityError


class Conv3x3(nn.Conv2d):
    """A 3x3 'same' convolution (padding 1), followed by ReLU when its spec says so."""

    def __init__(self, spec: architecture.ConvSpec):
        super().__init__(spec.c_in, spec.c_out, kernel_size=3, padding=1)
        self.relu = spec.relu

    def forward(self, x):
        x = super().forward(x)
        return F.relu(x) if self.relu else x


def _convs(specs):
    """One block's convolutions keyed by the last part of their canonical name."""
    return nn.ModuleDict({spec.name.rsplit(".", 1)[1]: Conv3x3(spec) for spec in specs})


def _amplitude_activation(x):
    return torch.sigmoid(x)


def _phase_activation(x):
    return math.pi * torch.tanh(x)


class PtychoPINN(nn.Module):
    """Diffraction groups to object patches to predicted diffraction amplitudes.

    Parameters
    ----------
    cfg : ModelConfig
    probe : ndarray, shape (N, N), complex
        The probe the model illuminates with, already scaled (and masked when
        ``probe_mask``); stored as a buffer.
    log_scale : float
        Initial ``log(intensity_scale)``; a parameter, trainable only when
        ``cfg.intensity_scale_trainable``.
    seed : int
        Seed of :func:`ptyparity.architecture.init_weights` (Glorot-uniform kernels,
        zero biases), so both backends start from identical weights.
    precision : {"float32", "float64"}
        Dtype of the parameters, the probe buffer (complex64 / complex128) and so of the
        whole forward pass; :func:`set_precision` switches it in place. "float64" is
        the parity-verification mode (``TrainConfig.precision``).
    """

    def __init__(self, cfg, probe: np.ndarray, *, log_scale: float, seed: int = 0, precision: str = "float32"):
        super().__init__()
        contract.check_precision(precision)
        contract.check_supported(cfg)
        probe = contract.check_probe(cfg, probe)
        self.cfg = cfg
        self.precision = "float32"
        # head_layout "ptychopinn" with probe_big: where the border branch adds (zero on the
        # central N/2 window); not a weight, so not in the state dict. Casts with the model.
        self.register_buffer("border_mask", torch.from_numpy(physics.border_mask(cfg.N)), persistent=False)
        self._probe_source = np.array(probe, np.complex128)  # the probe as given, for set_precision
        blocks = architecture.conv_layers(cfg)
        L = cfg.n_stages
        self.encoder = nn.ModuleList([_convs(blocks[f"encoder.{i}"]) for i in range(L)])
        self.amp_decoder = nn.ModuleList([_convs(blocks[f"amp_decoder.{j}"]) for j in range(L - 1)])
        self.amp_head = _convs(blocks["amp_head"])
        self.phase_decoder = nn.ModuleList([_convs(blocks[f"phase_decoder.{j}"]) for j in range(L - 1)])
        self.phase_head = _convs(blocks["phase_head"])
        self.log_scale = nn.Parameter(torch.tensor(float(log_scale), dtype=torch.float32),
                                      requires_grad=cfg.intensity_scale_trainable)
        self.register_buffer("probe", ops.to_backend(probe.astype(np.complex64)))
        self.to(memory_format=torch.channels_last)  # conv kernels in NHWC memory
        set_weights(self, architecture.init_weights(cfg, seed=seed, log_scale=log_scale))
        set_precision(self, precision)

    def _decode(self, decoder, head, h, activation):
        """One decoder branch: (B, F, N/2**L, ...) features to an activated (B, C, N, N) patch."""
        for block in decoder:  # [conv+ReLU, conv+ReLU, upsample2], ends at N/2
            for conv in block.values():
                h = conv(h)
            h = F.interpolate(h, scale_factor=2, mode="nearest")
        pad = self.cfg.N // 4
        if self.cfg.head_layout == "ptychopinn":
            return self._ptychopinn_head(head, h, activation, pad)
        if self.cfg.probe_big:  # one more stage to full N: upsample2, up_conv+ReLU, conv to C
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = head["up_conv"](h)
            return activation(head["conv"](h))  # (B, C, N, N)
        x = activation(head["conv"](h))  # (B, C, N/2, N/2)
        return F.pad(x, (pad, pad, pad, pad))  # (B, C, N, N), zero outside the support

    def _ptychopinn_head(self, head, h, activation, pad):
        """Upstream's head (``head_layout`` "ptychopinn", as ``reference_network.head``):
        (B, F, N/2, N/2) decoder features to (B, C, N, N)."""
        main = activation(head["conv"](h[:, :-HEAD_BORDER_CHANNELS]))  # all but the last 4 channels
        main = F.pad(main, (pad, pad, pad, pad))  # (B, C, N, N)
        if not self.cfg.probe_big:
            return main
        b = head["border_conv2"](head["border_conv1"](h[:, -HEAD_BORDER_CHANNELS:]))  # conv+ReLU twice
        b = F.interpolate(b, scale_factor=2, mode="nearest")  # (B, 2048 f / N, N, N)
        b = F.silu(head["border_conv3"](b))  # swish, for the phase head too
        return main + self.border_mask * b  # zero inside the central N/2 window

    def forward(self, scaled_diffraction, rel=None):
        """Run the network and the physics.

        Parameters
        ----------
        scaled_diffraction : Tensor or ndarray, shape (B, N, N, C), float32
            Measured amplitudes in count units, ``s * X``.
        rel : Tensor or ndarray, shape (B, C, 2), optional
            Channel offsets ``[x, y]`` from the group centre; required when ``object_big``.

        Returns
        -------
        taps : dict of Tensor
            ``encoder_input``, ``amp_patches``, ``phase_patches``, then the taps of
            :func:`ptyparity.backends.torch.ops.forward_physics`, all channel-last.
        """
        cfg = self.cfg
        device, real = self.log_scale.device, ops.real_dtype(self.precision)

        def as_input(x):  # in the model's precision, on its device
            x = x if isinstance(x, torch.Tensor) else ops.to_backend(x, precision=self.precision)
            return x.to(device=device, dtype=real)

        scaled_diffraction = as_input(scaled_diffraction)
        rel = None if rel is None else as_input(rel)
        if scaled_diffraction.ndim != 4 or tuple(scaled_diffraction.shape[1:]) != (cfg.N, cfg.N, cfg.channels):
            raise PtyparityError(f"scaled_diffraction must have shape (B, {cfg.N}, {cfg.N}, {cfg.channels}), "
                                 f"got {tuple(scaled_diffraction.shape)}")
        x = scaled_diffraction / torch.exp(self.log_scale)  # (B, N, N, C)
        taps = {"encoder_input": x}

        h = x.permute(0, 3, 1, 2)  # (B, C, N, N), already channels_last in memory
        for block in self.encoder:  # [conv+ReLU, conv+ReLU, maxpool2]
            for conv in block.values():
                h = conv(h)
            h = F.max_pool2d(h, 2)
        # h: (B, 128 f, N / 2**L, N / 2**L)

        amp = self._decode(self.amp_decoder, self.amp_head, h, _amplitude_activation)  # (B, C, N, N)
        phase = self._decode(self.phase_decoder, self.phase_head, h, _phase_activation)  # (B, C, N, N)
        taps["amp_patches"] = amp.permute(0, 2, 3, 1)  # (B, N, N, C)
        taps["phase_patches"] = phase.permute(0, 2, 3, 1)  # (B, N, N, C)

        taps.update(ops.forward_physics(
            taps["amp_patches"], taps["phase_patches"], self.probe, rel=rel,
            object_big=cfg.object_big, max_offset=cfg.max_offset,
            merge_weighting=cfg.merge_weighting, probe_big=cfg.probe_big,
            log_scale=self.log_scale, merge_normalization=cfg.merge_normalization, precision=self.precision))
        return taps


# --- canonical weights (HWIO kernels, names from architecture.weight_shapes) ---------


def get_weights(model):
    """The model's weights as the backend-neutral dict of float32 NumPy arrays.

    Returns
    -------
    weights : dict of ndarray
        ``{name}.kernel`` (3, 3, c_in, c_out) HWIO, ``{name}.bias`` (c_out,) and
        ``log_scale`` (), names exactly those of :func:`ptyparity.architecture.weight_shapes`.
    """
    weights = {}
    for spec in architecture.all_convs(model.cfg):
        conv = model.get_submodule(spec.name)
        kernel = conv.weight.detach().cpu().permute(2, 3, 1, 0)  # OIHW -> HWIO
        weights[f"{spec.name}.kernel"] = np.ascontiguousarray(kernel.numpy(), dtype=np.float32)
        weights[f"{spec.name}.bias"] = np.ascontiguousarray(ops.to_numpy(conv.bias), dtype=np.float32)
    weights[LOG_SCALE] = np.asarray(ops.to_numpy(model.log_scale), dtype=np.float32)
    return weights


def set_weights(model, weights):
    """Load a canonical weights dict (validated first) into ``model`` in place."""
    architecture.check_weights(model.cfg, weights)
    with torch.no_grad():
        for spec in architecture.all_convs(model.cfg):
            conv = model.get_submodule(spec.name)
            kernel = torch.from_numpy(np.asarray(weights[f"{spec.name}.kernel"], np.float32))
            conv.weight.copy_(kernel.permute(3, 2, 0, 1))  # HWIO -> OIHW (copy_ keeps memory format)
            conv.bias.copy_(torch.from_numpy(np.asarray(weights[f"{spec.name}.bias"], np.float32)))
        model.log_scale.copy_(torch.as_tensor(np.asarray(weights[LOG_SCALE], np.float32)))
    return model


def set_precision(model, precision):
    """Switch ``model`` in place to ``precision`` ("float32" or "float64"): parameters
    to that real dtype, the probe buffer to complex64 / complex128 (rebuilt from the
    probe the model was given, so float64 uses the unrounded probe). Float32 weights
    widen exactly; narrowing rounds to the nearest float32."""
    ops.real_dtype(precision)  # validates
    # Floating parameters only (Module.to(dtype) would also cast the complex probe to real);
    # the conversions keep the channels_last strides.
    model.double() if precision == "float64" else model.float()
    probe = ops.to_backend(model._probe_source.astype(np.complex64 if precision == "float32" else np.complex128),
                           device=model.probe.device, precision=precision)
    model.probe = probe  # registered buffer: assignment replaces it
    model.precision = precision
    return model


def build_model(cfg, probe, weights, *, precision="float32"):
    """A :class:`PtychoPINN` for ``cfg`` and ``probe`` holding ``weights`` (canonical dict),
    computing in ``precision``."""
    architecture.check_weights(cfg, weights)
    model = PtychoPINN(cfg, probe, log_scale=float(np.asarray(weights[LOG_SCALE])), precision=precision)
    return set_weights(model, weights)
