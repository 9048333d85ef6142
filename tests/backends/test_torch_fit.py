"""The torch backend API: build/forward/get_weights and Lightning training (SPEC §5)."""

import dataclasses
import functools
import logging
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from ptyparity import architecture
from ptyparity.backends import load_backend
from ptyparity.backends.torch import api, ops
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.simulate import SimConfig, simulate
from ptyparity.training import PlateauRule, TrainHooks, TrainingSet, prepare, resolve_config, weighted_mean

EPOCH_KEYS = {"train_loss", "val_loss", "train_deviance", "val_deviance", "intensity_scale", "learning_rate"}
STEP_KEYS = {"train_step_loss", "train_step_deviance"}


@functools.lru_cache(maxsize=1)
def _data():
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=0))
    return train


def _training_set(max_epochs=2, model=None, **kw):
    """48 groups (46 train in 3 batches, 2 validation), N=32, f=1, gridsize 2."""
    model = model or {}
    cfg = TrainConfig(model=ModelConfig(N=32, gridsize=2, n_filters_scale=1, **model), n_groups=48,
                      batch_size=16, max_epochs=max_epochs, **kw)
    return prepare(_data(), resolve_config(cfg, _data()))


def _model(ts):
    weights = architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)
    return api.build(ts.cfg.model, ts.probe, weights)


class Recorder(TrainHooks):
    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step(self, step, metrics):
        self.steps.append((step, dict(metrics)))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))


class RecordingSet(TrainingSet):
    """A training set that remembers every batch it hands out."""

    def batch(self, which):
        self.seen.append(np.array(which))
        return super().batch(which)


def _recording(ts):
    rec = RecordingSet(**{f.name: getattr(ts, f.name) for f in dataclasses.fields(ts)})
    rec.seen = []
    return rec


def _batch_loss(model, ts, which, loss_mode):
    """Loss and deviance of one batch, computed outside Lightning."""
    scaled, rel = ts.batch(which)
    taps = api.forward(model, scaled, rel, keep=("pred_intensity", "pred_amplitude"))
    log_scale = model.log_scale.detach()
    if loss_mode == "poisson":
        loss = ops.poisson_loss(taps["pred_intensity"], scaled, log_scale)
    else:
        loss = ops.mae_loss(taps["pred_amplitude"], scaled, log_scale)
    return float(loss), float(ops.poisson_deviance(taps["pred_intensity"], scaled, log_scale))


# --- the API surface ----------------------------------------------------------------


def test_load_backend_gives_this_module():
    assert load_backend("torch") is api
    assert api.NAME == "torch"
    assert api.versions() == {"torch_version": torch.__version__, "lightning_version": api.L.__version__}


def test_build_is_eval_ready_and_round_trips_weights():
    ts = _training_set()
    weights = architecture.init_weights(ts.cfg.model, seed=3, log_scale=ts.scales.log_scale)
    model = api.build(ts.cfg.model, ts.probe, weights)
    assert not model.training
    assert model.get_submodule("encoder.0.conv1").weight.is_contiguous(memory_format=torch.channels_last)
    got = api.get_weights(model)
    assert got.keys() == weights.keys()
    for name in weights:
        np.testing.assert_array_equal(got[name], weights[name], err_msg=name)


def test_forward_keeps_only_the_named_taps():
    ts = _training_set()
    model = _model(ts)
    scaled, rel = ts.batch(ts.train_idx[:3])
    taps = api.forward(model, scaled, rel, keep=("amp_patches",))
    assert list(taps) == ["amp_patches"]
    assert isinstance(taps["amp_patches"], np.ndarray)
    assert taps["amp_patches"].shape == (3, 32, 32, 4) and taps["amp_patches"].dtype == np.float32
    everything = api.forward(model, scaled, rel)
    assert {"encoder_input", "amp_patches", "object_extracted", "pred_intensity", "pred_amplitude"} <= set(everything)
    np.testing.assert_array_equal(everything["amp_patches"], taps["amp_patches"])


def test_forward_rejects_unknown_taps():
    ts = _training_set()
    scaled, rel = ts.batch(ts.train_idx[:2])
    with pytest.raises(ValueError, match="unknown taps"):
        api.forward(_model(ts), scaled, rel, keep=("amp_patches", "no_such_tap"))


def test_fit_rejects_a_model_built_for_another_config():
    ts = _training_set()
    other = _training_set(model={"object_big": False})
    with pytest.raises(ValueError, match="built for"):
        api.fit(_model(other), ts, quiet=True)


# --- fit ------------------------------------------------------------------------------


def test_history_lengths_and_hook_keys():
    ts = _training_set(max_epochs=2)
    hooks = Recorder()
    history = api.fit(_model(ts), ts, hooks, quiet=True)
    n_steps = 2 * ts.steps_per_epoch
    assert ts.steps_per_epoch == 3
    assert set(history) == EPOCH_KEYS | STEP_KEYS
    assert all(len(history[k]) == 2 for k in EPOCH_KEYS)
    assert all(len(history[k]) == n_steps for k in STEP_KEYS)
    assert [s for s, _ in hooks.steps] == list(range(n_steps))
    assert [e for e, _ in hooks.epochs] == [0, 1]
    assert all(set(m) == STEP_KEYS for _, m in hooks.steps)
    assert all(set(m) == EPOCH_KEYS for _, m in hooks.epochs)
    assert all(isinstance(v, float) and math.isfinite(v) for _, m in hooks.epochs for v in m.values())
    assert history["train_step_loss"] == [m["train_step_loss"] for _, m in hooks.steps]
    assert history["val_deviance"] == [m["val_deviance"] for _, m in hooks.epochs]


def test_batches_are_exactly_the_training_sets_order():
    ts = _recording(_training_set(max_epochs=2))
    history = api.fit(_model(ts), ts, quiet=True)
    expected = [b for e in range(2) for b in ts.epoch_batches(e) + ts.val_batches()]
    assert len(ts.seen) == len(expected)
    for got, want in zip(ts.seen, expected):
        np.testing.assert_array_equal(got, want)
    # epoch train values are the batch-size-weighted means of that epoch's step values
    sizes = [len(b) for b in ts.epoch_batches(0)]
    assert sizes == [16, 16, 14]
    for e in range(2):
        steps = slice(3 * e, 3 * e + 3)
        sizes = [len(b) for b in ts.epoch_batches(e)]
        assert history["train_loss"][e] == pytest.approx(weighted_mean(history["train_step_loss"][steps], sizes),
                                                         rel=1e-12)
        assert history["train_deviance"][e] == pytest.approx(
            weighted_mean(history["train_step_deviance"][steps], sizes), rel=1e-12)


@pytest.mark.parametrize("loss_mode", ["poisson", "mae"])
def test_step_values_are_pre_update_and_match_the_loss(loss_mode):
    ts = _training_set(max_epochs=1, loss_mode=loss_mode)
    model = _model(ts)
    first = ts.epoch_batches(0)[0]
    want_loss, want_deviance = _batch_loss(model, ts, first, loss_mode)
    history = api.fit(model, ts, quiet=True)
    assert history["train_step_loss"][0] == pytest.approx(want_loss, rel=1e-6)
    assert history["train_step_deviance"][0] == pytest.approx(want_deviance, rel=1e-6)
    if loss_mode == "mae":  # the deviance is reported, not optimised
        assert history["train_step_loss"][0] != pytest.approx(history["train_step_deviance"][0], rel=1e-3)
    # validation ran with the trained weights over the fixed validation batches
    val = [_batch_loss(model, ts, b, loss_mode) for b in ts.val_batches()]
    sizes = [len(b) for b in ts.val_batches()]
    assert history["val_loss"][0] == pytest.approx(weighted_mean([v[0] for v in val], sizes), rel=1e-6)
    assert history["val_deviance"][0] == pytest.approx(weighted_mean([v[1] for v in val], sizes), rel=1e-6)


def test_training_lowers_the_loss():
    ts = _training_set(max_epochs=3)
    history = api.fit(_model(ts), ts, quiet=True)
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert history["train_deviance"][-1] < 0.97 * history["train_deviance"][0]
    assert np.all(np.diff(history["train_deviance"]) < 0)


def test_deterministic_runs_repeat_exactly():
    ts = _training_set(max_epochs=2)
    runs = []
    for _ in range(2):
        model = _model(ts)
        history = api.fit(model, ts, quiet=True, deterministic=True)
        runs.append((history, api.get_weights(model)))
    assert not torch.are_deterministic_algorithms_enabled()  # the process-wide flag is put back
    (h1, w1), (h2, w2) = runs
    assert h1["train_step_loss"] == h2["train_step_loss"]
    assert h1["val_deviance"] == h2["val_deviance"]
    for name in w1:
        np.testing.assert_array_equal(w1[name], w2[name], err_msg=name)
    assert not np.array_equal(w1["encoder.0.conv1.kernel"], api.get_weights(_model(ts))["encoder.0.conv1.kernel"])


def test_without_validation_batches_the_train_values_steer():
    ts = _training_set(max_epochs=1, val_fraction=0.0)
    assert ts.val_batches() == []
    history = api.fit(_model(ts), ts, quiet=True)
    assert history["val_loss"] == history["train_loss"]
    assert history["val_deviance"] == history["train_deviance"]


def test_plateau_rule_halves_after_two_flat_epochs():
    rule = PlateauRule(1e-3)
    assert rule.step(10.0) == 1e-3  # first epoch sets the best
    assert rule.step(10.0 * (1 - 0.5e-4)) == 1e-3  # not below best * (1 - 1e-4): one bad epoch
    assert rule.step(11.0) == 5e-4  # two in a row: halve, count restarts
    assert rule.step(10.0) == 5e-4
    assert rule.step(9.0) == 5e-4  # improvement
    assert rule.step(9.0) == 5e-4
    assert rule.step(9.0) == 2.5e-4
    rule = PlateauRule(1.5e-4)
    rule.step(1.0), rule.step(1.0)
    assert rule.step(1.0) == 1e-4  # floor


def test_fit_applies_the_plateau_rule_to_the_optimizer():
    # lr 1e-2 overshoots on this tiny set: val deviance rises in epochs 1 and 2, so epoch 3 runs at half
    ts = _training_set(max_epochs=4, learning_rate=1e-2)
    history = api.fit(_model(ts), ts, quiet=True)
    rule = PlateauRule(1e-2)
    expected = [1e-2] + [rule.step(v) for v in history["val_deviance"][:-1]]
    assert history["learning_rate"] == pytest.approx(expected, rel=1e-12)
    assert history["learning_rate"][0] == 1e-2
    assert min(history["learning_rate"]) == pytest.approx(5e-3, rel=1e-12), history["val_deviance"]


def test_log_scale_is_fixed_unless_trainable():
    ts = _training_set(max_epochs=1)
    model = _model(ts)
    before = api.get_weights(model)["log_scale"]
    history = api.fit(model, ts, quiet=True)
    after = api.get_weights(model)["log_scale"]
    assert after.tobytes() == before.tobytes()
    assert history["intensity_scale"] == [math.exp(float(before))]
    assert history["intensity_scale"][0] == pytest.approx(ts.scales.intensity_scale, rel=1e-6)


def test_log_scale_trains_when_trainable():
    ts = _training_set(max_epochs=2, model={"intensity_scale_trainable": True})
    model = _model(ts)
    before = float(api.get_weights(model)["log_scale"])
    history = api.fit(model, ts, quiet=True)
    after = float(api.get_weights(model)["log_scale"])
    assert after != before
    assert history["intensity_scale"][-1] == math.exp(after)
    assert history["intensity_scale"][0] != history["intensity_scale"][1]


def _lightning_records(caplog):
    return [r.getMessage() for r in caplog.records if r.name.startswith("lightning")]


def test_quiet_prints_nothing(capfd, caplog):
    ts = _training_set(max_epochs=1)
    level = logging.getLogger("lightning.pytorch").level
    caplog.set_level(logging.INFO)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning either
        api.fit(_model(ts), ts, quiet=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert _lightning_records(caplog) == []
    api.fit(_model(ts), ts, quiet=False)
    out, _ = capfd.readouterr()
    assert "Epoch 0" in out  # progress bar
    assert any("GPU available" in m for m in _lightning_records(caplog))
    assert logging.getLogger("lightning.pytorch").level == level  # quiet put the level back


def test_backend_package_sets_a_passive_omp_wait_policy_before_torch():
    code = ("import os, sys; import ptyparity.backends.torch; "
            "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "PASSIVE"
