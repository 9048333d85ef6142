"""What ``fit`` must do in both backends (SPEC §5), through the ``backend`` fixture:
history and hooks, batch order, pre-update step values, the plateau rule, ``log_scale``,
repeatability, quiet output.

Tiny on purpose (N=32, n_filters_scale=1, a few dozen groups, 1-6 epochs); the
cross-backend comparison of whole runs is in ``test_training_parity.py``.
"""

import math
import re
import warnings

import numpy as np
import pytest

from ptyparity import architecture, physics
from ptyparity.training import EPOCH_KEYS, STEP_KEYS, PlateauRule, weighted_mean
from tests.backends.helpers import Recorder, initial_weights, training_set
from tests.conftest import F32_EPS, F64_RTOL


def fresh_model(api, ts, weights=None, precision="float32"):
    return api.build(ts.cfg.model, ts.probe, initial_weights(ts) if weights is None else weights,
                     precision=precision)


def full_deviance(api, model, ts, which):
    """Poisson deviance of groups ``which`` through ``forward`` (NumPy reference, float64)."""
    scaled, rel = ts.batch(which)
    inten = api.forward(model, scaled, rel, keep=("pred_intensity",))["pred_intensity"]
    return physics.poisson_deviance(inten, scaled, float(api.get_weights(model)[architecture.LOG_SCALE]))


def test_history_hooks_batch_order_and_learning(backend, monkeypatch):
    ts = training_set(max_epochs=3)
    seen = []
    original = type(ts).batch

    def spy(self, which):
        seen.append(np.array(which))
        return original(self, which)

    monkeypatch.setattr(type(ts), "batch", spy)
    model = fresh_model(backend, ts)
    before = full_deviance(backend, model, ts, ts.train_idx)
    seen.clear()
    rec = Recorder()
    history = backend.fit(model, ts, rec, quiet=True)
    # batches: each epoch's training batches in the training set's order, then the val batches
    assert [len(b) for b in ts.epoch_batches(0)] == [16, 16, 14] and len(ts.val_batches()) == 1
    expected = [b for epoch in range(3) for b in (*ts.epoch_batches(epoch), *ts.val_batches())]
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
    # history and hooks
    n_steps = 3 * ts.steps_per_epoch
    assert set(history) == set(EPOCH_KEYS) | set(STEP_KEYS)
    assert all(len(history[k]) == 3 for k in EPOCH_KEYS) and all(len(history[k]) == n_steps for k in STEP_KEYS)
    assert [s for s, _ in rec.steps] == list(range(n_steps)) and [e for e, _ in rec.epochs] == [0, 1, 2]
    assert all(set(m) == set(STEP_KEYS) for _, m in rec.steps)
    assert all(set(m) == set(EPOCH_KEYS) for _, m in rec.epochs)
    for key in STEP_KEYS:
        assert history[key] == [m[key] for _, m in rec.steps]
    for key in EPOCH_KEYS:
        assert history[key] == [m[key] for _, m in rec.epochs]
    assert all(isinstance(v, float) and math.isfinite(v) for k in history for v in history[k])
    for epoch in range(3):  # epoch train values: batch-size-weighted means of its step values
        sizes = [len(b) for b in ts.epoch_batches(epoch)]
        span = slice(epoch * ts.steps_per_epoch, (epoch + 1) * ts.steps_per_epoch)
        assert history["train_loss"][epoch] == weighted_mean(history["train_step_loss"][span], sizes)
        assert history["train_deviance"][epoch] == weighted_mean(history["train_step_deviance"][span], sizes)
    rule = PlateauRule(ts.cfg.learning_rate)  # the plateau rule replayed on the val deviances
    assert history["learning_rate"] == [ts.cfg.learning_rate] + [rule.step(v) for v in history["val_deviance"][:-1]]
    # and it learns
    assert full_deviance(backend, model, ts, ts.train_idx) < before
    assert np.all(np.diff(history["train_deviance"]) < 0)
    assert history["train_deviance"][-1] < 0.97 * history["train_deviance"][0]


@pytest.mark.parametrize("loss_mode", ["poisson", "mae"])
def test_step_values_are_pre_update_and_val_uses_the_trained_weights(backend, loss_mode):
    """Exact claims, so in float64: step 0 reports the loss of the initial weights on the
    first batch, the epoch's val values the loss of the trained weights on the val
    batches (both recomputed here with ``forward`` and the NumPy reference losses)."""
    ts = training_set(max_epochs=1, loss_mode=loss_mode, precision="float64")
    model = fresh_model(backend, ts, precision="float64")

    def losses(which):
        scaled, rel = ts.batch(which)
        taps = backend.forward(model, scaled, rel, keep=("pred_intensity", "pred_amplitude"))
        log_scale = float(backend.get_weights(model)[architecture.LOG_SCALE])
        loss = (physics.poisson_loss(taps["pred_intensity"], scaled, log_scale) if loss_mode == "poisson"
                else physics.mae_loss(taps["pred_amplitude"], scaled, log_scale))
        return loss, physics.poisson_deviance(taps["pred_intensity"], scaled, log_scale)

    before = losses(ts.epoch_batches(0)[0])
    history = backend.fit(model, ts, quiet=True)
    assert history["train_step_loss"][0] == pytest.approx(before[0], rel=F64_RTOL)
    assert history["train_step_deviance"][0] == pytest.approx(before[1], rel=F64_RTOL)
    after = losses(ts.epoch_batches(0)[0])
    assert abs(after[0] - before[0]) > 1e-4 * abs(before[0])  # the weights did move
    val = [losses(b) for b in ts.val_batches()]
    sizes = [len(b) for b in ts.val_batches()]
    assert history["val_loss"][0] == pytest.approx(weighted_mean([v[0] for v in val], sizes), rel=F64_RTOL)
    assert history["val_deviance"][0] == pytest.approx(weighted_mean([v[1] for v in val], sizes), rel=F64_RTOL)
    if loss_mode == "mae":  # the deviance is reported, not optimised
        assert history["train_step_loss"][0] != pytest.approx(history["train_step_deviance"][0], rel=1e-2)


def test_deterministic_fits_repeat_exactly_and_leave_numpy_alone(backend):
    ts = training_set(max_epochs=1, n_groups=24, deterministic=True)
    np_state = np.random.get_state()
    runs = []
    for _ in range(2):
        model = fresh_model(backend, ts)
        runs.append((backend.fit(model, ts, quiet=True, deterministic=True), backend.get_weights(model)))
    after = np.random.get_state()  # the global NumPy RNG is left alone
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    (h0, w0), (h1, w1) = runs
    assert h0 == h1
    for name in w0:
        assert w0[name].tobytes() == w1[name].tobytes(), name
    assert not np.array_equal(w0["encoder.0.conv1.kernel"], initial_weights(ts)["encoder.0.conv1.kernel"])


def test_without_validation_batches_the_train_values_steer(backend):
    ts = training_set(max_epochs=1, n_groups=24, val_fraction=0.0)
    assert ts.val_batches() == []
    history = backend.fit(fresh_model(backend, ts), ts, quiet=True)
    assert history["val_loss"] == history["train_loss"]
    assert history["val_deviance"] == history["train_deviance"]


def test_learning_rate_halves_when_val_deviance_stalls(backend):
    """Saturated heads (sigmoid and tanh at exactly 1 in float32) give exactly zero
    gradients, so the val deviance repeats exactly: epochs 1 and 2 fail to improve on
    epoch 0, the rate halves for epoch 3, and again two epochs later."""
    ts = training_set(max_epochs=6, n_groups=24)
    weights = initial_weights(ts)
    for branch in ("amp", "phase"):
        weights[f"{branch}_head.conv.kernel"] = np.zeros_like(weights[f"{branch}_head.conv.kernel"])
        weights[f"{branch}_head.conv.bias"] = np.full_like(weights[f"{branch}_head.conv.bias"], 100.0)
    history = backend.fit(fresh_model(backend, ts, weights), ts, quiet=True)
    assert len(set(history["val_deviance"])) == 1  # no improvement at all
    lr = ts.cfg.learning_rate
    assert history["learning_rate"] == [lr, lr, lr, lr / 2, lr / 2, lr / 4]


@pytest.mark.parametrize("trainable", [False, True])
def test_log_scale_trains_only_when_trainable(backend, trainable):
    ts = training_set(max_epochs=2, n_groups=24, model={"intensity_scale_trainable": trainable})
    start = initial_weights(ts)[architecture.LOG_SCALE]
    model = fresh_model(backend, ts)
    history = backend.fit(model, ts, quiet=True)
    final = backend.get_weights(model)[architecture.LOG_SCALE]
    assert final.dtype == np.float32 and final.shape == ()
    assert history["intensity_scale"][-1] == math.exp(float(final))
    if trainable:
        assert final != start and history["intensity_scale"][0] != history["intensity_scale"][1]
    else:
        assert final.tobytes() == np.float32(start).tobytes()
        assert history["intensity_scale"] == [math.exp(float(start))] * 2
        # exp of the float32-rounded log s: s to within |log s| float32 ulps
        bound = F32_EPS * max(1.0, abs(math.log(ts.scales.intensity_scale)))
        assert history["intensity_scale"][0] == pytest.approx(ts.scales.intensity_scale, rel=bound)


# TensorFlow's C++ runtime logs (absl format, e.g. oneDNN's "E0000 ... util.cc:131] oneDNN
# supports DT_INT32 only ..."): TF's own, not ptyparity's; TF_CPP_MIN_LOG_LEVEL=3 hides them.
CPP_LOG_LINE = re.compile(r"^([IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] |WARNING: All log messages before absl)")


def test_quiet_fit_prints_and_warns_nothing(backend, capfd):
    """(What a fit that is not quiet shows is each framework's own: test_torch_fit, test_tf_fit.)"""
    ts = training_set(max_epochs=1, n_groups=24)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backend.fit(fresh_model(backend, ts), ts, quiet=True)
    out, err = capfd.readouterr()
    assert out == ""
    assert [line for line in err.splitlines() if not CPP_LOG_LINE.match(line)] == []


def test_gpu_request_trains_on_a_gpu_or_says_there_is_none(backend):
    ts = training_set(max_epochs=1)
    model = fresh_model(backend, ts)
    if backend.NAME == "torch":
        import torch

        has_gpu = torch.cuda.is_available()
    else:
        import tensorflow as tf

        has_gpu = bool(tf.config.list_logical_devices("GPU"))
    if has_gpu:
        assert len(backend.fit(model, ts, quiet=True, accelerator="gpu")["train_loss"]) == 1
    else:
        from ptyparity.errors import PtyparityError

        with pytest.raises(PtyparityError, match="gpu"):
            backend.fit(model, ts, quiet=True, accelerator="gpu")
