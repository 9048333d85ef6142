"""The Markdown descriptions of runs and models (:mod:`ptyparity.descriptions`, pure), and what
a real sqlite store holds after a tiny train, infer and compare through the CLI: the run
and model-version descriptions, the registered model's, and the experiment's kind."""

import mlflow
import pytest
from typer.testing import CliRunner

from ptyparity import descriptions, names, tracking_notes
from ptyparity.cli import app
from ptyparity.simulate import SimConfig
from tests.conftest import write_simulated

MAX_LINES = 12  # "short": what a person reads without scrolling


def _short(text):
    lines = text.splitlines()
    assert 2 <= len(lines) <= MAX_LINES, text
    assert lines[0].startswith("**"), text  # the first line carries the headline (the runs table shows it)
    return lines


# --- the pure functions ----------------------------------------------------------------


TRAIN_RECORD = {"N": 32, "gridsize": 2, "n_filters_scale": 1, "n_groups": 512, "max_epochs": 8,
                "train_deviance": 1.23456, "val_deviance": 1.5, "test_deviance_initial": 9.87654,
                "test_deviance": 2.0, "intensity_scale": 987.654321, "intensity_scale_mode": "dataset",
                names.TAG_BACKEND: "torch", names.TAG_PAIR_KEY: "abc-def-s0", "model_name": "ptyparity-torch",
                "model_version": "3"}


def test_train_description_names_backend_network_and_figures():
    lines = _short(descriptions.train_description(TRAIN_RECORD))
    text = "\n".join(lines)
    assert lines[0] == "**train torch** · N=32, gridsize=2, f=1 · 512 groups · 8 epochs"
    assert "train 1.235, val 1.5" in text
    assert "9.877 → 2" in text  # held-out deviance before -> after
    assert "intensity_scale: 987.7 (dataset)" in text
    assert "`ptyparity-torch` version 3" in text and "`abc-def-s0`" in text


def test_train_description_without_test_data_or_registration():
    rec = {k: v for k, v in TRAIN_RECORD.items() if k not in ("test_deviance", "test_deviance_initial",
                                                                "model_version")}
    text = "\n".join(_short(descriptions.train_description(rec)))
    assert "held-out" not in text and "version" not in text


def test_infer_description_compares_ssim_with_the_flat_guess():
    rec = {names.TAG_BACKEND: "tensorflow", names.TAG_BUNDLE_BACKEND: "torch",
           names.TAG_MODEL_URI: "models:/ptyparity-torch/1", "gt.amp.ssim": 0.81234, "gt.amp.ssim_flat": 0.12,
           "gt.phase.ssim": 0.7, "gt.phase.ssim_flat": 0.05, "patch.amp.var_zero_mean": 0.00123,
           "intensity_scale": 10.0, names.TAG_PAIR_KEY: "k", "data_path": "/x/data/test.npz"}
    lines = _short(descriptions.infer_description(rec))
    assert lines[0] == "**infer tensorflow** with `models:/ptyparity-torch/1` (a torch bundle)"
    text = "\n".join(lines)
    assert "SSIM amplitude 0.8123 (flat guess 0.12) · phase 0.7 (flat guess 0.05)" in text
    assert "patch.amp.var_zero_mean: 0.00123" in text and "`test.npz`" in text


def test_infer_description_without_ground_truth_says_so():
    text = descriptions.infer_description({names.TAG_BACKEND: "torch", names.TAG_MODEL_URI: "runs:/r/model"})
    assert "no ground truth" in text and "SSIM amplitude" not in text
    assert "(a " not in text.splitlines()[0]  # no bundle backend: nothing claimed


def test_failing_compare_names_its_failed_checks_and_the_report():
    rec = {names.PARITY_VERDICT: "fail", names.PARITY_STATUS: "fail", names.QUALITY_STATUS: "pass",
           names.PARITY_FAILED_CHECKS: "ratio.var_zero_mean,canvas.amp.ssim",
           names.PARITY_SKIPPED_CHECKS: "train.consistency.val_deviance",
           names.PARITY_TORCH_RUN_ID: "t1", names.PARITY_TF_RUN_ID: "f1"}
    lines = _short(descriptions.compare_description(rec))
    assert lines[0] == "**compare: FAIL** · parity fail · quality pass"
    text = "\n".join(lines)
    assert "failed checks: `ratio.var_zero_mean`, `canvas.amp.ssim`" in text
    assert "skipped checks: `train.consistency.val_deviance`" in text
    assert f"`{names.PARITY_REPORT}`" in text and "`t1`" in text and "`f1`" in text


def test_passing_compare_lists_no_failed_check():
    rec = {names.PARITY_VERDICT: "pass", names.PARITY_STATUS: "pass", names.QUALITY_STATUS: "none",
           names.PARITY_FAILED_CHECKS: names.NONE_LISTED, names.PARITY_SKIPPED_CHECKS: names.NONE_LISTED}
    text = descriptions.compare_description(rec)
    assert text.startswith("**compare: PASS**") and "failed checks: none" in text and "skipped checks: none" in text


def test_many_failed_checks_are_cut_short():
    failed = ",".join(f"c{i}" for i in range(descriptions.MAX_LISTED + 3))
    text = descriptions.compare_description({names.PARITY_VERDICT: "fail", names.PARITY_FAILED_CHECKS: failed})
    assert f"`c{descriptions.MAX_LISTED - 1}` and 3 more" in text and f"`c{descriptions.MAX_LISTED}`" not in text


def test_compare_error_says_why():
    rec = {names.PARITY_VERDICT: "error", names.PARITY_STATUS: "error",
           names.PARITY_ERROR: "pair keys differ (torch a vs tensorflow b)"}
    lines = _short(descriptions.compare_description(rec))
    assert lines[0].startswith("**compare: ERROR**") and "pair keys differ" in lines[1]


@pytest.mark.parametrize("mode, record", [("forward", names.PARITY_FORWARD),
                                          ("forward_reference", names.PARITY_FORWARD_REFERENCE)])
def test_forward_compare_names_the_first_divergent_tap(mode, record):
    rec = {names.PARITY_MODE: mode, names.PARITY_VERDICT: "fail", names.TAG_MODEL_URI: "models:/m/1",
           names.PARITY_FAILED_CHECKS: "forward.exit_wave", names.PARITY_FIRST_DIVERGENT_TAP: "exit_wave",
           names.PARITY_REFERENCE_FILE: "/d/ref_outputs.npz", names.PARITY_REFERENCE_STYLE: "ptychopinn"}
    lines = _short(descriptions.compare_description(rec))
    assert lines[0].startswith("**compare --forward") and "FAIL" in lines[0] and "`models:/m/1`" in lines[0]
    text = "\n".join(lines)
    assert "first divergent tap: `exit_wave`" in text and f"`{record}`" in text
    assert ("`ref_outputs.npz`" in text) == (mode == "forward_reference")


def test_pipeline_description_has_the_verdict_and_every_step_run():
    steps = {"train_torch": "a1", "train_tensorflow": "b2", "infer_torch": "c3", "infer_tensorflow": "d4",
             "compare": "e5"}
    rec = {"preset": "small", "resolved.n": 32, "resolved.gridsize": 2, "resolved.n_filters_scale": 1,
           "resolved.n_groups": 512, "resolved.max_epochs": 8, names.PARITY_VERDICT: "inconclusive",
           names.PARITY_STATUS: "pass", **{f"{names.PIPELINE_TAG_PREFIX}{k}": v for k, v in steps.items()}}
    lines = _short(descriptions.pipeline_description(rec))
    assert lines[0] == "**pipeline small: INCONCLUSIVE** · parity pass"
    assert "N=32, gridsize=2, f=1 · 512 groups · 8 epochs" in lines[1]
    for step, run_id in steps.items():
        assert f"- {step}: `{run_id}`" in lines


def test_import_description_names_checkpoint_and_model():
    rec = {"source_file": "wts.h5.zip", "N": 64, "gridsize": 1, "n_filters_scale": 2, "intensity_scale": 5.5,
           names.TAG_SOURCE_SHA256: "0123456789abcdef" * 4, names.TAG_UPSTREAM_COMMIT: "712c23f",
           "model_name": names.PTYCHOPINN_MODEL_NAME, "model_version": "2"}
    text = "\n".join(_short(descriptions.import_description(rec)))
    assert "`wts.h5.zip` · N=64, gridsize=1, f=2" in text and "`0123456789abcdef…`" in text
    assert "`712c23f`" in text and f"`{names.PTYCHOPINN_MODEL_NAME}` version 2" in text


def test_registered_models_say_what_they_are():
    for backend, word in (("torch", "PyTorch"), ("tensorflow", "TensorFlow")):
        text = descriptions.registered_model_description(names.registered_model_name(backend))
        assert word in text and names.PARITY_PASSED_ALIAS in text
    assert "PtychoPINN" in descriptions.registered_model_description(names.PTYCHOPINN_MODEL_NAME)
    assert "`other`" in descriptions.registered_model_description("other")


def test_model_version_description_before_and_after_a_compare():
    rec = {"source_kind": "train", "source_run_id": "r1", names.TAG_BACKEND: "torch", names.TAG_PAIR_KEY: "k1"}
    before = descriptions.model_version_description(rec)
    assert "`r1`" in before and "`k1`" in before and "not compared yet" in before
    after = descriptions.model_version_description({**rec, names.PARITY_VERDICT: "fail", names.PARITY_STATUS: "fail",
                                                    names.QUALITY_STATUS: "pass", names.PARITY_COMPARE_RUN_ID: "c9",
                                                    names.PARITY_FAILED_CHECKS: "ratio.x"})
    assert "**FAIL**" in after and "`c9`" in after and "`ratio.x`" in after and "not compared" not in after
    imported = descriptions.model_version_description({"source_kind": "import", "source_run_id": "i1",
                                                       names.TAG_SOURCE_SHA256: "f" * 64})
    assert imported.startswith("Imported from PtychoPINN by run `i1`") and "`ffffffffffffffff…`" in imported


# --- a real store ----------------------------------------------------------------------


def _invoke(*args, codes=(0,)):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code in codes, result.output
    return result.output


def test_runs_models_and_experiment_carry_descriptions(tracking_uri, tmp_path):
    write_simulated(tmp_path, SimConfig(N=32, object_size_px=96, nphotons=1e5, seed=0))
    out = _invoke("train", "--backend", "torch", "--train-data", tmp_path / "train.npz", "--test-data",
                  tmp_path / "test.npz", "--n-groups", 16, "--max-epochs", 1, "--n-filters-scale", 1,
                  "--patch-stats-limit", 4, "--quiet")
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    assert exp.tags[tracking_notes.EXPERIMENT_KIND_TAG] == tracking_notes.MODEL_DEVELOPMENT
    # Every printed link opens the runs view (runs table or a run page) in the model-training view.
    links = [w for w in out.split() if w.startswith("http")]
    assert links and all(f"#/experiments/{exp.experiment_id}/runs" in w and w.endswith(
        tracking_notes.ML_VIEW_QUERY) for w in links), out

    (train,) = client.search_runs([exp.experiment_id], "tags.`ptyparity.kind` = 'train'")
    note = train.data.tags[tracking_notes.NOTE_TAG]
    assert note.splitlines()[0] == "**train torch** · N=32, gridsize=2, f=1 · 16 groups · 1 epoch"
    deviance = train.data.metrics["test_deviance"]
    assert f"→ {deviance:.4g}" in note and "`ptyparity-torch` version 1" in note
    assert train.data.tags[names.TAG_PAIR_KEY] in note
    model = client.get_registered_model("ptyparity-torch")
    assert model.description == descriptions.registered_model_description("ptyparity-torch")
    version = client.get_model_version("ptyparity-torch", "1")
    assert f"`{train.info.run_id}`" in version.description and "not compared yet" in version.description

    data = tmp_path / "test.npz"
    for backend in ("torch", "tensorflow"):  # the torch bundle on both backends: a comparable pair
        _invoke("infer", "--model", "models:/ptyparity-torch/1", "--data", data, "--backend", backend)
    infers = {r.data.tags[names.TAG_BACKEND]: r for r in client.search_runs(
        [exp.experiment_id], "tags.`ptyparity.kind` = 'infer'")}
    note = infers["tensorflow"].data.tags[tracking_notes.NOTE_TAG]
    assert note.splitlines()[0] == "**infer tensorflow** with `models:/ptyparity-torch/1` (a torch bundle)"
    assert f"SSIM amplitude {infers['tensorflow'].data.metrics['gt.amp.ssim']:.4g}" in note

    _invoke("compare", "--torch-run", infers["torch"].info.run_id, "--tf-run", infers["tensorflow"].info.run_id,
            codes=(0, 1))  # pass, or fail/inconclusive: either verdict must be described
    (compare,) = client.search_runs([exp.experiment_id], "tags.`ptyparity.kind` = 'compare'")
    tags = compare.data.tags
    note = tags[tracking_notes.NOTE_TAG]
    assert note.splitlines()[0].startswith(f"**compare: {tags[names.PARITY_VERDICT].upper()}**")
    assert f"`{names.PARITY_REPORT}`" in note
    for check in descriptions._listed(tags[names.PARITY_FAILED_CHECKS]):
        assert f"`{check}`" in note
    version = client.get_model_version("ptyparity-torch", "1")
    assert f"**{tags[names.PARITY_VERDICT].upper()}**" in version.description
    assert f"`{compare.info.run_id}`" in version.description and f"`{train.info.run_id}`" in version.description

    # A refused pair (the torch run given as the tensorflow one): the description says why.
    _invoke("compare", "--torch-run", infers["torch"].info.run_id, "--tf-run", infers["torch"].info.run_id,
            codes=(2,))
    refused = [r for r in client.search_runs([exp.experiment_id], "tags.`ptyparity.kind` = 'compare'")
               if r.info.run_id != compare.info.run_id]
    (refused,) = refused
    note = refused.data.tags[tracking_notes.NOTE_TAG]
    assert note.startswith("**compare: ERROR**") and refused.data.tags[names.PARITY_ERROR][:40] in note

    # compare --forward: the same weights in both backends, described by its verdict and first divergent tap.
    _invoke("compare", "--forward", "--model", "models:/ptyparity-torch/1", "--data", data, codes=(0, 1))
    (forward,) = client.search_runs([exp.experiment_id], f"tags.`{names.PARITY_MODE}` = 'forward'")
    note = forward.data.tags[tracking_notes.NOTE_TAG]
    assert note.startswith(f"**compare --forward: {forward.data.tags[names.PARITY_VERDICT].upper()}**")
    assert f"`{forward.data.tags[names.PARITY_FIRST_DIVERGENT_TAP]}`" in note and names.PARITY_FORWARD in note


def test_an_mlflow_run_experiment_is_marked_and_a_chosen_kind_is_kept(tracking_uri, monkeypatch):
    # `mlflow run` opens the run in the experiment it chose (MLFLOW_RUN_ID); ptyparity marks that one
    # too, and never overrides a kind someone already set.
    client = mlflow.MlflowClient()
    chosen = client.create_experiment("chosen-by-mlflow-run")
    kept = client.create_experiment(names.DEFAULT_EXPERIMENT,
                                    tags={tracking_notes.EXPERIMENT_KIND_TAG: "genai_development"})
    monkeypatch.setenv("MLFLOW_RUN_ID", client.create_run(chosen).info.run_id)
    _invoke("simulate", "--out-dir", "data", "--n", "32", "--object-size", "64")
    assert client.get_experiment(chosen).tags[tracking_notes.EXPERIMENT_KIND_TAG] == tracking_notes.MODEL_DEVELOPMENT
    assert client.get_experiment(kept).tags[tracking_notes.EXPERIMENT_KIND_TAG] == "genai_development"
