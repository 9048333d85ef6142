"""Concurrency the way a team meets it: a real PostgreSQL behind a real `mlflow server`
with served artifacts, four trainings (two per backend) started at once, their four
infers at once, a compare; the same four trainings at once on a fresh sqlite store; and
a compare that refuses a pair whose one side is still RUNNING. One simulated dataset
(N=32) serves both stores; the trainings are tiny (64 groups, 2 epochs, f=1).

ptyparity is driven only through its command line, each command its own process, as
users run it. PostgreSQL is Debian's `postgresql` package (`make system-deps`, which
`.ci/run` reaches through `make test`, installs it); when its binaries are missing the
tests fail with the install command, they are never skipped.
"""

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow_server import free_port, start_server, stop_server

pytestmark = pytest.mark.slow

BIN = os.path.dirname(sys.executable)
EXPERIMENT = "ptyparity"
BACKENDS = ("torch", "tensorflow")
SEEDS = (0, 1)
MAX_EPOCHS = 2
TRAIN_ARGS = ("--n-groups", "64", "--max-epochs", str(MAX_EPOCHS), "--n-filters-scale", "1", "--quiet")
CHILD_TIMEOUT_S = 600
INSTALL_HINT = ("PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's postgresql package "
                "(`apt-get install postgresql`, or `make system-deps` as root, which `.ci/run` runs)")


def postgres_bindir():
    """The directory holding initdb and pg_ctl: pg_config's, Debian's versioned one, or PATH's."""
    candidates = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    # Debian keeps the server binaries off PATH, one directory per major version; newest first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    if shutil.which("initdb"):
        candidates.append(os.path.dirname(shutil.which("initdb")))
    for d in candidates:
        if d and all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "createdb")):
            return d
    pytest.fail(INSTALL_HINT, pytrace=False)


def as_server_user():
    """Command prefix and (uid, gid) for the PostgreSQL server: it refuses to run as root
    (as CI runs), so root hands it to Debian's `postgres` account."""
    if os.geteuid() != 0:
        return [], None
    try:
        account = pwd.getpwnam("postgres")
    except KeyError:
        pytest.fail("running as root and there is no 'postgres' account for the PostgreSQL server: "
                    "install Debian's postgresql package (`apt-get install postgresql`), which creates it",
                    pytrace=False)
    return ["runuser", "-u", "postgres", "--"], (account.pw_uid, account.pw_gid)


@pytest.fixture(scope="module")
def postgres():
    """A throwaway PostgreSQL cluster on a free 127.0.0.1 port with an ``mlflow`` database;
    yields its SQLAlchemy URI, stops the server and removes the cluster afterwards."""
    bindir = postgres_bindir()
    prefix, owner = as_server_user()
    # Not under pytest's tmp_path: that is private to the test user, and the server user must enter it.
    root = Path(tempfile.mkdtemp(prefix="ptyparity-pg-"))
    if owner:
        os.chown(root, *owner)
    data, log, port, user = root / "data", root / "server.log", free_port(), "ptyparity"

    def run(*args):
        out = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, f"{args[0]} failed:\n{out.stdout}\n{out.stderr}\n" + (
            log.read_text()[-3000:] if log.exists() else "")

    # fsync off: a test cluster that dies with the test needs no durability, and it is much faster.
    options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off")
    run(os.path.join(bindir, "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8", "--no-sync")
    run(os.path.join(bindir, "pg_ctl"), "start", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o", options)
    try:
        run(os.path.join(bindir, "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, "mlflow")
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; name the installed driver.
        yield f"postgresql+psycopg2://{user}@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run([*prefix, os.path.join(bindir, "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def team_server(postgres, tmp_path_factory):
    """`mlflow server` on the PostgreSQL store with served artifacts; yields (url, root)."""
    root = tmp_path_factory.mktemp("team")
    # The server migrates the empty database's schema once, before any client opens it.
    proc, url = start_server(postgres, root, log_name="mlflow-server.log", serve_artifacts=True)
    try:
        yield url, root
    finally:
        stop_server(proc)


def child_env(uri):
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1",
               TF_CPP_MIN_LOG_LEVEL="2")
    for name in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "PTYPARITY_PARENT_RUN_ID",
                 "PTYPARITY_RUN_ID_FILE"):
        env.pop(name, None)
    return env


def ptyparity(args, uri, cwd, **kw):
    """Run one ptyparity command to completion; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "ptyparity", *args], env=child_env(uri), cwd=cwd,
                          capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, **kw)


def ptyparity_at_once(commands, uri, cwd):
    """Start every ``{name: args}`` command at the same moment and wait for all of them.

    Output goes to files (a full pipe would stall a child). Returns ``{name: (returncode, output)}``.
    """
    procs = {}
    for name, args in commands.items():
        out = open(cwd / f"{name}.log", "w+")
        procs[name] = (subprocess.Popen([sys.executable, "-m", "ptyparity", *args], env=child_env(uri), cwd=cwd,
                                        stdout=out, stderr=subprocess.STDOUT), out)
    results = {}
    deadline = time.time() + CHILD_TIMEOUT_S
    for name, (proc, out) in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.seek(0)
        results[name] = (proc.returncode, out.read())
        out.close()
    return results


def assert_all_succeeded(results, allowed=(0,)):
    bad = {name: f"exit {rc}\n{output[-3000:]}" for name, (rc, output) in results.items() if rc not in allowed}
    assert not bad, "\n\n".join(f"--- {name}: {text}" for name, text in bad.items())


def train_name(backend, seed):
    return f"team-train-{backend}-{seed}"


def train_commands(data):
    return {train_name(b, s): ["train", "--backend", b, "--train-data", str(data / "train.npz"), "--seed", str(s),
                               "--run-name", train_name(b, s), *TRAIN_ARGS]
            for b in BACKENDS for s in SEEDS}


def run_named(client, experiment_id, name):
    runs = client.search_runs([experiment_id], filter_string=f"attributes.run_name = '{name}'")
    assert len(runs) == 1, f"{len(runs)} runs named {name!r}, expected 1"
    return runs[0]


def assert_train_record_complete(client, run, backend, seed):
    """FINISHED, the training's params and per-epoch history, the artifacts, one registered version."""
    rid = run.info.run_id
    assert run.info.status == "FINISHED", f"{run.info.run_name}: {run.info.status}"
    assert run.data.tags["ptyparity.kind"] == "train" and run.data.tags["ptyparity.backend"] == backend
    params = run.data.params
    for name in ("intensity_scale", "N", "object_big", "gridsize", "n_groups", "max_epochs", "loss_mode", "seed"):
        assert name in params, f"{run.info.run_name}: param {name} missing"
    assert (params["N"], params["n_groups"], params["max_epochs"], params["seed"]) == ("32", "64", str(MAX_EPOCHS),
                                                                                       str(seed))
    assert float(params["intensity_scale"]) > 0
    for name in ("train_loss", "val_loss", "train_deviance", "patch.amp.var_zero_mean", "mean_input_scale"):
        assert np.isfinite(run.data.metrics[name]), f"{run.info.run_name}: metric {name}"
    history = client.get_metric_history(rid, "train_loss")
    assert len(history) == MAX_EPOCHS, f"{run.info.run_name}: train_loss has {len(history)} points"
    assert len({m.step for m in history}) == MAX_EPOCHS
    arts = {f.path for f in client.list_artifacts(rid)}
    assert {"config.json", "history.json", "debug_dump"} <= arts, f"{run.info.run_name}: artifacts {arts}"
    assert_dataset_input(run, "train")
    versions = client.search_model_versions(f"run_id = '{rid}'")
    assert [(v.name, v.status) for v in versions] == [(f"ptyparity-{backend}", "READY")], versions
    return versions[0]


def assert_dataset_input(run, name):
    """The run's one dataset input (several runs logging one dataset at once race on its row)."""
    inputs = [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs]
    assert inputs == [(name, run.data.tags["ptyparity.dataset_digest"][:36])], f"{run.info.run_name}: {inputs}"


def assert_registry_has_distinct_versions(client, versions):
    """Two concurrent registrations per model each got their own version number."""
    for backend in BACKENDS:
        registered = client.search_model_versions(f"name = 'ptyparity-{backend}'")
        assert sorted(int(v.version) for v in registered) == [1, 2], registered
        assert {v.run_id for v in registered} == {v.run_id for v in versions if v.name == f"ptyparity-{backend}"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The one simulated dataset (N=32), simulated into a fresh sqlite store: that single
    process creates the store (its schema migration) and the experiment before any
    concurrent child opens it. Yields (root, data_dir, sqlite_uri)."""
    root = tmp_path_factory.mktemp("sqlite")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    sim = ptyparity(["simulate", "--out-dir", str(root / "data"), "--n", "32", "--object-size", "128"], uri, root)
    assert sim.returncode == 0, sim.stdout + sim.stderr
    return root, root / "data", uri


@pytest.fixture(scope="module")
def team_runs(team_server, dataset):
    """On the team server: 4 trainings at once, then their 4 infers at once."""
    url, root = team_server
    data = dataset[1]
    client = mlflow.MlflowClient(tracking_uri=url)
    # Experiment created once before any child: concurrent first-time creations would race.
    experiment_id = client.create_experiment(EXPERIMENT)
    started = time.time()
    trained = ptyparity_at_once(train_commands(data), url, root)
    train_s = time.time() - started
    assert_all_succeeded(trained)
    versions = {(b, s): assert_train_record_complete(client, run_named(client, experiment_id, train_name(b, s)), b, s)
                for b in BACKENDS for s in SEEDS}
    infers = {f"team-infer-{b}-{s}": ["infer", "--model", f"models:/{v.name}/{v.version}", "--data",
                                      str(data / "test.npz"), "--run-name", f"team-infer-{b}-{s}"]
              for (b, s), v in versions.items()}
    started = time.time()
    inferred = ptyparity_at_once(infers, url, root)
    infer_s = time.time() - started
    assert_all_succeeded(inferred)
    print(f"\nteam server: 4 trainings at once {train_s:.0f} s, 4 infers at once {infer_s:.0f} s")
    return url, root, client, experiment_id, versions


def test_concurrent_trainings_and_infers_on_postgres_server_complete(team_runs):
    url, root, client, experiment_id, versions = team_runs
    assert_registry_has_distinct_versions(client, versions.values())
    for (backend, seed), version in versions.items():
        run = run_named(client, experiment_id, f"team-infer-{backend}-{seed}")
        assert run.info.status == "FINISHED", f"{run.info.run_name}: {run.info.status}"
        assert run.data.tags["ptyparity.kind"] == "infer" and run.data.tags["ptyparity.backend"] == backend
        assert run.data.tags["ptyparity.train_run_id"] == version.run_id
        assert_dataset_input(run, "infer")
        assert "intensity_scale" in run.data.params and np.isfinite(run.data.metrics["patch.amp.var_zero_mean"])
        assert {f.path for f in client.list_artifacts(run.info.run_id, "stitched")} >= {"stitched/canvas.npz"}
        assert {f.path for f in client.list_artifacts(run.info.run_id, "debug_dump")} >= {
            "debug_dump/taps.npz", "debug_dump/patch_stats.json"}
    # The artifacts went through the server into its destination, none next to the clients.
    assert any((root / "artifacts").rglob("canvas.npz"))
    assert not (root / "mlruns").exists()
    statuses = [r.info.status for r in client.search_runs([experiment_id], max_results=1000)]
    print(f"team server: {len(statuses)} runs, statuses {sorted(set(statuses))}")
    assert set(statuses) == {"FINISHED"}


def test_compare_on_postgres_server_records_the_verdict(team_runs):
    url, root, client, experiment_id, _ = team_runs
    torch_run = run_named(client, experiment_id, "team-infer-torch-0")
    tf_run = run_named(client, experiment_id, "team-infer-tensorflow-0")
    out = ptyparity(["compare", "--torch-run", torch_run.info.run_id, "--tf-run", tf_run.info.run_id,
                     "--run-name", "team-compare"], url, root)
    # 0 pass, 1 fail or inconclusive: a verdict was reached either way (2 would be an error).
    assert out.returncode in (0, 1), out.stdout + out.stderr
    run = run_named(client, experiment_id, "team-compare")
    assert run.info.status == "FINISHED"
    assert run.data.tags["parity.torch_run_id"] == torch_run.info.run_id
    assert run.data.tags["parity.tf_run_id"] == tf_run.info.run_id
    assert run.data.tags["parity.status"] in ("pass", "fail")
    summary = json.loads(Path(client.download_artifacts(run.info.run_id, "parity/summary.json", str(root)))
                         .read_text())
    assert summary, "empty parity/summary.json"


def test_compare_refuses_a_pair_whose_side_is_still_running(team_runs):
    url, root, client, experiment_id, _ = team_runs
    torch_run = run_named(client, experiment_id, "team-infer-torch-1")
    finished_tf = run_named(client, experiment_id, "team-infer-tensorflow-1")
    # A TF infer run as an infer command opens it, still in progress: same ptyparity tags, not ended,
    # owned by a live process (this one; the finished run's owner has exited, and a RUNNING run of a
    # dead process is marked FAILED by the next command: ptyparity.tracking_liveness).
    from ptyparity import tracking_liveness

    tags = {k: v for k, v in finished_tf.data.tags.items() if k.startswith("ptyparity.")}
    tags.update(tracking_liveness.owner_tags())
    running = client.create_run(experiment_id, run_name="team-infer-tensorflow-running", tags=tags)
    rid = running.info.run_id
    try:
        out = ptyparity(["compare", "--torch-run", torch_run.info.run_id, "--tf-run", rid,
                         "--run-name", "team-compare-running"], url, root)
        lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
        assert out.returncode == 2, out.stdout + out.stderr
        assert len(lines) == 1 and lines[0].startswith("error:"), lines
        assert rid in lines[0] and "RUNNING" in lines[0], lines[0]
        assert client.get_run(rid).info.status == "RUNNING"  # refused, not touched
        refused = client.search_runs([experiment_id], filter_string=f"tags.`parity.tf_run_id` = '{rid}'")
        assert [r.info.status for r in refused] in ([], ["FINISHED"], ["FAILED"]), refused
    finally:
        client.set_terminated(rid, "KILLED")


def test_concurrent_trainings_on_fresh_sqlite_store_complete(dataset):
    root, data, uri = dataset
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    started = time.time()
    results = ptyparity_at_once(train_commands(data), uri, root)
    print(f"\nsqlite: 4 trainings at once {time.time() - started:.0f} s")
    assert_all_succeeded(results)
    versions = [assert_train_record_complete(client, run_named(client, experiment_id, train_name(b, s)), b, s)
                for b in BACKENDS for s in SEEDS]
    assert_registry_has_distinct_versions(client, versions)
    runs = client.search_runs([experiment_id], max_results=1000)
    print(f"sqlite: {len(runs)} runs, statuses {sorted({r.info.status for r in runs})}")
    assert sorted(r.data.tags["ptyparity.kind"] for r in runs) == ["simulate"] + ["train"] * 4
    assert {r.info.status for r in runs} == {"FINISHED"}
