"""Training with the TensorFlow backend API (SPEC §5): history and hooks, batch
order, pre-update step values, the plateau rule, ``log_scale`` handling,
determinism and ``forward``.

Tiny on purpose (N=32, n_filters_scale=1, a few dozen groups, 1-5 epochs); the
cross-backend comparison lives in ``test_training_parity.py``. TensorFlow is imported
through fixtures, never at module level.
"""

import importlib
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptyparity import architecture
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.simulate import SimConfig, simulate
from ptyparity.training import PlateauRule, TrainHooks, prepare, resolve_config, weighted_mean

EPOCH_KEYS = {"train_loss", "val_loss", "train_deviance", "val_deviance", "intensity_scale", "learning_rate"}
STEP_KEYS = {"train_step_loss", "train_step_deviance"}


@pytest.fixture(scope="module")
def api():
    return importlib.import_module("ptyparity.backends.tensorflow.api")


@pytest.fixture(scope="module")
def tf():
    return importlib.import_module("tensorflow")


@pytest.fixture(scope="module")
def raw():
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=0))
    return train


def make_set(raw, **overrides):
    model = dict(N=32, gridsize=2, n_filters_scale=1)
    model.update(overrides.pop("model", {}))
    values = dict(model=ModelConfig(**model), n_groups=48, batch_size=16, max_epochs=2)
    values.update(overrides)
    cfg = resolve_config(TrainConfig(**values), raw)
    return prepare(raw, cfg)


def initial_weights(ts):
    return architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)


class Recorder(TrainHooks):
    def __init__(self):
        self.steps, self.epochs = [], []

    def on_step(self, step, metrics):
        self.steps.append((step, dict(metrics)))

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, dict(metrics)))


def full_loss(api, model, ts, idx):
    """Poisson loss over groups ``idx`` through ``forward`` (float64 NumPy mean)."""
    scaled, rel = ts.batch(idx)
    inten = api.forward(model, scaled, rel, keep=("pred_intensity",))["pred_intensity"].astype(np.float64)
    log_scale = float(api.get_weights(model)[architecture.LOG_SCALE])
    lam = math.exp(2 * log_scale) * inten
    y = scaled.astype(np.float64) ** 2
    return float(np.mean(lam - y * np.log(lam + 1e-8)))


# --- history, hooks, batches ---------------------------------------------------------------


def test_history_and_hooks(api, raw):
    ts = make_set(raw, max_epochs=2)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    rec = Recorder()
    history = api.fit(model, ts, rec, quiet=True)

    n_steps = 2 * ts.steps_per_epoch
    assert set(history) == EPOCH_KEYS | STEP_KEYS
    assert all(len(history[k]) == 2 for k in EPOCH_KEYS)
    assert all(len(history[k]) == n_steps for k in STEP_KEYS)
    assert [s for s, _ in rec.steps] == list(range(n_steps))
    assert all(set(m) == STEP_KEYS for _, m in rec.steps)
    assert [e for e, _ in rec.epochs] == [0, 1]
    assert all(set(m) == EPOCH_KEYS for _, m in rec.epochs)
    for key in STEP_KEYS:
        assert history[key] == [m[key] for _, m in rec.steps]
    for key in EPOCH_KEYS:
        assert history[key] == [m[key] for _, m in rec.epochs]
    assert all(isinstance(v, float) and math.isfinite(v) for k in history for v in history[k])
    # Epoch train values are the batch-size-weighted means of that epoch's step values.
    for epoch in range(2):
        sizes = [len(b) for b in ts.epoch_batches(epoch)]
        span = slice(epoch * ts.steps_per_epoch, (epoch + 1) * ts.steps_per_epoch)
        assert history["train_loss"][epoch] == weighted_mean(history["train_step_loss"][span], sizes)
        assert history["train_deviance"][epoch] == weighted_mean(history["train_step_deviance"][span], sizes)
    # The plateau rule, replayed on the reported val deviances, gives the reported rates.
    rule = PlateauRule(ts.cfg.learning_rate)
    expected = [ts.cfg.learning_rate] + [rule.step(v) for v in history["val_deviance"][:-1]]
    assert history["learning_rate"] == expected


def test_batches_and_order_are_the_training_sets(api, raw, monkeypatch):
    ts = make_set(raw, max_epochs=2)
    seen = []
    original = type(ts).batch

    def spy(self, which):
        seen.append(np.array(which))
        return original(self, which)

    monkeypatch.setattr(type(ts), "batch", spy)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    api.fit(model, ts, quiet=True)
    expected = [*ts.epoch_batches(0), *ts.val_batches(), *ts.epoch_batches(1), *ts.val_batches()]
    assert len(ts.val_batches()) >= 1
    assert len(seen) == len(expected)
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)


def test_step_values_are_pre_update(api, raw):
    """Step 0 reports the loss of the initial weights on the first batch."""
    ts = make_set(raw, max_epochs=1)
    weights = initial_weights(ts)
    model = api.build(ts.cfg.model, ts.probe, weights)
    before = full_loss(api, model, ts, ts.epoch_batches(0)[0])
    history = api.fit(model, ts, quiet=True)
    assert history["train_step_loss"][0] == pytest.approx(before, rel=1e-6)
    after = full_loss(api, model, ts, ts.epoch_batches(0)[0])
    assert after != pytest.approx(before, rel=1e-6)  # and the weights did move


def test_training_loss_drops(api, raw):
    ts = make_set(raw, max_epochs=3)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    before = full_loss(api, model, ts, ts.train_idx)
    history = api.fit(model, ts, quiet=True)
    after = full_loss(api, model, ts, ts.train_idx)
    assert after < before
    assert history["train_deviance"][-1] < history["train_deviance"][0]


def test_mae_mode_optimises_mae_and_reports_deviance(api, raw, capsys):
    ts = make_set(raw, max_epochs=1, loss_mode="mae", n_groups=24)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    scaled, rel = ts.batch(ts.epoch_batches(0)[0])
    pred = api.forward(model, scaled, rel, keep=("pred_amplitude_counts",))["pred_amplitude_counts"]
    mae = float(np.mean(np.abs(pred.astype(np.float64) - scaled)))
    history = api.fit(model, ts, quiet=False)  # with the progress bar
    shown = capsys.readouterr().out
    assert "Epoch 1/1" in shown and "val_deviance" in shown
    assert history["train_step_loss"][0] == pytest.approx(mae, rel=1e-5)
    assert history["train_step_deviance"][0] > 0
    assert history["train_step_deviance"][0] != pytest.approx(mae, rel=1e-2)


# --- plateau rule ------------------------------------------------------------------------


def test_learning_rate_halves_when_val_deviance_stalls(api, raw):
    """Saturated heads (sigmoid and tanh at exactly 1 in float32) give zero gradients,
    so the val deviance repeats exactly: after epochs 1 and 2 fail to improve on
    epoch 0 the rate halves, and again two epochs later."""
    ts = make_set(raw, max_epochs=6, n_groups=24)
    weights = initial_weights(ts)
    for branch in ("amp", "phase"):
        weights[f"{branch}_head.conv.kernel"] = np.zeros_like(weights[f"{branch}_head.conv.kernel"])
        weights[f"{branch}_head.conv.bias"] = np.full_like(weights[f"{branch}_head.conv.bias"], 100.0)
    model = api.build(ts.cfg.model, ts.probe, weights)
    history = api.fit(model, ts, quiet=True)
    assert len(set(history["val_deviance"])) == 1  # no improvement at all
    lr = ts.cfg.learning_rate
    assert history["learning_rate"] == [lr, lr, lr, lr / 2, lr / 2, lr / 4]


# --- log_scale -------------------------------------------------------------------------------


@pytest.mark.parametrize("trainable", [False, True])
def test_log_scale_trains_only_when_trainable(api, raw, trainable):
    ts = make_set(raw, max_epochs=1, model={"intensity_scale_trainable": trainable})
    weights = initial_weights(ts)
    model = api.build(ts.cfg.model, ts.probe, weights)
    history = api.fit(model, ts, quiet=True)
    final = api.get_weights(model)[architecture.LOG_SCALE]
    start = np.asarray(weights[architecture.LOG_SCALE], np.float32)
    if trainable:
        assert final != start
    else:
        assert final.tobytes() == start.tobytes()
    assert history["intensity_scale"][-1] == pytest.approx(math.exp(float(final)), rel=1e-12)
    assert final.dtype == np.float32 and final.shape == ()


# --- determinism -------------------------------------------------------------------------------


def test_deterministic_runs_repeat_exactly(api, raw):
    from tensorflow.python.framework import config as tf_config

    ts = make_set(raw, max_epochs=1, deterministic=True)
    was_on = tf_config.is_op_determinism_enabled()
    np_state = np.random.get_state()
    runs = []
    for _ in range(2):
        model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
        history = api.fit(model, ts, quiet=True, deterministic=True)
        runs.append((history, api.get_weights(model)))
    # The process-wide switch is put back, and the global NumPy RNG is left alone.
    assert tf_config.is_op_determinism_enabled() == was_on
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    (h0, w0), (h1, w1) = runs
    assert h0["train_step_loss"] == h1["train_step_loss"]
    assert h0["train_step_deviance"] == h1["train_step_deviance"]
    assert h0["val_deviance"] == h1["val_deviance"]
    for name in w0:
        assert w0[name].tobytes() == w1[name].tobytes(), name


# --- forward -----------------------------------------------------------------------------


def test_forward_keep_returns_only_those_taps(api, raw):
    ts = make_set(raw, max_epochs=1)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    scaled, rel = ts.batch(ts.train_idx[:5])
    full = api.forward(model, scaled, rel)
    assert set(full) == {"encoder_input", "amp_patches", "phase_patches", "object_patches", "object_canvas",
                         "object_extracted", "exit_wave", "pred_intensity", "pred_amplitude",
                         "pred_amplitude_counts"}
    assert all(isinstance(v, np.ndarray) for v in full.values())
    kept = api.forward(model, scaled, rel, keep=("amp_patches", "pred_amplitude"))
    assert set(kept) == {"amp_patches", "pred_amplitude"}
    assert kept["amp_patches"].shape == (5, 32, 32, 4)
    for name, value in kept.items():
        np.testing.assert_array_equal(value, full[name])
    with pytest.raises(ValueError, match="unknown taps"):
        api.forward(model, scaled, rel, keep=("no_such_tap",))
    with pytest.raises(PtyparityError, match="scaled_diffraction must have shape"):
        api.forward(model, scaled[..., :2], rel)


def test_forward_traces_once_for_every_batch_size(api, raw):
    ts = make_set(raw, max_epochs=1)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    for b in (1, 3, 7):
        out = api.forward(model, *ts.batch(ts.train_idx[:b]), keep=("pred_amplitude",))
        assert out["pred_amplitude"].shape == (b, 32, 32, 4)
    assert api._forward_fn(model, ("pred_amplitude",)).experimental_get_tracing_count() == 1


# --- replicated training -------------------------------------------------------------------

MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
    import numpy as np
    from ptyparity import architecture
    from ptyparity.backends.tensorflow import api
    from tests.backends.test_tf_fit import make_set, initial_weights
    from ptyparity.simulate import SimConfig, simulate
    raw, _ = simulate(SimConfig(N=32, object_size_px=96, seed=0))
    ts = make_set(raw, n_groups=40, max_epochs=1, model={"intensity_scale_trainable": True})
    runs = {}
    for name in ("single", "mirrored"):
        if name == "mirrored":  # three replicas on three logical CPUs, as on three GPUs
            api._strategy = lambda accelerator, devices: tf.distribute.MirroredStrategy(
                devices=["/cpu:0", "/cpu:1", "/cpu:2"])
        model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
        runs[name] = (api.fit(model, ts, quiet=True), api.get_weights(model))
    (h1, w1), (h2, w2) = runs["single"], runs["mirrored"]
    rel = lambda k: float(np.max(np.abs(np.subtract(h1[k], h2[k])) / np.abs(h1[k])))
    print(json.dumps({"sizes": [len(b) for b in ts.epoch_batches(0)] + [len(b) for b in ts.val_batches()],
                      **{k: rel(k) for k in ("train_step_loss", "train_step_deviance", "val_deviance")},
                      "log_scale_moved": float(w2["log_scale"] - initial_weights(ts)["log_scale"]),
                      "weights": max(float(np.max(np.abs(w1[k] - w2[k]))) for k in w1)}))
""")


def test_mirrored_strategy_matches_one_device():
    """The multi-replica path (each replica a share of the rows, gradients summed by
    the optimizer's all-reduce) gives the single-device batch means; three logical
    CPUs stand in for three GPUs, with a short batch and a replica left without rows."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sizes"] == [16, 16, 6, 2]  # 6 rows -> 2+2+2, 2 val rows -> 0+1+1
    assert result["train_step_loss"] <= 1e-6
    assert result["train_step_deviance"] <= 1e-6
    assert result["val_deviance"] <= 1e-6
    assert result["log_scale_moved"] != 0
    assert result["weights"] <= 1e-4


# --- arguments ---------------------------------------------------------------------------


def test_fit_rejects_a_model_for_another_config(api, raw):
    ts = make_set(raw, max_epochs=1)
    other = make_set(raw, max_epochs=1, model={"merge_weighting": "probe"})
    model = api.build(other.cfg.model, other.probe, initial_weights(other))
    with pytest.raises(ValueError, match="model was built for"):
        api.fit(model, ts, quiet=True)


def test_fit_rejects_an_unknown_accelerator(api, raw):
    ts = make_set(raw, max_epochs=1)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    with pytest.raises(PtyparityError, match="accelerator must be one of"):
        api.fit(model, ts, quiet=True, accelerator="tpu")


def test_fit_rejects_several_cpu_devices(api, raw):
    ts = make_set(raw, max_epochs=1)
    model = api.build(ts.cfg.model, ts.probe, initial_weights(ts))
    with pytest.raises(PtyparityError, match="one CPU device"):
        api.fit(model, ts, quiet=True, accelerator="cpu", devices=2)


def test_gpu_request_needs_a_visible_gpu(api, tf):
    if tf.config.list_logical_devices("GPU"):
        api._strategy("gpu", 1)  # resolves without error where a GPU is visible
    else:
        with pytest.raises(PtyparityError, match="sees no GPU"):
            api._strategy("gpu", 1)
        assert api._strategy("auto", 1) is None  # auto falls back to the CPU


def test_versions(api):
    versions = api.versions()
    assert set(versions) == {"tensorflow_version", "keras_version"}
    assert api.NAME == "tensorflow"
