"""`mlflow run`: the MLproject pipeline end to end in the current environment
(`--env-manager local`), and one cheap entry point through MLflow's default env manager,
which builds python_env.yaml's pinned environment itself."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

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


def _same_name(name):
    return name.lower().replace("_", "-")


def _pins(path):
    """``{name: version}`` of the ``name==version`` lines of a requirements/constraints file."""
    pins = {}
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[_same_name(name)] = version.strip()
    return pins


def test_conda_yaml_declares_the_environment_of_python_env_yaml():
    """MLproject names python_env.yaml (one environment only); conda.yaml is for conda users
    (`conda env create -f conda.yaml`) and must stay the same environment: read both the way
    MLflow reads them."""
    import yaml
    from mlflow.projects._project_spec import load_project
    from mlflow.utils.environment import _PythonEnv

    project = load_project(ROOT)
    assert project.env_type == "python_env" and os.path.basename(project.env_config_path) == "python_env.yaml"
    python_env = _PythonEnv.from_yaml(os.path.join(ROOT, "python_env.yaml"))
    from_conda = _PythonEnv.from_conda_yaml(os.path.join(ROOT, "conda.yaml"))
    assert from_conda.dependencies == python_env.dependencies == ["-r requirements.txt", "-c constraints.txt", "-e ."]
    assert python_env.python.split(".")[:2] == from_conda.python.split(".")[:2] == ["3", "11"]
    with open(os.path.join(ROOT, "conda.yaml")) as f:
        conda = yaml.safe_load(f)
    assert conda["name"] == "ptyparity" and "pip" in conda["dependencies"]


def _python_env_python():
    import yaml

    with open(os.path.join(ROOT, "python_env.yaml")) as f:
        return str(yaml.safe_load(f)["python"])


def _mlflow_run_inspect(data, uri, cwd):
    """`mlflow run <repo> -e inspect` exactly as MLflow's docs teach it: no --env-manager."""
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    env.pop("MLFLOW_RUN_ID", None)
    cmd = [os.path.join(os.path.dirname(sys.executable), "mlflow"), "run", ROOT, "-e", "inspect",
           "--experiment-name", "ptyparity", "-P", f"data={data}"]
    start = time.monotonic()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1500, cwd=cwd)
    wall = time.monotonic() - start
    log = out.stdout + out.stderr
    hint = "" if shutil.which("pyenv") else (
        " (no pyenv on PATH: MLflow's default env manager for python_env.yaml, virtualenv, needs it to provide "
        "the Python that python_env.yaml names)")
    assert out.returncode == 0, hint + "\n" + log[-4000:]
    (env_dir,) = re.findall(r"Running command 'source (\S+)/bin/activate && python -m ptyparity inspect", log)
    return log, env_dir, wall


@pytest.mark.mlflow_env
def test_mlflow_run_default_env_manager_builds_the_pinned_environment(tmp_path, tracking_uri):
    """`mlflow run . -e inspect` with no flags on a machine without conda: MLflow builds
    python_env.yaml's environment (virtualenv: pyenv's Python, pip, the pinned wheels) once, runs
    the entry point in it, and reuses it on the next run. Its own CI step (`make test-mlflow-env`):
    the first build takes minutes."""
    from tests.conftest import write_simulated
    from ptyparity.simulate import SimConfig

    write_simulated(tmp_path, SimConfig(N=32, object_size_px=96, nphotons=1e5, seed=0))
    data = tmp_path / "test.npz"
    log, env_dir, first = _mlflow_run_inspect(data, tracking_uri, tmp_path)
    assert f"{data}: valid" in log
    built = "Creating a new environment" in log
    assert os.path.realpath(env_dir) != os.path.realpath(sys.prefix)  # not the venv running the tests
    runs = mlflow.search_runs(experiment_names=["ptyparity"], output_format="list")
    (run,) = runs
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "inspect"
    assert run.data.tags["mlflow.project.env"] == "virtualenv"  # MLflow's default for a python_env project

    # the environment holds exactly the tested pins (constraints.txt: torch's CPU build, tensorflow-cpu, mlflow…)
    probe = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c",
                            "import importlib.metadata as m, json, sys; "
                            "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()})); "
                            "print(sys.version.split()[0])"],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert probe.returncode == 0, probe.stderr
    installed_json, python_version = probe.stdout.splitlines()[-2:]
    installed = {_same_name(k): v for k, v in json.loads(installed_json).items()}
    pins = _pins(os.path.join(ROOT, "constraints.txt"))
    for name in _pins(os.path.join(ROOT, "requirements.txt")):
        assert name in installed, name
    wrong = {n: (installed[n], v) for n, v in pins.items() if n in installed and installed[n] != v}
    assert not wrong, wrong
    assert installed["torch"] == "2.13.0+cpu" and installed["mlflow"] == "3.17.2"
    assert python_version == _python_env_python()

    log, again_dir, cached = _mlflow_run_inspect(data, tracking_uri, tmp_path)
    assert again_dir == env_dir and "already exists" in log  # reused, not rebuilt
    print(f"\nmlflow run -e inspect, default env manager: first {first:.0f} s "
          f"({'built the environment' if built else 'environment already built'}), then {cached:.1f} s (reused); "
          f"environment {env_dir}")
