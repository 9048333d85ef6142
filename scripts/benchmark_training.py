"""Training throughput of both backends, measured side by side in one run.

Each backend trains in its own process (one after the other, never at the same
time: a busy neighbour slows Torch's OpenMP threads) from the same initial weights
on the same groups, and the script prints groups/s of each and their ratio.

    .venv/bin/python scripts/benchmark_training.py [--n-groups 512] [--epochs 3] [--n 32] [--f 1]
"""

import argparse
import json
import os
import subprocess
import sys
import time


def worker(args):
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ptyparity import architecture, training
    from ptyparity.backends import load_backend
    from ptyparity.config import ModelConfig, TrainConfig
    from ptyparity.simulate import SimConfig, simulate

    data, _ = simulate(SimConfig(N=args.n, seed=0))
    cfg = TrainConfig(model=ModelConfig(N=args.n, gridsize=2, n_filters_scale=args.f), n_groups=args.n_groups,
                      max_epochs=args.epochs, seed=0)
    cfg = training.resolve_config(cfg, data)
    ts = training.prepare(data, cfg)
    api = load_backend(args.worker)
    weights = architecture.init_weights(cfg.model, seed=0, log_scale=ts.scales.log_scale)
    model = api.build(cfg.model, ts.probe, weights)
    # One warm-up epoch (graph tracing, allocator) that is not timed.
    warm = training.TrainingSet(**{**ts.__dict__, "cfg": TrainConfig(**{**cfg.__dict__, "max_epochs": 1})})
    api.fit(model, warm, training.TrainHooks(), quiet=True)
    model = api.build(cfg.model, ts.probe, weights)
    start = time.perf_counter()
    history = api.fit(model, ts, training.TrainHooks(), quiet=True)
    seconds = time.perf_counter() - start
    groups = (len(ts.train_idx) + len(ts.val_idx)) * args.epochs
    print(json.dumps({"backend": args.worker, "seconds": seconds, "groups_per_s": groups / seconds,
                      "final_train_deviance": history["train_deviance"][-1],
                      "final_val_deviance": history["val_deviance"][-1]}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-groups", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--f", type=int, default=1)
    parser.add_argument("--worker", choices=("torch", "tensorflow"))
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    results = {}
    for backend in ("torch", "tensorflow"):
        cmd = [sys.executable, __file__, "--worker", backend, "--n-groups", str(args.n_groups), "--epochs",
               str(args.epochs), "--n", str(args.n), "--f", str(args.f)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"N={args.n} f={args.f} gridsize=2 groups={args.n_groups} epochs={args.epochs} (train+val groups per s)")
    for backend, r in results.items():
        print(f"  {backend:10s} {r['groups_per_s']:8.1f} groups/s  ({r['seconds']:.1f} s)  "
              f"train_deviance {r['final_train_deviance']:.4g}  val_deviance {r['final_val_deviance']:.4g}")
    ratio = results["tensorflow"]["groups_per_s"] / results["torch"]["groups_per_s"]
    print(f"  ratio tensorflow/torch throughput: {ratio:.2f}")


if __name__ == "__main__":
    main()
