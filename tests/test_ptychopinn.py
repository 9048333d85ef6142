"""Importing the real PtychoPINN (SPEC §9): its saved checkpoint becomes a ptyparity bundle whose
NumPy reference forward pass reproduces every tap PtychoPINN itself dumped, with nothing unpickled."""

import hashlib
import io
import json
import math
import os
import pathlib
import pickle
import shutil
import zipfile

import h5py
import numpy as np
import pytest

from ptyparity import architecture, bundle, normalization, ptychopinn, reference_network
from ptyparity.config import PTYCHOPINN_CONVENTIONS
from ptyparity.errors import PtyparityError
from ptyparity.grouping import Groups
from ptyparity.training import group_batch
from tests.conftest import record_zip_opens, refuse_pickle_loads



def _fixture_dir():
    """What the real PtychoPINN wrote (README there): $PTYPARITY_FIXTURES, a copy under
    tests/data, or the team's shared fixtures next to the checkout. Missing fails, never skips."""
    here = pathlib.Path(__file__).resolve().parent
    roots = [pathlib.Path(os.environ["PTYPARITY_FIXTURES"])] if "PTYPARITY_FIXTURES" in os.environ else []
    roots += [here / "data", here.parents[1] / "shared" / "fixtures"]
    for root in roots:
        if (root / "ptychopinn" / "tf_gs2_n64_f1" / "wts.h5.zip").is_file():
            return root / "ptychopinn" / "tf_gs2_n64_f1"
    raise FileNotFoundError(f"PtychoPINN fixture tf_gs2_n64_f1 not found under {[str(r) for r in roots]}")


FIXTURE = _fixture_dir()
WTS = FIXTURE / "wts.h5.zip"
DATA = FIXTURE / "data.npz"
YAML = FIXTURE / "config.yaml"
TAP_RTOL = 1e-4  # SPEC §9: an imported bundle reproduces upstream's taps within 1e-4 relative


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE / "ref_outputs.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def imported_bundle(tmp_path_factory):
    ckpt = ptychopinn.read_checkpoint(WTS, config_yaml=YAML)
    imported = ptychopinn.import_model(ckpt, DATA, upstream_commit="712c23f")
    directory = tmp_path_factory.mktemp("import") / "bundle"
    ptychopinn.write_bundle(imported, directory)
    return bundle.load_dir(directory)  # verified: checksums, shapes, log_scale vs intensity_scale


def _inputs_from_data(ref):
    """The fixture's 8 groups rebuilt from data.npz rows (subset_nn_indices), scaled the way
    upstream scales them: the per_set input norm of these groups times intensity_scale."""
    from ptyparity.data import load_npz

    data = load_npz(DATA)
    idx = np.asarray(ref["subset_nn_indices"], np.int64)  # (B, C)
    pos = data.positions[idx]
    centre = pos.mean(axis=1)
    groups = Groups(indices=idx, pos=pos, centre=centre, rel=pos - centre[:, None, :])
    norm = normalization.set_input_norm(np.moveaxis(data.diff3d[idx], 1, -1))
    scaled, rel = group_batch(data.diff3d, groups, np.arange(len(idx)), input_norm=norm,
                              data_scale=float(ref["intensity_scale"]))
    return scaled, groups.rel, norm, pos


def test_import_reads_the_model_as_trained(imported_bundle, ref):
    b = imported_bundle
    assert b.model_cfg.conventions == PTYCHOPINN_CONVENTIONS
    assert (b.model_cfg.N, b.model_cfg.gridsize, b.model_cfg.n_filters_scale) == (64, 2, 1)
    assert (b.model_cfg.object_big, b.model_cfg.probe_big, b.model_cfg.canvas_size) == (True, False, 78)
    assert b.model_cfg.canvas_size == int(ref["padded_size"])
    assert b.scales.intensity_scale == float(ref["intensity_scale"]) == b.scales.data_scale
    assert math.exp(float(b.weights["log_scale"])) == pytest.approx(float(ref["intensity_scale"]), rel=1e-6)
    assert architecture.param_count(b.model_cfg) == 566184  # every conv parameter of model.weights.h5
    probe_model = ref["probe_model"][0, :, :, 0]
    np.testing.assert_allclose(b.probe, probe_model, rtol=0, atol=1e-6 * np.abs(probe_model).max())
    meta = b.meta  # bundle.json as written
    prov = meta["provenance"]
    assert prov["source"] == "ptychopinn" and prov["upstream_commit"] == "712c23f"
    assert prov["conventions"] == PTYCHOPINN_CONVENTIONS and prov["config_yaml"]["gridsize"] == 2
    assert prov["sha256"] == hashlib.sha256(WTS.read_bytes()).hexdigest()
    assert meta["model_config"]["head_layout"] == "ptychopinn"


def test_layers_are_mapped_by_role_not_by_h5_order():
    # weights.json (written with the live upstream model) names each h5 path's role; the import
    # must put exactly those arrays at the canonical names, although h5 numbering is neither
    # network nor creation order.
    facts = json.loads((FIXTURE / "weights.json").read_text())["autoencoder_conv_weights"]
    ckpt = ptychopinn.read_checkpoint(WTS)
    with zipfile.ZipFile(WTS) as outer, zipfile.ZipFile(io.BytesIO(outer.read("autoencoder/model.keras"))) as keras, \
            h5py.File(io.BytesIO(keras.read("model.weights.h5")), "r") as h5:
        by_layer = {canonical_layer: name for name, canonical_layer in ckpt.layer_map.items()}
        counts = {}
        for entry in facts:
            canonical = by_layer[entry["saved_layer_name"]]
            role = entry["role"].split("_")[0] + ("_head" if "head" in entry["role"] else
                                                  "_decoder" if "decoder" in entry["role"] else "")
            assert canonical.startswith(role if role != "encoder" else "encoder."), (entry, canonical)
            counts[role] = counts.get(role, 0) + 1
            assert np.array_equal(ckpt.weights[f"{canonical}.kernel"], h5[entry["h5_kernel"]][()])
            assert np.array_equal(ckpt.weights[f"{canonical}.bias"], h5[entry["h5_bias"]][()])
    assert counts == {"encoder": 6, "amp_decoder": 4, "phase_decoder": 4, "amp_head": 1, "phase_head": 1}
    assert ckpt.layer_map["amp_decoder.0.conv1"] == "conv2d_8"  # not conv2d_6, the h5 group at that position


def _tap_table(errors):
    width = max(map(len, errors))
    return "\n".join(f"{name:<{width}}  {err:.2e}" for name, err in errors.items())


@pytest.mark.parametrize("inputs", ["from_data_npz", "upstream_inputs"])
def test_reference_network_reproduces_every_upstream_tap(imported_bundle, ref, inputs):
    b = imported_bundle
    if inputs == "from_data_npz":
        scaled, rel, norm, pos = _inputs_from_data(ref)
        # The rebuilt inputs are what upstream fed (its positions are float32 of absolute coords).
        assert norm == pytest.approx(float(ref["normalize_data_factor"]), rel=1e-6)
        np.testing.assert_allclose(scaled, ref["X_input"], rtol=0, atol=1e-6 * np.abs(ref["X_input"]).max())
        fed_rel = ptychopinn.inputs_from_upstream(ref)[1]
        assert np.abs(rel - fed_rel).max() <= 4 * np.finfo(np.float32).eps * np.abs(pos).max()
    else:
        scaled, rel = ptychopinn.inputs_from_upstream(ref)
    taps = reference_network.forward(b.model_cfg, b.weights, b.probe, scaled, rel)
    errors = ptychopinn.upstream_tap_errors(taps, ref)
    print(f"\nNumPy reference vs PtychoPINN ({inputs}), max|diff| / max|upstream|:\n{_tap_table(errors)}")
    assert list(errors) == list(ptychopinn.UPSTREAM_TAPS)  # every mapped upstream key was judged
    bad = {k: v for k, v in errors.items() if not v <= TAP_RTOL}
    assert not bad, f"taps beyond {TAP_RTOL}: {bad}"
    # The inverse input mapping gives back upstream's arrays.
    back = ptychopinn.inputs_to_upstream(*ptychopinn.inputs_from_upstream(ref))
    assert np.array_equal(back["positions_input"], ref["positions_input"])
    assert ptychopinn.probe_to_upstream(b.probe).shape == ref["probe_model"].shape


def test_a_perturbed_tap_is_caught(imported_bundle, ref):
    scaled, rel = ptychopinn.inputs_from_upstream(ref)
    taps = reference_network.forward(imported_bundle.model_cfg, imported_bundle.weights, imported_bundle.probe,
                                     scaled, rel)
    dump = dict(ref)
    dump["obj_region_padded"] = ref["obj_region_padded"] * 1.001
    errors = ptychopinn.upstream_tap_errors(taps, dump)
    assert errors["obj_region_padded"] > TAP_RTOL >= errors["obj_patches_complex_padded"]


def test_no_pickle_is_ever_loaded(monkeypatch, tmp_path):
    refuse_pickle_loads(monkeypatch)
    opened = record_zip_opens(monkeypatch)
    with pytest.raises(AssertionError, match="pickle load"):
        pickle.loads(pickle.dumps(1))  # the patch is live
    ckpt = ptychopinn.read_checkpoint(WTS, config_yaml=YAML)
    ptychopinn.write_bundle(ptychopinn.import_model(ckpt, DATA), tmp_path / "b")
    bundle.load_dir(tmp_path / "b")
    assert "autoencoder/model.keras" in opened and "model.weights.h5" in opened
    assert not [name for name in opened if name.endswith(".dill")], opened


# --- bad inputs: one clear line each ------------------------------------------------------------


def _rewrite(src, dst, *, drop=(), keras_edit=None, h5_edit=None):
    """Copy a wts.h5.zip, dropping members, editing autoencoder/model.keras's members
    (``keras_edit(dict name->bytes)``) or its model.weights.h5 in place (``h5_edit(h5py.File)``)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            payload = zin.read(info.filename)
            if info.filename == "autoencoder/model.keras" and (keras_edit or h5_edit):
                with zipfile.ZipFile(io.BytesIO(payload)) as kin:
                    members = {n: kin.read(n) for n in kin.namelist()}
                if h5_edit:
                    tmp = pathlib.Path(dst).with_suffix(".h5")
                    tmp.write_bytes(members["model.weights.h5"])
                    with h5py.File(tmp, "r+") as h5:
                        h5_edit(h5)
                    members["model.weights.h5"] = tmp.read_bytes()
                if keras_edit:
                    keras_edit(members)
                buf = io.BytesIO()
                with zipfile.ZipFile(buf, "w") as kout:
                    for n, data in members.items():
                        kout.writestr(n, data)
                payload = buf.getvalue()
            zout.writestr(info, payload)
    return dst


def _delete_head_weights(h5):
    for name, group in h5["layers"].items():
        if group["vars"].attrs.get("name") == "conv2d_6":
            del h5["layers"][name]
            return


def _add_stray_conv(h5):
    h5.copy(h5["layers/conv2d"], "layers/conv2d_99")
    h5["layers/conv2d_99/vars"].attrs["name"] = "conv2d_7"  # an unused probe_big conv, say


def _config_edit(edit):
    def apply(members):
        cfg = json.loads(members["config.json"])
        edit(cfg)
        members["config.json"] = json.dumps(cfg).encode()
    return apply


def _narrow_head_slice(cfg):
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "GetItem":
            layer["inbound_nodes"][0]["args"][1][1]["config"]["stop"] = -2


def _swap_activation(cfg):
    for layer in cfg["config"]["layers"]:
        if layer["name"] == "amp":
            layer["config"]["activation_name"] = "relu"


@pytest.mark.parametrize("case, expect", [
    ("not a zip", "not a zip archive"),
    ("truncated zip", "not a zip archive"),
    ("no model.h5", r"missing member\(s\) \['autoencoder/model.h5'\]"),
    ("no weights file", r"lacks \['model.weights.h5'\]"),
    ("missing head weights", r"lacks the weights of conv layer\(s\) \['conv2d_6'\]"),
    ("stray conv", r"conv layer\(s\) \['conv2d_7'\] that the config.json graph does not use"),
    ("bad activation", "is not sigmoid"),
    ("head slice", r"slices \[\.\.\., None:-2\]; expected \[\.\.\., :-4\]"),
    ("no intensity_scale", "no intensity_scale attribute"),
])
def test_bad_archives_are_one_clear_error(tmp_path, case, expect):
    path = tmp_path / "wts.h5.zip"
    if case == "not a zip":
        path.write_bytes(b"PtychoPINN weights")
    elif case == "truncated zip":
        path.write_bytes(WTS.read_bytes()[: 4096])
    elif case == "no model.h5":
        _rewrite(WTS, path, drop=("autoencoder/model.h5",))
    elif case == "no weights file":
        _rewrite(WTS, path, keras_edit=lambda m: m.pop("model.weights.h5"))
    elif case == "missing head weights":
        _rewrite(WTS, path, h5_edit=_delete_head_weights)
    elif case == "stray conv":
        _rewrite(WTS, path, h5_edit=_add_stray_conv)
    elif case == "bad activation":
        _rewrite(WTS, path, keras_edit=_config_edit(_swap_activation))
    elif case == "head slice":
        _rewrite(WTS, path, keras_edit=_config_edit(_narrow_head_slice))
    elif case == "no intensity_scale":
        h5_path = tmp_path / "model.h5"
        with h5py.File(h5_path, "w") as h5:
            h5.attrs["other"] = 1.0
        _rewrite(WTS, tmp_path / "tmp.zip", drop=("autoencoder/model.h5",))
        shutil.copy(tmp_path / "tmp.zip", path)
        with zipfile.ZipFile(path, "a") as z:
            z.write(h5_path, "autoencoder/model.h5")
    with pytest.raises(PtyparityError, match=expect) as info:
        ptychopinn.read_checkpoint(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("yaml_text, expect", [
    ("model:\n  N: 64\n  gridsize: 1\n", "says gridsize=1 but the checkpoint's config.json graph has gridsize=2"),
    ("model:\n  probe_big: true\n", "says probe_big=True"),
    ("model:\n  n_filters_scale: 2\n", "says n_filters_scale=2"),
    ("model:\n  probe_mask: true\n", "imports probe_mask=False checkpoints only"),
    ("model: [1, 2]\n", "'model' section is not a mapping"),
    ("model: {N: 64\n", "not valid YAML"),
])
def test_yaml_contradictions_are_one_clear_error(tmp_path, yaml_text, expect):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(PtyparityError, match=expect) as info:
        ptychopinn.read_checkpoint(WTS, config_yaml=path)
    assert "\n" not in str(info.value)


def test_bad_datasets_are_one_clear_error(tmp_path):
    ckpt = ptychopinn.read_checkpoint(WTS)
    with np.load(DATA, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    no_probe = {k: v for k, v in arrays.items() if k != "probeGuess"}
    np.savez(tmp_path / "no_probe.npz", **no_probe)
    with pytest.raises(PtyparityError, match="'probeGuess' is missing"):
        ptychopinn.import_model(ckpt, tmp_path / "no_probe.npz")
    small = dict(arrays, diff3d=arrays["diff3d"][:, 16:48, 16:48], probeGuess=arrays["probeGuess"][16:48, 16:48])
    small.pop("ground_truth_patches")
    np.savez(tmp_path / "n32.npz", **small)
    with pytest.raises(PtyparityError, match="patterns are 32x32 but the checkpoint's model has N=64"):
        ptychopinn.import_model(ckpt, tmp_path / "n32.npz")


def test_imported_data_in_upstream_layouts_gives_the_same_model(tmp_path):
    # PtychoPINN's older files: the stack under 'diffraction' as (N, N, M) intensities.
    with np.load(DATA, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    legacy = dict(arrays, measurement=np.asarray("intensity"))
    legacy["diffraction"] = np.moveaxis(legacy.pop("diff3d").astype(np.float64) ** 2, 0, -1)
    np.savez(tmp_path / "legacy.npz", **legacy)
    from ptyparity.data import load_npz

    as_written = load_npz(DATA)  # upstream's own file: (M, N, N) amplitudes, extra keys kept
    assert as_written.measurement == "amplitude" and as_written.diff3d.shape == (64, 64, 64)
    assert {"_metadata", "xcoords_start", "ycoords_start", "ground_truth_patches"} <= set(as_written.extras)
    ckpt = ptychopinn.read_checkpoint(WTS)
    a = ptychopinn.import_model(ckpt, as_written)
    b = ptychopinn.import_model(ckpt, tmp_path / "legacy.npz")
    assert b.scales.input_norm == pytest.approx(a.scales.input_norm, rel=1e-6)
    assert b.scales.probe_norm == a.scales.probe_norm and np.array_equal(a.probe, b.probe)


def test_write_bundle_refuses_an_existing_bundle(tmp_path):
    imported = ptychopinn.import_model(ptychopinn.read_checkpoint(WTS), DATA)
    ptychopinn.write_bundle(imported, tmp_path / "b")
    with pytest.raises(PtyparityError, match="already holds a bundle"):
        ptychopinn.write_bundle(imported, tmp_path / "b")
