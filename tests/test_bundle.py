"""Bundle format: round trip, checksums, corrupt and edited bundles refused."""

import json
import math
import pathlib

import numpy as np
import pytest

from ptyparity import architecture, bundle
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.simulate import make_probe
from ptyparity.training import Scales
from tests.conftest import OP_RTOL, assert_close_rel

CFG = ModelConfig(N=32, gridsize=2, n_filters_scale=1, max_offset=6)
SCALES = Scales(input_norm=0.016, data_scale=62.5, intensity_scale=62.5, probe_norm=3.1, nphotons=1e6)


@pytest.fixture
def saved(tmp_path):
    weights = architecture.init_weights(CFG, seed=0, log_scale=math.log(SCALES.intensity_scale))
    path = bundle.save(tmp_path / "b", weights=weights, model_cfg=CFG, train_cfg=TrainConfig(model=CFG),
                       scales=SCALES, probe=make_probe(32), backend="torch", versions={"torch_version": "x"})
    return path, weights


def test_round_trip(saved):
    path, weights = saved
    b = bundle.load_dir(path)
    assert b.model_cfg == CFG and b.scales == SCALES and b.backend == "torch"
    assert all(np.array_equal(b.weights[k], weights[k]) for k in weights)
    np.testing.assert_array_equal(b.probe, make_probe(32))
    assert b.train_cfg["n_groups"] == 512


def test_edited_intensity_scale_is_refused(saved):
    path, _ = saved
    meta_path = path / "bundle.json"
    meta = json.loads(meta_path.read_text())
    meta["intensity_scale"] = 1.0
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(PtyparityError, match="config checksum mismatch.*intensity_scale"):
        bundle.load_dir(path)
    forced = bundle.load_dir(path, verify=False)  # what an unverified loader would use
    assert forced.scales.intensity_scale == 1.0 and float(forced.weights["log_scale"]) == 0.0


def test_modified_weights_are_refused(saved):
    path, weights = saved
    weights = dict(weights)
    weights["encoder.0.conv1.bias"] = weights["encoder.0.conv1.bias"] + 1e-3
    np.savez(path / "weights.npz", **weights)
    with pytest.raises(PtyparityError, match="weights checksum mismatch"):
        bundle.load_dir(path)


def test_truncated_weights_file(saved):
    path, _ = saved
    (path / "weights.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(PtyparityError, match="unreadable weights"):
        bundle.load_dir(path)


def test_not_a_bundle(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(PtyparityError, match="no bundle.json"):
        bundle.resolve(str(tmp_path))
    with pytest.raises(PtyparityError, match="no such bundle"):
        bundle.resolve(str(tmp_path / "missing"))


def test_wrong_shapes_are_refused():
    weights = architecture.init_weights(CFG, seed=0, log_scale=0.0)
    other = ModelConfig(N=32, gridsize=1, n_filters_scale=1)
    with pytest.raises(PtyparityError, match="has shape .* the bundle does not match its config"):
        architecture.check_weights(other, weights)


def test_scale_must_match_log_scale(tmp_path):
    weights = architecture.init_weights(CFG, seed=0, log_scale=0.0)
    with pytest.raises(ValueError, match="disagree"):
        bundle.save(tmp_path / "b", weights=weights, model_cfg=CFG, train_cfg=TrainConfig(model=CFG),
                    scales=SCALES, probe=make_probe(32), backend="torch")


V1_DIR = pathlib.Path(__file__).parent / "data" / "bundle_v1"
V1_EXPECTED = pathlib.Path(__file__).parent / "data" / "bundle_v1_expected.npz"
V1_TAPS = ("amp_patches", "object_extracted", "pred_amplitude_counts")


def test_format_1_bundle_written_before_the_redesign_loads_verified():
    rec = bundle.load(str(V1_DIR))  # verify=True: both checksums and log_scale vs intensity_scale
    meta = rec.bundle.meta
    assert meta["format"] == bundle.FORMAT and meta["format_version"] == 1 and rec.bundle.backend == "torch"
    assert rec.model_cfg == ModelConfig(N=32, gridsize=2, n_filters_scale=1, max_offset=6)
    assert rec.scales == Scales(input_norm=0.0123, data_scale=81.3, intensity_scale=81.3, probe_norm=2.5,
                                nphotons=1e6)
    cfg = rec.train_cfg  # the stored dict as a TrainConfig
    assert (cfg.seed, cfg.n_groups, cfg.max_epochs, cfg.neighbor_count) == (3, 32, 1, 7)
    assert cfg.model == rec.model_cfg and meta["train_run_id"] == "0123456789abcdef"


def test_format_1_bundle_reproduces_the_taps_the_old_code_computed():
    """The torch forward of the v1 bundle on its saved batch gives the taps saved with it.

    The saved taps were computed by the float32 torch code of format 1 on some x86-64 CPU;
    another CPU (SIMD width, oneDNN kernel choice, summation order) changes a float32 result
    by its rounding noise only. So the bound is anchored in float64, which no CPU choice
    moves beyond ~1e-15: the saved taps and today's float32 taps must each lie within half of
    the contract tolerance ``OP_RTOL`` (1e-5 of max|ref|, SPEC §1) of today's float64
    forward of the same weights, hence within ``OP_RTOL`` of each other. The float32 rounding
    noise measured here (float32 vs float64, ~2e-7) leaves that bound a 25x margin.
    """
    from ptyparity.backends import load_backend

    b = bundle.load_dir(V1_DIR)
    expected = np.load(V1_EXPECTED, allow_pickle=False)
    api = load_backend("torch")
    taps = {precision: api.forward(api.build(b.model_cfg, b.probe, b.weights, precision=precision),
                                   expected["scaled_diffraction"], expected["rel"], keep=V1_TAPS)
            for precision in ("float32", "float64")}
    for name in V1_TAPS:
        reference = taps["float64"][name]
        assert_close_rel(taps["float32"][name], reference, OP_RTOL / 2, f"{name}: float32 rounding noise")
        assert_close_rel(expected[name], reference, OP_RTOL / 2, f"{name}: saved by format 1 vs float64")
        assert_close_rel(taps["float32"][name], expected[name], OP_RTOL, f"{name}: today vs format 1")
        assert taps["float32"][name].dtype == expected[name].dtype
