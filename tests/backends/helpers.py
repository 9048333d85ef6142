"""Small inputs shared by the backend tests: a tiny model config, a probe, group
batches, a training set (N=32, n_filters_scale=1) and a hooks recorder.

Plain functions and NumPy only; the frameworks come in through the ``backend`` and
``backend_ops`` fixtures of ``tests/conftest.py``.
"""

import functools
import importlib

import numpy as np

from ptyparity import architecture, physics
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.simulate import SimConfig, simulate
from ptyparity.training import TrainHooks, prepare, resolve_config

N = 32
MAX_OFFSET = 6  # ceil(1.5 * scan_step) with scan_step = N/8
BATCH = 2


def model_cfg(**overrides):
    """N=32, gridsize 2, f=1, object_big, canvas margin 6; ``overrides`` replace fields."""
    values = dict(N=N, gridsize=2, n_filters_scale=1, object_big=True, probe_big=False, max_offset=MAX_OFFSET)
    values.update(overrides)
    return ModelConfig(**values)


def model_probe(n=N):
    """Disk probe with a quadratic phase, scaled by ``probe_norm`` as a model's probe is."""
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (n / 4) ** 2
    probe = physics.probe_disk_mask(n) * np.exp(1j * (n / 8) * r2)
    return (physics.probe_norm(probe) * probe).astype(np.complex64)


def group_batch(cfg, rng, *, batch=BATCH):
    """A random batch in count units ``(B, N, N, C)`` float32 and offsets ``rel``
    ``(B, C, 2)`` float32 summing to zero per group."""
    c = cfg.channels
    scaled = rng.gamma(2.0, 20.0, size=(batch, cfg.N, cfg.N, c)).astype(np.float32)
    pos = rng.uniform(-3.0, 3.0, size=(batch, c, 2))
    rel = (pos - pos.mean(axis=1, keepdims=True)).astype(np.float32)
    return scaled, rel


def network_module(api):
    """The ``network`` module next to a backend's ``api`` module."""
    return importlib.import_module(f"ptyparity.backends.{api.NAME}.network")


@functools.lru_cache(maxsize=1)
def raw_data():
    """Simulated training data, N=32 on a 96-pixel object (289 positions)."""
    return simulate(SimConfig(N=N, object_size_px=96, seed=0))[0]


def training_set(*, model=None, **overrides):
    """48 groups (46 train in batches of 16, 16, 14; 2 validation), 2 epochs, unless
    ``overrides`` (TrainConfig fields) or ``model`` (ModelConfig fields) say otherwise."""
    values = dict(model=ModelConfig(N=N, gridsize=2, n_filters_scale=1, **(model or {})), n_groups=48,
                  batch_size=16, max_epochs=2)
    values.update(overrides)
    return prepare(raw_data(), resolve_config(TrainConfig(**values), raw_data()))


def initial_weights(ts):
    """The shared initial weights of a training set's model."""
    return architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)


class Recorder(TrainHooks):
    """Remembers every hook call: ``steps`` and ``epochs`` as ``(index, metrics)``."""

    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step(self, step, metrics):
        self.steps.append((step, dict(metrics)))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))


def adam_algorithm_1(theta, grads, lr, beta1=0.9, beta2=0.999, eps=1e-7):
    """Kingma & Ba's Algorithm 1 (torch.optim.Adam's formula, SPEC §5's Adam), float64:
    eps added to sqrt(v_hat)."""
    m = v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        theta = theta - lr * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return theta
