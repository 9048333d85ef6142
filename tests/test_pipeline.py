"""The pipeline's process layout: simulate and compare in the pipeline's own process, each
backend's train and infer in one child process of its own; what the steps record, and what
a failing step leaves behind (one error line naming it, nothing RUNNING)."""

import json
import os
import subprocess
import sys

import mlflow
import pytest

from ptyparity import names, tracking
from ptyparity.errors import PtyparityError
from ptyparity.runs import pipeline, pipeline_steps
from ptyparity.simulate import SimConfig

from conftest import write_simulated

STEPS = pipeline.STEPS
TINY = ["--n-groups", "32", "--max-epochs", "1"]  # the layout, not the training, is under test


def _runs(uri):
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(names.DEFAULT_EXPERIMENT)
    return client.search_runs([exp.experiment_id]) if exp else []


def _owner(run):
    return run.data.tags[names.TAG_OWNER_PID]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_simulated(root, SimConfig(N=32, object_size_px=96, seed=4))
    return root


def _env(uri):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_WAIT_POLICY="PASSIVE")
    for key in ("MLFLOW_RUN_ID", names.PARENT_RUN_ID_ENV, names.RUN_ID_FILE_ENV):
        env.pop(key, None)
    return env


# The pipeline as a library call in a fresh process: its pid, its progress lines, and whether
# the pipeline process itself ever imported a framework (simulate and compare must not).
PIPELINE_SCRIPT = """
import json, os, sys
from ptyparity import runs
lines = []
result = runs.run_pipeline(out_dir=sys.argv[1], overwrite=True, quiet=True, echo=lines.append,
                           overrides={"n_groups": 32, "max_epochs": 1})
print(json.dumps({"pid": os.getpid(), "lines": lines, "runs": result.runs, "run_id": result.run_id,
                  "frameworks": [m for m in ("torch", "tensorflow", "keras", "lightning") if m in sys.modules]}))
"""


@pytest.mark.slow
def test_the_pipeline_runs_in_three_processes_one_per_backend(tracking_uri, tmp_path):
    out = subprocess.run([sys.executable, "-c", PIPELINE_SCRIPT, str(tmp_path / "data")], env=_env(tracking_uri),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    *printed, last = out.stdout.strip().splitlines()
    assert printed == [], printed  # quiet: the steps' own output (in process or not) is hidden
    got = json.loads(last)
    assert got["frameworks"] == []  # simulate and compare ran here without one
    assert [line.split(" ", 2)[:2] for line in got["lines"]] == [
        ["[1/6]", "simulate"], ["[2/6]", "train"], ["[3/6]", "infer"], ["[4/6]", "train"], ["[5/6]", "infer"],
        ["[6/6]", "compare"]]
    assert got["lines"][1].startswith("[2/6] train torch") and got["lines"][3].startswith("[4/6] train tensorflow")
    assert got["lines"][2] == "[3/6] infer torch with models:/ptyparity-torch/1"
    assert got["lines"][4] == "[5/6] infer tensorflow with models:/ptyparity-tensorflow/1"

    runs = _runs(tracking_uri)
    (parent,) = [r for r in runs if r.info.run_id == got["run_id"]]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == got["run_id"]}
    assert sorted(children) == sorted(["simulate", "train-torch", "infer-torch", "train-tensorflow",
                                       "infer-tensorflow", "compare"])
    assert all(r.info.status == "FINISHED" for r in children.values()) and parent.info.status == "FINISHED"
    for step, run_id in got["runs"].items():
        child = children[step.replace("_", "-")]
        assert parent.data.tags[names.PIPELINE_TAG_PREFIX + step] == run_id == child.info.run_id, step
    # Who opened each run (the owner tags every run carries): three processes in all.
    assert _owner(parent) == _owner(children["simulate"]) == _owner(children["compare"]) == str(got["pid"])
    for backend in ("torch", "tensorflow"):
        assert _owner(children[f"train-{backend}"]) == _owner(children[f"infer-{backend}"])
    assert len({_owner(r) for r in [parent, *children.values()]}) == 3
    # Time and memory per step, as scripts/bench.py reads them.
    metrics = parent.data.metrics
    for step in STEPS:
        assert metrics[f"step_seconds.{step}"] > 0 and metrics[f"step_peak_rss_mb.{step}"] > 0, step
        run = children[step.replace("_", "-")]
        # a step's wall time holds its run (in a backend child the train step also holds the start)
        assert metrics[f"step_seconds.{step}"] >= (run.info.end_time - run.info.start_time) / 1000 - 0.05, step
    assert sum(metrics[f"step_seconds.{s}"] for s in STEPS) <= (parent.info.end_time - parent.info.start_time) / 1000
    # Each process's start and imports: a child's come before its train run opens.
    assert 0 < metrics["start_import_seconds.pipeline"] < metrics["start_import_seconds.tensorflow"]
    for backend in ("torch", "tensorflow"):
        started = children[f"train-{backend}"].info.start_time / 1000
        assert 0 < metrics[f"start_import_seconds.{backend}"] < metrics[f"step_seconds.train_{backend}"], backend
        assert started > parent.info.start_time / 1000 + metrics[f"start_import_seconds.{backend}"] - 0.05, backend
    for backend in ("torch", "tensorflow"):  # one process: its peak so far can only grow
        assert metrics[f"step_peak_rss_mb.infer_{backend}"] >= metrics[f"step_peak_rss_mb.train_{backend}"]


def test_a_failing_backend_process_names_its_step_and_leaves_nothing_running(tracking_uri, data_dir, tmp_path):
    # --devices 0: the torch training refuses it inside its run; the pipeline stops there.
    proc = subprocess.run([sys.executable, "-m", "ptyparity", "pipeline", "--out-dir", str(data_dir), *TINY,
                           "--devices", "0", "--quiet"], env=_env(tracking_uri), capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert errors == ["error: pipeline step 'train --backend torch' failed with exit code 2: error: devices must "
                      "be a positive integer or -1 (all GPUs); got 0"], proc.stderr
    assert [line[:5] for line in proc.stdout.splitlines()] == ["[1/6]", "[2/6]"]
    runs = {r.info.run_name: r for r in _runs(tracking_uri)}
    assert sorted(runs) == ["pipeline-small", "train-torch"]  # data reused; nothing after the failed step
    assert {name: r.info.status for name, r in runs.items()} == {"pipeline-small": "FAILED", "train-torch": "FAILED"}


def test_a_backend_process_failing_after_its_training_reports_both(tracking_uri, data_dir):
    # The child trains, registers, then its infer step refuses the data: the error names the
    # infer step with the version it was given, the train run stays FINISHED, nothing RUNNING.
    missing = str(data_dir / "missing.npz")
    with tracking.start_run("pipeline", run_name="p") as parent:
        spec = {"backend": "torch",
                "train": {"backend": "torch", "train_data": str(data_dir / "train.npz"), "n_groups": 16,
                          "max_epochs": 1, "n_filters_scale": 1, "quiet": True, "run_name": "train-torch"},
                "infer": {"data": missing, "run_name": "infer-torch"}}
        started = []
        with pytest.raises(PtyparityError) as err:
            pipeline_steps.run_backend(spec, pipeline.child_env(tracking_uri, parent.info.run_id), quiet=True,
                                       on_start=lambda step, args: started.append((step, args[:3])))
    assert str(err.value).startswith("pipeline step 'infer --model models:/ptyparity-torch/1' failed with exit "
                                     "code 2: error: ") and missing in str(err.value)
    assert started == [("train_torch", ["train", "--backend", "torch"]),
                       ("infer_torch", ["infer", "--model", "models:/ptyparity-torch/1"])]
    runs = _runs(tracking_uri)
    assert [r.info.run_id for r in runs if r.info.status == "RUNNING"] == []
    (train,) = [r for r in runs if r.info.run_name == "train-torch"]
    assert train.info.status == "FINISHED" and train.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert _owner(train) != str(os.getpid())


def test_a_backend_process_that_dies_outside_a_step_names_the_unfinished_step():
    # A crash (signal, import error) after the training finished: the infer step is the one named.
    spec = {"backend": "tensorflow"}
    events = [{"imported": "tensorflow", "at": 104.0},
              {"started": "train_tensorflow", "args": ["train", "--backend", "tensorflow", "--x"]},
              {"finished": "train_tensorflow", "run_id": "abc", "exit_code": 0, "seconds": 5.0, "ended_at": 110.0,
               "peak_rss_mb": 900.0}]
    with pytest.raises(PtyparityError, match=r"^pipeline step 'infer' failed with exit code -9: Killed$"):
        pipeline_steps._results(spec, events, -9, "Killed", launched=100.0)
    done = pipeline_steps._results(spec, events + [
        {"started": "infer_tensorflow", "args": ["infer", "--model", "models:/m/1"]},
        {"finished": "infer_tensorflow", "run_id": "def", "exit_code": 0, "seconds": 3.0, "ended_at": 113.0,
         "peak_rss_mb": 950.0}], 0, "", launched=100.0)
    # the first step's time counts from the launch (the process start is its cost), the next its own;
    # the start and imports alone end at the "imported" event
    assert done == {"start_import_seconds": 4.0, "train_tensorflow": {"run_id": "abc", "seconds": 10.0, "peak_rss_mb": 900.0},
                    "infer_tensorflow": {"run_id": "def", "seconds": 3.0, "peak_rss_mb": 950.0}}


def test_an_in_process_step_nests_under_the_pipeline_run_even_under_mlflow_run(tracking_uri, tmp_path, monkeypatch,
                                                                                capsys):
    args = pipeline.cli_args("simulate", {"out_dir": tmp_path / "d", "object_size": 64, "log_data": False,
                                          "run_name": "simulate"})
    with tracking.start_run("pipeline", run_name="p") as parent:
        # `mlflow run` names its run in MLFLOW_RUN_ID: MLflow would resume it instead of nesting.
        monkeypatch.setenv("MLFLOW_RUN_ID", parent.info.run_id)
        usage = {}
        run_id, code = pipeline_steps.run_cli_step(args, quiet=True, parent_run_id=parent.info.run_id, usage=usage)
        assert mlflow.active_run().info.run_id == parent.info.run_id  # the pipeline run goes on
        assert os.environ["MLFLOW_RUN_ID"] == parent.info.run_id  # the environment is the caller's again
        assert names.PARENT_RUN_ID_ENV not in os.environ and names.RUN_ID_FILE_ENV not in os.environ
        with pytest.raises(PtyparityError, match=r"^pipeline step 'simulate --out-dir .*' failed with exit code 2: "
                                                 r"error: .*train\.npz already exists"):
            pipeline_steps.run_cli_step(args, quiet=True, parent_run_id=parent.info.run_id)
    assert capsys.readouterr().out == ""  # quiet: the step's own lines were captured
    assert code == 0 and usage["seconds"] > 0 and usage["peak_rss_mb"] > 0
    run = tracking.get_run(run_id)
    assert run.info.run_name == "simulate" and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and _owner(run) == str(os.getpid())
    assert [r.info.status for r in _runs(tracking_uri) if r.info.run_id == parent.info.run_id] == ["FINISHED"]


def test_an_in_process_step_prints_what_the_command_prints(tracking_uri, tmp_path, capsys):
    args = pipeline.cli_args("simulate", {"out_dir": tmp_path / "d", "object_size": 64, "log_data": False,
                                          "run_name": "simulate"})
    with tracking.start_run("pipeline", run_name="p") as parent:
        run_id, _ = pipeline_steps.run_cli_step(args, quiet=False, parent_run_id=parent.info.run_id)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("simulated ") and f"  run id:    {run_id}" in lines
    # as a pipeline step: the run page only; the pipeline prints the store and the UI once, at the end
    assert lines[-1].startswith("  run page:  ") and not any(line.startswith("  tracking:") for line in lines)
