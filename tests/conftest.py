"""Shared test settings: tolerances set once, the backend fixtures, a temporary
MLflow store per test that needs one.

Tolerances (see ``tests/README.md``): a fixed tolerance is allowed only where a
contract fixes it or where the claim is exact.

- SPEC's contract tolerances for one forward computation: every backend op matches
  the NumPy reference within ``OP_RTOL`` (SPEC §1), the same weights give taps within
  ``TAP_RTOL`` in both backends (SPEC §8).
- A claim that is exact in real arithmetic (two execution paths of the same math:
  one device vs several, a train step vs a forward pass, torch vs TensorFlow step by
  step) is asserted in float64, within ``F64_RTOL``.
- Anything else in float32 that accumulates over training steps or compares
  different kernels (backends, devices, oneDNN vs Eigen) derives its bound from a
  noise floor measured in the same test run: the same computation with every weight
  moved by one float32 ulp (:func:`one_ulp`) gives the floor
  (:func:`noise_floor`), and the compared difference must stay within
  ``FLOOR_FACTOR`` times it. Nothing here is tuned to one CPU.
"""

import contextlib
import importlib
import os

import numpy as np
import pytest

# Quiet, single-threaded, deterministic frameworks in tests (set before any import).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# SPEC §1: every backend op matches the NumPy reference to max|a-b| <= 1e-5 * max|ref|.
OP_RTOL = 1e-5
# SPEC §8: the same weights in both backends give taps within 1e-4 * max|ref|.
TAP_RTOL = 1e-4
# Exact claims in float64: rounding (~1e-16) amplified by at most ~1e4 over a short
# training run (the float32 runs show that amplification: one ulp, 1e-7, grows to ~1e-3).
F64_RTOL = 1e-10
# Float32 resolution: the smallest floor a float32 comparison can have.
F32_EPS = float(np.finfo(np.float32).eps)
# "Within the noise": a difference up to ten times the measured floor. The floor is one
# sample of a chaotic quantity (Adam turns rounding-level gradients into full steps);
# differences between backends measured 0.2-3 times it with oneDNN and with Eigen kernels.
FLOOR_FACTOR = 10.0

BACKENDS = ("torch", "tensorflow")


def assert_close_rel(actual, reference, rtol, what=""):
    """max |actual - reference| <= rtol * max |reference| (the contract's tolerance)."""
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    err = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    assert err <= rtol * max(scale, 1e-30), f"{what}: max|a-b|={err:.3e} > {rtol:g} * max|ref|={scale:.3e}"


def rel_diff(a, b):
    """Elementwise ``|a - b| / |b|`` in float64 (0 where both are 0)."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != {b.shape}"
    diff = np.abs(a - b)
    return np.divide(diff, np.abs(b), out=np.where(diff == 0, 0.0, np.inf), where=b != 0)


def one_ulp(weights, seed=5):
    """Every weight moved by one float32 ulp, up or down at random (``log_scale`` kept):
    a perturbation no float32 computation can tell from rounding."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if name == "log_scale":
            out[name] = w
            continue
        direction = np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
        out[name] = np.nextafter(w, direction).astype(np.float32)
    return out


def noise_floor(*drifts):
    """The float32 noise floor of a comparison: the largest of ``drifts`` (relative
    differences between runs that differ only by rounding-level perturbations,
    measured in the same test), never below one float32 ulp (``F32_EPS``)."""
    return max([F32_EPS] + [float(np.max(d)) for d in drifts if np.size(d)])


def assert_within_floor(diff, floor, what=""):
    """``max(diff) <= FLOOR_FACTOR * floor`` (see :func:`noise_floor`)."""
    worst = float(np.max(diff))
    assert worst <= FLOOR_FACTOR * floor, (f"{what}: {worst:.2e} exceeds {FLOOR_FACTOR:g} x the noise floor "
                                           f"{floor:.2e} measured in this run")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The ``api`` module of each backend (:class:`ptyparity.backends.BackendAPI`)."""
    from ptyparity.backends import load_backend

    return load_backend(request.param)


@pytest.fixture(params=BACKENDS)
def backend_ops(request):
    """The ``ops`` module of each backend (differentiable copies of ``physics``)."""
    return importlib.import_module(f"ptyparity.backends.{request.param}.ops")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@contextlib.contextmanager
def sqlite_store(root):
    """Use ``root/mlflow.db`` as the tracking store (env var and mlflow's global) for a
    whole module's fixture, restoring the previous setting afterwards."""
    import mlflow

    uri = f"sqlite:///{root / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield uri
    finally:
        if old is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = old
        mlflow.set_tracking_uri(None)


def write_simulated(root, cfg):
    """Simulate ``cfg`` and write ``root/train.npz`` and ``root/test.npz``."""
    from ptyparity.data import save_npz
    from ptyparity.simulate import simulate

    train, test = simulate(cfg)
    save_npz(root / "train.npz", train)
    save_npz(root / "test.npz", test)


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test, set as the tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def refuse_pickle_loads(mp):
    """Make every pickle/dill/cloudpickle loader raise ``AssertionError("a pickle load was
    attempted")`` (``mp``: a pytest MonkeyPatch); loaders of packages not installed cannot be called."""
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle load was attempted")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module_name in ("pickle", "_pickle", "dill", "cloudpickle"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        for attr in ("load", "loads"):
            if hasattr(module, attr):
                mp.setattr(module, attr, refuse)
        if hasattr(module, "Unpickler"):
            mp.setattr(module, "Unpickler", RefusingUnpickler)


def record_zip_opens(mp):
    """Record the name of every archive member opened through ``zipfile.ZipFile.open``; returns the list."""
    import zipfile

    opened = []
    real_open = zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return real_open(self, name, *args, **kwargs)

    mp.setattr(zipfile.ZipFile, "open", recording_open)
    return opened
