"""Shared test settings: tolerances set once, the backend fixture, a temporary
MLflow store per test that needs one."""

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

BACKENDS = ("torch", "tensorflow")


def assert_close_rel(actual, reference, rtol, what=""):
    """max |actual - reference| <= rtol * max |reference| (the contract's tolerance)."""
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    assert actual.shape == reference.shape, f"{what}: shape {actual.shape} != {reference.shape}"
    err = float(np.max(np.abs(actual - reference))) if reference.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    assert err <= rtol * max(scale, 1e-30), f"{what}: max|a-b|={err:.3e} > {rtol:g} * max|ref|={scale:.3e}"


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
