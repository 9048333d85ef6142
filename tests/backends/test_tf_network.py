"""The Keras network's own behaviour (SPEC §4, §6): Keras' parameter count, the Keras
call, ``tf.function`` tracing, a oneDNN regression, and the tracked ``log_scale``
weight. What both backends must do (taps, weights, references, bad input) is in
``test_contract.py``.

TensorFlow is imported through the ``tfnet`` fixture (and inside the tests that need
``tf`` itself), never at module level, so collecting this file stays cheap.
"""

import importlib

import numpy as np
import pytest

from ptyparity import architecture, physics
from ptyparity.errors import PtyparityError
from tests.backends.helpers import BATCH, MAX_OFFSET, N
from tests.backends.helpers import group_batch as _group_batch
from tests.backends.helpers import model_cfg as make_cfg
from tests.backends.helpers import model_probe as make_probe
from tests.conftest import TAP_RTOL, assert_close_rel


@pytest.fixture(scope="module")
def tfnet():
    """The TF network module (imports tensorflow on first use)."""
    return importlib.import_module("ptyparity.backends.tensorflow.network")


@pytest.fixture(scope="module")
def tf():
    return importlib.import_module("tensorflow")


def make_batch(cfg, rng, *, batch=BATCH):
    return _group_batch(cfg, rng, batch=batch)


def run_taps(model, scaled, rel):
    from ptyparity.backends.tensorflow import ops

    return {name: ops.to_numpy(t) for name, t in model((scaled, rel)).items()}


# --- Keras' parameter count and call ---------------------------------------------------


@pytest.mark.parametrize("n", [32, 64, 128])
@pytest.mark.parametrize("f", [1, 2])
def test_param_count_matches_architecture(tfnet, n, f):
    cfg = make_cfg(N=n, n_filters_scale=f)
    model = tfnet.PtychoPINN(cfg, make_probe(n), log_scale=0.0)
    conv_params = sum(int(np.prod(w.shape)) for layer in model.convs.values() for w in layer.weights)
    assert conv_params == architecture.param_count(cfg)
    # Keras counts every tracked weight, log_scale (one scalar) included.
    assert model.count_params() == architecture.param_count(cfg) + 1
    shapes = {name: w.shape for name, w in tfnet.get_weights(model).items()}
    assert shapes == architecture.weight_shapes(cfg)


def test_rejects_wrong_input_shape(tfnet):
    cfg = make_cfg(gridsize=2)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    scaled, rel = make_batch(make_cfg(gridsize=1), np.random.default_rng(0))
    with pytest.raises(PtyparityError, match="scaled_diffraction"):
        model((scaled, rel))


# --- graphs -------------------------------------------------------------------------------


def test_tf_function_matches_eager(tfnet, tf):
    cfg = make_cfg(object_big=True)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.3)
    scaled, rel = make_batch(cfg, np.random.default_rng(6))
    eager = run_taps(model, scaled, rel)
    graph = tf.function(model)((tf.constant(scaled), tf.constant(rel)))
    assert set(graph) == set(eager)
    for name, ref in eager.items():
        assert_close_rel(graph[name].numpy(), ref, TAP_RTOL, name)


def test_gridsize1_merge_survives_repeated_calls():
    """Regression: TF 2.21's oneDNN BatchMatMulV2 corrupted the heap when a (B, 1)
    batch of tent matrices met the plain (Pd, Pd) weight image (gridsize-1 merge);
    it crashed the process within a few hundred calls before translate broadcast
    its operands explicitly."""
    from ptyparity.backends.tensorflow import ops

    rng = np.random.default_rng(8)
    patches = (rng.normal(size=(BATCH, N, N, 1)) * np.exp(1j * rng.normal(size=(BATCH, N, N, 1))))
    patches = patches.astype(np.complex64)
    rel = np.zeros((BATCH, 1, 2), np.float32)
    weights = physics.support_mask(N)
    for _ in range(300):
        canvas = ops.merge_patches(patches, rel, weights, MAX_OFFSET)
    assert_close_rel(ops.to_numpy(canvas), physics.merge_patches(patches, rel, weights, MAX_OFFSET),
                     TAP_RTOL, "object_canvas")


# --- log_scale: a tracked Keras weight ------------------------------------------------------


@pytest.mark.parametrize("trainable", [False, True])
def test_log_scale_is_tracked_weight(tfnet, trainable):
    cfg = make_cfg(intensity_scale_trainable=trainable)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.9)
    ids = lambda ws: {id(w) for w in ws}  # noqa: E731
    assert id(model.log_scale) in ids(model.weights)
    assert (id(model.log_scale) in ids(model.trainable_weights)) is trainable
    assert (id(model.log_scale) in ids(model.non_trainable_weights)) is (not trainable)
    # every other weight is a conv kernel or bias: 2 per convolution, all trainable
    assert len(model.trainable_weights) == 2 * len(architecture.all_convs(cfg)) + int(trainable)


@pytest.mark.parametrize("trainable", [False, True])
def test_one_optimizer_step_moves_log_scale_only_when_trainable(tfnet, tf, trainable):
    keras = importlib.import_module("keras")
    from ptyparity.backends.tensorflow import ops

    cfg = make_cfg(intensity_scale_trainable=trainable)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.9)
    scaled, rel = make_batch(cfg, np.random.default_rng(7))
    before = tfnet.get_weights(model)

    optimizer = keras.optimizers.Adam(learning_rate=1e-2)
    with tf.GradientTape() as tape:
        taps = model((scaled, rel))
        loss = ops.poisson_loss(taps["pred_intensity"], scaled, model.log_scale)
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    optimizer.apply_gradients(zip(grads, model.trainable_weights))
    after = tfnet.get_weights(model)

    assert not np.array_equal(after["amp_head.conv.kernel"], before["amp_head.conv.kernel"])
    if trainable:
        assert after["log_scale"] != before["log_scale"]
    else:
        assert after["log_scale"].tobytes() == before["log_scale"].tobytes()
