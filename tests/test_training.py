"""Backend-neutral training inputs: scales, split, batch order, plateau rule."""

import math

import numpy as np
import pytest

from ptyparity import training
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.simulate import SimConfig, simulate


@pytest.fixture(scope="module")
def data():
    return simulate(SimConfig(N=32, object_size_px=96, nphotons=1e5, seed=0))[0]


def make(data, **kw):
    cfg = TrainConfig(model=ModelConfig(N=32, gridsize=2, n_filters_scale=1), n_groups=64, **kw)
    cfg = training.resolve_config(cfg, data)
    return training.prepare(data, cfg)


def test_resolve_fills_max_offset(data):
    ts = make(data)
    assert ts.cfg.model.max_offset == 6  # ceil(1.5 * step 4)


def test_dataset_mode_makes_targets_the_measured_counts(data):
    ts = make(data)
    scaled, rel = ts.batch(np.arange(3))
    raw = np.moveaxis(data.diff3d[ts.groups.indices[:3]], 1, -1)
    np.testing.assert_allclose(scaled, raw, rtol=1e-5)  # s * X == diff3d
    assert rel.shape == (3, 4, 2) and scaled.dtype == np.float32
    s = ts.scales
    assert s.data_scale == pytest.approx(1 / s.input_norm)
    assert s.intensity_scale == s.data_scale and s.nphotons == 1e5


def test_closed_form_and_override(data):
    cf = make(data, intensity_scale_mode="closed_form").scales
    assert cf.data_scale == pytest.approx(math.sqrt(1e5) / 16)
    assert make(data, intensity_scale=3.0).scales.data_scale == 3.0


def test_model_probe_reproduces_data_energy_at_half_amplitude(data):
    ts = make(data)
    energy = np.sum(np.abs(0.5 * ts.probe.astype(np.complex128)) ** 2)
    assert energy == pytest.approx(16.0**2, rel=1e-5)


def test_split_and_epoch_order(data):
    ts = make(data)
    assert len(ts.val_idx) == 3 and len(ts.train_idx) == 61  # 5% of 64, rounded
    assert not set(ts.val_idx) & set(ts.train_idx)
    e0, e0_again, e1 = ts.epoch_batches(0), ts.epoch_batches(0), ts.epoch_batches(1)
    assert all(np.array_equal(a, b) for a, b in zip(e0, e0_again))
    assert not np.array_equal(np.concatenate(e0), np.concatenate(e1))
    assert sorted(np.concatenate(e0).tolist()) == ts.train_idx.tolist()
    assert [len(b) for b in e0] == [16, 16, 16, 13] and ts.steps_per_epoch == 4


def test_too_few_groups(data):
    cfg = training.resolve_config(TrainConfig(model=ModelConfig(N=32), n_groups=1, val_fraction=0.5), data)
    with pytest.raises(PtyparityError, match="no training group"):
        training.prepare(data, cfg)


def test_plateau_rule_halves_after_two_flat_epochs():
    rule = training.PlateauRule(1e-3)
    lrs = [rule.step(v) for v in (10.0, 9.0, 9.0, 8.9995, 8.0, 8.0, 8.0, 8.0, 8.0)]
    # 9.0 is a new best; the next two (9.0, 8.9995: not below 9*(1-1e-4)) halve;
    # 8.0 is a new best; two more flat epochs halve again, and so on.
    assert lrs == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4]
    for _ in range(10):
        rule.step(8.0)
    assert rule.lr == 1e-4  # floor
    low = training.PlateauRule(5e-5)
    assert [low.step(1.0) for _ in range(3)] == [5e-5, 5e-5, 5e-5]  # never raised to the floor


def test_weighted_mean():
    assert training.weighted_mean([1.0, 4.0], [3, 1]) == pytest.approx(1.75)


def test_final_scales_reads_the_trained_log_scale_and_keeps_the_rest():
    start = training.Scales(input_norm=0.01, data_scale=100.0, intensity_scale=100.0, probe_norm=2.0, nphotons=1e6)
    trained = training.final_scales(start, {"log_scale": np.float32(math.log(250.0))})
    assert trained.intensity_scale == pytest.approx(250.0, rel=1e-6)
    assert (trained.data_scale, trained.input_norm, trained.probe_norm) == (100.0, 0.01, 2.0)
    assert start.intensity_scale == 100.0


class _Epochs(training.TrainHooks):
    def __init__(self):
        self.epochs = []

    def on_epoch_end(self, epoch, metrics):
        self.epochs.append((epoch, metrics["intensity_scale"]))


def _fit(data, **kw):
    from ptyparity import architecture
    from ptyparity.backends import load_backend

    cfg = training.resolve_config(TrainConfig(model=ModelConfig(N=32, gridsize=2, n_filters_scale=1,
                                                                intensity_scale_trainable=kw.pop("trainable", False)),
                                              n_groups=40, max_epochs=2, **kw), data)
    ts = training.prepare(data, cfg)
    start = ts.scales
    api = load_backend("torch")
    model = api.build(cfg.model, ts.probe, architecture.init_weights(cfg.model, seed=0, log_scale=start.log_scale))
    hooks = _Epochs()
    return ts, start, hooks, training.fit_model(api, model, ts, hooks=hooks, quiet=True)


def test_fit_model_returns_weights_scales_history_and_leaves_the_training_set(data):
    ts, start, hooks, fit = _fit(data, trainable=True, learning_rate=1e-2)
    assert ts.scales is start  # the training set is not mutated
    assert fit.scales.intensity_scale == pytest.approx(float(np.exp(np.float64(fit.weights["log_scale"]))), rel=1e-12)
    assert fit.scales.intensity_scale != pytest.approx(start.intensity_scale, rel=1e-6)  # it was trained
    assert fit.scales.data_scale == start.data_scale
    assert all(np.all(np.isfinite(w)) for w in fit.weights.values())
    assert len(fit.history["train_loss"]) == 2 and [e for e, _ in hooks.epochs] == [0, 1]
    assert hooks.epochs[-1][1] == pytest.approx(fit.scales.intensity_scale, rel=1e-6)
    assert len(fit.step_loss) == len(fit.step_deviance) == 2 * ts.steps_per_epoch
    assert list(fit.step_loss) == fit.history["train_step_loss"]


def test_fit_model_stops_at_the_first_nan_loss(data):
    # The NaN loss of the second step stops the fit there, not after the last epoch.
    with pytest.raises(training.TrainingDiverged, match=r"training diverged: train_step_loss = nan at epoch 1, "
                                                        r"step 2; the learning rate is likely too high"):
        _fit(data, learning_rate=1e30)
