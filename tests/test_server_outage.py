"""A tracking server that goes down in the middle of a training and comes back: the run
resumes logging and nothing is lost.

What carries the run through is MLflow's own HTTP client (3.17.2, ``mlflow.utils.
request_utils``): every request — tracking calls and served-artifact uploads alike — is
retried on a refused connection, read error or 429/500/502/503/504, for any method,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` = 7 times, with urllib3's exponential backoff
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (2) x 2^(n-1) s, no wait before the first retry,
each wait capped at 120 s, plus up to ``MLFLOW_HTTP_REQUEST_BACKOFF_JITTER`` (1 s). The
waits are 0, 4, 8, 16, 32, 64, 120 s: one request keeps trying for about 244 s (4 min)
before it raises. The training process simply blocks in the request it was making, so the
outage pauses the training, and once the server answers again the run goes on logging
into the same run. An outage longer than that budget fails the request (the run cannot be
recorded); raising ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (at most 10) or the backoff factor
lengthens it.

Here: a `mlflow server` (sqlite store, served artifacts, one worker) on a free port; a
simulated N=32 dataset recorded into it; `ptyparity train` (torch, 256 groups, 6 epochs)
against it. Once the run has logged its first epoch the server's process group is
stopped, kept down for :data:`OUTAGE_S`, and started again on the same port with the
same store and artifact root. The training must still be running when the server comes
back, must have met refused connections (the line :mod:`ptyparity.tracking_retry` prints on
each retry), and must end with a complete record: FINISHED, every param equal to what the
bundle holds, every epoch and every step of each metric, the bundle artifact, registered
version 1, loadable with verification from a fresh download.
"""

import math
import os
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow_server import free_port, healthy, start_server, stop_server

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
MAX_EPOCHS = 6
N_GROUPS = 256
OUTAGE_S = 10.0  # no listener on the port this long; the restart (~5-15 s) adds to the outage the client sees
TRAIN_TIMEOUT_S = 300  # far above MLflow's ~244 s retry budget: a hung training fails the test, not CI


def start(root, port, log_name):
    """`mlflow server` on ``root``'s sqlite store, served artifacts, on ``port``; once healthy."""
    return start_server(f"sqlite:///{root / 'mlflow.db'}", root, port=port, log_name=log_name,
                        serve_artifacts=True)[0]


def child_env(url, **extra):
    env = dict(os.environ, MLFLOW_TRACKING_URI=url, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", **extra)
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PTYPARITY_PARENT_RUN_ID",
                 "PTYPARITY_RUN_ID_FILE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        env.pop(name, None)  # MLflow's default retries are what is under test
    env.update(extra)
    return env


def wait_first_epoch(client, run_id_file, proc, timeout=180):
    """The training's run id once its first epoch metric is on the server."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before the outage:\n"
                                 f"{proc.stdout.read()}\n{proc.stderr.read()[-3000:]}")
        run_id = run_id_file.read_text().strip() if run_id_file.exists() else ""
        if run_id and client.get_metric_history(run_id, "train_loss"):
            return run_id
        time.sleep(0.2)
    raise TimeoutError(f"no first epoch logged within {timeout} s")


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    """Train through an outage; yields what the checks need."""
    root = tmp_path_factory.mktemp("outage")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    server = start(root, port, "server-1.log")
    timings = {"server_start_s": time.time() - t0}
    try:
        sim = subprocess.run([sys.executable, "-m", "ptyparity", "simulate", "--out-dir", str(root / "data"),
                              "--object-size", "128", "--no-log-data"],
                             env=child_env(url), capture_output=True, text=True, timeout=300)
        assert sim.returncode == 0, sim.stdout + sim.stderr
        timings["simulate_s"] = time.time() - t0 - timings["server_start_s"]
        run_id_file = root / "train-run-id"
        t_train = time.time()
        train = subprocess.Popen(
            [sys.executable, "-m", "ptyparity", "train", "--backend", "torch", "--train-data",
             str(root / "data" / "train.npz"), "--n-groups", str(N_GROUPS), "--max-epochs", str(MAX_EPOCHS),
             "--n-filters-scale", "1", "--quiet"],
            env=child_env(url, PTYPARITY_RUN_ID_FILE=str(run_id_file)), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=root)
        try:
            client = mlflow.MlflowClient(tracking_uri=url)
            run_id = wait_first_epoch(client, run_id_file, train)
            timings["first_epoch_s"] = time.time() - t_train
            stop_server(server)
            t_down = time.time()
            assert not healthy(url)
            time.sleep(OUTAGE_S)
            assert train.poll() is None, "the training ended while the server was down"
            server = start(root, port, "server-2.log")
            t_up = time.time()
            timings["outage_s"] = t_up - t_down
            assert train.poll() is None, "the training ended before the server came back"
            stdout, stderr = train.communicate(timeout=TRAIN_TIMEOUT_S)
            timings["after_restart_s"] = time.time() - t_up
            timings["train_total_s"] = time.time() - t_train
        finally:
            if train.poll() is None:
                train.kill()
                train.communicate()
        assert train.returncode == 0, stdout + stderr[-4000:]
        print("outage timings:", {k: round(v, 1) for k, v in timings.items()})
        print("\n".join(line for line in stderr.splitlines() if line.startswith("ptyparity:")))
        yield {"url": url, "client": client, "run_id": run_id, "stderr": stderr, "t_down": t_down, "t_up": t_up,
               "timings": timings}
    finally:
        stop_server(server)


def test_training_met_the_outage_and_outlived_it(outage):
    # The requests reached a down server and were retried, and the user was told so on each retry ...
    notice = f"ptyparity: the tracking server at {outage['url']} does not answer (connection refused); retrying"
    assert notice in outage["stderr"], outage["stderr"][-3000:]
    assert outage["timings"]["outage_s"] >= OUTAGE_S
    # ... and the run went on logging into the same run after the restart.
    run = outage["client"].get_run(outage["run_id"])
    assert run.info.end_time / 1000 > outage["t_up"]
    history = outage["client"].get_metric_history(outage["run_id"], "train_loss")
    assert min(m.timestamp for m in history) / 1000 < outage["t_down"]


def test_nothing_is_lost(outage, monkeypatch):
    from ptyparity import bundle
    from ptyparity.config import TrainConfig, model_config_from_dict
    from ptyparity.runs.common import config_params, scale_params
    from ptyparity.tracking import param_text

    client, run_id = outage["client"], outage["run_id"]
    # bundle.load resolves models:/ through the env (restored after: the server stops with the module)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", outage["url"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "ptyparity.error" not in run.data.tags

    # registered version 1 is this run's bundle, and it loads verified from a fresh download
    version = client.get_model_version("ptyparity-torch", "1")
    assert version.run_id == run_id and version.status == "READY"
    assert bundle.load("models:/ptyparity-torch/1") is not None
    stored = bundle.load_dir(bundle.resolve("models:/ptyparity-torch/1"))
    artifacts = {f.path for f in client.list_artifacts(run_id, "model")}
    assert any(p.startswith("model/artifacts") for p in artifacts), artifacts

    # every param the training logs, before the outage or after it, with the bundle's value
    train_cfg = dict(stored.train_cfg)
    cfg = TrainConfig(**{**train_cfg, "model": model_config_from_dict(train_cfg["model"])})
    expected = {**config_params(cfg), **scale_params(stored.scales), **stored.meta["versions"]}
    params = run.data.params
    missing = sorted(k for k in expected if k not in params)
    assert not missing, missing
    wrong = {k: (params[k], param_text(v)) for k, v in expected.items() if params[k] != param_text(v)}
    assert not wrong, wrong
    assert (params["N"], params["max_epochs"], params["n_groups"]) == ("32", str(MAX_EPOCHS), str(N_GROUPS))

    # every epoch and every step of the series
    for key in ("train_loss", "val_loss", "train_deviance", "val_deviance"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, MAX_EPOCHS + 1)) or steps == list(range(MAX_EPOCHS)), (key, steps)
    n_train = int(params["n_train_groups"])
    steps_per_epoch = math.ceil(n_train / int(params["batch_size"]))
    for key in ("train_step_loss", "train_step_deviance"):
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(MAX_EPOCHS * steps_per_epoch)), (key, len(steps), steps_per_epoch)
    assert "intensity_scale" in params
