"""Lightning-specific behaviour of the torch backend's ``fit`` (SPEC §5): Lightning's
logs and progress bar, torch's process-wide determinism flags, Lightning's
misconfiguration errors, the LightningModule's loss-mode check and the OpenMP wait
policy. What both backends' ``fit`` must do is in ``test_contract_fit.py``."""

import logging
import os
import subprocess
import sys
import warnings

import pytest
import torch

from ptyparity import progress
from ptyparity.backends.torch import api, network
from ptyparity.backends.torch.lightning_module import PtychoPINNModule
from ptyparity.backends.torch.openmp import SPIN_COUNT
from ptyparity.errors import PtyparityError
from ptyparity.training import TrainHooks
from tests.backends.helpers import adam_algorithm_1, initial_weights, training_set
from tests.conftest import F64_RTOL


def _model(ts):
    return api.build(ts.cfg.model, ts.probe, initial_weights(ts))


def _lightning_records(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("lightning")]


def test_the_modules_fused_adam_is_algorithm_1():
    """The optimizer the LightningModule builds (fused) takes Algorithm 1's steps; an exact
    claim, so in float64, with gradients near eps where the placement of eps shows, and on a
    channels-last kernel as the network's are."""
    import numpy as np

    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=(4, 3, 3, 3))
    grads = [rng.normal(size=theta0.shape) * 10.0 ** rng.uniform(-9, -5, size=theta0.shape) for _ in range(5)]
    net = torch.nn.Module()
    net.kernel = torch.nn.Parameter(torch.tensor(theta0).contiguous(memory_format=torch.channels_last))
    optimizer = PtychoPINNModule(net, loss_mode="poisson", learning_rate=1e-3, hooks=TrainHooks()).configure_optimizers()
    assert optimizer.param_groups[0]["fused"]
    for g in grads:
        net.kernel.grad = torch.tensor(g).contiguous(memory_format=torch.channels_last)
        optimizer.step()
    steps = adam_algorithm_1(theta0, grads, lr=1e-3) - theta0
    taken = net.kernel.detach().numpy() - theta0
    assert np.max(np.abs(taken - steps)) <= F64_RTOL * np.max(np.abs(steps))


def test_lightnings_info_lines_stay_hidden_and_the_level_comes_back(capfd, caplog, monkeypatch):
    ts = training_set(max_epochs=1)
    level = logging.getLogger("lightning.pytorch").level
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning either
        api.fit(_model(ts), ts, quiet=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert _lightning_records(caplog) == []
    api.fit(_model(ts), ts, quiet=False)  # stdout is no terminal here: one line per epoch, no bar
    out, err = capfd.readouterr()
    assert out.startswith("Epoch 1/1  train_loss ") and out.count("\n") == 1 and err == ""
    # "GPU available: …", the "💡 Tip" for litlogger, "`Trainer.fit` stopped: …" (INFO) never reach a user
    assert _lightning_records(caplog) == []
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    api.fit(_model(ts), ts, quiet=False)
    out, _ = capfd.readouterr()
    assert "Epoch 0" in out and "train_step_loss" in out  # Lightning's own (rich) progress bar
    assert _lightning_records(caplog) == []
    assert logging.getLogger("lightning.pytorch").level == level  # the level put back after every fit


def test_only_a_live_bar_gets_lightnings_logged_values(monkeypatch):
    """``self.log`` feeds Lightning's progress bar only (``logger=False``); without a bar the
    step loop skips it (it costs ~1 ms a step)."""
    calls = []
    monkeypatch.setattr(PtychoPINNModule, "log", lambda self, name, *a, **k: calls.append(name))
    ts = training_set(max_epochs=1)
    api.fit(_model(ts), ts, quiet=True)
    assert calls == []
    monkeypatch.setattr(progress, "is_terminal", lambda stream=None: True)
    api.fit(_model(ts), ts, quiet=False)
    assert calls.count("train_step_loss") == ts.steps_per_epoch and calls.count("val_deviance") == 1


def test_deterministic_fit_puts_torchs_flags_back():
    ts = training_set(max_epochs=1)
    assert not torch.are_deterministic_algorithms_enabled()
    api.fit(_model(ts), ts, quiet=True, deterministic=True)
    assert not torch.are_deterministic_algorithms_enabled()  # Trainer(deterministic=True) set it process-wide


def test_a_device_request_lightning_cannot_serve_is_one_line():
    ts = training_set(max_epochs=1)
    model = _model(ts)
    with pytest.raises(PtyparityError, match=r"accelerator='cpu' with devices=-1 is not available here") as info:
        api.fit(model, ts, quiet=True, accelerator="cpu", devices=-1)  # Lightning: a TypeError
    assert "\n" not in str(info.value)
    assert model.precision == "float32" and not model.training  # the failed fit left the model as it was


def test_the_lightning_module_rejects_an_unknown_loss_mode():
    ts = training_set(max_epochs=1)
    with pytest.raises(PtyparityError, match="loss_mode must be one of poisson, mae; got 'l2'"):
        PtychoPINNModule(_model(ts), loss_mode="l2", learning_rate=1e-3, hooks=TrainHooks())


def test_a_float64_fit_switches_the_model_back():
    """``TrainConfig.precision="float64"`` on a float32 model: parameters float64 during
    the fit (``network.set_precision``), float32 and eval mode afterwards."""
    ts = training_set(max_epochs=1, precision="float64")
    model = _model(ts)
    seen = []

    class Dtypes(TrainHooks):
        def on_step(self, step, metrics):
            seen.append(model.get_submodule("encoder.0.conv1").weight.dtype)

    api.fit(model, ts, Dtypes(), quiet=True)
    assert set(seen) == {torch.float64}
    assert model.precision == "float32" and model.probe.dtype == torch.complex64 and not model.training
    assert model.log_scale.dtype == torch.float32
    network.set_precision(model, "float64")
    assert model.probe.dtype == torch.complex128 and model.log_scale.dtype == torch.float64


@pytest.mark.parametrize("given, want", [
    ({}, ("PASSIVE", str(SPIN_COUNT))),  # a short spin, then sleep
    ({"OMP_WAIT_POLICY": "PASSIVE"}, ("PASSIVE", None)),  # the user's policy alone decides
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ("ACTIVE", None)),
    ({"GOMP_SPINCOUNT": "7"}, ("PASSIVE", "7")),
])
def test_backend_package_sets_libgomp_wait_defaults_before_torch_unless_the_user_did(given, want):
    code = ("import os, sys; import ptyparity.backends.torch; assert 'torch' not in sys.modules; "
            "print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, **given}, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == [str(w) for w in want]
