"""The simulate run in a real (temporary sqlite) MLflow store."""

import mlflow
import pytest
from typer.testing import CliRunner

from ptyparity import tracking
from ptyparity.cli import app


@pytest.fixture
def simulated(tracking_uri, tmp_path):
    result = CliRunner().invoke(app, ["simulate", "--out-dir", str(tmp_path / "data"), "--object-size", "96",
                                      "--seed", "3", "--run-name", "sim-test"])
    assert result.exit_code == 0, result.output
    runs = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    assert len(runs) == 1
    return runs[0], result.output, tmp_path / "data"


def test_simulate_run_is_recorded(simulated):
    run, output, data_dir = simulated
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "sim-test"
    tags = run.data.tags
    assert tags["ptyparity.kind"] == "simulate"
    from ptyparity.data import dataset_digest, load_npz
    assert tags["ptyparity.dataset_digest"] == dataset_digest(load_npz(data_dir / "train.npz"))
    assert tags["ptyparity.test_dataset_digest"] == dataset_digest(load_npz(data_dir / "test.npz"))
    params = run.data.params
    assert params["N"] == "32" and params["object_family"] == "lines" and params["object_size_px"] == "96"
    assert float(params["nphotons"]) == 1e6
    assert run.data.metrics["photons_per_pattern_mean"] == pytest.approx(1e6, rel=0.02)
    client = mlflow.MlflowClient()
    files = {f.path for d in ("preview", "data") for f in client.list_artifacts(run.info.run_id, d)}
    assert {"preview/object_train.png", "preview/object_test.png", "preview/probe.png",
            "preview/diffraction.png", "data/train.npz", "data/test.npz"} <= files
    assert "simulate.json" in {f.path for f in client.list_artifacts(run.info.run_id)}
    inputs = run.inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"ptyparity-train", "ptyparity-test"}
    assert tags["ptyparity.dataset_digest"].startswith(
        next(i.dataset.digest for i in inputs if i.dataset.name == "ptyparity-train"))
    assert run.info.run_id in output and "mlflow ui --backend-store-uri" in output


def test_failed_work_ends_the_run_failed(tracking_uri):
    with pytest.raises(RuntimeError):
        with tracking.start_run("simulate", run_name="boom"):
            raise RuntimeError("boom")
    (run,) = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    assert run.info.status == "FAILED"


def test_user_error_leaves_no_running_run(tracking_uri, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.npz").write_bytes(b"precious")
    result = CliRunner().invoke(app, ["simulate", "--out-dir", str(data), "--object-size", "96"])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error: ") and "--overwrite" in result.output
    assert (data / "train.npz").read_bytes() == b"precious"  # nothing overwritten
    # The output directory is checked before the simulate run opens, so the refusal leaves no
    # run at all (a failure inside an open run ends it FAILED: the test above).
    runs = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    assert [r.info.status for r in runs] == []


def test_param_text_is_stable():
    assert tracking.param_text(True) == "true"
    assert tracking.param_text(2) == "2" and tracking.param_text(2.0) == "2.0"
    assert tracking.param_text(None) == "none"


def test_a_run_reports_its_id_to_the_file_the_parent_names(tracking_uri, tmp_path, monkeypatch):
    # How a pipeline step tells the parent process its run id (no tag search).
    target = tmp_path / "run_id"
    monkeypatch.setenv("PTYPARITY_RUN_ID_FILE", str(target))
    with pytest.raises(RuntimeError):
        with tracking.start_run("simulate", run_name="reports") as run:
            assert tracking.read_reported_run_id(target) == run.info.run_id  # written at the start
            raise RuntimeError("a failed step still reported its run")
    (stored,) = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    assert tracking.read_reported_run_id(target) == stored.info.run_id and stored.info.status == "FAILED"
    assert tracking.read_reported_run_id(tmp_path / "never-written") is None


def _bundle_dir(tmp_path):
    import math

    from ptyparity import architecture, bundle
    from ptyparity.config import ModelConfig, TrainConfig
    from ptyparity.simulate import make_probe
    from ptyparity.training import Scales

    cfg = ModelConfig(N=32, gridsize=2, n_filters_scale=1, max_offset=6)
    scales = Scales(input_norm=0.016, data_scale=62.5, intensity_scale=62.5, probe_norm=3.1, nphotons=1e6)
    return bundle.save(tmp_path / "b", weights=architecture.init_weights(cfg, seed=0, log_scale=math.log(62.5)),
                       model_cfg=cfg, train_cfg=TrainConfig(model=cfg), scales=scales, probe=make_probe(32),
                       backend="torch", versions={"torch_version": "x"})


def test_logging_a_model_does_not_scan_every_installed_distribution(tracking_uri, tmp_path, monkeypatch):
    """``log_bundle_model`` checks the requirements against the package metadata: MLflow's map of
    every installed distribution's modules (0.3-0.4 s, once a process) is not built. MLflow's own
    check, which the logging replaces for its duration, builds it: the control."""
    from mlflow.utils import environment, requirements_utils

    scans = []
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils.importlib_metadata, "packages_distributions",
                        lambda: scans.append(1) or {})
    with tracking.start_run("train", backend="torch"):
        model_uri, _ = tracking.log_bundle_model(str(_bundle_dir(tmp_path)), pip_requirements=["numpy"])
    assert scans == []
    assert environment.warn_dependency_requirement_mismatches is \
        requirements_utils.warn_dependency_requirement_mismatches  # put back
    requirements = mlflow.pyfunc.get_model_dependencies(model_uri)
    with open(requirements) as fh:
        assert {line.split("==")[0] for line in fh.read().split()} == {"mlflow", "numpy"}
    environment.warn_dependency_requirement_mismatches(["numpy"])
    assert scans == [1]


def test_requirement_mismatches_are_warned_as_mlflow_finds_them(caplog):
    import logging

    import numpy as np
    from mlflow.utils import requirements_utils

    requirements = [f"numpy=={np.__version__}", "numpy==0.0.1", f"mlflow=={mlflow.__version__}", "mlflow<1",
                    "no-such-package-ptyparity>=1", "./local.whl", "numpy==0.0.1; python_version < '3'"]
    logger = logging.getLogger("mlflow.utils.requirements_utils")
    logger.addHandler(caplog.handler)
    try:
        found = tracking.warn_requirement_mismatches(requirements)
    finally:
        logger.removeHandler(caplog.handler)
    assert found == [str(m) for m in map(requirements_utils._check_requirement_satisfied, requirements) if m]
    assert [name.split()[0] for name in found] == ["numpy", "mlflow", "no-such-package-ptyparity"]
    assert "numpy==0.0.1" in caplog.text and "no-such-package-ptyparity" in caplog.text
    assert tracking.warn_requirement_mismatches(requirements[:1]) == []


@pytest.mark.parametrize("run_data", ["as_mlflow_keeps_it", "without_metric_objs"])
def test_model_metrics_are_linked_at_their_latest_entry_and_the_run_gains_no_point(tracking_uri, monkeypatch,
                                                                                   run_data):
    client = mlflow.MlflowClient()
    if run_data == "without_metric_objs":  # another MLflow: the histories are read instead
        get_run = mlflow.MlflowClient.get_run

        def bare_get_run(self, run_id):
            run = get_run(self, run_id)
            del run.data._metric_objs
            return run

        monkeypatch.setattr(mlflow.MlflowClient, "get_run", bare_get_run)
    with mlflow.start_run() as run:
        for step in range(3):
            mlflow.log_metrics({"val_loss": 1.0 / (step + 1), "train_step_loss": 2.0 + step}, step=step)
        mlflow.log_metrics({"patch.amp.mean": 0.25}, step=0)
        mlflow.log_metrics({"patch.amp.mean": 0.5}, step=3)
        model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
        tracking._link_model_metrics(client, run.info.run_id, model.model_id, ["val_loss", "patch.amp.mean"], 3)
    linked = {m.key: (m.value, m.step) for m in client.get_logged_model(model.model_id).metrics}
    # patch.amp.mean's latest entry is at the step log_model links itself (3): left to it
    assert linked == {"val_loss": (1.0 / 3, 2)}
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [0, 1, 2]
