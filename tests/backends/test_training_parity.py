"""Training parity: the torch and TensorFlow backends, started from the same
canonical weights on the same TrainingSet, take the same optimisation path (SPEC §5).

Two kinds of claim, two kinds of check (``tests/README.md``):

- The math is the same: exact, so asserted in float64
  (``TrainConfig(precision="float64")``, the parity-verification precision), where the
  per-step values agree to ~1e-16 and the bound is ``F64_RTOL``. This is what catches a
  real difference: Keras' stock Adam, whose epsilon sits under the bias correction,
  puts the float64 step deviances 8e-6 apart after one step and 4e-4 after two.
- Float32 runs agree "within the noise": Adam normalises every gradient to a step of
  about ``lr``, including gradients that are pure rounding noise, and ReLU switches
  amplify the differences, so two runs of *one* backend whose starting weights differ
  by a single ulp drift apart by ~1e-3 relative within 20 steps (oneDNN or Eigen
  kernels alike; the kernels themselves differ between CPUs). Every float32 bound is
  ``FLOOR_FACTOR`` times that one-ulp drift of both backends, measured in the same
  test over the same steps; none is a constant tuned on one machine.
"""

import importlib

import numpy as np
import pytest
import torch

from ptyparity import architecture
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.training import TrainHooks, prepare, resolve_config
from tests.backends.helpers import raw_data
from tests.conftest import F64_RTOL, TAP_RTOL, assert_within_floor, noise_floor, one_ulp, rel_diff

STEPS = 20
WINDOWS = (5, 10, STEPS)  # steps 0-4 (before the noise is amplified), 0-9, 0-19
STEP_RTOL = 1e-3  # issue 4's criterion over the first 20 steps, asserted in float64


def training_set(*, n_groups, loss_mode="poisson", trainable=False, precision="float32"):
    raw = raw_data()
    model = ModelConfig(N=32, gridsize=2, n_filters_scale=1, object_big=True, intensity_scale_trainable=trainable)
    cfg = resolve_config(TrainConfig(model=model, n_groups=n_groups, batch_size=16, max_epochs=1,
                                     loss_mode=loss_mode, deterministic=True, seed=0, precision=precision), raw)
    return prepare(raw, cfg)


def start_weights(ts):
    return architecture.init_weights(ts.cfg.model, seed=ts.cfg.seed, log_scale=ts.scales.log_scale)


def train(backend, ts, weights):
    api = importlib.import_module(f"ptyparity.backends.{backend}.api")
    model = api.build(ts.cfg.model, ts.probe, weights)
    history = api.fit(model, ts, quiet=True, deterministic=True)
    return history, api.get_weights(model)


def train_with_floor(ts, weights):
    """Both backends from ``weights``, and each again from ``one_ulp(weights)``.

    Returns ``(tf, torch, drifts)``: the two ``(history, weights)`` results and a function
    ``drifts(key, steps)`` giving each backend's one-ulp drift of ``history[key]``
    (relative, over ``steps``), the noise floor of the comparison."""
    runs = {(b, ulp): train(b, ts, one_ulp(weights) if ulp else weights)
            for b in ("tensorflow", "torch") for ulp in (False, True)}

    def drifts(key, steps=slice(None)):
        return [rel_diff(runs[(b, True)][0][key], runs[(b, False)][0][key])[steps] for b in ("tensorflow", "torch")]

    return runs[("tensorflow", False)], runs[("torch", False)], drifts


def test_per_step_deviance_agrees_across_backends(record_property):
    ts = training_set(n_groups=336)
    assert ts.steps_per_epoch >= STEPS
    (tf_hist, _), (torch_hist, _), drifts = train_with_floor(ts, start_weights(ts))
    rel = rel_diff(tf_hist["train_step_deviance"], torch_hist["train_step_deviance"])
    tf_drift, torch_drift = drifts("train_step_deviance")
    print("per-step train_step_deviance, |tf - torch| / |torch|:", np.array2string(rel, precision=1))
    print("tf with every weight 1 ulp off:                      ", np.array2string(tf_drift, precision=1))
    print("torch with every weight 1 ulp off:                   ", np.array2string(torch_drift, precision=1))
    for steps in WINDOWS:
        floor = noise_floor(*drifts("train_step_deviance", slice(steps)))
        record_property(f"max_rel_steps_1_{steps}", float(rel[:steps].max()))
        record_property(f"one_ulp_floor_steps_1_{steps}", floor)
        assert_within_floor(rel[:steps], floor, f"steps 1-{steps}")
    # step 0 is one forward pass with identical weights: SPEC §8's forward contract
    # (the exact claim, <= 1e-12, is the float64 test's)
    assert rel[0] <= TAP_RTOL
    assert_within_floor(rel_diff(tf_hist["val_deviance"], torch_hist["val_deviance"]),
                        noise_floor(*drifts("val_deviance")), "val_deviance")
    assert tf_hist["learning_rate"] == torch_hist["learning_rate"]  # epoch bookkeeping is exact
    assert tf_hist["intensity_scale"] == torch_hist["intensity_scale"]  # frozen log_scale


@pytest.mark.parametrize("loss_mode, trainable", [("poisson", True), ("mae", False)])
def test_steps_agree_in_other_modes(loss_mode, trainable):
    """The trainable ``log_scale`` path and the MAE loss: the same math (float64), and
    float32 runs within the noise."""
    ts64 = training_set(n_groups=96, loss_mode=loss_mode, trainable=trainable, precision="float64")
    ts = training_set(n_groups=96, loss_mode=loss_mode, trainable=trainable)
    weights = start_weights(ts)
    start = float(weights[architecture.LOG_SCALE])

    (tf64, tf64_w), (torch64, torch64_w) = train("tensorflow", ts64, weights), train("torch", ts64, weights)
    for key in ("train_step_loss", "train_step_deviance", "val_loss", "val_deviance"):
        assert rel_diff(tf64[key], torch64[key]).max() <= F64_RTOL, (key, rel_diff(tf64[key], torch64[key]))

    (tf_hist, tf_w), (torch_hist, torch_w), drifts = train_with_floor(ts, weights)
    for key in ("train_step_loss", "train_step_deviance"):
        rel = rel_diff(tf_hist[key], torch_hist[key])
        print(loss_mode, trainable, key, np.array2string(rel, precision=1))
        assert_within_floor(rel, noise_floor(*drifts(key)), key)

    tf_log, torch_log = (float(w[architecture.LOG_SCALE]) for w in (tf_w, torch_w))
    tf64_log, torch64_log = (float(w[architecture.LOG_SCALE]) for w in (tf64_w, torch64_w))
    if not trainable:
        assert tf_log == torch_log == tf64_log == torch64_log == start
        return
    assert tf_log != start and torch_log != start
    # float64: the same move, up to one float32 rounding of the result
    assert abs(tf64_log - torch64_log) <= np.spacing(np.float32(abs(torch64_log)))
    # float32: the same direction, and intensity_scale = exp(log_scale) within the noise
    assert np.sign(tf_log - start) == np.sign(torch_log - start)
    assert_within_floor(rel_diff(tf_hist["intensity_scale"], torch_hist["intensity_scale"]),
                        noise_floor(*drifts("intensity_scale")), "intensity_scale")


class _ParamDtypes(TrainHooks):
    """Records the dtype of one trained weight at every step (``weight()`` reads it)."""

    def __init__(self, weight):
        self.weight = weight
        self.dtypes = []

    def on_step(self, step, metrics):
        self.dtypes.append(str(self.weight()))


def test_float64_per_step_deviance_agrees_across_backends(record_property):
    """Issue 4's criterion, literally: in the float64 verification precision the two
    backends' per-step deviances agree within 1e-3 relative over the first 20 steps
    (measured: ~5e-16 over the whole 20-step epoch)."""
    ts = training_set(n_groups=336, precision="float64")
    ts32 = training_set(n_groups=336)
    assert ts.steps_per_epoch >= STEPS
    weights = start_weights(ts)

    tf_api, torch_api = (importlib.import_module(f"ptyparity.backends.{b}.api") for b in ("tensorflow", "torch"))
    torch_model = torch_api.build(ts.cfg.model, ts.probe, weights)  # built in float32, as run_train does
    torch_probe = _ParamDtypes(lambda: torch_model.get_submodule("encoder.0.conv1").weight.dtype)
    torch_hist = torch_api.fit(torch_model, ts, torch_probe, quiet=True, deterministic=True)
    tf_model = tf_api.build(ts.cfg.model, ts.probe, weights)
    tf_hist = tf_api.fit(tf_model, ts, quiet=True, deterministic=True)
    torch32_hist, _ = train("torch", ts32, weights)

    rel = rel_diff(tf_hist["train_step_deviance"], torch_hist["train_step_deviance"])
    rel32 = rel_diff(torch32_hist["train_step_deviance"], torch_hist["train_step_deviance"])
    summary = {"float64_max_rel_steps_1_20": float(rel[:STEPS].max()), "float64_max_rel_run": float(rel.max()),
               "float32_vs_float64_torch_max_rel": float(rel32.max())}
    print("float64 per-step train_step_deviance, |tf - torch| / |torch|:", np.array2string(rel, precision=2))
    print(summary)
    for key, value in summary.items():
        record_property(key, value)

    assert rel[:STEPS].max() <= STEP_RTOL, f"steps 1-{STEPS}: {rel[:STEPS]}"  # the criterion
    assert rel.max() <= F64_RTOL, f"float64 rounding noise should stay near 1e-16: {rel}"
    # It really ran in float64: the parameters were float64 during fit (torch) ...
    assert torch_probe.dtypes and set(torch_probe.dtypes) == {"torch.float64"}
    # ... the step-0 deviances agree far below float32 resolution and differ from the float32 run's ...
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
    # trained alike: float64 results agreeing to ~1e-16, each rounded once to float32,
    # differ by at most one float32 ulp
    tf_w, torch_w = tf_api.get_weights(tf_model), torch_api.get_weights(torch_model)
    for name in tf_w:
        ulp = np.spacing(np.maximum(np.abs(tf_w[name]), np.abs(torch_w[name])))
        assert np.all(np.abs(tf_w[name] - torch_w[name]) <= ulp), name
