"""PtychoPINN as a Keras 3 model on the TensorFlow backend (SPEC §4, §6).

The layer ladder comes from :func:`ptyparity.architecture.conv_layers`, so names,
order and shapes are shared with the torch backend; the physics half is
:func:`ptyparity.backends.tensorflow.ops.forward_physics`. Weights cross backends as
a flat dict of canonical names with HWIO kernels, which is Keras' own layout.

Shapes below use ``B`` groups, ``N`` patch size, ``C = gridsize**2`` channels and
``L = log2(N) - 3`` encoder stages.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ptyparity import architecture, physics  # noqa: E402
from ptyparity.architecture import HEAD_BORDER_CHANNELS  # noqa: E402
from ptyparity.backends import contract  # noqa: E402
from ptyparity.backends.tensorflow import ops  # noqa: E402
from ptyparity.config import ModelConfig  # noqa: E402
from ptyparity.errors import PtyparityError  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"ptyparity.backends.tensorflow needs KERAS_BACKEND=tensorflow, but keras was "
                      f"already imported with the {keras.backend.backend()!r} backend")

__all__ = ["PtychoPINN", "get_weights", "set_weights", "build_model"]


def _amplitude_activation(x):
    """Amplitude in (0, 1)."""
    return tf.sigmoid(x)


def _phase_activation(x):
    """Phase in (-pi, pi) rad."""
    return math.pi * tf.tanh(x)


class PtychoPINN(keras.Model):
    """Encoder, two decoders (amplitude, phase) and the differentiable forward model.

    Parameters
    ----------
    cfg : ModelConfig
    probe : ndarray, shape (N, N), complex
        The probe ``P`` the model illuminates with, already scaled by ``probe_norm``
        and masked when ``probe_mask``; a constant.
    log_scale : float
        Initial ``log(intensity_scale)``; a Keras weight, trainable only when
        ``cfg.intensity_scale_trainable``.
    seed : int
        Seed of :func:`ptyparity.architecture.init_weights` (Glorot-uniform kernels,
        zero biases), so both backends can start from identical weights.
    precision : {"float32", "float64"}
        Dtype policy of every layer and weight, and the precision of the physics
        (complex64 / complex128 probe and FFT); "float64" is the parity-verification
        mode (``TrainConfig.precision``). Fixed at construction.

    Notes
    -----
    ``model((scaled_diffraction, rel))`` takes ``s * X`` of shape (B, N, N, C) in count
    units and offsets ``rel`` of shape (B, C, 2), and returns the SPEC §6 taps.
    """

    def __init__(self, cfg: ModelConfig, probe: np.ndarray, *, log_scale: float, seed: int = 0,
                 precision: str = "float32"):
        super().__init__(name="ptychopinn", dtype=contract.check_precision(precision))
        contract.check_supported(cfg)
        probe = contract.check_probe(cfg, probe)
        if not math.isfinite(float(log_scale)):
            raise PtyparityError(f"log_scale must be finite, got {log_scale}")
        self.cfg = cfg
        self.precision = precision
        self.probe_source = np.array(probe, np.complex128)  # the probe as given (replicas rebuild from it)
        self.probe = probe.astype(np.complex64 if precision == "float32" else np.complex128)  # constant, not a weight
        self.blocks = architecture.conv_layers(cfg)  # block name -> [ConvSpec, ...]

        # One Conv2D per canonical name; zero-initialised here, then set from the
        # shared init_weights below (Keras' own initialiser would draw other numbers).
        convs = {}
        for spec in architecture.all_convs(cfg):
            layer = keras.layers.Conv2D(spec.c_out, 3, padding="same", data_format="channels_last",
                                        activation="relu" if spec.relu else None,
                                        kernel_initializer="zeros", bias_initializer="zeros",
                                        name=spec.name, dtype=precision)
            layer.build((None, None, None, spec.c_in))  # kernel (3, 3, c_in, c_out): HWIO
            convs[spec.name] = layer
        self.convs = convs
        self.pool = keras.layers.MaxPooling2D(2, dtype=precision)
        self.upsample = keras.layers.UpSampling2D(2, interpolation="nearest", dtype=precision)
        self.pad = keras.layers.ZeroPadding2D(cfg.N // 4, dtype=precision)
        # head_layout "ptychopinn" with probe_big: where the border branch adds (zero on the
        # central N/2 window), (N, N, 1) against channel-last patches; a constant, not a weight.
        self.border_mask = physics.border_mask(cfg.N)[:, :, None].astype(precision)

        # A tracked Keras weight (a bare tf.Variable attribute is not tracked by Keras 3).
        self.log_scale = self.add_weight(name=architecture.LOG_SCALE, shape=(), dtype=precision,
                                         initializer=keras.initializers.Constant(float(log_scale)),
                                         trainable=cfg.intensity_scale_trainable)
        self.built = True
        set_weights(self, architecture.init_weights(cfg, seed=seed, log_scale=log_scale))

    def _block(self, name, h):
        """The convolutions of one block, in order (ReLU inside the layers that have it)."""
        for spec in self.blocks[name]:
            h = self.convs[spec.name](h)
        return h

    def _decode(self, branch, h, activation):
        """One decoder and head: bottleneck (B, N/2**L, N/2**L, F) -> (B, N, N, C)."""
        for j in range(self.cfg.n_stages - 1):
            h = self._block(f"{branch}_decoder.{j}", h)
            h = self.upsample(h)  # (B, N/2**(L-1-j), ..., F_j), ending at N/2
        if self.cfg.head_layout == "ptychopinn":
            return self._ptychopinn_head(branch, h, activation)
        if self.cfg.probe_big:
            h = self.upsample(h)  # (B, N, N, F)
            return activation(self._block(f"{branch}_head", h))  # up_conv + ReLU, conv to C: (B, N, N, C)
        patch = activation(self._block(f"{branch}_head", h))  # (B, N/2, N/2, C)
        return self.pad(patch)  # zero outside the support: (B, N, N, C)

    def _ptychopinn_head(self, branch, h, activation):
        """Upstream's head (``head_layout`` "ptychopinn", as ``reference_network.head``):
        (B, N/2, N/2, F) decoder features to (B, N, N, C)."""
        conv = lambda name, x: self.convs[f"{branch}_head.{name}"](x)  # noqa: E731
        main = self.pad(activation(conv("conv", h[..., :-HEAD_BORDER_CHANNELS])))  # all but the last 4
        if not self.cfg.probe_big:
            return main
        b = conv("border_conv2", conv("border_conv1", h[..., -HEAD_BORDER_CHANNELS:]))  # conv+ReLU twice
        b = self.upsample(b)  # (B, N, N, 2048 f / N)
        b = tf.nn.silu(conv("border_conv3", b))  # swish, for the phase head too
        return main + tf.constant(self.border_mask) * b  # zero inside the central N/2 window

    def call(self, inputs):
        """Forward pass: ``(scaled_diffraction, rel)`` -> dict of taps (channel-last),
        in the model's precision."""
        scaled_diffraction, rel = inputs
        cfg = self.cfg
        if tuple(scaled_diffraction.shape[1:]) != (cfg.N, cfg.N, cfg.channels):
            raise PtyparityError(f"scaled_diffraction must have shape (B, {cfg.N}, {cfg.N}, {cfg.channels}), "
                                 f"got {tuple(scaled_diffraction.shape)}")
        real = ops.real_dtype(self.precision)
        scaled_diffraction = tf.cast(scaled_diffraction, real)  # (B, N, N, C), counts
        rel = None if rel is None else tf.cast(rel, real)  # (B, C, 2)
        scale = tf.exp(tf.convert_to_tensor(self.log_scale))
        encoder_input = scaled_diffraction / scale  # (B, N, N, C), normalised X

        h = encoder_input
        for i in range(cfg.n_stages):
            h = self._block(f"encoder.{i}", h)
            h = self.pool(h)  # (B, N/2**(i+1), N/2**(i+1), 128 f / 2**(L-1-i))

        amp = self._decode("amp", h, _amplitude_activation)  # (B, N, N, C) in (0, 1)
        phase = self._decode("phase", h, _phase_activation)  # (B, N, N, C) in (-pi, pi)

        taps = {"encoder_input": encoder_input, "amp_patches": amp, "phase_patches": phase}
        taps.update(ops.forward_physics(
            amp, phase, self.probe, rel=rel, object_big=cfg.object_big,
            max_offset=cfg.max_offset, merge_weighting=cfg.merge_weighting,
            probe_big=cfg.probe_big, log_scale=self.log_scale, merge_normalization=cfg.merge_normalization,
            precision=self.precision))
        return taps


# --- canonical weights -------------------------------------------------------------------


def get_weights(model, dtype=np.float32):
    """Canonical weights of ``model``.

    Parameters
    ----------
    dtype : numpy dtype
        float32 (the canonical, stored form) or float64 (a float64 model's weights
        unrounded, to copy between float64 replicas).

    Returns
    -------
    weights : dict of ndarray (float32)
        ``{name}.kernel`` (HWIO), ``{name}.bias`` for every convolution and
        ``log_scale`` (shape ()), names as :func:`ptyparity.architecture.weight_shapes`.
    """
    weights = {}
    for spec in architecture.all_convs(model.cfg):
        layer = model.convs[spec.name]
        weights[f"{spec.name}.kernel"] = np.array(layer.kernel.numpy(), dtype)
        weights[f"{spec.name}.bias"] = np.array(layer.bias.numpy(), dtype)
    weights[architecture.LOG_SCALE] = np.array(model.log_scale.numpy(), dtype)
    return weights


def set_weights(model, weights):
    """Load canonical weights into ``model`` (validated with
    :func:`ptyparity.architecture.check_weights`; raises :class:`PtyparityError`).
    Float32 values are widened exactly in a float64 model; float64 values (a
    float64 replica's, see :func:`get_weights`) are rounded once in a float32 one."""
    architecture.check_weights(model.cfg, weights)
    dtype = np.float32 if model.precision == "float32" else np.float64
    for spec in architecture.all_convs(model.cfg):
        layer = model.convs[spec.name]
        layer.kernel.assign(np.asarray(weights[f"{spec.name}.kernel"], dtype))
        layer.bias.assign(np.asarray(weights[f"{spec.name}.bias"], dtype))
    model.log_scale.assign(np.asarray(weights[architecture.LOG_SCALE], dtype))


def build_model(cfg, probe, weights, *, precision="float32"):
    """A :class:`PtychoPINN` for ``cfg`` and ``probe`` holding ``weights``, in ``precision``."""
    architecture.check_weights(cfg, weights)
    model = PtychoPINN(cfg, probe, log_scale=float(weights[architecture.LOG_SCALE]), precision=precision)
    set_weights(model, weights)
    return model
