"""The Keras PtychoPINN (SPEC §4, §6): architecture, canonical weights, taps, the
tracked ``log_scale`` weight, and its physics taps against the NumPy reference.

TensorFlow is imported through the ``tfnet`` fixture (and inside the tests that need
``tf`` itself), never at module level, so collecting this file stays cheap.
"""

import importlib
import math

import numpy as np
import pytest

from ptyparity import architecture, physics
from ptyparity.config import ModelConfig
from ptyparity.errors import PtyparityError
from tests.conftest import TAP_RTOL, assert_close_rel

N = 32
MAX_OFFSET = 6
BATCH = 2
PHYSICS_TAPS = ("object_patches", "object_canvas", "object_extracted", "exit_wave",
                "pred_intensity", "pred_amplitude", "pred_amplitude_counts")


@pytest.fixture(scope="module")
def tfnet():
    """The TF network module (imports tensorflow on first use)."""
    return importlib.import_module("ptyparity.backends.tensorflow.network")


@pytest.fixture(scope="module")
def tf():
    return importlib.import_module("tensorflow")


def make_cfg(**overrides):
    values = dict(N=N, gridsize=2, n_filters_scale=1, object_big=True, probe_big=False,
                  max_offset=MAX_OFFSET)
    values.update(overrides)
    return ModelConfig(**values)


def make_probe(n):
    """Disk probe with a quadratic phase, scaled by ``probe_norm`` as the model expects."""
    yy, xx = np.mgrid[0:n, 0:n]
    r2 = ((yy - n / 2) ** 2 + (xx - n / 2) ** 2) / (n / 4) ** 2
    probe = physics.probe_disk_mask(n) * np.exp(1j * (n / 8) * r2)
    return (physics.probe_norm(probe) * probe).astype(np.complex64)


def make_batch(cfg, rng, *, batch=BATCH):
    """A random group batch in count units, offsets summing to zero per group."""
    c = cfg.channels
    scaled = rng.gamma(2.0, 20.0, size=(batch, cfg.N, cfg.N, c)).astype(np.float32)
    pos = rng.uniform(-3.0, 3.0, size=(batch, c, 2))
    rel = (pos - pos.mean(axis=1, keepdims=True)).astype(np.float32)
    return scaled, rel


def run_taps(model, scaled, rel):
    from ptyparity.backends.tensorflow import ops

    return {name: ops.to_numpy(t) for name, t in model((scaled, rel)).items()}


# --- architecture and weights ---------------------------------------------------------


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


def test_fresh_model_holds_shared_init_weights(tfnet):
    cfg = make_cfg()
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=1.25, seed=7)
    expected = architecture.init_weights(cfg, seed=7, log_scale=1.25)
    got = tfnet.get_weights(model)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name].dtype == np.float32, name
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_weights_round_trip_bit_identical(tfnet):
    cfg = make_cfg(probe_big=True)
    weights = architecture.init_weights(cfg, seed=3, log_scale=-0.7)
    rng = np.random.default_rng(0)
    for name in weights:  # non-zero biases too, so a dropped bias would show
        if name.endswith(".bias"):
            weights[name] = rng.normal(size=weights[name].shape).astype(np.float32)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0, seed=0)
    tfnet.set_weights(model, weights)
    for source in (model, tfnet.build_model(cfg, make_probe(N), weights)):
        got = tfnet.get_weights(source)
        assert got.keys() == weights.keys()
        for name in weights:
            assert got[name].tobytes() == weights[name].tobytes(), name


def test_set_weights_rejects_missing_name(tfnet):
    cfg = make_cfg()
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    weights = tfnet.get_weights(model)
    del weights["amp_head.conv.bias"]
    with pytest.raises(PtyparityError, match="missing"):
        tfnet.set_weights(model, weights)


def test_set_weights_rejects_wrong_shape(tfnet):
    cfg = make_cfg()
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    weights = tfnet.get_weights(model)
    weights["encoder.0.conv1.kernel"] = np.zeros((3, 3, 1, 32), np.float32)
    with pytest.raises(PtyparityError, match="shape"):
        tfnet.set_weights(model, weights)


def test_rejects_wrong_probe_shape(tfnet):
    with pytest.raises(PtyparityError, match="probe"):
        tfnet.PtychoPINN(make_cfg(), make_probe(64), log_scale=0.0)


def test_rejects_wrong_input_shape(tfnet):
    cfg = make_cfg(gridsize=2)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    scaled, rel = make_batch(make_cfg(gridsize=1), np.random.default_rng(0))
    with pytest.raises(PtyparityError, match="scaled_diffraction"):
        model((scaled, rel))


# --- taps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("gridsize", [1, 2])
@pytest.mark.parametrize("object_big", [False, True])
@pytest.mark.parametrize("probe_big", [False, True])
def test_tap_shapes(tfnet, gridsize, object_big, probe_big):
    cfg = make_cfg(gridsize=gridsize, object_big=object_big, probe_big=probe_big)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.5)
    scaled, rel = make_batch(cfg, np.random.default_rng(1))
    taps = run_taps(model, scaled, rel)

    group = (BATCH, N, N, cfg.channels)
    expected = {"encoder_input": (group, np.float32), "amp_patches": (group, np.float32),
                "phase_patches": (group, np.float32), "object_patches": (group, np.complex64),
                "object_extracted": (group, np.complex64), "exit_wave": (group, np.complex64),
                "pred_intensity": (group, np.float32), "pred_amplitude": (group, np.float32),
                "pred_amplitude_counts": (group, np.float32)}
    if object_big:
        expected["object_canvas"] = ((BATCH, cfg.canvas_size, cfg.canvas_size), np.complex64)
    assert set(taps) == set(expected)
    for name, (shape, dtype) in expected.items():
        assert taps[name].shape == shape, name
        assert taps[name].dtype == dtype, name
        assert np.all(np.isfinite(taps[name])), name


def test_encoder_input_and_counts_use_log_scale(tfnet):
    cfg = make_cfg()
    log_scale = 1.7
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=log_scale)
    scaled, rel = make_batch(cfg, np.random.default_rng(2))
    taps = run_taps(model, scaled, rel)
    assert_close_rel(taps["encoder_input"], scaled / math.exp(log_scale), TAP_RTOL, "encoder_input")
    assert_close_rel(taps["pred_amplitude_counts"], math.exp(log_scale) * taps["pred_amplitude"],
                     TAP_RTOL, "pred_amplitude_counts")


@pytest.mark.parametrize("gridsize", [1, 2])
def test_patches_zero_outside_support(tfnet, gridsize):
    cfg = make_cfg(gridsize=gridsize, probe_big=False)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    scaled, rel = make_batch(cfg, np.random.default_rng(3))
    taps = run_taps(model, scaled, rel)
    outside = physics.support_mask(N, probe_big=False)[None, :, :, None] == 0
    outside = np.broadcast_to(outside, taps["amp_patches"].shape)
    assert np.all(taps["amp_patches"][outside] == 0.0)
    assert np.all(taps["phase_patches"][outside] == 0.0)
    assert np.all(taps["amp_patches"][~outside] > 0.0)  # sigmoid inside the support


def test_probe_big_patches_cover_full_frame(tfnet):
    cfg = make_cfg(probe_big=True)
    model = tfnet.PtychoPINN(cfg, make_probe(N), log_scale=0.0)
    scaled, rel = make_batch(cfg, np.random.default_rng(4))
    assert np.all(run_taps(model, scaled, rel)["amp_patches"] > 0.0)


@pytest.mark.parametrize("object_big, probe_big, merge_weighting, gridsize", [
    (False, False, "support", 2),
    (False, True, "support", 2),
    (True, False, "support", 2),
    (True, True, "support", 2),
    (True, False, "probe", 2),
    (True, False, "support", 1),
])
def test_physics_taps_match_numpy_reference(tfnet, object_big, probe_big, merge_weighting, gridsize):
    cfg = make_cfg(object_big=object_big, probe_big=probe_big, merge_weighting=merge_weighting,
                   gridsize=gridsize)
    probe = make_probe(N)
    model = tfnet.PtychoPINN(cfg, probe, log_scale=2.3, seed=5)
    scaled, rel = make_batch(cfg, np.random.default_rng(5))
    taps = run_taps(model, scaled, rel)
    reference = physics.forward_physics(
        taps["amp_patches"], taps["phase_patches"], probe, rel=rel, object_big=object_big,
        max_offset=cfg.max_offset, merge_weighting=merge_weighting, probe_big=probe_big,
        log_scale=float(tfnet.get_weights(model)["log_scale"]))
    assert set(reference) == set(taps) & set(PHYSICS_TAPS)
    for name, ref in reference.items():
        assert_close_rel(taps[name], ref, TAP_RTOL, name)


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
