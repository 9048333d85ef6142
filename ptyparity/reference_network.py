"""NumPy float64 reference of the whole network: canonical weights in, ptyparity's taps out.

The judge of a backend's (or an imported model's) forward pass, as :mod:`ptyparity.physics`
is the judge of the physics ops. The layer ladder comes from
:func:`ptyparity.architecture.conv_layers` and the weights are the canonical dict
(``weight_shapes`` names, HWIO kernels), so the reference reads exactly what a bundle holds.
Every layer is written out plainly (3x3 'same' cross-correlation with bias, ReLU, 2x2 max
pool, nearest 2x upsampling) and computed in float64; the heads implement both
``head_layout`` choices; the physics half is :func:`ptyparity.physics.forward_physics`.
"""

from __future__ import annotations

import math

import numpy as np

from ptyparity import architecture, physics
from ptyparity.architecture import HEAD_BORDER_CHANNELS, LOG_SCALE


def conv3x3(x, kernel, bias):
    """3x3 'same' convolution (cross-correlation, zero padding 1, stride 1) with bias.

    Parameters
    ----------
    x : ndarray, shape (B, H, W, C_in)
    kernel : ndarray, shape (3, 3, C_in, C_out)
        HWIO, as Keras stores it.
    bias : ndarray, shape (C_out,)

    Returns
    -------
    y : ndarray, shape (B, H, W, C_out), float64
        ``y[b, i, j] = bias + sum_{dy, dx} x[b, i + dy - 1, j + dx - 1] @ kernel[dy, dx]``.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    if kernel.shape[:2] != (3, 3) or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"kernel {kernel.shape} does not fit input channels {x.shape[-1]}")
    b, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = np.broadcast_to(np.asarray(bias, np.float64), (b, h, w, kernel.shape[3])).copy()
    for dy in range(3):
        for dx in range(3):
            y += padded[:, dy : dy + h, dx : dx + w, :] @ kernel[dy, dx]
    return y


def relu(x):
    return np.maximum(x, 0.0)


def sigmoid(x):
    """``1 / (1 + exp(-x))`` written as ``(1 + tanh(x/2)) / 2`` (no overflow)."""
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def swish(x):
    """``x * sigmoid(x)`` (Keras' ``swish``, torch's ``silu``)."""
    return x * sigmoid(x)


def maxpool2(x):
    """2x2 max pool, stride 2, over axes (1, 2) of ``(B, H, W, C)`` (H, W even)."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def upsample2(x):
    """Nearest-neighbour 2x upsampling over axes (1, 2) of ``(B, H, W, C)``."""
    return np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)


def amplitude_activation(x):
    return sigmoid(x)


def phase_activation(x):
    return math.pi * np.tanh(x)


def _apply(spec, weights, x):
    y = conv3x3(x, weights[f"{spec.name}.kernel"], weights[f"{spec.name}.bias"])
    return relu(y) if spec.relu else y


def _pad_to_n(x, n):
    """Zero-pad ``(B, N/2, N/2, C)`` by N/4 on each side to ``(B, N, N, C)``."""
    p = n // 4
    return np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))


def head(cfg, weights, branch, features, activation):
    """One head: decoder features at N/2 to an activated ``(B, N, N, C)`` patch.

    Parameters
    ----------
    cfg : ModelConfig
    weights : dict of ndarray
        Canonical weights.
    branch : {"amp", "phase"}
    features : ndarray, shape (B, N/2, N/2, F)
        Output of the branch's decoder.
    activation : callable
        ``sigmoid`` (amplitude) or ``pi * tanh`` (phase).

    Returns
    -------
    patch : ndarray, shape (B, N, N, C), float64
        ``head_layout`` "spec": activation(conv) zero-padded by N/4, or with ``probe_big``
        conv(up_conv(upsample2)) at full N. "ptychopinn": activation(conv of all but the
        last 4 channels) zero-padded, plus with ``probe_big`` the border branch
        ``border_mask * swish(border_conv3(upsample2(border_conv2(border_conv1(last 4)))))``.
    """
    specs = {spec.name.rsplit(".", 1)[1]: spec for spec in architecture.conv_layers(cfg)[f"{branch}_head"]}
    n = cfg.N
    if cfg.head_layout == "ptychopinn":
        main = _pad_to_n(activation(_apply(specs["conv"], weights, features[..., :-HEAD_BORDER_CHANNELS])), n)
        if not cfg.probe_big:
            return main
        h = features[..., -HEAD_BORDER_CHANNELS:]
        h = _apply(specs["border_conv2"], weights, _apply(specs["border_conv1"], weights, h))
        border = swish(_apply(specs["border_conv3"], weights, upsample2(h)))  # (B, N, N, C)
        return main + physics.border_mask(n)[None, :, :, None] * border
    if cfg.probe_big:
        h = _apply(specs["up_conv"], weights, upsample2(features))
        return activation(_apply(specs["conv"], weights, h))
    return _pad_to_n(activation(_apply(specs["conv"], weights, features)), n)


def forward(cfg, weights, probe, scaled_diffraction, rel=None):
    """The whole forward pass in NumPy: what every backend must reproduce.

    Parameters
    ----------
    cfg : ModelConfig
    weights : dict of ndarray
        Canonical weights (checked against ``cfg``), ``log_scale`` included.
    probe : ndarray, shape (N, N), complex
        The model probe ``P`` (scaled, masked when ``probe_mask``), as a bundle stores it.
    scaled_diffraction : ndarray, shape (B, N, N, C)
        ``s * X`` in count units.
    rel : ndarray, shape (B, C, 2), optional
        Channel offsets ``[x, y]`` from the group centre; required when ``object_big``.

    Returns
    -------
    taps : dict of ndarray
        The names of :data:`ptyparity.names.TAP_NAMES`; ``encoder_input``,
        ``amp_patches`` and ``phase_patches`` in float64, the physics taps as
        :func:`ptyparity.physics.forward_physics` returns them.
    """
    architecture.check_weights(cfg, weights)
    x = np.asarray(scaled_diffraction, np.float64)
    if x.ndim != 4 or x.shape[1:] != (cfg.N, cfg.N, cfg.channels):
        raise ValueError(f"scaled_diffraction must have shape (B, {cfg.N}, {cfg.N}, {cfg.channels}), got {x.shape}")
    log_scale = float(np.asarray(weights[LOG_SCALE], np.float64))
    x = x / math.exp(log_scale)
    taps = {"encoder_input": x}
    blocks = architecture.conv_layers(cfg)
    h = x
    for i in range(cfg.n_stages):  # [conv+ReLU, conv+ReLU, maxpool2]
        for spec in blocks[f"encoder.{i}"]:
            h = _apply(spec, weights, h)
        h = maxpool2(h)
    bottleneck = h  # (B, N / 2**L, N / 2**L, 128 f)
    for branch, activation in (("amp", amplitude_activation), ("phase", phase_activation)):
        h = bottleneck
        for j in range(cfg.n_stages - 1):  # [conv+ReLU, conv+ReLU, upsample2], ends at N/2
            for spec in blocks[f"{branch}_decoder.{j}"]:
                h = _apply(spec, weights, h)
            h = upsample2(h)
        taps[f"{branch}_patches"] = head(cfg, weights, branch, h, activation)
    taps.update(physics.forward_physics(
        taps["amp_patches"], taps["phase_patches"], probe, rel=rel, object_big=cfg.object_big,
        max_offset=cfg.max_offset, merge_weighting=cfg.merge_weighting, probe_big=cfg.probe_big,
        log_scale=log_scale, merge_normalization=cfg.merge_normalization))
    return taps
