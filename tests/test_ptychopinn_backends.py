"""The imported real PtychoPINN model (SPEC §9) run by the torch and TensorFlow backends:
each reproduces every tap PtychoPINN itself dumped within 1e-4 relative, on upstream's own
inputs and through :class:`ptyparity.inference.Reconstructor` on groups rebuilt from the
dataset with the "per_set" input normalisation."""

import numpy as np
import pytest

from ptyparity import bundle, ptychopinn
from ptyparity.backends import load_backend
from ptyparity.data import load_npz
from ptyparity.grouping import Groups
from ptyparity.inference import Reconstructor
from tests.conftest import BACKENDS
from tests.test_ptychopinn import DATA, FIXTURE, TAP_RTOL, WTS, YAML, _tap_table


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "ref_outputs.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def imported_bundle(tmp_path_factory):
    ckpt = ptychopinn.read_checkpoint(WTS, config_yaml=YAML)
    directory = tmp_path_factory.mktemp("import") / "bundle"
    ptychopinn.write_bundle(ptychopinn.import_model(ckpt, DATA, upstream_commit="712c23f"), directory)
    return bundle.load_dir(directory)  # verified: checksums, shapes, log_scale vs intensity_scale


def _judge(taps, ref, what):
    errors = ptychopinn.upstream_tap_errors(taps, ref)
    print(f"\n{what}, max|diff| / max|upstream|:\n{_tap_table(errors)}")
    assert list(errors) == list(ptychopinn.UPSTREAM_TAPS)  # every mapped upstream key was judged
    bad = {k: v for k, v in errors.items() if not v <= TAP_RTOL}
    assert not bad, f"{what}: taps beyond {TAP_RTOL}: {bad}"
    return errors


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_backend_reproduces_every_upstream_tap(imported_bundle, ref, backend_name):
    b = imported_bundle
    assert b.model_cfg.head_layout == "ptychopinn"
    api = load_backend(backend_name)
    model = api.build(b.model_cfg, b.probe, b.weights)
    scaled, rel = ptychopinn.inputs_from_upstream(ref)
    taps = api.forward(model, scaled, rel)
    _judge(taps, ref, f"{backend_name} vs PtychoPINN (upstream inputs)")


def _fixture_groups(data, ref):
    """The fixture's 8 groups rebuilt from data.npz rows (``subset_nn_indices``)."""
    idx = np.asarray(ref["subset_nn_indices"], np.int64)  # (B, C)
    pos = data.positions[idx]
    centre = pos.mean(axis=1)
    return Groups(indices=idx, pos=pos, centre=centre, rel=pos - centre[:, None, :])


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_reconstructor_with_per_set_normalisation_reproduces_upstream(imported_bundle, ref, backend_name):
    """Groups rebuilt from the dataset, scaled by the per_set factor of those 8 groups (not the
    bundle's factor of the whole dataset): upstream's inputs and every downstream tap."""
    rec = Reconstructor(imported_bundle, source="fixture")
    assert rec.model_cfg.input_normalization == "per_set"
    data = load_npz(DATA)
    groups = _fixture_groups(data, ref)
    norm = rec.input_norm(data, groups=groups)
    assert norm == pytest.approx(float(ref["normalize_data_factor"]), rel=1e-6)
    # the bundle's own factor (all 64 patterns once) would not reproduce upstream's inputs
    assert abs(rec.scales.input_norm / norm - 1) > 10 * TAP_RTOL
    taps = rec.taps(data, backend=backend_name, groups=groups, batch_size=3)  # batches 3, 3, 2: one factor
    x_input = taps["encoder_input"].astype(np.float64) * np.exp(np.float64(imported_bundle.weights["log_scale"]))
    assert ptychopinn.relative_error(x_input, ref["X_input"]) <= TAP_RTOL
    _judge(taps, ref, f"{backend_name} Reconstructor vs PtychoPINN (groups from data.npz, per_set)")
