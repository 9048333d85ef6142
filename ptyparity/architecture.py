"""The network's layer ladder and canonical weights, shared by both backends (SPEC §4).

Both backends build their layers from :func:`conv_layers`, so layer names, order and
shapes are defined once. Weights cross backends as a flat dict of NumPy arrays with
canonical names (``encoder.0.conv1.kernel``, …) and HWIO kernels: torch transposes
to OIHW when loading, TF uses them as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptyparity.errors import PtyparityError

BRANCHES = ("amp", "phase")
LOG_SCALE = "log_scale"
# head_layout "ptychopinn": the decoder's last 4 channels are kept from the head's main conv
# (upstream slices [..., :-4]) and, with probe_big, feed the border branch. Observed as 4 at
# gridsize 2 for f = 1 and 2; the importer checks the slice in each checkpoint's graph.
HEAD_BORDER_CHANNELS = 4


@dataclass(frozen=True)
class ConvSpec:
    """One 3x3 'same' convolution: canonical name, channels in/out, ReLU after it."""

    name: str
    c_in: int
    c_out: int
    relu: bool

    @property
    def kernel_shape(self):
        """HWIO kernel shape ``(3, 3, c_in, c_out)``."""
        return (3, 3, self.c_in, self.c_out)


def encoder_filters(cfg):
    """Filters of encoder stage i: ``128 f / 2**(L-1-i)``."""
    L, f = cfg.n_stages, cfg.n_filters_scale
    return [128 * f // 2 ** (L - 1 - i) for i in range(L)]


def decoder_filters(cfg):
    """Filters of decoder stage j: ``32 f * 2**(L-2-j)``, for ``j < L-1``."""
    L, f = cfg.n_stages, cfg.n_filters_scale
    return [32 * f * 2 ** (L - 2 - j) for j in range(L - 1)]


def border_filters(cfg):
    """Filters of the ``ptychopinn`` probe_big border branch: ``2048 f / N``."""
    return 2048 * cfg.n_filters_scale // cfg.N


def head_convs(cfg, branch, c_in):
    """The convolutions of one head, reading ``c_in`` decoder channels (see :func:`conv_layers`)."""
    c, f = cfg.channels, cfg.n_filters_scale
    if cfg.head_layout == "ptychopinn":
        specs = [ConvSpec(f"{branch}_head.conv", c_in - HEAD_BORDER_CHANNELS, c, False)]
        if cfg.probe_big:
            width = border_filters(cfg)
            specs += [ConvSpec(f"{branch}_head.border_conv1", HEAD_BORDER_CHANNELS, width, True),
                      ConvSpec(f"{branch}_head.border_conv2", width, width, True),
                      ConvSpec(f"{branch}_head.border_conv3", width, c, False)]  # then swish
        return specs
    if cfg.probe_big:
        return [ConvSpec(f"{branch}_head.up_conv", c_in, 32 * f, True),
                ConvSpec(f"{branch}_head.conv", 32 * f, c, False)]
    return [ConvSpec(f"{branch}_head.conv", c_in, c, False)]


def conv_layers(cfg):
    """Every convolution of the network, grouped by block, in forward order.

    Returns
    -------
    blocks : dict of list of ConvSpec
        ``encoder.{i}`` (two convs, then maxpool2), ``{branch}_decoder.{j}`` (two
        convs, then nearest upsample2) and ``{branch}_head``. With ``head_layout``
        "spec": one conv to C when ``probe_big`` is false (then the activation and an
        N/4 zero pad); when true, upsample2 first, then ``up_conv`` (32 f, ReLU) and
        ``conv`` to C. With "ptychopinn": ``conv`` reads all decoder channels but the
        last ``HEAD_BORDER_CHANNELS``; with ``probe_big`` the border branch
        ``border_conv1`` (4 -> 2048 f / N, ReLU), ``border_conv2`` (same, ReLU), upsample2,
        ``border_conv3`` (to C, then swish) reads those last channels.
    """
    blocks = {}
    c_in = cfg.channels
    for i, width in enumerate(encoder_filters(cfg)):
        blocks[f"encoder.{i}"] = [ConvSpec(f"encoder.{i}.conv1", c_in, width, True),
                                  ConvSpec(f"encoder.{i}.conv2", width, width, True)]
        c_in = width
    bottleneck = c_in
    for branch in BRANCHES:
        c_in = bottleneck
        for j, width in enumerate(decoder_filters(cfg)):
            blocks[f"{branch}_decoder.{j}"] = [ConvSpec(f"{branch}_decoder.{j}.conv1", c_in, width, True),
                                              ConvSpec(f"{branch}_decoder.{j}.conv2", width, width, True)]
            c_in = width
        blocks[f"{branch}_head"] = head_convs(cfg, branch, c_in)
    return blocks


def all_convs(cfg):
    """Flat list of :class:`ConvSpec` in forward order."""
    return [spec for block in conv_layers(cfg).values() for spec in block]


def weight_shapes(cfg):
    """Canonical name -> shape of every weight, ``log_scale`` (shape ()) included."""
    shapes = {}
    for spec in all_convs(cfg):
        shapes[f"{spec.name}.kernel"] = spec.kernel_shape
        shapes[f"{spec.name}.bias"] = (spec.c_out,)
    shapes[LOG_SCALE] = ()
    return shapes


def param_count(cfg):
    """Number of convolution parameters (kernels and biases; ``log_scale`` excluded)."""
    return sum(int(np.prod(s)) for name, s in weight_shapes(cfg).items() if name != LOG_SCALE)


def init_weights(cfg, *, seed, log_scale):
    """Glorot-uniform kernels, zero biases, ``log_scale`` set: the same start for
    both backends.

    Parameters
    ----------
    cfg : ModelConfig
    seed : int
    log_scale : float
        Initial ``log(intensity_scale)``.

    Returns
    -------
    weights : dict of ndarray (float32)
    """
    rng = np.random.default_rng(seed)
    weights = {}
    for spec in all_convs(cfg):
        fan_in, fan_out = 9 * spec.c_in, 9 * spec.c_out
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights[f"{spec.name}.kernel"] = rng.uniform(-limit, limit, spec.kernel_shape).astype(np.float32)
        weights[f"{spec.name}.bias"] = np.zeros(spec.c_out, np.float32)
    weights[LOG_SCALE] = np.asarray(log_scale, np.float32)
    return weights


def check_weights(cfg, weights):
    """Raise :class:`PtyparityError` unless ``weights`` has exactly the canonical
    names and shapes for ``cfg``, all finite."""
    expected = weight_shapes(cfg)
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise PtyparityError(
            f"weights do not match the model config (missing {missing[:3]}, unexpected {extra[:3]}); "
            "was the bundle saved with a different N, gridsize, n_filters_scale, probe_big or head_layout?")
    for name, shape in expected.items():
        arr = np.asarray(weights[name])
        if arr.shape != tuple(shape):
            raise PtyparityError(f"weight {name!r} has shape {arr.shape}, expected {tuple(shape)}; "
                                 "the bundle does not match its config")
        if not np.all(np.isfinite(arr)):
            raise PtyparityError(f"weight {name!r} holds NaN or inf; the bundle is corrupt, retrain or re-export it")
