"""`ptyparity import ptychopinn` and what an imported model does afterwards, through the CLI,
against a real sqlite MLflow store: the import run and the registered model, no pickle loaded,
`compare --forward --reference` on PtychoPINN's own dump (and on perturbed copies), infer on
upstream's data layouts, fine-tuning with --init-from on both backends, compare of the imported
model's two backends and against a ptyparity-trained model."""

import hashlib
import json
import pickle
import re

import mlflow
import numpy as np
import pytest
from conftest import BACKENDS, record_zip_opens, refuse_pickle_loads, sqlite_store
from test_ptychopinn import DATA, FIXTURE, WTS, YAML
from typer.testing import CliRunner

from ptyparity import bundle, names, reference_network
from ptyparity.cli import app
from ptyparity.config import PTYCHOPINN_CONVENTIONS
from ptyparity.data import dataset_digest, load_npz
from ptyparity.ptychopinn import UPSTREAM_TAPS, inputs_from_upstream
from ptyparity.ptychopinn.taps import UPSTREAM_CONSTANTS

REF = FIXTURE / "ref_outputs.npz"
MODEL = f"models:/{names.PTYCHOPINN_MODEL_NAME}/1"
TAP_RTOL = 1e-4  # SPEC §9: an imported bundle reproduces upstream's taps within 1e-4 relative


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, (result.output, result.exception)
    return result.output


def run_named(name):
    (run,) = mlflow.search_runs(experiment_names=[names.DEFAULT_EXPERIMENT],
                                filter_string=f"attributes.run_name = '{name}'", output_format="list")
    return run


def artifact(run, path):
    return mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=path)


def compare_runs():
    return mlflow.search_runs(experiment_names=[names.DEFAULT_EXPERIMENT], output_format="list",
                              filter_string=f"tags.`{names.TAG_KIND}` = 'compare'")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One store for the module; the fixture model imported into it through the CLI with every
    pickle loader refusing and every archive member opened recorded."""
    root = tmp_path_factory.mktemp("import_store")
    with sqlite_store(root), pytest.MonkeyPatch.context() as mp:
        opened = record_zip_opens(mp)
        refuse_pickle_loads(mp)
        with pytest.raises(AssertionError, match="pickle load"):
            pickle.loads(pickle.dumps(1))  # the patch is live
        out = invoke("import", "ptychopinn", WTS, "--data", DATA, "--config", YAML, "--upstream-commit", "712c23f",
                     "--run-name", "import")
        mp.undo()
        yield root, out, opened


def test_import_registers_the_model_and_records_a_complete_run(store):
    _, out, opened = store
    assert f"(models:/{names.PTYCHOPINN_MODEL_NAME}/1)" in out and "head_layout=ptychopinn" in out
    run = run_named("import")
    assert run.info.status == "FINISHED"
    tags, params = run.data.tags, run.data.params
    assert tags[names.TAG_KIND] == "import" and tags[names.TAG_SOURCE] == "ptychopinn"
    assert tags[names.TAG_SOURCE_SHA256] == hashlib.sha256(WTS.read_bytes()).hexdigest()
    assert tags[names.TAG_UPSTREAM_COMMIT] == "712c23f"
    assert tags[names.TAG_DATASET_DIGEST] == dataset_digest(load_npz(DATA))
    assert (params["N"], params["gridsize"], params["n_filters_scale"]) == ("64", "2", "1")
    assert (params["object_big"], params["probe_big"], params["max_offset"]) == ("true", "false", "7")
    assert {k: params[k] for k in PTYCHOPINN_CONVENTIONS} == PTYCHOPINN_CONVENTIONS
    with np.load(REF, allow_pickle=False) as ref:
        assert float(params["intensity_scale"]) == float(ref["intensity_scale"])
    for key in ("input_norm", "probe_norm", "data_scale", "nphotons", "conventions"):
        assert key in params
    with open(artifact(run, names.CONFIG_JSON)) as fh:
        record = json.load(fh)
    assert record["provenance"]["upstream_commit"] == "712c23f"
    assert record["model_config"]["head_layout"] == "ptychopinn" and record["scales"]["intensity_scale"] > 0
    version = mlflow.MlflowClient().get_model_version(names.PTYCHOPINN_MODEL_NAME, "1")
    assert version.run_id == run.info.run_id and version.tags[names.TAG_IMPORT_RUN_ID] == run.info.run_id
    rec = bundle.load(MODEL)  # verified bundle, through the registry
    assert rec.model_cfg.conventions == PTYCHOPINN_CONVENTIONS and rec.bundle.backend == "tensorflow"
    # Read from the h5 members only: no *.dill member was ever opened (and no pickle loader ran).
    assert "autoencoder/model.keras" in opened and not [n for n in opened if n.endswith(".dill")], opened


# --- compare --forward --reference ---------------------------------------------------------------


def write_dump(path, edit=None):
    with np.load(REF, allow_pickle=False) as npz:
        dump = {k: npz[k] for k in npz.files}
    if edit:
        edit(dump)
    np.savez(path, **dump)
    return path


def test_forward_reference_passes_on_ptychopinns_own_dump(store):
    out = invoke("compare", "--forward", "--reference", REF, "--model", MODEL, "--backend", "both",
                 "--run-name", "fwdref-both")
    run = run_named("fwdref-both")
    tags, metrics = run.data.tags, run.data.metrics
    assert tags[names.PARITY_MODE] == "forward_reference" and tags[names.PARITY_REFERENCE_STYLE] == "ptychopinn"
    assert tags[names.PARITY_STATUS] == tags[names.PARITY_VERDICT] == "pass"
    assert tags[names.PARITY_FIRST_DIVERGENT_TAP] == names.NONE_LISTED
    judged = [*UPSTREAM_CONSTANTS, *UPSTREAM_TAPS]
    for key in judged:
        assert metrics[f"forward.{key}"] <= TAP_RTOL, key
        for backend in BACKENDS:
            assert metrics[f"forward.{backend}.{key}"] <= metrics[f"forward.{key}"], (backend, key)
    with open(artifact(run, names.PARITY_FORWARD_REFERENCE)) as fh:
        summary = json.load(fh)
    assert summary["order"] == judged and set(summary["tap_errors_by_implementation"]) == set(BACKENDS)
    rows = "\n".join(f"{k:<28} " + "  ".join(f"{summary['tap_errors_by_implementation'][b][k]:.2e}"
                                             for b in BACKENDS) for k in judged)
    print(f"\nPtychoPINN's dump vs ptyparity ({' / '.join(BACKENDS)}), max|diff| / max|dump|:\n{rows}")
    assert artifact(run, names.parity_figure(names.FORWARD_REFERENCE_FIGURE))
    assert "verdict: PASS" in out


def test_a_perturbed_tap_is_named_first_divergent(store, tmp_path):
    path = write_dump(tmp_path / "perturbed.npz", lambda d: d.__setitem__("obj_region_padded",
                                                                          d["obj_region_padded"] * 1.01))
    out = invoke("compare", "--forward", "--reference", path, "--model", MODEL, "--backend", "torch",
                 "--run-name", "fwdref-perturbed", code=1)
    assert "first divergent tap: obj_region_padded" in out
    run = run_named("fwdref-perturbed")
    assert run.data.tags[names.PARITY_FIRST_DIVERGENT_TAP] == "obj_region_padded"
    assert run.data.tags[names.PARITY_VERDICT] == "fail"
    metrics = run.data.metrics
    assert metrics["forward.obj_region_padded"] == pytest.approx(0.01 / 1.01, rel=1e-2)  # the perturbation, seen
    order = [*UPSTREAM_CONSTANTS, *UPSTREAM_TAPS]
    assert all(metrics[f"forward.{k}"] <= TAP_RTOL for k in order[: order.index("obj_region_padded")])
    assert artifact(run, names.parity_figure(names.FORWARD_REFERENCE_TAP_FIGURE))


@pytest.mark.parametrize("perturbed, first", [
    (("pred_amp", "probe_model"), "probe_model"),  # a model constant, judged before any input-dependent tap
    (("illuminated_patches", "decoder_amp_full"), "decoder_amp_full"),
])
def test_the_earliest_of_several_divergent_taps_is_named(store, tmp_path, perturbed, first):
    def edit(dump):
        for key in perturbed:
            dump[key] = dump[key] * 1.01

    path = write_dump(tmp_path / "two.npz", edit)
    out = invoke("compare", "--forward", "--reference", path, "--model", MODEL, "--backend", "numpy", code=1)
    assert f"first divergent tap: {first}" in out
    for key in perturbed:
        assert f"FAIL forward.{key} " in out


def test_a_dump_in_ptyparity_names_is_judged_too(store, tmp_path):
    with np.load(REF, allow_pickle=False) as ref:
        scaled, rel = inputs_from_upstream(ref)
    rec = bundle.load(MODEL)
    taps = reference_network.forward(rec.model_cfg, rec.bundle.weights, rec.bundle.probe, scaled, rel)
    np.savez(tmp_path / "own.npz", scaled_diffraction=scaled, rel=rel, **taps)
    invoke("compare", "--forward", "--reference", tmp_path / "own.npz", "--model", MODEL, "--backend", "torch",
           "--run-name", "fwdref-own")
    run = run_named("fwdref-own")
    assert run.data.tags[names.PARITY_REFERENCE_STYLE] == "ptyparity"
    assert {f"forward.{k}" for k in taps} <= set(run.data.metrics)


def _drop(*keys):
    return lambda d: [d.pop(k) for k in keys]


@pytest.mark.parametrize("case, edit, expect", [
    ("missing inputs", _drop("positions_input"), "has no inputs to rerun"),
    ("unknown tap", lambda d: d.__setitem__("obj_region_padded_v2", d["obj_region_padded"]),
     r"unknown tap name\(s\) \['obj_region_padded_v2'\]"),
    ("shape mismatch", lambda d: d.__setitem__("pred_amp", d["pred_amp"][:, :32]),
     "reference tap 'pred_amp' has shape"),
    ("no taps", lambda d: [d.pop(k) for k in list(d) if k in UPSTREAM_TAPS or k in UPSTREAM_CONSTANTS],
     "no tap to judge"),
])
def test_bad_reference_dumps_are_one_line_exit_2_and_no_run(store, tmp_path, case, edit, expect):
    before = len(compare_runs())
    path = write_dump(tmp_path / "bad.npz", edit)
    out = invoke("compare", "--forward", "--reference", path, "--model", MODEL, "--backend", "numpy", code=2)
    assert out.startswith("error: ") and out.count("\n") == 1, out
    assert re.search(expect, out), out
    assert len(compare_runs()) == before


def test_bad_import_inputs_are_one_line_exit_2(store, tmp_path):
    corrupt = tmp_path / "wts.h5.zip"
    corrupt.write_bytes(WTS.read_bytes()[:4096])
    out = invoke("import", "ptychopinn", corrupt, "--data", DATA, code=2)
    assert out.startswith("error: ") and out.count("\n") == 1 and "not a zip archive" in out, out
    out = invoke("compare", "--reference", REF, "--model", MODEL, code=2)
    assert "add --forward" in out and out.count("\n") == 1


# --- the imported model wherever a ptyparity bundle runs ---------------------------------------


@pytest.fixture(scope="module")
def infers(store):
    """Infer runs of the imported model on the fixture data, each backend."""
    for backend in BACKENDS:
        invoke("infer", "--model", MODEL, "--data", DATA, "--backend", backend, "--run-name", f"infer-{backend}")
    return {backend: run_named(f"infer-{backend}") for backend in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_infer_on_the_fixture_data_logs_a_complete_run(infers, backend):
    run = infers[backend]
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_MODEL_NAME] == names.PTYCHOPINN_MODEL_NAME
    metrics = run.data.metrics
    assert {"patch.amp.var_zero_mean", "mean_input_scale", "gt.amp.ssim", "gt.amp.ssim_flat", "gt.phase.ssim"} \
        <= set(metrics)
    with np.load(artifact(run, names.CANVAS_NPZ), allow_pickle=False) as npz:
        assert npz["canvas"].shape == load_npz(DATA).obj.shape and np.all(np.isfinite(npz["canvas"]))
    with np.load(artifact(run, f"{names.DEBUG_DUMP}/{names.TAPS_FILE}"), allow_pickle=False) as npz:
        assert set(names.TAP_NAMES) <= set(npz.files)


def test_upstream_layouts_load_and_reconstruct_the_same(store, tmp_path):
    # PtychoPINN's older layout: the stack under 'diffraction', (N, N, M), as intensities. 48 of the
    # 64 patterns, because an (N, N, M) stack with M == N cannot be told from (M, N, N).
    per_pattern = ("xcoords", "ycoords", "xcoords_start", "ycoords_start", "scan_index", "diff3d",
                   "ground_truth_patches")
    with np.load(DATA, allow_pickle=False) as npz:
        arrays = {k: npz[k][:48] if k in per_pattern else npz[k] for k in npz.files}
    np.savez(tmp_path / "amplitude.npz", **arrays)
    arrays["diffraction"] = np.moveaxis(arrays.pop("diff3d").astype(np.float64) ** 2, 0, -1)
    arrays["measurement"] = np.asarray("intensity")
    np.savez(tmp_path / "legacy.npz", **arrays)
    # sqrt of the float64 square of a float32 amplitude is that amplitude, exactly.
    np.testing.assert_array_equal(load_npz(tmp_path / "legacy.npz").diff3d, load_npz(tmp_path / "amplitude.npz").diff3d)
    canvases = []
    for name in ("amplitude", "legacy"):
        invoke("infer", "--model", MODEL, "--data", tmp_path / f"{name}.npz", "--backend", "torch",
               "--no-debug-dump", "--run-name", f"infer-{name}")
        with np.load(artifact(run_named(f"infer-{name}"), names.CANVAS_NPZ), allow_pickle=False) as npz:
            canvases.append(npz["canvas"])
    np.testing.assert_array_equal(*canvases)  # the same inputs through the same process


def test_the_imported_models_two_backends_agree(infers):
    # Same weights in both backends: every agreement check passes. The quality checks are the
    # model's own business: upstream's amplitude is a sigmoid (<= 1) while this objectGuess's is
    # 2.4-5.8, so the amplitude SSIM may lose to the flat guess; the verdict says what it says.
    result = CliRunner().invoke(app, ["compare", "--torch-run", infers["torch"].info.run_id, "--tf-run",
                                      infers["tensorflow"].info.run_id, "--run-name", "cmp-imported"])
    run = run_named("cmp-imported")
    tags = run.data.tags
    assert tags[names.PARITY_STATUS] == "pass", result.output
    assert result.exit_code == (0 if tags[names.PARITY_VERDICT] == "pass" else 1), result.output
    failed = [c for c in tags[names.PARITY_FAILED_CHECKS].split(",") if c != names.NONE_LISTED]
    assert all(".gt_skill." in c for c in failed), failed  # only quality checks may fail
    assert run.data.metrics["canvas.amp.ssim"] > 0.99 and run.data.metrics["canvas.phase.ssim"] > 0.99
    print(f"\nimported model, torch vs tensorflow: {tags[names.PARITY_VERDICT]} "
          f"(parity {tags[names.PARITY_STATUS]}, quality {tags[names.QUALITY_STATUS]})")


@pytest.fixture(scope="module")
def finetuned(store):
    """The imported model fine-tuned one epoch on each backend. The fixture data is noise-free
    simulated amplitude (not integer counts), so the data-sanity check needs --force."""
    out = {}
    for backend in BACKENDS:
        invoke("train", "--backend", backend, "--train-data", DATA, "--init-from", MODEL, "--n-groups", "16",
               "--max-epochs", "1", "--batch-size", "8", "--force", "--quiet", "--run-name", f"tune-{backend}")
        out[backend] = run_named(f"tune-{backend}")
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_init_from_the_imported_model_fine_tunes(finetuned, backend):
    run = finetuned[backend]
    assert run.info.status == "FINISHED" and run.data.tags[names.TAG_INIT_FROM] == MODEL
    assert "non_integer" in run.data.tags[names.TAG_DATA_WARNINGS]
    with open(artifact(run, names.CONFIG_JSON)) as fh:
        model_cfg = json.load(fh)["train_config"]["model"]
    assert {k: model_cfg[k] for k in PTYCHOPINN_CONVENTIONS} == PTYCHOPINN_CONVENTIONS
    assert (model_cfg["n_filters_scale"], model_cfg["gridsize"], model_cfg["max_offset"]) == (1, 2, 7)
    assert np.isfinite(run.data.metrics["train_deviance"])
    tuned = bundle.load(f"runs:/{run.info.run_id}/model")
    assert tuned.model_cfg.conventions == PTYCHOPINN_CONVENTIONS


def test_init_from_refuses_contradicting_flags(store):
    out = invoke("train", "--backend", "torch", "--train-data", DATA, "--init-from", MODEL, "--n-filters-scale", "2",
                 "--force", code=2)
    assert out.count("\n") == 1 and "n_filters_scale=2 (the bundle has 1)" in out, out


def test_compare_with_a_ptyparity_trained_model(infers, finetuned):
    invoke("infer", "--model", "models:/ptyparity-torch/1", "--data", DATA, "--run-name", "infer-tuned")
    tuned, imported = run_named("infer-tuned").info.run_id, infers["tensorflow"].info.run_id
    out = invoke("compare", "--torch-run", tuned, "--tf-run", imported, code=2)
    assert "pair keys differ" in out
    result = CliRunner().invoke(app, ["compare", "--torch-run", tuned, "--tf-run", imported, "--allow-mismatch",
                                      "--run-name", "cmp-mismatch"])
    assert result.exit_code in (0, 1), result.output
    tags = run_named("cmp-mismatch").data.tags
    assert tags[names.PARITY_ALLOW_MISMATCH] == "true"
    assert tags[names.PARITY_VERDICT] in ("pass", "fail", "inconclusive")
    assert result.exit_code == (0 if tags[names.PARITY_VERDICT] == "pass" else 1)
