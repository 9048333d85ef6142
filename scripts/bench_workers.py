"""The measurements of ``scripts/bench.py``, each run in its own child process.

``python scripts/bench_workers.py KIND JSON_ARGS`` prints one line ``BENCH {json}``.
Kinds: ``step`` (bare training-step rate), ``train`` (end-to-end ``run_train`` with
tracking on and off, and pyfunc vs direct inference), ``compare`` (run lookups among
many runs), ``stitch`` (NumPy stitching). The pipeline's processes report their own start and
imports (metrics ``start_import_seconds.*`` of the pipeline run).
Every figure is the median of ``repeats`` samples taken in the same process.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

SIZES = {"small": {"N": 32, "f": 1}, "realistic": {"N": 64, "f": 2}}
GRIDSIZE, BATCH = 2, 16


def _median(values):
    return float(statistics.median(values))


def _workdir(prefix):
    """A temporary directory for this worker's store and files, removed when the worker exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _simulated(n):
    """``simulate(SimConfig(N=n, seed=0))``'s (train, test): made once per bench run and kept as
    NPZ files in ``$PTYPARITY_BENCH_CACHE`` (set by bench.py), where the next worker loads them
    (the NPZ round trip is exact; simulating N=64 costs ~3 s a worker)."""
    from ptyparity.data import load_npz, save_npz
    from ptyparity.simulate import SimConfig, simulate

    cache = os.environ.get("PTYPARITY_BENCH_CACHE")
    paths = [os.path.join(cache, f"sim_n{n}_{part}.npz") for part in ("train", "test")] if cache else []
    if paths and all(os.path.exists(p) for p in paths):
        return tuple(load_npz(p) for p in paths)
    data = simulate(SimConfig(N=n, seed=0))
    for path, part in zip(paths, data):
        save_npz(path + ".tmp.npz", part)
        os.replace(path + ".tmp.npz", path)  # whole files only
    return data


def _train_config(size, n_groups, epochs, *, val_fraction=0.05):
    from ptyparity.config import ModelConfig, TrainConfig

    s = SIZES[size]
    return TrainConfig(model=ModelConfig(N=s["N"], gridsize=GRIDSIZE, n_filters_scale=s["f"]), n_groups=n_groups,
                       max_epochs=epochs, batch_size=BATCH, val_fraction=val_fraction, seed=0)


def _threads(backend):
    if backend == "torch":
        import torch

        return {"torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
                **{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}}
    import tensorflow as tf

    return {"tf_intra_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            "tf_inter_threads": tf.config.threading.get_inter_op_parallelism_threads()}


class _Stamps:
    """Training hooks that time every optimiser step."""

    def __init__(self):
        from ptyparity.training import TrainHooks

        self.times = []
        self.hooks = type("StampHooks", (TrainHooks,), {"on_step": lambda _, step, m: self.times.append(
            time.perf_counter())})()

    def epoch_rates(self, steps_per_epoch, batch, last_batch=None):
        """Steady-state groups/s of each epoch after the first: steps 2..n of the epoch
        (its first step carries the epoch boundary: validation, tracing, set-up)."""
        return steady_rates(self.times, steps_per_epoch, batch, 1, last_batch)


def steady_rates(times, steps_per_epoch, batch, first_epoch=1, last_batch=None):
    """Per epoch from ``first_epoch``: the groups of steps 2..n over the time from the end of its
    first step to the end of its last, ``times`` being when each step ended; every step holds
    ``batch`` groups but an epoch's last, which holds ``last_batch`` (default ``batch``)."""
    if steps_per_epoch < 2:
        raise ValueError("a steady step rate needs >= 2 steps an epoch")
    groups = (steps_per_epoch - 2) * batch + (batch if last_batch is None else last_batch)
    rates = []
    for e in range(first_epoch, len(times) // steps_per_epoch):
        t = times[e * steps_per_epoch : (e + 1) * steps_per_epoch]
        rates.append(groups / (t[-1] - t[0]))
    return rates


def _last_batch(ts):
    """Groups in the last step of each epoch of training set ``ts``."""
    return len(ts.train_idx) - (ts.steps_per_epoch - 1) * ts.cfg.batch_size


def bare_step_rate(api, data, cfg, repeats, accelerator="cpu"):
    """Median steady-state training-step groups/s (no validation, no hooks beyond a clock)."""
    import dataclasses

    from ptyparity import architecture, training

    cfg = training.resolve_config(dataclasses.replace(cfg, max_epochs=repeats + 1, val_fraction=0.0), data)
    ts = training.prepare(data, cfg)
    model = api.build(cfg.model, ts.probe, architecture.init_weights(cfg.model, seed=0,
                                                                     log_scale=ts.scales.log_scale))
    stamps = _Stamps()
    api.fit(model, ts, stamps.hooks, quiet=True, accelerator=accelerator)
    rates = stamps.epoch_rates(ts.steps_per_epoch, cfg.batch_size, _last_batch(ts))
    return _median(rates), rates


def step(args):
    from ptyparity.backends import load_backend

    api = load_backend(args["backend"])
    out = {"threads": _threads(args["backend"])}
    for size in args["sizes"]:
        data, _ = _simulated(SIZES[size]["N"])
        cfg = _train_config(size, args["n_groups"][size], 1)
        out[size], out[f"{size}_samples"] = bare_step_rate(api, data, cfg, args["repeats"],
                                                           args.get("accelerator", "cpu"))
    return out


def _clocked(fn, seconds, key, depth=None):
    """``fn`` adding its wall time to ``seconds[key]``; with a ``depth`` counter shared by several
    wrapped functions, a call made from inside another of them counts once. A plain function, so
    set on a class it wraps a method too."""
    def timed(*a, **k):
        if depth is not None:
            depth[0] += 1
        start = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            if depth is not None:
                depth[0] -= 1
            if not depth or not depth[0]:
                seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
    return timed


def _timed_phases():
    """Wrap the steps of ``run_train`` with clocks; returns ``{phase: seconds}`` (reset per run),
    with ``"recording"``: the time inside the tracking layer's recording calls (those
    ``tracking_off`` switches off, but ``start_run``, a context manager)."""
    from ptyparity import tracking_off
    from ptyparity.runs import train as train_run

    seconds = {}
    wrapped = {"_log_inputs": "log_inputs", "_fit": "fit", "_log_history": "history", "_log_bundle": "bundle_registry",
               "_describe": "describe", "_load_inputs": "load_data"}
    for attr, phase in wrapped.items():
        setattr(train_run, attr, _clocked(getattr(train_run, attr), seconds, phase))
    for attr, phase in (("dump", "debug_dumps"), ("test_deviance", "test_deviance")):
        setattr(train_run._Probe, attr, _clocked(getattr(train_run._Probe, attr), seconds, phase))
    depth = [0]
    for module, name in tracking_off.recording_functions():
        if name != "start_run":
            setattr(module, name, _clocked(getattr(module, name), seconds, "recording", depth))
    return seconds


def train(args):
    """End-to-end ``run_train`` (tracking on and off, in turn first) against the bare step rate, and
    pyfunc ``predict`` against the direct backend call, in one process."""
    import numpy as np

    from ptyparity import tracking_off, warmup
    from ptyparity.data import save_npz
    from ptyparity.runs.train import run_train

    backend, repeats, size = args["backend"], args["repeats"], args["size"]
    api = warmup.import_backend(backend)  # as `ptyparity train` starts
    tmp = _workdir("bench-train-")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    train_data, test_data = _simulated(SIZES[size]["N"])
    paths = {k: os.path.join(tmp, f"{k}.npz") for k in ("train", "test")}
    save_npz(paths["train"], train_data)
    save_npz(paths["test"], test_data)
    cfg = _train_config(size, args["n_groups"], args["epochs"])
    phases = _timed_phases()
    from ptyparity import tracking, training
    from ptyparity.runs import train as train_run

    ts = training.prepare(train_data, training.resolve_config(cfg, train_data))
    trained = len(ts.train_idx) * cfg.max_epochs
    step_ends = []  # when each step of the run being timed ended (its step hook was called)
    logged_step = train_run._EpochLogger.on_step

    def stamped_step(self, step, metrics):
        logged_step(self, step, metrics)
        step_ends.append(time.perf_counter())

    train_run._EpochLogger.on_step = stamped_step

    tracking.init_store()  # the store's creation (~2 s) is nobody's training
    with tracking_off.disabled():  # warm-up: framework kernels, TF tracing caches, matplotlib
        run_train(backend, paths["train"], _train_config(size, 32, 1), test_path=paths["test"], quiet=True)
    walls, phase_runs = {"on": [], "off": []}, []
    bare, recording, in_run = [], [], []
    last_batch = _last_batch(ts)
    result = None
    for repeat in range(repeats):  # interleaved, so a change of load hits all three alike,
        for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):  # in turn first: no order bias
            phases.clear()
            step_ends.clear()
            start = time.perf_counter()
            if mode == "on":
                result = run_train(backend, paths["train"], cfg, test_path=paths["test"], quiet=True)
                recording.append(phases.pop("recording", 0.0))
                phase_runs.append(dict(phases, total=time.perf_counter() - start))
                # The run's own steady step rate (every epoch, as bare_step_rate counts them):
                # beside the bare rate of a separate fit, a reading no drift between runs can move.
                in_run.append(_median(steady_rates(step_ends, ts.steps_per_epoch, cfg.batch_size, 0, last_batch)))
            else:
                with tracking_off.disabled():
                    run_train(backend, paths["train"], cfg, test_path=paths["test"], quiet=True)
            walls[mode].append(time.perf_counter() - start)
        bare.append(bare_step_rate(api, train_data, cfg, 1)[0])
    train_run._EpochLogger.on_step = logged_step
    out = {"e2e": trained / _median(walls["on"]), "off": trained / _median(walls["off"]), "bare": _median(bare),
           "walls": walls, "bare_samples": bare, "in_run_step_samples": in_run, "trained_groups": trained,
           "recording_seconds": _median(recording),
           "recording_samples": recording, "n_train_groups": len(ts.train_idx), "epochs": cfg.max_epochs,
           "phases": {k: _median([p.get(k, 0.0) for p in phase_runs]) for k in phase_runs[0]}}
    out.update(_inference(result.model_uri, _first_patterns(test_data, args.get("infer_patterns")), repeats))
    out["threads"] = _threads(backend)
    del np
    return out


def _first_patterns(data, count):
    """``data`` cut to its first ``count`` scan points (the top rows of the raster), or whole."""
    import dataclasses

    if not count or count >= data.n_patterns:
        return data
    cut = slice(0, int(count))
    return dataclasses.replace(data, xcoords=data.xcoords[cut], ycoords=data.ycoords[cut], diff3d=data.diff3d[cut],
                               scan_index=None if data.scan_index is None else data.scan_index[cut])


def _inference(model_uri, data, repeats):
    """Groups/s of ``mlflow.pyfunc.load_model(uri).predict`` and of the direct call it wraps."""
    import mlflow.pyfunc

    from ptyparity import bundle, tracking

    local = os.path.join(tracking.download_model(model_uri), "artifacts", "bundle")
    direct = bundle.load_dir(local)
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    feed = {"diff3d": data.diff3d, "xcoords": data.positions[:, 0], "ycoords": data.positions[:, 1]}
    from ptyparity.inference import Reconstructor

    rec = Reconstructor(direct, source=local)
    n_groups = len(rec.groups_for(data))
    rec.reconstruct(data)  # warm-up of both
    pyfunc.predict(feed)
    t_direct, t_pyfunc = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        rec.reconstruct(data)
        t_direct.append(time.perf_counter() - start)
        start = time.perf_counter()
        pyfunc.predict(feed)
        t_pyfunc.append(time.perf_counter() - start)
    return {"direct_groups_per_s": n_groups / _median(t_direct), "pyfunc_groups_per_s": n_groups / _median(t_pyfunc),
            "infer_groups": n_groups}


def compare(args):
    """``compare --latest`` / ``--pair-key`` lookups among ``n_runs`` synthetic runs, in a sqlite
    store and through ``mlflow server`` on the same store."""
    import subprocess
    import socket

    tmp = _workdir("bench-compare-")
    uri = f"sqlite:///{tmp}/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    from ptyparity import names, tracking
    from ptyparity.runs.compare import resolve_pair

    exp = tracking.init_store()
    import mlflow

    client = mlflow.MlflowClient()
    start = time.perf_counter()
    keys = _synthetic_runs(client, exp, args["n_runs"], names)
    fill_s = time.perf_counter() - start

    def lookups():
        samples = {"latest": [], "pair_key": []}
        for _ in range(args["repeats"]):
            t = time.perf_counter()
            torch_run, tf_run = resolve_pair(latest=True)
            samples["latest"].append(time.perf_counter() - t)
            assert tracking.run_tag(torch_run, names.TAG_PAIR_KEY) == keys["latest"]
            t = time.perf_counter()
            torch_run, tf_run = resolve_pair(pair_key=keys["oldest"])
            samples["pair_key"].append(time.perf_counter() - t)
            assert tf_run.info.run_id != torch_run.info.run_id
        return samples

    out = {"n_runs": args["n_runs"], "fill_s": fill_s, "sqlite": lookups()}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "mlflow"), "server",
                               "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        mlflow.set_tracking_uri(url)
        os.environ["MLFLOW_TRACKING_URI"] = url
        resolve_pair(latest=True)  # first request: the server's own warm-up
        out["server"] = lookups()
    finally:
        server.terminate()
        server.wait(timeout=30)
    return out


def _synthetic_runs(client, experiment_id, n_runs, names):
    """``n_runs`` finished runs shaped like a busy store: train/infer/compare runs of many
    pairs, the newest infer runs torch-only (re-runs), so ``--latest`` has to look past them."""
    kinds = ("train", "train", "infer", "infer", "compare")
    n_pairs = n_runs // (len(kinds) + 1)
    made, keys = 0, {}
    for p in range(n_pairs):
        key = f"pair{p:05d}"
        keys.setdefault("oldest", key)
        for kind, backend in zip(kinds, ("torch", "tensorflow", "torch", "tensorflow", None)):
            tags = {names.TAG_KIND: kind, names.TAG_PAIR_KEY: key, **({names.TAG_BACKEND: backend} if backend else {})}
            run = client.create_run(experiment_id, tags=tags)
            client.set_terminated(run.info.run_id)
            made += 1
        keys["latest"] = key
    while made < n_runs:  # unmatched newest torch infer runs
        run = client.create_run(experiment_id, tags={names.TAG_KIND: "infer", names.TAG_BACKEND: "torch",
                                                     names.TAG_PAIR_KEY: f"solo{made}"})
        client.set_terminated(run.info.run_id)
        made += 1
    return keys


def stitch(args):
    """Patches/s of :func:`ptyparity.stitching.stitch_patches` at N=64, integer and jittered positions."""
    import numpy as np

    from ptyparity import grouping
    from ptyparity.simulate import SimConfig, make_object, raster_positions
    from ptyparity.stitching import extract_object_patches, stitch_patches

    # The simulated test scene's object and scan (simulate()'s sizes at N=64), without its
    # diffraction: stitching never reads it, and computing it costs more than the benchmark.
    cfg, rng = SimConfig(N=64, seed=0), np.random.default_rng(0)
    obj = make_object(cfg.object_size, 64, family=cfg.object_family, rng=rng)
    positions = raster_positions(cfg.object_size, 64, cfg.scan_step)
    groups = grouping.inference_groups(positions, gridsize=2, seed=0)
    patches = np.moveaxis(extract_object_patches(obj, groups.pos, 64), 1, -1).astype(np.complex64)
    jittered = groups.pos + np.random.default_rng(0).uniform(-0.7, 0.7, groups.pos.shape)
    out = {"patches": int(patches.shape[0] * patches.shape[3])}
    for name, pos in (("integer", groups.pos), ("jittered", jittered)):
        times = []
        for _ in range(args["repeats"]):
            start = time.perf_counter()
            stitch_patches(patches, pos, canvas_shape=obj.shape)
            times.append(time.perf_counter() - start)
        out[name] = out["patches"] / _median(times)
    return out


KINDS = {"step": step, "train": train, "compare": compare, "stitch": stitch}

if __name__ == "__main__":
    from ptyparity import allocator, warmup

    allocator.reuse_freed_memory()  # as the `ptyparity` CLI runs its commands
    warmup.enable()
    result = KINDS[sys.argv[1]](json.loads(sys.argv[2]))
    print("BENCH " + json.dumps(result, default=float), flush=True)
