"""ptyparity's benchmark: every performance figure, measured side by side in one run.

    .venv/bin/python scripts/bench.py [--quick] [--json bench.json] [--repeats 3] [--only step,train,...]
        [--train-groups 2048 --train-epochs 40]   (the train section at the issue's longer training)

Sections (each in its own child processes, one at a time, so frameworks never share a
process and a measurement never competes with another):

- ``step``: bare training-step groups/s per backend at the small (N=32, f=1) and
  realistic (N=64, f=2) sizes, gridsize 2, batch 16, and their ratio torch/tensorflow;
- ``train``: end-to-end ``run_train`` groups/s (tracking on) against the bare step rate at
  the same size (and against the tracked run's own steady step rate: ``e2e_over_in_run_steps``),
  the same training with tracking switched off in-process
  (:mod:`ptyparity.tracking_off`), the time spent inside the tracking layer's recording
  calls (``recording_share`` of the run), where the time goes (phases), and pyfunc
  ``predict`` against the direct backend call;
- ``compare``: ``compare --latest`` / ``--pair-key`` run lookups among 1,000 runs, in a
  sqlite store and through ``mlflow server`` on 127.0.0.1;
- ``stitch``: NumPy stitching patches/s at N=64;
- ``pipeline``: the default pipeline's wall time (``--quick``: a shortened one), each step's
  wall time and peak RSS, and process start + framework import per kind of step.

Every figure is a median of ``--repeats`` (>= 3) samples; every comparison is a ratio of
figures taken in the same run (in the train section, the median of each repeat's ratio); the
JSON records the core count and the load average, since on a shared machine absolute numbers
drift. ``--quick`` takes ~2-3 minutes on
2 cores, the full run ~10-15.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKERS = os.path.join(HERE, "bench_workers.py")
SECTIONS = ("step", "train", "compare", "stitch", "pipeline")
BACKENDS = ("torch", "tensorflow")
# (quick, full) sizes of each measurement.
PLAN = {
    "step_groups": ({"small": 96, "realistic": 48}, {"small": 512, "realistic": 256}),
    # infer_patterns: the inference figures' share of the test scan (quick: its top 6 rows of 57).
    "train": ({"size": "small", "n_groups": 64, "epochs": 2, "infer_patterns": 342},
              {"size": "small", "n_groups": 512, "epochs": 8, "infer_patterns": None}),
    "pipeline": ({"n_groups": 64, "max_epochs": 1}, {}),
    "pipeline_repeats": (1, 3),
}
# name -> (goal text, test) for the table; the ratios are the goals.
GOALS = {
    "ratio_torch_over_tf": (">= 1.0", lambda v: v >= 1.0),
    "e2e_over_bare": (">= 0.9", lambda v: v >= 0.9),
    "e2e_over_in_run_steps": (">= 0.9", lambda v: v >= 0.9),
    "tracking_overhead": ("<= 0.03", lambda v: v <= 0.03),
    "pyfunc_overhead": ("<= 0.10", lambda v: v <= 0.10),
    "_s": ("<= 2 s", lambda v: v <= 2.0),
    "patches_per_s": (">= 10000", lambda v: v >= 10000),
}


def _child_env():
    env = dict(os.environ)  # torch's OpenMP defaults come from its backend package, as in the CLI
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("PYTHONPATH", os.path.dirname(HERE))
    return env


def worker(kind, **args):
    """Run one measurement in a child process; its ``BENCH {json}`` line, parsed."""
    proc = subprocess.run([sys.executable, WORKERS, kind, json.dumps(args)], capture_output=True, text=True,
                          env=_child_env())
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench worker {kind} {args} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("BENCH "):])


OPTIONS = {"accelerator": "cpu", "sizes": None}  # set by main (bench_gpu.sh: --accelerator gpu --sizes realistic)


def section_step(quick, repeats, figures, raw):
    """``repeats`` rounds, each one worker per backend (one warm-up epoch, then two measured),
    the two taking turns going first: the torch and TensorFlow samples of a round are a minute
    apart at most, so the ratio is the median of the rounds' ratios, not that of two workers
    run minutes apart on a drifting machine. ``--quick``: one round of ``repeats`` measured
    epochs (a round costs two process starts, ~15 s)."""
    groups = PLAN["step_groups"][0 if quick else 1]
    groups = {k: v for k, v in groups.items() if k in (OPTIONS["sizes"] or groups)}
    n_rounds, epochs = (1, repeats) if quick else (repeats, 2)
    rounds = []
    for r in range(n_rounds):
        out = {}
        for backend in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            out[backend] = worker("step", backend=backend, sizes=list(groups), n_groups=groups, repeats=epochs,
                                  accelerator=OPTIONS["accelerator"])
        rounds.append(out)
    for backend in BACKENDS:
        # samples: every measured epoch's rate; rounds: each round's median (its worker's figure)
        out = raw[f"step.{backend}"] = {"threads": rounds[0][backend]["threads"]}
        for size in groups:
            out[f"{size}_samples"] = [rate for o in rounds for rate in o[backend][f"{size}_samples"]]
            out[f"{size}_rounds"] = [o[backend][size] for o in rounds]
            figures[f"step.{size}.{backend}.groups_per_s"] = _median(out[f"{size}_rounds"])
    for size in groups:
        figures[f"step.{size}.ratio_torch_over_tf"] = _median(
            [o["torch"][size] / o["tensorflow"][size] for o in rounds])


def section_train(quick, repeats, figures, raw):
    plan = PLAN["train"][0 if quick else 1]
    for backend in BACKENDS:
        out = raw[f"train.{backend}"] = worker("train", backend=backend, repeats=repeats, **plan)
        on, off = out["walls"]["on"], out["walls"]["off"]
        e2e = [out["trained_groups"] / wall for wall in on]
        figures[f"e2e.{backend}.groups_per_s"] = out["e2e"]
        figures[f"e2e.{backend}.bare_groups_per_s"] = out["bare"]
        # Each ratio is the median of its repeats' ratios: a repeat's runs and bare sample are
        # taken back to back, so a machine that slows between repeats moves both sides alike.
        figures[f"e2e.{backend}.e2e_over_bare"] = _median([r / b for r, b in zip(e2e, out["bare_samples"])])
        # The tracked run against its own steps' steady rate: the same question asked of one run.
        figures[f"e2e.{backend}.in_run_step_groups_per_s"] = _median(out["in_run_step_samples"])
        figures[f"e2e.{backend}.e2e_over_in_run_steps"] = _median(
            [r / s for r, s in zip(e2e, out["in_run_step_samples"])])
        figures[f"tracking.{backend}.off_groups_per_s"] = out["off"]
        figures[f"tracking.{backend}.tracking_overhead"] = _median([a / b for a, b in zip(on, off)]) - 1
        # Time inside the recording calls themselves: a direct reading, beside the on/off difference
        # of two wall times whose noise on a shared machine is larger than the 3 % goal.
        figures[f"tracking.{backend}.recording_seconds"] = out["recording_seconds"]
        figures[f"tracking.{backend}.recording_share"] = out["recording_seconds"] / _median(out["walls"]["on"])
        for phase, seconds in out["phases"].items():
            figures[f"e2e.{backend}.phase.{phase}_seconds"] = seconds
        figures[f"infer.{backend}.direct_groups_per_s"] = out["direct_groups_per_s"]
        figures[f"infer.{backend}.pyfunc_groups_per_s"] = out["pyfunc_groups_per_s"]
        figures[f"infer.{backend}.pyfunc_overhead"] = out["direct_groups_per_s"] / out["pyfunc_groups_per_s"] - 1


def section_compare(quick, repeats, figures, raw):
    out = raw["compare"] = worker("compare", repeats=repeats, n_runs=1000)
    figures["compare.n_runs"] = out["n_runs"]
    for store in ("sqlite", "server"):
        for lookup in ("latest", "pair_key"):
            figures[f"compare.{store}.{lookup}_s"] = _median(out[store][lookup])


def section_stitch(quick, repeats, figures, raw):
    out = raw["stitch"] = worker("stitch", repeats=repeats)
    figures["stitch.n64.integer.patches_per_s"] = out["integer"]
    figures["stitch.n64.jittered.patches_per_s"] = out["jittered"]


# Each of the pipeline's processes reports its start and imports (cli + MLflow [+ framework]) as
# metric start_import_seconds.<process> of the pipeline run; the figures keep these names.
START_PROCESSES = {"none": "pipeline", "torch": "torch", "tensorflow": "tensorflow"}
# The pipeline's three processes (runs/pipeline.py): its own runs simulate and compare, one child
# per backend runs train then infer; the train step's seconds include its child's start and imports.
PIPELINE_STEPS = ("simulate", "train_torch", "infer_torch", "train_tensorflow", "infer_tensorflow", "compare")


def section_pipeline(quick, repeats, figures, raw):
    overrides = PLAN["pipeline"][0 if quick else 1]
    runs = [_pipeline_once(overrides) for _ in range(PLAN["pipeline_repeats"][0 if quick else 1])]
    raw["pipeline"] = runs
    figures["pipeline.wall_seconds"] = _median([r["wall"] for r in runs])
    figures["pipeline.verdict_pass"] = float(all(r["verdict"] == "pass" for r in runs)) if not quick else float(
        all(r["exit"] in (0, 1) for r in runs))
    for step in PIPELINE_STEPS:
        figures[f"pipeline.step.{step}_seconds"] = _median([r["metrics"][f"step_seconds.{step}"] for r in runs])
        figures[f"rss.{step}_mb"] = max(r["metrics"][f"step_peak_rss_mb.{step}"] for r in runs)
    for kind, process in START_PROCESSES.items():  # measured inside the pipeline's own processes
        figures[f"pipeline.start_import.{kind}_seconds"] = _median(
            [r["metrics"][f"start_import_seconds.{process}"] for r in runs])
    steps = {s: figures[f"pipeline.step.{s}_seconds"] for s in PIPELINE_STEPS}
    start = {kind: figures[f"pipeline.start_import.{kind}_seconds"] for kind in START_PROCESSES}
    figures["pipeline.breakdown.start_import_seconds"] = sum(start.values())  # the three processes
    figures["pipeline.breakdown.data_seconds"] = steps["simulate"]
    figures["pipeline.breakdown.training_seconds"] = _median([r["train_fit"] for r in runs])
    figures["pipeline.breakdown.after_training_seconds"] = _median([r["train_after"] for r in runs])
    figures["pipeline.breakdown.infer_seconds"] = steps["infer_torch"] + steps["infer_tensorflow"]
    figures["pipeline.breakdown.compare_seconds"] = steps["compare"]
    # The pipeline process's own time outside its steps: its start and imports, the store, the parent run.
    figures["pipeline.breakdown.parent_seconds"] = figures["pipeline.wall_seconds"] - sum(steps.values())


def _pipeline_once(overrides):
    """One ``ptyparity pipeline`` in a fresh directory and store; its wall time, verdict and
    the per-step metrics it records, plus each train run's time up to its last epoch
    (``train_fit``: inputs, first dump, the fit) and after it (``train_after``: final dump,
    held-out deviance, plots, bundle and registry, descriptions), from MLflow's timestamps."""
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        return _pipeline_in(tmp, overrides)


def _pipeline_in(tmp, overrides):
    uri = f"sqlite:///{tmp}/mlflow.db"
    args = [sys.executable, "-m", "ptyparity", "pipeline", "--out-dir", os.path.join(tmp, "data"), "--quiet"]
    for key, value in overrides.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=tmp, env={**_child_env(), "MLFLOW_TRACKING_URI": uri}, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"pipeline failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    probe = ("import json, sys, mlflow; c = mlflow.MlflowClient(); "
             "p = [r for r in mlflow.search_runs(search_all_experiments=True, output_format='list') "
             "if r.data.tags.get('ptyparity.kind') == 'pipeline'][0]; out = {'metrics': p.data.metrics, "
             "'verdict': p.data.tags.get('parity.verdict'), 'train': []}\n"
             "for k, v in p.data.tags.items():\n"
             "    if k.startswith('pipeline.train_'):\n"
             "        r = c.get_run(v); last = max(m.timestamp for m in c.get_metric_history(v, 'train_loss'))\n"
             "        out['train'].append([(last - r.info.start_time) / 1e3, (r.info.end_time - last) / 1e3])\n"
             "print(json.dumps(out))")
    rec = json.loads(subprocess.run([sys.executable, "-c", probe], env={**_child_env(), "MLFLOW_TRACKING_URI": uri},
                                    capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
    return {"wall": wall, "exit": proc.returncode, "verdict": rec["verdict"], "metrics": rec["metrics"],
            "train_fit": sum(t[0] for t in rec["train"]), "train_after": sum(t[1] for t in rec["train"])}


def _median(values):
    values = sorted(values)
    mid = len(values) // 2
    return float(values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2)


def _goal(name):
    for suffix, goal in GOALS.items():
        if name.endswith(suffix) and (suffix != "_s" or name.startswith("compare.")):
            return goal
    return None


def table(figures):
    lines = [f"{'figure':58s} {'value':>12s}  goal"]
    for name, value in figures.items():
        goal = _goal(name)
        mark = "" if goal is None else f"{goal[0]:9s} {'ok' if goal[1](value) else 'MISSED'}"
        lines.append(f"{name:58s} {value:12.4g}  {mark}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, a shortened pipeline (~2-3 min)")
    parser.add_argument("--json", help="write every figure, the raw samples and the machine here")
    parser.add_argument("--repeats", type=int, default=3, help="samples per figure (>= 3)")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--accelerator", default="cpu", help="step section only: cpu or gpu (bench_gpu.sh)")
    parser.add_argument("--sizes", help="step section only: small,realistic (default both)")
    parser.add_argument("--step-groups", type=int, help="step section only: groups per epoch at every size")
    parser.add_argument("--train-groups", type=int, help="train section only: groups of the measured trainings "
                        "(default 512; the issue's longer training: 2048)")
    parser.add_argument("--train-epochs", type=int, help="train section only: epochs of the measured trainings "
                        "(default 8; the issue's longer training: 40)")
    args = parser.parse_args(argv)
    OPTIONS.update(accelerator=args.accelerator, sizes=args.sizes.split(",") if args.sizes else None)
    if args.step_groups:
        PLAN["step_groups"] = tuple({k: args.step_groups for k in plan} for plan in PLAN["step_groups"])
    for key, value in (("n_groups", args.train_groups), ("epochs", args.train_epochs)):
        if value:
            PLAN["train"] = tuple({**plan, key: value} for plan in PLAN["train"])
    if args.repeats < 3:
        parser.error("--repeats must be >= 3 (every figure is a median)")
    sections = args.only.split(",") if args.only else list(SECTIONS)
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    figures, raw, seconds = {}, {}, {}
    started = time.perf_counter()
    meta = {"cores": os.cpu_count(), "affinity_cores": len(os.sched_getaffinity(0)), "machine": platform.machine(),
            "processor": _cpu_model(), "python": platform.python_version(), "quick": args.quick,
            "repeats": args.repeats, "accelerator": args.accelerator, "load_average_start": os.getloadavg(),
            "train_plan": PLAN["train"][0 if args.quick else 1],
            "env": {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as cache:
        os.environ["PTYPARITY_BENCH_CACHE"] = cache  # the workers' simulated datasets, made once
        for name in sections:
            start = time.perf_counter()
            globals()[f"section_{name}"](args.quick, args.repeats, figures, raw)
            seconds[name] = time.perf_counter() - start
            print(f"[bench] {name}: {seconds[name]:.0f} s", file=sys.stderr, flush=True)
    meta.update(load_average_end=os.getloadavg(), seconds=seconds, total_seconds=time.perf_counter() - started,
                threads={k: v.get("threads") for k, v in raw.items() if isinstance(v, dict) and "threads" in v})
    bad = [k for k, v in figures.items() if not math.isfinite(v)]
    print(table(figures))
    print(f"cores {meta['cores']}, load average {meta['load_average_start'][0]:.1f} -> "
          f"{meta['load_average_end'][0]:.1f}, {meta['total_seconds']:.0f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "figures": figures, "raw": raw}, fh, indent=1, default=float)
    return 1 if bad else 0


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            return next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
