"""Crash and resume (issue 12.3): the per-epoch checkpoint, stale RUNNING runs, ``train --resume``
and a NaN loss that stops training at once.

- A real ``ptyparity train`` process is SIGKILLed in the middle of its second epoch; the next
  command (``train --resume`` of it) marks the killed run FAILED with ``ptyparity.error`` and
  continues it to the end, with exactly the weights of an uninterrupted training.
- In-process, on both backends: a training that crashes mid-epoch 2, resumed, ends with exactly
  (bit for bit, ``--deterministic``) the weights of an uninterrupted one.
- The checkpoint holds no pickle; contradicting options are refused; a NaN loss fails the run.

Small on purpose: N=32, n_filters_scale=1, a few dozen groups, 3 epochs.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest

from ptyparity import architecture, bundle, checkpoint, names, training, tracking_liveness
from ptyparity.config import ModelConfig, TrainConfig
from ptyparity.data import load_npz
from ptyparity.errors import PtyparityError
from ptyparity.runs import resume_train, run_train
from ptyparity.runs import train as train_workflow
from ptyparity.simulate import SimConfig
from tests.conftest import BACKENDS, sqlite_store, write_simulated

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
FAST = dict(quiet=True, debug_dump=False, log_patch_stats=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_data")
    write_simulated(root, SimConfig(N=32, object_size_px=96, seed=0))
    return root


@pytest.fixture(scope="module")
def store(data_dir):
    """One sqlite store for the module (creating one costs seconds); each test has its own experiment."""
    with sqlite_store(data_dir) as uri:
        yield uri


def small_config(n_groups):
    return TrainConfig(model=ModelConfig(n_filters_scale=1), n_groups=n_groups, max_epochs=EPOCHS,
                       batch_size=16, deterministic=True)


def uninterrupted_weights(backend, train_path, cfg):
    """The final weights of an uninterrupted training, prepared exactly as ``run_train`` prepares it."""
    from ptyparity.backends import load_backend

    api = load_backend(backend)
    data = load_npz(train_path)
    cfg = training.resolve_config(cfg, data)
    ts = training.prepare(data, cfg)
    weights = architecture.init_weights(cfg.model, seed=cfg.seed, log_scale=ts.scales.log_scale)
    return training.fit_model(api, api.build(cfg.model, ts.probe, weights), ts, quiet=True).weights


def bundle_weights(uri):
    return bundle.load_dir(bundle.resolve(uri)).weights


def assert_weights_equal(got, want):
    assert set(got) == set(want)
    worst = max(float(np.max(np.abs(got[k].astype(np.float64) - want[k]))) for k in want)
    print(f"max |resumed - uninterrupted| = {worst:.3g}")
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].tobytes() == want[name].tobytes(), \
            f"{name}: resumed differs from uninterrupted by {np.max(np.abs(got[name] - want[name])):.3g}"


def train_runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string="tags.`ptyparity.kind` = 'train'",
                              order_by=["attributes.start_time ASC"])


def test_sigkilled_training_is_marked_failed_and_resumes_to_the_uninterrupted_weights(data_dir, store, tmp_path):
    uri, experiment = store, "resume-sigkill"
    id_file = tmp_path / "run_id"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, names.RUN_ID_FILE_ENV: str(id_file),
           "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "ptyparity", "train", "--backend", "torch", "--train-data",
               str(data_dir / "train.npz"), "--n-groups", "160", "--max-epochs", str(EPOCHS), "--n-filters-scale",
               "1", "--deterministic", "--quiet", "--no-debug-dump", "--no-log-patch-stats", "--experiment", experiment]
    child = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = mlflow.MlflowClient(tracking_uri=uri)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:  # until the epoch-1 checkpoint is in
            rid = id_file.read_text().strip() if id_file.exists() else ""
            if rid and client.get_metric_history(rid, "checkpoint_seconds"):
                break
            time.sleep(0.05)
        assert child.poll() is None, child.communicate()
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    killed = client.get_run(rid)
    assert killed.info.status == "RUNNING"  # nobody ended it: the process died
    assert len(client.get_metric_history(rid, "train_loss")) == 1, "killed after epoch 1, before epoch 2 ended"
    assert killed.data.tags[names.TAG_OWNER_PID] == str(child.pid)

    # The next command finds the killed run, marks it FAILED, and continues it.
    out = subprocess.run([sys.executable, "-m", "ptyparity", "train", "--resume", rid, "--quiet",
                          "--no-debug-dump", "--no-log-patch-stats"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"train run {rid} was left RUNNING by process {child.pid}" in out.stderr, out.stderr
    killed = client.get_run(rid)
    assert killed.info.status == "FAILED"
    assert f"left RUNNING by process {child.pid} on" in killed.data.tags[names.TAG_ERROR]
    assert "is gone" in killed.data.tags[names.TAG_ERROR]
    old, new = train_runs(client, experiment)
    assert old.info.run_id == rid and new.info.status == "FINISHED"
    assert new.data.tags[names.TAG_RESUMED_FROM] == rid and new.data.tags[names.TAG_RESUMED_EPOCH] == "1"
    assert new.data.tags[names.TAG_PAIR_KEY] == old.data.tags[names.TAG_PAIR_KEY]
    assert [m.step for m in client.get_metric_history(new.info.run_id, "train_loss")] == list(range(EPOCHS))
    assert client.get_metric_history(new.info.run_id, "train_loss")[0].value == \
        client.get_metric_history(rid, "train_loss")[0].value
    seconds = [m.value for m in client.get_metric_history(new.info.run_id, "checkpoint_seconds")]
    print(f"checkpoint cost per epoch (s): {[round(s, 3) for s in seconds]}")
    assert [m.step for m in client.get_metric_history(new.info.run_id, "checkpoint_seconds")] == [1, 2]
    versions = client.search_model_versions(f"name='ptyparity-torch' and run_id='{new.info.run_id}'")
    assert len(versions) == 1
    assert_weights_equal(bundle_weights(f"models:/ptyparity-torch/{versions[0].version}"), uninterrupted_weights("torch", data_dir / "train.npz", small_config(160)))


class Crash(Exception):
    """A crash in the middle of a training (raised from a hook)."""


@pytest.mark.parametrize("backend", BACKENDS)
def test_resumed_training_ends_with_the_uninterrupted_weights(backend, data_dir, store, monkeypatch, tmp_path):
    experiment = f"resume-{backend}"
    cfg = small_config(48)  # 46 training groups: 3 steps per epoch
    crash_at = 3 + 1  # the second step of epoch 2

    def crashing(self, step, metrics):
        if step == crash_at:
            raise Crash()
        self.steps["train_step_loss"].append(metrics["train_step_loss"])
        self.steps["train_step_deviance"].append(metrics["train_step_deviance"])

    with monkeypatch.context() as patch:
        patch.setattr(train_workflow._EpochLogger, "on_step", crashing)
        with pytest.raises(Crash):
            run_train(backend, data_dir / "train.npz", cfg, register=False, experiment=experiment, **FAST)
    client = mlflow.MlflowClient()
    (crashed,) = train_runs(client, experiment)
    assert crashed.info.status == "FAILED"
    rid = crashed.info.run_id

    # The checkpoint: plain NPZ + JSON, readable without pickle, after epoch 1.
    local = client.download_artifacts(rid, names.CHECKPOINT_DIR, str(tmp_path))
    assert sorted(os.listdir(local)) == ["slot1"] and sorted(os.listdir(Path(local) / "slot1")) == [
        checkpoint.STATE_JSON, checkpoint.STATE_NPZ]
    state, meta = checkpoint.load_latest(local)
    assert (state.epoch, state.step, meta["backend"]) == (1, 3, backend)
    assert set(state.adam_m) == set(state.weights) - {architecture.LOG_SCALE}  # log_scale is not trained
    assert len(state.history["train_step_loss"]) == 3 and len(state.history["train_loss"]) == 1

    with pytest.raises(PtyparityError, match=r"contradict the run's config: --max-epochs 5 \(the run has 3\)"):
        resume_train(rid, {"max_epochs": 5}, **FAST)
    with pytest.raises(PtyparityError, match="not a train run|not found"):
        resume_train("0" * 32, {}, **FAST)
    got_backend, result = resume_train(rid, {"max_epochs": EPOCHS}, register=False, **FAST)  # agreeing: fine
    assert got_backend == backend and len(result.history["train_loss"]) == EPOCHS
    assert len(result.history["train_step_loss"]) == EPOCHS * 3
    new = client.get_run(result.run_id)
    assert new.info.status == "FINISHED" and new.data.tags[names.TAG_RESUMED_FROM] == rid
    assert_weights_equal(bundle_weights(result.model_uri),
                         uninterrupted_weights(backend, data_dir / "train.npz", cfg))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_loss_stops_training_at_once_and_registers_nothing(backend, data_dir, store):
    experiment = f"nan-{backend}"
    cfg = TrainConfig(model=ModelConfig(n_filters_scale=1), n_groups=48, max_epochs=50, batch_size=16,
                      learning_rate=1e6)  # absurd: the loss is NaN within the first epoch
    with pytest.raises(PtyparityError) as err:
        run_train(backend, data_dir / "train.npz", cfg, experiment=experiment, **FAST)
    message = str(err.value)
    assert "\n" not in message and "training diverged" in message and "at epoch 1, step " in message
    assert "learning rate is likely too high" in message and "not photon counts" in message
    client = mlflow.MlflowClient()
    (run,) = train_runs(client, experiment)
    assert run.info.status == "FAILED" and run.data.tags[names.TAG_ERROR] == message
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 0  # stopped in epoch 1, not at 50
    assert client.search_model_versions(f"run_id='{run.info.run_id}'") == []  # no bundle registered
    assert names.MODEL_ARTIFACT not in {f.path for f in client.list_artifacts(run.info.run_id)}


def test_a_run_is_stale_only_when_its_owner_is_gone():
    import socket

    mine = tracking_liveness.owner_tags()
    assert tracking_liveness.why_stale(mine) is None  # this process is alive
    assert "another process" in tracking_liveness.why_stale({**mine, names.TAG_OWNER_STARTED: "other-boot:1"})
    gone = subprocess.Popen(["true"])
    gone.wait()  # exited and reaped: its pid is free
    assert "is gone" in tracking_liveness.why_stale({**mine, names.TAG_OWNER_PID: str(gone.pid)})
    remote = {**mine, names.TAG_OWNER_HOST: socket.gethostname() + "-elsewhere"}
    assert tracking_liveness.why_stale(remote) is None  # another host, recent heartbeat: left alone
    old = {**remote, names.TAG_HEARTBEAT: str(int(time.time()) - 2 * tracking_liveness.REMOTE_STALE_S)}
    assert "has not reported for 48 h" in tracking_liveness.why_stale(old)
    assert tracking_liveness.why_stale({}) is None  # no owner tags (another tool's run): never touched


def test_the_heartbeat_renews_the_tag_and_logs_the_metrics_given(tracking_uri):
    from ptyparity import tracking

    client = mlflow.MlflowClient()
    with tracking.start_run("train", backend="torch") as run:
        rid = run.info.run_id
        client.set_tag(rid, names.TAG_HEARTBEAT, "1000")
        before = int(time.time())
        tracking_liveness.heartbeat({"checkpoint_seconds": 0.25, "skipped": float("nan")}, step=3)
        tags = client.get_run(rid).data.tags
        assert before <= int(tags[names.TAG_HEARTBEAT]) <= int(time.time())
        assert [(m.value, m.step) for m in client.get_metric_history(rid, "checkpoint_seconds")] == [(0.25, 3)]
        assert client.get_metric_history(rid, "skipped") == []
        client.set_tag(rid, names.TAG_HEARTBEAT, "1000")
        tracking_liveness.heartbeat()  # the tag alone
        assert int(client.get_run(rid).data.tags[names.TAG_HEARTBEAT]) >= before


def test_a_checkpoint_cut_short_leaves_the_previous_epoch_to_resume_from(tmp_path):
    def state(epoch):
        w = {"a.kernel": np.full((3, 3, 1, 2), epoch, np.float32), architecture.LOG_SCALE: np.float32(0.5)}
        return checkpoint.TrainState(epoch=epoch, step=3 * epoch, weights=w, adam_m={"a.kernel": w["a.kernel"]},
                                     adam_v={"a.kernel": w["a.kernel"] ** 2},
                                     plateau={"lr": 1e-3, "best": None, "bad_epochs": 0},
                                     history={"train_loss": [1.0] * epoch}, rng={"torch_cpu": np.arange(4, dtype=np.uint8)})

    for epoch in (1, 2):
        checkpoint.save(state(epoch), tmp_path / checkpoint.slot(epoch), meta={"backend": "torch"})
    latest, meta = checkpoint.load_latest(tmp_path)
    assert latest.epoch == 2 and meta == {"backend": "torch"} and latest.plateau["best"] is None
    assert latest.weights[architecture.LOG_SCALE].shape == () and latest.rng["torch_cpu"].dtype == np.uint8
    npz = tmp_path / checkpoint.slot(2) / checkpoint.STATE_NPZ
    npz.write_bytes(npz.read_bytes()[:100])  # killed while epoch 2's checkpoint was being written
    with pytest.raises(PtyparityError, match="sha256 differs"):
        checkpoint.load(tmp_path / checkpoint.slot(2))
    older, _ = checkpoint.load_latest(tmp_path)
    assert older.epoch == 1 and np.array_equal(older.weights["a.kernel"], state(1).weights["a.kernel"])
    (tmp_path / checkpoint.slot(1) / checkpoint.STATE_JSON).unlink()
    with pytest.raises(PtyparityError, match="no complete checkpoint"):
        checkpoint.load_latest(tmp_path)


def test_each_epoch_is_one_store_write_with_its_checkpoint_and_heartbeat(data_dir, store, monkeypatch):
    """An epoch's metrics, its ``checkpoint_seconds`` and the heartbeat tag go to the store in one
    ``log_batch``, after the epoch's checkpoint artifact (the store spied on, not replaced)."""
    experiment = "one-write-an-epoch"
    writes = []
    log_batch = mlflow.MlflowClient.log_batch

    def spied(self, run_id, metrics=(), params=(), tags=(), *args, **kwargs):
        writes.append(({m.key: m for m in metrics}, {t.key for t in tags}))
        return log_batch(self, run_id, metrics, params, tags, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", spied)
    result = run_train("torch", data_dir / "train.npz", small_config(48), register=False, experiment=experiment,
                       **FAST)
    # (MLflow's log_model copies the step-0 metrics onto the logged model: that write names a model_id.)
    epoch_writes = [(m, t) for m, t in writes if "train_loss" in m and m["train_loss"].model_id is None]
    assert len(epoch_writes) == EPOCHS
    for epoch, (metrics, tags) in enumerate(epoch_writes):
        assert set(training.EPOCH_KEYS) | {"checkpoint_seconds"} <= set(metrics)
        assert {m.step for m in metrics.values()} == {epoch}
        assert names.TAG_HEARTBEAT in tags
    assert not [m for m, _ in writes if "checkpoint_seconds" in m and "train_loss" not in m]  # no second write
    client = mlflow.MlflowClient()
    for key in training.EPOCH_KEYS + ("checkpoint_seconds",):
        history = client.get_metric_history(result.run_id, key)
        assert [m.step for m in history] == list(range(EPOCHS)), key
    assert [m.value for m in client.get_metric_history(result.run_id, "train_loss")] == \
        pytest.approx(result.history["train_loss"], rel=1e-12)


def test_an_epoch_whose_checkpoint_fails_keeps_its_metrics(data_dir, store, monkeypatch):
    experiment = "checkpoint-fails"

    def failing(state, directory, meta=None):
        if state.epoch == 2:
            raise OSError("disk full")
        return save(state, directory, meta=meta)

    save = checkpoint.save
    monkeypatch.setattr(checkpoint, "save", failing)
    with pytest.raises(OSError, match="disk full"):
        run_train("torch", data_dir / "train.npz", small_config(48), register=False, experiment=experiment, **FAST)
    client = mlflow.MlflowClient()
    (run,) = train_runs(client, experiment)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")] == [0, 1]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "checkpoint_seconds")] == [0]
