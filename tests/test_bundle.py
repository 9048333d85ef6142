"""Bundle format: round trip, checksums, corrupt and edited bundles refused."""

import json
import math

import numpy as np
import pytest

from ptyparity import architecture, bundle
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.errors import PtyparityError
from ptyparity.simulate import make_probe
from ptyparity.training import Scales

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
