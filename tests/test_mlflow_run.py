"""`mlflow run . -e main --env-manager local`: the MLproject pipeline end to end."""

import os
import subprocess
import sys

import mlflow
import pytest

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_mlflow_run_main_builds_parent_and_children(tmp_path, tracking_uri):
    uri = tracking_uri
    # As in an activated venv: the entry points call `python`.
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri,
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", ROOT, "-e", "main", "--env-manager",
           "local", "--experiment-name", "ptyparity", "-P", f"out_dir={tmp_path / 'data'}", "-P", "n_groups=64",
           "-P", "max_epochs=1"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    # exit 0 (pass) or 1 (fail): a verdict either way; tiny training need not pass.
    assert out.returncode in (0, 1), out.stdout[-3000:] + out.stderr[-3000:]
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("ptyparity.kind") == "pipeline"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags.get("mlflow.project.entryPoint") == "main"  # the run `mlflow run` created
    assert parent.data.params["n_groups"] == "64" and parent.data.params["resolved.n_groups"] == "64"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    kinds = sorted((r.data.tags["ptyparity.kind"], r.data.tags.get("ptyparity.backend", "")) for r in children)
    assert kinds == [("compare", ""), ("infer", "tensorflow"), ("infer", "torch"), ("simulate", ""),
                     ("train", "tensorflow"), ("train", "torch")]
    assert all(r.info.status == "FINISHED" for r in children)
    status, verdict = parent.data.tags["parity.status"], parent.data.tags["parity.verdict"]
    assert status in ("pass", "fail") and verdict in ("pass", "fail", "inconclusive")
    (compare,) = [r for r in children if r.data.tags["ptyparity.kind"] == "compare"]
    assert compare.data.tags["parity.status"] == status and compare.data.tags["parity.verdict"] == verdict
    assert out.returncode == (0 if verdict == "pass" else 1)
    # `mlflow run` marks its run FAILED when the entry point exits non-zero (fail or inconclusive).
    assert parent.info.status == ("FINISHED" if verdict == "pass" else "FAILED")
    # the ids the steps reported themselves (no tag search) are the children's
    stored = client.get_run(parent.info.run_id).data.tags
    for (kind, backend), key in ((("compare", ""), "compare"), (("train", "torch"), "train_torch"),
                                 (("train", "tensorflow"), "train_tensorflow"), (("infer", "torch"), "infer_torch"),
                                 (("infer", "tensorflow"), "infer_tensorflow")):
        (child,) = [r for r in children if (r.data.tags["ptyparity.kind"], r.data.tags.get("ptyparity.backend", ""))
                    == (kind, backend)]
        assert stored[f"pipeline.{key}"] == child.info.run_id, key
