"""A tracking URI that cannot work fails fast, in one line, for every command.

Each command (and each MLproject entry point, which runs the same CLI) is started as a
real process against a port nothing listens on and against an HTTP server that is not
MLflow (``python -m http.server``, started here on 127.0.0.1): exit 2, one stderr line
naming the URI, no traceback, nothing done before the check. The 30 s subprocess
timeout only bounds a hang (MLflow's own retries take minutes); the commands take
about 2 s each (``ptyparity.tracking_preflight``). A real ``mlflow server`` passes the
same check, so it refuses only what cannot work.
"""

import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import yaml
from mlflow_server import free_port, start_server, stop_server

from ptyparity import names, tracking
from ptyparity.errors import PtyparityError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HANG_BOUND_S = 30  # a bound on hanging only; measured ~2 s per command on 2 loaded cores


def wait_answering(url, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"server for {url} exited with {proc.returncode}"
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except urllib.error.HTTPError:  # it answers, with an error page: good enough
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@pytest.fixture(scope="module")
def down_uri():
    """A local port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def not_mlflow_uri(tmp_path_factory):
    """A URL that answers, but is a plain file server, not MLflow."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(tmp_path_factory.mktemp("www"))], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_answering(f"http://127.0.0.1:{port}/", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def train_npz(tmp_path_factory):
    from ptyparity.data import save_npz
    from ptyparity.simulate import SimConfig, simulate

    train, _ = simulate(SimConfig(N=32, object_size_px=64, seed=3))
    return save_npz(tmp_path_factory.mktemp("data") / "train.npz", train)


def command_args(train_npz):
    return {
        "simulate": ["simulate", "--out-dir", "data"],
        "train": ["train", "--train-data", str(train_npz), "--n-groups", "16", "--max-epochs", "1"],
        "infer": ["infer", "--model", "models:/ptyparity-torch/1", "--data", str(train_npz)],
        "compare": ["compare", "--latest"],
        "pipeline": ["pipeline", "--out-dir", "data"],
    }


def child_env(uri):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_WAIT_POLICY="PASSIVE")
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # `python` of MLproject
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for key in ("MLFLOW_RUN_ID", names.PARENT_RUN_ID_ENV, names.RUN_ID_FILE_ENV):
        env.pop(key, None)
    return env


def run_failing(argv, uri, cwd, *, shell=False):
    """Run a command against ``uri``; return its one stderr line after the common assertions."""
    started = time.monotonic()
    proc = subprocess.run(argv, cwd=cwd, env=child_env(uri), capture_output=True, text=True, timeout=HANG_BOUND_S,
                          shell=shell)
    elapsed = time.monotonic() - started
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert uri in lines[0], lines[0]
    assert not os.path.exists(os.path.join(cwd, "data")), "work started before the tracking check"
    shown = argv if isinstance(argv, str) else " ".join(map(str, argv))
    print(f"{elapsed:5.2f} s  {shown[:90]}")  # the fail-fast times, seen with pytest -s
    return lines[0]


COMMANDS = ["simulate", "train", "infer", "compare", "pipeline"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_down_server_fails_fast_in_one_line(command, down_uri, train_npz, tmp_path):
    line = run_failing([sys.executable, "-m", "ptyparity", *command_args(train_npz)[command]], down_uri, tmp_path)
    assert line == (f"error: cannot reach the MLflow tracking server at {down_uri} (connection refused); start it "
                    "or set MLFLOW_TRACKING_URI to a reachable server or sqlite:///mlflow.db")


@pytest.mark.parametrize("command", COMMANDS)
def test_a_server_that_is_not_mlflow_fails_fast_in_one_line(command, not_mlflow_uri, train_npz, tmp_path):
    line = run_failing([sys.executable, "-m", "ptyparity", *command_args(train_npz)[command]], not_mlflow_uri,
                       tmp_path)
    assert f"{not_mlflow_uri} answers but is not an MLflow tracking server (GET /health: HTTP 404" in line
    assert "MLFLOW_TRACKING_URI" in line


def test_a_server_that_never_answers_fails_within_the_check_timeout(tmp_path):
    # Accepts the connection (the kernel's backlog) and then says nothing: the request times out.
    from ptyparity.tracking_preflight import TIMEOUT_S

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        line = run_failing([sys.executable, "-m", "ptyparity", "compare", "--latest"], uri, tmp_path)
    assert f"(no answer within {TIMEOUT_S:g} s)" in line


def entry_point_command(entry, train_npz):
    """An MLproject entry point's command with its defaults and the required values filled in."""
    checkpoint = os.path.join(ROOT, "tests", "data", "ptychopinn", "tf_gs2_n64_f1", "wts.h5.zip")
    required = {"train_data": str(train_npz), "data": str(train_npz), "model": "models:/ptyparity-torch/1",
                "checkpoint": checkpoint, "run_id": "0" * 32}
    values = {name: spec.get("default", required.get(name)) for name, spec in entry["parameters"].items()}
    assert all(v is not None for v in values.values()), values
    return entry["command"].format(**{k: shlex.quote(str(v)) for k, v in values.items()})


ENTRY_POINTS = sorted(set(yaml.safe_load(open(os.path.join(ROOT, "MLproject")))["entry_points"]) - {"inspect"})


@pytest.mark.parametrize("entry_name", ENTRY_POINTS)
def test_mlproject_entry_points_fail_fast_on_a_down_server(entry_name, down_uri, train_npz, tmp_path):
    entry = yaml.safe_load(open(os.path.join(ROOT, "MLproject")))["entry_points"][entry_name]
    line = run_failing(entry_point_command(entry, train_npz), down_uri, tmp_path, shell=True)
    assert "cannot reach the MLflow tracking server" in line


def local_store_cases(tmp_path):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a database")
    return {
        "missing directory": (f"sqlite:///{tmp_path}/no/such/dir/mlflow.db",
                              f"the directory {tmp_path}/no/such/dir of the sqlite store"),
        # /proc takes no new files, for root as well (permission bits would not stop root).
        "unwritable directory": ("sqlite:////proc/mlflow.db", "no file can be created in /proc"),
        "directory is a file": (f"sqlite:///{a_file}/mlflow.db", "which is a file, not a directory"),
        "not a database": (f"sqlite:///{a_file}", "is not an SQLite database"),
        "unknown scheme": ("mlfow://127.0.0.1:5000", "has an unknown scheme 'mlfow'"),
    }


@pytest.mark.parametrize("case", ["missing directory", "unwritable directory", "directory is a file",
                                  "not a database", "unknown scheme"])
def test_a_local_store_that_cannot_work_fails_in_one_line(case, tmp_path):
    uri, expected = local_store_cases(tmp_path)[case]
    (tmp_path / "cwd").mkdir()
    line = run_failing([sys.executable, "-m", "ptyparity", "compare", "--latest"], uri, tmp_path / "cwd")
    assert expected in line
    assert not (tmp_path / "no").exists(), "a missing directory is refused, not created"


def test_the_check_passes_a_real_server_and_a_writable_sqlite_store(tmp_path, monkeypatch):
    # The control: a check that refused everything would pass the tests above.
    import mlflow

    sqlite_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert tracking.check_store(sqlite_uri) == sqlite_uri
    assert os.listdir(tmp_path) == [], "the write probe leaves nothing behind"
    server, url = start_server(sqlite_uri, tmp_path)
    try:
        assert tracking.check_store(url) == url
        (tmp_path / "cwd").mkdir()
        proc = subprocess.run([sys.executable, "-m", "ptyparity", "compare", "--latest"], cwd=tmp_path / "cwd",
                              env=child_env(url), capture_output=True, text=True, timeout=120)
        # Past the check: the refusal is about the (empty) experiment, not the server.
        assert proc.returncode == 2 and "no complete torch/tensorflow pair" in proc.stderr, proc.stderr
    finally:
        stop_server(server)
        mlflow.set_tracking_uri(None)


def test_check_store_raises_the_one_line_error(down_uri):
    with pytest.raises(PtyparityError, match="connection refused") as info:
        tracking.check_store(down_uri)
    assert "\n" not in str(info.value) and down_uri in str(info.value)


def test_an_mlflow_error_inside_a_run_is_one_line_and_the_run_ends_failed(tracking_uri, monkeypatch):
    # Reusing a run id (as `mlflow run` does through MLFLOW_RUN_ID) whose params differ makes
    # MLflow itself refuse mid-run: no traceback, exit 2, and the run is FAILED, not RUNNING.
    import mlflow
    from typer.testing import CliRunner

    from ptyparity.cli import app

    experiment_id = tracking.init_store()
    client = mlflow.MlflowClient()
    run_id = client.create_run(experiment_id).info.run_id
    client.log_param(run_id, "N", "64")
    client.set_terminated(run_id)
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    result = CliRunner().invoke(app, ["simulate", "--out-dir", "data", "--n", "32", "--object-size", "64"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow ({tracking_uri}): "), result.output
    assert "Traceback" not in result.output and "param" in lines[0].lower()
    assert client.get_run(run_id).info.status == "FAILED"


def test_an_unknown_mlflow_run_id_is_one_line(tracking_uri, monkeypatch):
    from typer.testing import CliRunner

    from ptyparity.cli import app

    monkeypatch.setenv("MLFLOW_RUN_ID", "0123456789abcdef0123456789abcdef")
    result = CliRunner().invoke(app, ["simulate", "--out-dir", "data", "--n", "32", "--object-size", "64"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: MLflow (") and "0123456789abcdef" in lines[0], lines[0]
