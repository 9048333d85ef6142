"""Train and infer with the torch backend as real MLflow runs (temporary sqlite store)."""

import json

import mlflow
import numpy as np
import pytest
from typer.testing import CliRunner

from ptyparity import bundle
from ptyparity.cli import app
from ptyparity.simulate import SimConfig
from tests.conftest import sqlite_store, write_simulated

TRAIN_ARGS = ["--n-groups", "96", "--max-epochs", "3", "--n-filters-scale", "1", "--learning-rate", "3e-3",
              "--patch-stats-limit", "8", "--quiet"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_store")
    with sqlite_store(root):
        write_simulated(root, SimConfig(N=32, object_size_px=96, nphotons=1e5, seed=0))
        yield root


def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def trained(store):
    invoke("train", "--backend", "torch", "--train-data", store / "train.npz", "--test-data", store / "test.npz",
           *TRAIN_ARGS, "--run-name", "t1")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="tags.`ptyparity.kind` = 'train'",
                                output_format="list")
    return run


def test_train_run_is_complete(trained):
    run = trained
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["ptyparity.backend"] == "torch" and tags["ptyparity.kind"] == "train"
    for key in ("dataset_digest", "config_hash", "pair_key"):
        assert tags[f"ptyparity.{key}"]
    for name in ("N", "gridsize", "neighbor_count", "n_groups", "nphotons", "object_big", "probe_big", "probe_mask",
                 "merge_weighting", "intensity_scale_mode", "intensity_scale", "intensity_scale_trainable",
                 "input_norm", "loss_mode", "batch_size", "max_epochs", "learning_rate", "seed", "deterministic",
                 "n_filters_scale", "torch_version", "lightning_version"):
        assert name in params, name
    assert params["object_big"] == "true" and params["N"] == "32"
    for name in ("train_loss", "val_loss", "intensity_scale", "train_deviance", "val_deviance", "mean_input_scale",
                 "mean_physics_scale", "patch.amp.var_zero_mean", "patch.phase.collapsed_fraction",
                 "test_deviance", "test_deviance_initial"):
        assert name in metrics, name
    client = mlflow.MlflowClient()
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 3
    assert history[-1].value < history[0].value  # the training loss drops
    steps = client.get_metric_history(run.info.run_id, "train_step_deviance")
    assert len(steps) == 3 * 6  # 91 training groups / batch 16 = 6 steps per epoch
    # patch statistics at the start (step 0) and the end (step max_epochs)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "patch.amp.var_zero_mean")] == [0, 3]
    arts = {f.path for d in ("", "debug_dump/initial", "debug_dump/final", "plots") for f in
            client.list_artifacts(run.info.run_id, d or None)}
    for path in ("config.json", "history.json", "plots/loss.png", "debug_dump/final/taps.npz",
                 "debug_dump/final/patch_stats.json", "debug_dump/final/patch_grid_normalised.png",
                 "debug_dump/final/patch_grid_shared.png", "debug_dump/initial/patch_stats.json"):
        assert path in arts, path
    (version,) = client.search_model_versions("name='ptyparity-torch'")
    assert version.run_id == run.info.run_id


def test_the_logged_model_carries_the_trained_models_metrics(trained):
    # MLflow's default links the run's step-0 metrics (epoch 0, the initial dump) to the model.
    client = mlflow.MlflowClient()
    run_id = trained.info.run_id
    (output,) = client.get_run(run_id).outputs.model_outputs
    assert output.step == 3 * 6  # the training's optimizer steps
    model = client.get_logged_model(output.model_id)
    assert model.source_run_id == run_id
    linked = {m.key: m for m in model.metrics}
    assert "val_loss" in linked and "patch.amp.var_zero_mean" in linked and "test_deviance" in linked
    assert not {"train_step_loss", "train_step_deviance", "checkpoint_seconds", "test_deviance_initial"} & set(linked)
    assert set(linked) == set(trained.data.metrics) - {"train_step_loss", "train_step_deviance",
                                                         "checkpoint_seconds", "test_deviance_initial"}
    for key, metric in linked.items():
        last = max(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))
        assert (metric.value, metric.step, metric.timestamp) == (last.value, last.step, last.timestamp), key
    assert linked["val_loss"].step == 2 and linked["patch.amp.var_zero_mean"].step == 3


def test_trained_beats_untrained_on_held_out_deviance(trained):
    m = trained.data.metrics
    assert m["test_deviance"] < m["test_deviance_initial"]


def test_bundle_persists_the_trained_scale(trained, store):
    rec = bundle.load("models:/ptyparity-torch/1")
    params = trained.data.params
    assert rec.scales.intensity_scale == pytest.approx(float(params["intensity_scale"]), rel=1e-7)
    assert rec.scales.intensity_scale != 1.0
    assert rec.scales.intensity_scale == pytest.approx(1 / rec.scales.input_norm, rel=1e-6)  # dataset mode
    assert rec.bundle.meta["train_run_id"] == trained.info.run_id


def test_reload_gives_bit_identical_predictions(trained, store):
    from ptyparity.data import load_npz

    data = load_npz(store / "test.npz")
    a = bundle.load("models:/ptyparity-torch/1").reconstruct(data)
    b = bundle.load(f"runs:/{trained.info.run_id}/model").reconstruct(data)
    assert np.array_equal(a.canvas, b.canvas) and np.array_equal(a.count, b.count)
    pyfunc = mlflow.pyfunc.load_model("models:/ptyparity-torch/1")
    out = pyfunc.predict({"diff3d": data.diff3d, "xcoords": data.xcoords, "ycoords": data.ycoords,
                          "objectGuess": data.obj})
    np.testing.assert_array_equal(out["amplitude"], np.abs(a.canvas))
    np.testing.assert_array_equal(out["phase"], np.angle(a.canvas))


def test_infer_run_records_scales_canvas_and_gt(trained, store):
    invoke("infer", "--model", "models:/ptyparity-torch/1", "--data", store / "test.npz", "--run-name", "i1")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="attributes.run_name = 'i1'",
                                output_format="list")
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["ptyparity.kind"] == "infer" and tags["ptyparity.train_run_id"] == trained.info.run_id
    assert tags["ptyparity.model_uri"] == "models:/ptyparity-torch/1"
    assert float(params["intensity_scale"]) == pytest.approx(float(trained.data.params["intensity_scale"]))
    # The same scale factors at inference as at the end of training.
    for key in ("mean_input_scale", "mean_physics_scale"):
        assert metrics[key] == pytest.approx(trained.data.metrics[key], rel=1e-6)
    for part in ("amp", "phase"):
        for stat in ("mae", "psnr", "ssim"):
            assert f"gt.{part}.{stat}" in metrics and f"gt.{part}.{stat}_flat" in metrics
    client = mlflow.MlflowClient()
    arts = {f.path for d in ("stitched", "debug_dump") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"stitched/canvas.npz", "stitched/canvas.png", "debug_dump/taps.npz",
            "debug_dump/patch_stats.json"} <= arts


def test_edited_scale_is_refused_and_forced_shifts_statistics(trained, store, tmp_path, capsys):
    from ptyparity.runs import run_infer

    local = bundle.resolve("models:/ptyparity-torch/1")
    edited = tmp_path / "edited"
    import shutil

    shutil.copytree(local, edited)
    meta = json.loads((edited / "bundle.json").read_text())
    meta["intensity_scale"] = 1.0
    (edited / "bundle.json").write_text(json.dumps(meta))
    result = CliRunner().invoke(app, ["infer", "--model", str(edited), "--data", str(store / "test.npz")])
    assert result.exit_code == 2 and "config checksum mismatch" in result.output

    honest = run_infer(str(local), store / "test.npz", run_name="honest")
    forced = run_infer(str(edited), store / "test.npz", run_name="forced", verify=False)
    train_scale = trained.data.metrics["mean_input_scale"]
    assert honest.metrics["mean_input_scale"] == pytest.approx(train_scale, rel=1e-6)
    assert forced.metrics["mean_input_scale"] != pytest.approx(train_scale, rel=1e-2)
    before, after = honest.metrics["patch.amp.var_zero_mean"], forced.metrics["patch.amp.var_zero_mean"]
    assert after != pytest.approx(before, rel=0.05)
    with capsys.disabled():
        print(f"\n[seed bug] var_zero_mean honest {before:.4g} vs intensity_scale forced to 1.0: {after:.4g}; "
              f"mean_input_scale {honest.metrics['mean_input_scale']:.4g} vs {forced.metrics['mean_input_scale']:.4g}")


def test_unknown_model_is_one_line(store):
    result = CliRunner().invoke(app, ["infer", "--model", "models:/ptyparity-torch/99", "--data",
                                      str(store / "test.npz")])
    assert result.exit_code == 2
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: models:/ptyparity-torch/99: cannot fetch the model")


def test_deterministic_twice_gives_identical_losses(store):
    histories = []
    for i in range(2):
        invoke("train", "--backend", "torch", "--train-data", store / "train.npz", *TRAIN_ARGS[:-1],
               "--max-epochs", "1", "--deterministic", "--no-register", "--no-debug-dump", "--run-name", f"det{i}")
        (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string=f"attributes.run_name = 'det{i}'",
                                    output_format="list")
        histories.append([m.value for m in mlflow.MlflowClient().get_metric_history(run.info.run_id,
                                                                                     "train_step_loss")])
    assert len(histories[0]) == 6 and histories[0] == histories[1]


def test_trainable_scale_is_learned_and_persisted(store):
    invoke("train", "--backend", "torch", "--train-data", store / "train.npz", *TRAIN_ARGS[:-1], "--max-epochs", "1",
           "--intensity-scale-trainable", "--no-debug-dump", "--run-name", "trainable")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="attributes.run_name = 'trainable'",
                                output_format="list")
    rec = bundle.load(f"runs:/{run.info.run_id}/model")
    assert rec.scales.intensity_scale != pytest.approx(rec.scales.data_scale, rel=1e-6)  # it moved
    assert rec.scales.intensity_scale == pytest.approx(float(run.data.params["intensity_scale"]), rel=1e-7)
    assert float(np.exp(rec.bundle.weights["log_scale"])) == pytest.approx(rec.scales.intensity_scale, rel=1e-6)


def test_divergent_training_fails_cleanly(store):
    result = CliRunner().invoke(app, ["train", "--backend", "torch", "--train-data", str(store / "train.npz"),
                                      "--n-groups", "32", "--max-epochs", "1", "--n-filters-scale", "1",
                                      "--learning-rate", "1e30", "--no-register", "--quiet", "--run-name", "diverge"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1].startswith("error: training diverged")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], filter_string="attributes.run_name = 'diverge'",
                                output_format="list")
    assert run.info.status == "FAILED"
