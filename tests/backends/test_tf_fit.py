"""Keras-specific behaviour of the TensorFlow backend's ``fit`` (SPEC §5): the
``tf.distribute`` strategies, ``tf.function`` tracing, TF's op-determinism switch,
Keras' progress bar, the Keras system's loss-mode check and :class:`SpecAdam`. What
both backends' ``fit`` must do is in ``test_contract_fit.py``. TensorFlow is imported
through fixtures, never at module level.
"""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptyparity.errors import PtyparityError
from tests.backends.helpers import adam_algorithm_1, initial_weights, training_set
from tests.conftest import F64_RTOL, assert_within_floor, noise_floor

MIRRORED_KEYS = ("train_step_loss", "train_step_deviance", "val_deviance")


@pytest.fixture(scope="module")
def api():
    return importlib.import_module("ptyparity.backends.tensorflow.api")


@pytest.fixture(scope="module")
def tf():
    return importlib.import_module("tensorflow")


def _model(api, ts):
    return api.build(ts.cfg.model, ts.probe, initial_weights(ts))


# --- replicated training -------------------------------------------------------------------

MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 3)
    import numpy as np
    from ptyparity.backends.tensorflow import api, network
    from tests.backends.helpers import adam_algorithm_1, initial_weights, training_set
    from tests.backends.test_tf_fit import MIRRORED_KEYS
    from tests.conftest import one_ulp, rel_diff

    one_device = api._strategy
    # Three replicas on three logical CPUs, as on three GPUs; the same cached strategy for
    # both precisions, as api._strategy hands out on a multi-GPU machine.
    three = lambda accelerator, devices: api._mirrored(("/cpu:0", "/cpu:1", "/cpu:2"))
    out = {}
    for precision in ("float32", "float64"):
        ts = training_set(n_groups=40, max_epochs=1, model={"intensity_scale_trainable": True}, precision=precision)
        start = initial_weights(ts)
        runs = {"single": (one_device, start), "mirrored": (three, start)}
        if precision == "float32":  # the noise floor: one device, every weight one ulp off
            runs["single_ulp"] = (one_device, one_ulp(start))
        got = {}
        for name, (strategy, weights) in runs.items():
            api._strategy = strategy
            model = api.build(ts.cfg.model, ts.probe, weights, precision=precision)
            got[name] = (api.fit(model, ts, quiet=True), network.get_weights(model, np.float64))
        (h1, w1) = got["single"]
        scale = max(float(np.max(np.abs(w))) for w in w1.values())
        for name in runs:
            if name != "single":
                h2, w2 = got[name]
                out[f"{precision}.{name}"] = {
                    **{k: float(np.max(rel_diff(h2[k], h1[k]))) for k in MIRRORED_KEYS},
                    "weights": max(float(np.max(np.abs(w1[k] - w2[k]))) for k in w1) / scale,
                    "log_scale_moved": float(w2["log_scale"] - start["log_scale"])}
        out["sizes"] = [len(b) for b in ts.epoch_batches(0)] + [len(b) for b in ts.val_batches()]
    print(json.dumps(out))
""")


def test_mirrored_strategy_gives_the_single_device_batch_means():
    """The multi-replica path (each replica a share of the rows, gradients summed by the
    optimizer's all-reduce) computes the single-device batch means: exactly, so in
    float64; in float32 within the noise floor of one device (every weight one ulp off).
    Three logical CPUs stand in for three GPUs, with a short batch and a replica left
    without rows; float32 and float64 run in one process on one cached strategy."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    assert result["sizes"] == [16, 16, 6, 2]  # 6 rows -> 2+2+2, 2 val rows -> 0+1+1
    exact, single32, floor32 = result["float64.mirrored"], result["float32.mirrored"], result["float32.single_ulp"]
    for key in (*MIRRORED_KEYS, "weights"):
        assert exact[key] <= F64_RTOL, (key, exact[key])
        assert_within_floor(single32[key], noise_floor(floor32[key]), f"float32 {key}")
    assert exact["log_scale_moved"] != 0 and single32["log_scale_moved"] != 0


def test_strategy_for_a_cpu_request(api, tf):
    if not tf.config.list_logical_devices("GPU"):
        assert api._strategy("cpu", 1) is None and api._strategy("auto", 1) is None  # TF's default placement
    assert api._mirrored(("/cpu:0",)) is api._mirrored(("/cpu:0",))  # one strategy per device tuple


def test_fit_rejects_several_cpu_devices(api):
    ts = training_set(max_epochs=1)
    with pytest.raises(PtyparityError, match="one CPU device"):
        api.fit(_model(api, ts), ts, quiet=True, accelerator="cpu", devices=2)


# --- tracing, determinism, progress ---------------------------------------------------------


def test_forward_traces_once_for_every_batch_size(api):
    ts = training_set(max_epochs=1)
    model = _model(api, ts)
    for b in (1, 3, 7):
        out = api.forward(model, *ts.batch(ts.train_idx[:b]), keep=("pred_amplitude",))
        assert out["pred_amplitude"].shape == (b, 32, 32, 4)
    assert api._forward_fn(model, ("pred_amplitude",)).experimental_get_tracing_count() == 1


def test_whole_graph_taps_reuse_the_traced_all_taps_forward(api):
    """After an all-taps forward (a training's debug dump), taps that need the whole graph (its
    held-out deviance) come from that function, in the order asked, without a second trace."""
    ts = training_set(max_epochs=1)
    model = _model(api, ts)
    batch = ts.batch(ts.train_idx[:3])
    every = api.forward(model, *batch)
    keep = ("pred_intensity", "amp_patches")
    some = api.forward(model, *batch, keep=keep)
    assert tuple(some) == keep
    for name in keep:
        np.testing.assert_array_equal(some[name], every[name])
    assert api._forward_fn(model, None).experimental_get_tracing_count() == 1
    assert not hasattr(api._forward_fn(model, keep), "experimental_get_tracing_count")  # no tf.function of its own
    assert hasattr(api._forward_fn(model, ("object_extracted",)), "experimental_get_tracing_count")  # pruned graph


def test_spec_adam_builds_the_bias_corrections_once_per_step(api, tf):
    """Every variable's update shares one step's ``beta**t`` (two float64 Pow ops in the traced
    float32 train step, whatever the number of variables); the update itself is SpecAdam's, as
    the parity tests with torch's Adam check."""
    from ptyparity.backends.tensorflow.keras_model import PtychoPINNSystem

    ts = training_set(max_epochs=1)
    system = PtychoPINNSystem(_model(api, ts), loss_mode="poisson", learning_rate=1e-3)
    graph = api._Runner(system, None).train.get_concrete_function().graph
    assert len(system.net.trainable_variables) > 2
    pows = [op for op in graph.get_operations() if op.type == "Pow" and op.outputs[0].dtype == tf.float64]
    assert len(pows) == 2


def test_deterministic_fit_puts_op_determinism_back(api):
    from tensorflow.python.framework import config as tf_config

    ts = training_set(max_epochs=1, n_groups=24)
    was_on = tf_config.is_op_determinism_enabled()
    api.fit(_model(api, ts), ts, quiet=True, deterministic=True)
    assert tf_config.is_op_determinism_enabled() == was_on


def test_progress_bar_shows_the_epoch_and_the_val_values(api, capsys):
    ts = training_set(max_epochs=1, n_groups=24)
    api.fit(_model(api, ts), ts, quiet=False)
    shown = capsys.readouterr().out
    assert "Epoch 1/1" in shown and "val_deviance" in shown


def test_the_keras_system_rejects_an_unknown_loss_mode(api):
    from ptyparity.backends.tensorflow.keras_model import PtychoPINNSystem

    ts = training_set(max_epochs=1)
    with pytest.raises(PtyparityError, match="loss_mode must be one of poisson, mae; got 'l2'"):
        PtychoPINNSystem(_model(api, ts), loss_mode="l2", learning_rate=1e-3)


# --- SpecAdam ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fused", [True, False])
def test_spec_adam_is_algorithm_1_and_keras_adam_is_not(tf, fused):
    """Exact claim, so in float64. Gradients near ``eps`` show the difference: Keras'
    stock Adam adds eps to the uncorrected sqrt(v), an effective 31.6 eps at step 1.
    Both of SpecAdam's updates: TensorFlow's Adam kernel (the default) and the composite ops."""
    keras = importlib.import_module("keras")
    from ptyparity.backends.tensorflow.keras_model import make_optimizer

    rng = np.random.default_rng(0)
    theta0 = rng.normal(size=64)
    grads = [rng.normal(size=64) * 10.0 ** rng.uniform(-9, -5, size=64) for _ in range(5)]
    expected = adam_algorithm_1(theta0, grads, lr=1e-3)
    results = {}
    for name, optimizer in (("spec", make_optimizer(1e-3, "float64", fused=fused)),
                            ("keras", keras.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7))):
        variable = keras.Variable(theta0, dtype="float64")
        for g in grads:
            optimizer.apply([tf.constant(g)], [variable])
        results[name] = variable.numpy() - theta0  # the steps taken
    steps = expected - theta0
    assert np.max(np.abs(results["spec"] - steps)) <= F64_RTOL * np.max(np.abs(steps))
    assert np.max(np.abs(results["keras"] - steps)) > 0.1 * np.max(np.abs(steps))


def test_spec_adam_fused_float32_steps_are_within_the_composite_ops_rounding(tf):
    """In float32 TensorFlow's Adam kernel rounds ``1 - beta`` in float32 (``1 - float32(0.999)``
    is 1.3e-5 below torch's ``float32(0.001)``); SpecAdam takes that factor back out. The
    floor is the composite update's own float32 error against Algorithm 1 (float64) over the
    same 40 steps; the kernel given the plain ``alpha`` and ``eps`` (no factor taken out)
    is the negative control, 6.5e-6 off at every step."""
    keras = importlib.import_module("keras")
    from ptyparity.backends.tensorflow.keras_model import make_optimizer

    rng = np.random.default_rng(1)
    n, lr, eps = 4096, 1e-3, 1e-7
    grads = [(rng.normal(size=n) * 10.0 ** rng.uniform(-6, -1, size=n)).astype(np.float32) for _ in range(40)]
    theta0 = np.zeros(n, np.float32)  # steps of ~lr stay far above theta's float32 spacing
    m = v = np.zeros(n)
    expected, theta = [], theta0.astype(np.float64)
    for t, g in enumerate(grads, start=1):  # Algorithm 1, float64, on the float32 gradients
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g.astype(np.float64) ** 2
        theta = theta - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + eps)
        expected.append(theta)

    def errors(apply_step):
        out = []
        for t, (g, want) in enumerate(zip(grads, expected), start=1):
            got = apply_step(t, g).astype(np.float64)
            out.append(float(np.median(np.abs(got - want) / np.abs(want))))
        return np.array(out)

    def spec(fused):
        optimizer, variable = make_optimizer(lr, "float32", fused=fused), keras.Variable(theta0, dtype="float32")

        def apply_step(t, g):
            optimizer.apply([tf.constant(g)], [variable])
            return variable.numpy()
        return apply_step

    var, mom, vel = (tf.Variable(x) for x in (theta0, np.zeros(n, np.float32), np.zeros(n, np.float32)))

    def plain_kernel(t, g):
        f32 = lambda x: tf.constant(x, tf.float32)  # noqa: E731
        tf.raw_ops.ResourceApplyAdam(var=var.handle, m=mom.handle, v=vel.handle, beta1_power=f32(0),
                                     beta2_power=f32(0), lr=f32(lr / (1 - 0.9**t) * np.sqrt(1 - 0.999**t)),
                                     beta1=f32(0.9), beta2=f32(0.999), epsilon=f32(eps * np.sqrt(1 - 0.999**t)),
                                     grad=tf.constant(g))
        return var.numpy()

    composite, fused, plain = errors(spec(False)), errors(spec(True)), errors(plain_kernel)
    print("median relative error per step: composite", composite.max(), "fused", fused.max(), "plain", plain.min(),
          "fused / composite at most", (fused / composite).max())
    floor = 4 * composite  # the composite's own rounding, step by step
    assert np.all(fused <= floor), (fused, composite)
    assert np.all(plain > floor), (plain, composite)  # the factor SpecAdam takes out is visible


def test_spec_adam_traces_one_kernel_per_variable(api, tf):
    from ptyparity.backends.tensorflow.keras_model import PtychoPINNSystem

    ts = training_set(max_epochs=1)
    system = PtychoPINNSystem(_model(api, ts), loss_mode="poisson", learning_rate=1e-3)
    ops = [op.type for op in api._Runner(system, None).train.get_concrete_function().graph.get_operations()]
    assert ops.count("ResourceApplyAdam") == len(system.net.trainable_variables)
    assert "AssignSubVariableOp" not in ops  # no composite update beside it
