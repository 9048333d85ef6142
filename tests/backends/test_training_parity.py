"""Training parity: the torch and TensorFlow backends, started from the same
canonical weights on the same TrainingSet, take the same optimisation path (SPEC §5).

What "the same" can mean in float32 is measured, not assumed. Adam normalises every
gradient to a step of about ``lr``, including gradients that are pure rounding noise,
and ReLU switches amplify the resulting differences: two runs of *one* backend whose
starting weights differ by a single ulp drift apart by ~1e-3 relative in the step
deviance after 15-20 steps (measured: 2.2e-3 torch, 2.1e-3 TF, N=32 f=1 gridsize 2,
336 groups). So the checks are:

- step 0 (identical weights, one forward): equal to float32 rounding;
- steps 0-4, before the noise is amplified: <= 1e-4 (Keras' stock Adam, whose
  epsilon sits under the bias correction, fails this at step 3: 2.5e-4);
- steps 0-9: <= 1e-3;
- steps 0-19: <= 1e-3 or, where float32 chaos already exceeds that, within 5x of
  the same-backend one-ulp divergence measured in the same test.

With ``TrainConfig(precision="float64")`` (the parity-verification precision) the
rounding noise is ~1e-16, so the issue's criterion, 1e-3 relative over the first 20
steps, is asserted literally (measured: ~5e-16 over the whole 20-step epoch).
"""

import importlib

import numpy as np
import pytest
import torch

from ptyparity import architecture
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.simulate import SimConfig, simulate
from ptyparity.training import TrainHooks, prepare, resolve_config

STEPS = 20
EARLY_STEPS, EARLY_RTOL = 5, 1e-4
MID_STEPS, STEP_RTOL = 10, 1e-3
FLOOR_FACTOR = 5.0


@pytest.fixture(scope="module")
def raw():
    train, _ = simulate(SimConfig(N=32, object_size_px=96, seed=0))
    return train


def training_set(raw, *, n_groups, loss_mode="poisson", trainable=False, precision="float32"):
    model = ModelConfig(N=32, gridsize=2, n_filters_scale=1, object_big=True, intensity_scale_trainable=trainable)
    cfg = resolve_config(TrainConfig(model=model, n_groups=n_groups, batch_size=16, max_epochs=1,
                                     loss_mode=loss_mode, deterministic=True, seed=0, precision=precision), raw)
    return prepare(raw, cfg)


def train(backend, ts, weights):
    api = importlib.import_module(f"ptyparity.backends.{backend}.api")
    model = api.build(ts.cfg.model, ts.probe, weights)
    history = api.fit(model, ts, quiet=True, deterministic=True)
    return history, api.get_weights(model)


def one_ulp(weights, seed=5):
    """Every weight moved by one float32 ulp, up or down at random (``log_scale`` kept)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if name == architecture.LOG_SCALE:
            out[name] = w
            continue
        direction = np.where(rng.random(w.shape) < 0.5, -np.inf, np.inf).astype(np.float32)
        out[name] = np.nextafter(w, direction).astype(np.float32)
    return out


def step_rel_diff(a, b):
    a = np.asarray(a["train_step_deviance"], np.float64)
    b = np.asarray(b["train_step_deviance"], np.float64)
    assert a.shape == b.shape
    return np.abs(a - b) / np.abs(b)


def test_per_step_deviance_agrees_across_backends(raw, record_property):
    ts = training_set(raw, n_groups=336)
    assert ts.steps_per_epoch >= STEPS
    weights = architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)
    tf_hist, _ = train("tensorflow", ts, weights)
    torch_hist, _ = train("torch", ts, weights)
    floor_hist, _ = train("torch", ts, one_ulp(weights))

    rel = step_rel_diff(tf_hist, torch_hist)
    floor = step_rel_diff(floor_hist, torch_hist)
    summary = {
        "max_rel_steps_1_5": float(rel[:EARLY_STEPS].max()),
        "max_rel_steps_1_10": float(rel[:MID_STEPS].max()),
        "max_rel_steps_1_20": float(rel[:STEPS].max()),
        "max_rel_run": float(rel.max()),
        "torch_one_ulp_max_rel_steps_1_20": float(floor[:STEPS].max()),
    }
    print("per-step train_step_deviance, |tf - torch| / |torch|:", np.array2string(rel, precision=2))
    print("torch vs torch with every weight 1 ulp off:          ", np.array2string(floor, precision=2))
    print(summary)
    for key, value in summary.items():
        record_property(key, value)

    assert rel[0] <= 1e-6, "identical weights and batch must give the same step-0 deviance"
    assert rel[:EARLY_STEPS].max() <= EARLY_RTOL, f"steps 1-{EARLY_STEPS}: {rel[:EARLY_STEPS]}"
    assert rel[:MID_STEPS].max() <= STEP_RTOL, f"steps 1-{MID_STEPS}: {rel[:MID_STEPS]}"
    bound = max(STEP_RTOL, FLOOR_FACTOR * floor[:STEPS].max())
    assert rel[:STEPS].max() <= bound, f"steps 1-{STEPS}: {rel[:STEPS]} exceeds {bound:.2e} (floor {floor})"
    # Epoch-level bookkeeping agrees too.
    assert tf_hist["learning_rate"] == torch_hist["learning_rate"]
    assert tf_hist["intensity_scale"] == torch_hist["intensity_scale"]  # frozen log_scale
    np.testing.assert_allclose(tf_hist["val_deviance"], torch_hist["val_deviance"], rtol=1e-2)


@pytest.mark.parametrize("loss_mode, trainable", [("poisson", True), ("mae", False)])
def test_early_steps_agree_in_other_modes(raw, loss_mode, trainable):
    """The trainable ``log_scale`` path and the MAE loss, over the pre-chaos window."""
    ts = training_set(raw, n_groups=96, loss_mode=loss_mode, trainable=trainable)
    assert ts.steps_per_epoch >= EARLY_STEPS
    weights = architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)
    tf_hist, tf_weights = train("tensorflow", ts, weights)
    torch_hist, torch_weights = train("torch", ts, weights)
    rel = step_rel_diff(tf_hist, torch_hist)
    print(loss_mode, trainable, np.array2string(rel, precision=2))
    assert rel[0] <= 1e-6
    assert rel[:EARLY_STEPS].max() <= EARLY_RTOL, f"steps 1-{EARLY_STEPS}: {rel[:EARLY_STEPS]}"
    tf_loss, torch_loss = (np.asarray(h["train_step_loss"][:EARLY_STEPS]) for h in (tf_hist, torch_hist))
    assert np.abs(tf_loss - torch_loss).max() <= EARLY_RTOL * np.abs(torch_loss).max()
    tf_log, torch_log = (float(w[architecture.LOG_SCALE]) for w in (tf_weights, torch_weights))
    start = float(weights[architecture.LOG_SCALE])
    if trainable:
        assert tf_log != start and torch_log != start
        # Both moved the same way by about the same amount (Adam: ~lr per step).
        assert np.sign(tf_log - start) == np.sign(torch_log - start)
        assert abs(tf_log - torch_log) <= 0.1 * abs(torch_log - start)
    else:
        assert tf_log == start == torch_log


class _ParamDtypes(TrainHooks):
    """Records the dtype of one trained weight at every step (``weight()`` reads it)."""

    def __init__(self, weight):
        self.weight = weight
        self.dtypes = []

    def on_step(self, step, metrics):
        self.dtypes.append(str(self.weight()))


def test_float64_per_step_deviance_agrees_across_backends(raw, record_property):
    """Issue 4's criterion, literally: in the float64 verification precision the two
    backends' per-step deviances agree within 1e-3 relative over the first 20 steps."""
    ts = training_set(raw, n_groups=336, precision="float64")
    ts32 = training_set(raw, n_groups=336)
    assert ts.steps_per_epoch >= STEPS
    weights = architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)

    tf_api, torch_api = (importlib.import_module(f"ptyparity.backends.{b}.api") for b in ("tensorflow", "torch"))
    torch_model = torch_api.build(ts.cfg.model, ts.probe, weights)  # built in float32, as run_train does
    torch_probe = _ParamDtypes(lambda: torch_model.get_submodule("encoder.0.conv1").weight.dtype)
    torch_hist = torch_api.fit(torch_model, ts, torch_probe, quiet=True, deterministic=True)
    tf_model = tf_api.build(ts.cfg.model, ts.probe, weights)
    tf_hist = tf_api.fit(tf_model, ts, quiet=True, deterministic=True)
    torch32_hist, _ = train("torch", ts32, weights)

    rel = step_rel_diff(tf_hist, torch_hist)
    rel32 = step_rel_diff(torch32_hist, torch_hist)
    summary = {"float64_max_rel_steps_1_20": float(rel[:STEPS].max()), "float64_max_rel_run": float(rel.max()),
               "float32_vs_float64_torch_max_rel": float(rel32.max())}
    print("float64 per-step train_step_deviance, |tf - torch| / |torch|:", np.array2string(rel, precision=2))
    print(summary)
    for key, value in summary.items():
        record_property(key, value)

    assert rel[:STEPS].max() <= STEP_RTOL, f"steps 1-{STEPS}: {rel[:STEPS]}"  # the criterion
    assert rel.max() <= 1e-9, f"float64 rounding noise should stay near 1e-16: {rel}"
    # It really ran in float64: the parameters were float64 during fit (torch) ...
    assert torch_probe.dtypes and set(torch_probe.dtypes) == {"torch.float64"}
    # ... the step-0 deviances agree far below float32 resolution (float32: ~1e-7) and differ
    # from the float32 run's ...
    assert rel[0] <= 1e-12
    assert 0 < rel32[0] and rel32.max() > 1e-9
    # ... and both models are float32 again afterwards, with float32 canonical weights.
    assert torch_model.precision == "float32" and torch_model.log_scale.dtype == torch.float32
    assert torch_model.probe.dtype == torch.complex64
    assert tf_model.precision == "float32" and tf_model.convs["encoder.0.conv1"].kernel.dtype == "float32"
    for api, model in ((torch_api, torch_model), (tf_api, tf_model)):
        assert {w.dtype for w in api.get_weights(model).values()} == {np.dtype(np.float32)}
        taps = api.forward(model, *ts.batch(np.arange(2)), keep=["pred_intensity"])
        assert taps["pred_intensity"].dtype == np.float32
    tf_w, torch_w = tf_api.get_weights(tf_model), torch_api.get_weights(torch_model)
    assert max(float(np.abs(tf_w[k] - torch_w[k]).max()) for k in tf_w) <= 1e-6  # trained alike
