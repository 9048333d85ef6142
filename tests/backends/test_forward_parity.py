"""Same weights, same taps: forward parity between the torch and TF networks (SPEC §8).

One canonical weights dict is loaded into both backends, in both directions
(exported from torch and loaded into TF, exported from TF and loaded into torch),
and the same realistic batch runs through both. Every tap must agree to
``max|torch - tf| <= 1e-4 * max|tf|`` (TF as the reference, as in SPEC §8).

Frameworks are imported inside the fixtures, never at module level.
"""

import importlib
import math

import numpy as np
import pytest

from ptyparity import physics
from ptyparity.backends.contract import tap_names
from ptyparity.config import ModelConfig
from tests.conftest import TAP_RTOL

N = 32
BATCH = 2
MAX_OFFSET = 6  # ceil(1.5 * scan_step) with scan_step = N/8
NPHOTONS = 1e4


@pytest.fixture(scope="module")
def torch():
    return importlib.import_module("torch")


@pytest.fixture(scope="module")
def torch_net():
    return importlib.import_module("ptyparity.backends.torch.network")


@pytest.fixture(scope="module")
def torch_ops():
    return importlib.import_module("ptyparity.backends.torch.ops")


@pytest.fixture(scope="module")
def tf_net():
    return importlib.import_module("ptyparity.backends.tensorflow.network")


@pytest.fixture(scope="module")
def tf_ops():
    return importlib.import_module("ptyparity.backends.tensorflow.ops")


def make_probe(n):
    """Disk of radius N/4 with a quadratic phase (defocus N/8 rad at the edge)."""
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (n / 4) ** 2
    return (physics.probe_disk_mask(n) * np.exp(1j * (n / 8) * r2)).astype(np.complex64)


def smooth_field(rng, shape, n, sigma_px=3.0):
    """Gaussian-smoothed noise over axes (1, 2), rescaled to [0, 1] per patch."""
    f = np.fft.fftfreq(n)
    kernel = np.exp(-2 * (np.pi * sigma_px) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
    noise = rng.normal(size=shape)
    field = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * kernel[None, :, :, None], axes=(1, 2)))
    lo = field.min(axis=(1, 2), keepdims=True)
    hi = field.max(axis=(1, 2), keepdims=True)
    return (field - lo) / (hi - lo)


def realistic_batch(cfg, seed):
    """Measured-style diffraction of random object patches under the disk probe.

    Returns
    -------
    model_probe : ndarray, shape (N, N), complex64
        ``probe_norm * probe``, the probe the model illuminates with.
    scaled_diffraction : ndarray, shape (B, N, N, C), float32
        ``s * X`` = ``diff3d`` in count units (``dataset`` intensity-scale mode),
        mean ``NPHOTONS`` photons per pattern.
    rel : ndarray, shape (B, C, 2), float32
        Fractional offsets from each group's centre (summing to zero).
    log_scale : float
        ``log s`` with ``s = 1 / input_norm``.
    """
    rng = np.random.default_rng(seed)
    n, c = cfg.N, cfg.channels
    probe = make_probe(n)
    shape = (BATCH, n, n, c)
    amp = 0.1 + 0.9 * smooth_field(rng, shape, n)
    phase = np.pi * (smooth_field(rng, shape, n) - 0.5)
    obj = (amp * np.exp(1j * phase)).astype(np.complex64)
    diff = physics.diffract(physics.illuminate(obj, probe)).astype(np.float64)  # (B, N, N, C)
    energy = np.mean(np.sum(diff**2, axis=(1, 2)))
    diff3d = np.sqrt(rng.poisson(diff**2 * NPHOTONS / energy))  # counts -> amplitude
    patterns = np.moveaxis(diff3d, -1, 1).reshape(-1, n, n)
    log_scale = -math.log(physics.input_norm(patterns))
    pos = rng.uniform(-4.0, 4.0, size=(BATCH, c, 2))
    rel = pos - pos.mean(axis=1, keepdims=True)
    model_probe = (physics.probe_norm(probe) * probe).astype(np.complex64)
    return model_probe, diff3d.astype(np.float32), rel.astype(np.float32), log_scale


def tap_errors(torch_taps, tf_taps):
    """``max|torch - tf| / max|tf|`` per tap."""
    errors = {}
    for name, ref in tf_taps.items():
        other = torch_taps[name]
        assert other.shape == ref.shape, f"{name}: torch {other.shape} != tf {ref.shape}"
        assert other.dtype == ref.dtype, f"{name}: torch {other.dtype} != tf {ref.dtype}"
        scale = float(np.max(np.abs(ref)))
        errors[name] = float(np.max(np.abs(other - ref))) / max(scale, 1e-30)
    return errors


CASES = [
    # (gridsize, object_big, probe_big, merge_weighting)
    (1, False, False, "support"),
    (1, False, True, "support"),
    (1, True, False, "support"),
    (1, True, True, "support"),
    (2, False, False, "support"),
    (2, False, True, "support"),
    (2, True, False, "support"),
    (2, True, True, "support"),
    (2, True, False, "probe"),
]


@pytest.mark.parametrize("direction", ["torch_to_tf", "tf_to_torch"])
@pytest.mark.parametrize("gridsize, object_big, probe_big, merge_weighting", CASES)
def test_same_weights_same_taps(torch, torch_net, torch_ops, tf_net, tf_ops, direction,
                                gridsize, object_big, probe_big, merge_weighting):
    cfg = ModelConfig(N=N, gridsize=gridsize, n_filters_scale=1, object_big=object_big,
                      probe_big=probe_big, merge_weighting=merge_weighting, max_offset=MAX_OFFSET)
    probe, scaled, rel, log_scale = realistic_batch(cfg, seed=10 * gridsize + 2 * object_big + probe_big)

    if direction == "torch_to_tf":
        torch_model = torch_net.PtychoPINN(cfg, probe, log_scale=log_scale, seed=11)
        weights = torch_net.get_weights(torch_model)
        tf_model = tf_net.build_model(cfg, probe, weights)
        crossed = tf_net.get_weights(tf_model)
    else:
        tf_model = tf_net.PtychoPINN(cfg, probe, log_scale=log_scale, seed=12)
        weights = tf_net.get_weights(tf_model)
        torch_model = torch_net.build_model(cfg, probe, weights)
        crossed = torch_net.get_weights(torch_model)
    # the weights crossed the backend boundary losslessly
    assert crossed.keys() == weights.keys()
    for name in weights:
        assert crossed[name].tobytes() == weights[name].tobytes(), name

    torch_model.eval()
    with torch.no_grad():
        torch_out = torch_model(torch_ops.to_backend(scaled), torch_ops.to_backend(rel))
    torch_taps = {name: torch_ops.to_numpy(t) for name, t in torch_out.items()}
    tf_taps = {name: tf_ops.to_numpy(t) for name, t in tf_model((scaled, rel)).items()}

    assert tuple(torch_taps) == tuple(tf_taps) == tap_names(cfg)  # same names, same forward order

    errors = tap_errors(torch_taps, tf_taps)
    print(f"\n[{direction} g={gridsize} object_big={object_big} probe_big={probe_big} "
          f"{merge_weighting}] " + " ".join(f"{k}={v:.1e}" for k, v in errors.items()))
    # the first diverging tap in forward order is the one to report
    diverging = [name for name, err in errors.items() if not err <= TAP_RTOL]
    assert not diverging, (f"taps diverge beyond {TAP_RTOL:g} * max|tf|, first: {diverging[0]} "
                           f"({errors[diverging[0]]:.2e}); all: {errors}")
