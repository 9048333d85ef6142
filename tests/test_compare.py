"""The parity comparison on real runs made by the real train/infer commands (N=32)."""

import json
import shutil
import time

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import bundle, tracking
from ptyparity.cli import app
from ptyparity.simulate import SimConfig
from ptyparity.runs import resolve_pair, run_compare, run_compare_forward, run_infer
from tests.conftest import sqlite_store, write_simulated

# The small preset's training, on a smaller object: a verdict on models that have not
# learned yet would be noise (the thresholds are calibrated on trained models).
TRAIN_ARGS = ["--n-groups", "512", "--max-epochs", "6", "--n-filters-scale", "1",
              "--patch-stats-limit", "16", "--deterministic", "--quiet"]


def invoke(*args, code=0):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.output


def run_named(name, experiment="ptyparity"):
    (run,) = mlflow.search_runs(experiment_names=[experiment], filter_string=f"attributes.run_name = '{name}'",
                                output_format="list")
    return run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare_store")
    with sqlite_store(root):
        write_simulated(root, SimConfig(N=32, object_size_px=160, seed=0))
        runs = {}
        for backend in ("torch", "tensorflow"):
            invoke("train", "--backend", backend, "--train-data", root / "train.npz", "--test-data",
                   root / "test.npz", *TRAIN_ARGS, "--run-name", f"train-{backend}")
            runs[f"train_{backend}"] = run_named(f"train-{backend}")
            invoke("infer", "--model", f"models:/ptyparity-{backend}/1", "--data", root / "test.npz",
                   "--run-name", f"infer-{backend}")
            runs[f"infer_{backend}"] = run_named(f"infer-{backend}")
        yield root, runs


def artifact_paths(run_id):
    client = mlflow.MlflowClient()
    out, todo = set(), [None]
    while todo:
        for f in client.list_artifacts(run_id, todo.pop()):
            (todo.append(f.path) if f.is_dir else out.add(f.path))
    return out


@pytest.mark.parametrize("kind", ["train", "infer"])
def test_tf_and_torch_runs_record_the_same_names(store, kind):
    _, runs = store
    a, b = runs[f"{kind}_torch"], runs[f"{kind}_tensorflow"]
    versions = {"torch_version", "lightning_version", "tensorflow_version", "keras_version"}
    assert set(a.data.params) - versions == set(b.data.params) - versions
    assert set(a.data.metrics) == set(b.data.metrics)
    assert set(a.data.tags) == set(b.data.tags)
    assert {k: v for k, v in a.data.params.items() if k not in versions} == \
        {k: v for k, v in b.data.params.items() if k not in versions}  # same config, same scales
    assert artifact_paths(a.info.run_id) == artifact_paths(b.info.run_id)
    assert a.data.tags["ptyparity.pair_key"] == b.data.tags["ptyparity.pair_key"]


def test_tf_scale_persisted_exactly(store):
    _, runs = store
    rec = bundle.load("models:/ptyparity-tensorflow/1")
    assert rec.scales.intensity_scale == pytest.approx(float(runs["train_tensorflow"].data.params["intensity_scale"]),
                                                       rel=1e-7)
    assert rec.bundle.backend == "tensorflow"


def test_matched_pair_passes_and_is_tagged_everywhere(store):
    _, runs = store
    t, f = runs["infer_torch"].info.run_id, runs["infer_tensorflow"].info.run_id
    out = invoke("compare", "--torch-run", t, "--tf-run", f, "--run-name", "cmp-pass")
    assert "verdict: PASS  (parity pass, quality pass)" in out
    cmp = run_named("cmp-pass")
    tags = cmp.data.tags
    assert (tags["parity.verdict"], tags["parity.status"], tags["quality.status"]) == ("pass", "pass", "pass")
    assert tags["parity.failed_checks"] == "none" and tags["parity.skipped_checks"] == "none"
    assert tags["parity.best_orientation"] == "identity"
    assert tags["parity.torch_run_id"] == t and tags["parity.tf_run_id"] == f
    assert tags["parity.torch_train_run_id"] == runs["train_torch"].info.run_id
    assert cmp.data.params["threshold.ratio_tolerance"] == "0.1"
    assert cmp.data.params["threshold.var_ratio_max_factor"] == "1.5"
    for key in ("ratio.var_zero_mean", "canvas.amp.ssim", "torch.consistency.intensity_scale",
                "tensorflow.gt_skill.amp"):
        assert key in cmp.data.metrics
    client = mlflow.MlflowClient()
    for run_id in (t, f):
        tags = client.get_run(run_id).data.tags
        assert tags["parity.verdict"] == tags["parity.status"] == "pass"
        assert tags["parity.compare_run_id"] == cmp.info.run_id
    for name in ("ptyparity-torch", "ptyparity-tensorflow"):
        version = client.get_model_version(name, "1")
        assert version.tags["parity.verdict"] == version.tags["parity.status"] == "pass"
        assert str(client.get_model_version_by_alias(name, "parity-passed").version) == "1"
    arts = artifact_paths(cmp.info.run_id)
    assert {"parity/summary.json", "parity/report.html", "parity/canvases.png", "parity/patch_variance.png"} <= arts
    summary = json.load(open(tracking.download_artifact(cmp.info.run_id, "parity/summary.json")))
    assert all(c["status"] == "pass" for c in summary["checks"]) and summary["verdict"] == "pass"
    assert {c["kind"] for c in summary["checks"]} == {"agreement", "quality"}
    html = open(tracking.download_artifact(cmp.info.run_id, "parity/report.html")).read()
    assert "PASS" in html and "data:image/png;base64," in html


def test_perfectly_agreeing_untrained_pair_is_inconclusive(store):
    # One untrained bundle run by both backends: every agreement check passes, neither side
    # beats the flat guess, so the pair proves nothing about skill: inconclusive, exit 1, no alias.
    root, _ = store
    invoke("train", "--backend", "torch", "--train-data", root / "train.npz", "--n-groups", "32", "--max-epochs", "1",
           "--n-filters-scale", "1", "--learning-rate", "1e-12", "--no-register", "--quiet", "--run-name",
           "untrained-both")
    uri = f"runs:/{run_named('untrained-both').info.run_id}/model"
    ids = {b: run_infer(uri, root / "test.npz", backend=b, run_name=f"untrained-{b}").run_id
           for b in ("torch", "tensorflow")}
    out = CliRunner().invoke(app, ["compare", "--torch-run", ids["torch"], "--tf-run", ids["tensorflow"],
                                   "--run-name", "cmp-untrained"])
    assert out.exit_code == 1, out.output
    assert "verdict: INCONCLUSIVE  (parity pass, quality fail)" in out.output
    tags = run_named("cmp-untrained").data.tags
    assert (tags["parity.verdict"], tags["parity.status"], tags["quality.status"]) == ("inconclusive", "pass",
                                                                                      "fail")
    assert set(tags["parity.failed_checks"].split(",")) == {f"{b}.gt_skill.{p}" for b in ("torch", "tensorflow")
                                                            for p in ("amp", "phase")}
    assert mlflow.MlflowClient().get_run(ids["torch"]).data.tags["parity.verdict"] == "inconclusive"


def test_pair_key_and_latest_find_the_pair(store):
    _, runs = store
    key = runs["infer_torch"].data.tags["ptyparity.pair_key"]
    a, b = resolve_pair(pair_key=key)
    assert (a.info.run_id, b.info.run_id) == (runs["infer_torch"].info.run_id, runs["infer_tensorflow"].info.run_id)


def test_forced_intensity_scale_fails_consistency(store, tmp_path):
    root, runs = store
    edited = tmp_path / "edited"
    shutil.copytree(bundle.resolve("models:/ptyparity-torch/1"), edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["intensity_scale"] = 1.0
    (edited / "bundle.json").write_text(json.dumps(meta))
    forced = run_infer(str(edited), root / "test.npz", run_name="forced", verify=False)
    result = run_compare(torch_run_id=forced.run_id, tf_run_id=runs["infer_tensorflow"].info.run_id)
    assert result.parity_status == "fail" and result.verdict == "fail" and result.exit_code == 1
    assert mlflow.get_run(result.run_id).data.tags["parity.status"] == "fail"
    assert {"torch.consistency.intensity_scale", "torch.consistency.mean_input_scale",
            "ratio.mean_input_scale"} <= set(result.failed_checks)
    detail = next(c.detail for c in result.checks if c.name == "torch.consistency.intensity_scale")
    assert "default 1.0 that training never chose" in detail


def test_mirrored_canvas_fails_orientation(store, tmp_path):
    root, runs = store
    res = run_infer("models:/ptyparity-torch/1", root / "test.npz", run_name="mirrored")
    canvas = np.load(tracking.download_artifact(res.run_id, "stitched/canvas.npz"))
    path = tmp_path / "canvas.npz"
    np.savez(path, canvas=canvas["canvas"][::-1, ::-1], count=canvas["count"][::-1, ::-1], pos=canvas["pos"])
    mlflow.MlflowClient().log_artifact(res.run_id, str(path), "stitched")
    result = run_compare(torch_run_id=res.run_id, tf_run_id=runs["infer_tensorflow"].info.run_id)
    assert result.parity_status == "fail" and "canvas.orientation" in result.failed_checks
    assert mlflow.get_run(result.run_id).data.tags["parity.best_orientation"] == "mirrored_180"


def test_untrained_vs_trained_fails(store):
    root, runs = store
    invoke("train", "--backend", "torch", "--train-data", root / "train.npz", "--n-groups", "32", "--max-epochs", "1",
           "--n-filters-scale", "1", "--learning-rate", "1e-12", "--no-register", "--quiet", "--run-name", "untrained")
    untrained = run_named("untrained")
    res = run_infer(f"runs:/{untrained.info.run_id}/model", root / "test.npz", run_name="infer-untrained")
    refused = run_compare(torch_run_id=res.run_id, tf_run_id=runs["infer_tensorflow"].info.run_id)
    assert refused.verdict == refused.parity_status == "error" and refused.exit_code == 2
    assert "pair keys differ" in refused.reason  # different learning rate
    result = run_compare(torch_run_id=res.run_id, tf_run_id=runs["infer_tensorflow"].info.run_id,
                         allow_mismatch=True)
    assert result.parity_status == "fail" and result.verdict == "fail"
    assert "ratio.var_zero_mean" in result.failed_checks or "canvas.amp.ssim" in result.failed_checks
    assert mlflow.get_run(result.run_id).data.tags["parity.allow_mismatch"] == "true"


def test_mismatched_pair_keys_are_refused_from_the_cli(store):
    root, runs = store
    other = run_infer("models:/ptyparity-tensorflow/1", root / "train.npz", run_name="tf-on-train")
    out = CliRunner().invoke(app, ["compare", "--torch-run", runs["infer_torch"].info.run_id, "--tf-run",
                                   other.run_id])
    assert out.exit_code == 2
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: pair keys differ")
    cmp = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="tags.`parity.status` = 'error'",
                             order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert cmp.info.status == "FINISHED" and cmp.data.tags["ptyparity.kind"] == "compare"
    assert cmp.data.tags["parity.verdict"] == "error"


def test_unknown_run_id_is_one_line(store):
    out = CliRunner().invoke(app, ["compare", "--torch-run", "deadbeef", "--tf-run", "cafe"])
    assert out.exit_code == 2
    assert out.output.strip().startswith("error: run 'deadbeef' not found")


def test_forward_mode_passes_and_names_the_perturbed_tap(store, monkeypatch):
    ok = run_compare_forward("models:/ptyparity-torch/1")
    assert ok.verdict == ok.parity_status == "pass" and ok.exit_code == 0, [(c.name, c.value) for c in ok.checks]
    assert max(c.value for c in ok.checks) <= 1e-4
    from ptyparity.backends.torch import ops

    original = ops._window_tents  # the shifts of the merge and extraction
    monkeypatch.setattr(ops, "_window_tents", lambda shift, n, size: original(-shift, n, size))  # a sign flip
    bad = run_compare_forward("models:/ptyparity-torch/1")
    assert bad.verdict == "fail" and bad.exit_code == 1 and bad.reason == "object_canvas"
    assert mlflow.get_run(bad.run_id).data.tags["parity.first_divergent_tap"] == "object_canvas"
    # taps before the merge still agree: the report points at the op that broke
    assert all(c.passed for c in bad.checks if c.name in ("forward.encoder_input", "forward.amp_patches"))


def test_latest_finds_the_pair_among_200_runs(store, capsys):
    root, _ = store
    exp = "latest-test"
    for backend in ("torch", "tensorflow"):
        run_infer(f"models:/ptyparity-{backend}/1", root / "test.npz", experiment=exp, run_name=f"real-{backend}",
                  debug_dump=False)
    client = mlflow.MlflowClient()
    exp_id = client.get_experiment_by_name(exp).experiment_id
    for i in range(200):  # newer, incomplete pairs: one backend each
        run = client.create_run(exp_id, tags={"ptyparity.kind": "infer", "ptyparity.pair_key": f"noise-{i}",
                                              "ptyparity.backend": ("torch", "tensorflow")[i % 2]})
        client.set_terminated(run.info.run_id, "FINISHED")
    start = time.perf_counter()
    a, b = resolve_pair(latest=True, experiment=exp)
    seconds = time.perf_counter() - start
    assert (a.info.run_name, b.info.run_name) == ("real-torch", "real-tensorflow")
    with capsys.disabled():
        print(f"\n[compare --latest] found the pair among 202 runs in {seconds:.3f} s")


def test_init_from_one_bundle_gives_matching_early_steps(store):
    # Both backends start from the same canonical weights (the torch bundle), same seed,
    # same batches, deterministic: the per-step deviances start out equal.
    root, _ = store
    histories = {}
    for backend in ("torch", "tensorflow"):
        invoke("train", "--backend", backend, "--train-data", root / "train.npz", "--init-from",
               "models:/ptyparity-torch/1", "--n-groups", "96", "--max-epochs", "1", "--n-filters-scale", "1",
               "--deterministic", "--no-register", "--no-debug-dump", "--quiet", "--run-name", f"init-{backend}")
        run = run_named(f"init-{backend}")
        assert run.data.tags["ptyparity.init_from"] == "models:/ptyparity-torch/1"
        histories[backend] = np.array([m.value for m in mlflow.MlflowClient().get_metric_history(
            run.info.run_id, "train_step_deviance")])
    t, f = histories["torch"], histories["tensorflow"]
    assert len(t) == len(f) == 6
    rel = np.abs(t - f) / np.abs(f)
    assert rel[0] <= 1e-5 and rel[:3].max() <= 1e-3, rel


def test_tf_trainable_scale_is_learned_and_persisted(store):
    root, _ = store
    invoke("train", "--backend", "tensorflow", "--train-data", root / "train.npz", "--n-groups", "96",
           "--max-epochs", "1", "--n-filters-scale", "1", "--intensity-scale-trainable", "--no-debug-dump",
           "--no-register", "--quiet", "--run-name", "tf-trainable")
    run = run_named("tf-trainable")
    rec = bundle.load(f"runs:/{run.info.run_id}/model")
    assert rec.scales.intensity_scale != pytest.approx(rec.scales.data_scale, rel=1e-6)  # it moved
    assert rec.scales.intensity_scale == pytest.approx(float(run.data.params["intensity_scale"]), rel=1e-7)
    history = [m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id, "intensity_scale")]
    assert history[-1] == pytest.approx(rec.scales.intensity_scale, rel=1e-6)
