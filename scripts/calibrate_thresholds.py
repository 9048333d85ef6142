"""Measure the same-backend seed-to-seed spread of every parity check value.

Trains each backend with several seeds on the default small-preset dataset (each
training in its own process), infers each model on the test set, and computes the
parity check values between every pair of runs of the SAME backend (seed a vs
seed b) and between the torch and tensorflow runs of the same seed. The
same-backend spread is what two equally valid trainings differ by; the compare
thresholds must accept it. Prints a table and writes a JSON summary.

    .venv/bin/python scripts/calibrate_thresholds.py [--seeds 0 1 2] [--out calibration.json]
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile

import numpy as np


def sh(args, env):
    subprocess.run([sys.executable, "-m", "ptyparity", *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-groups", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--out", default="calibration.json")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ptyparity-calib-")
    uri = f"sqlite:///{work}/mlflow.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, OMP_WAIT_POLICY="PASSIVE", TF_CPP_MIN_LOG_LEVEL="2")
    import mlflow

    mlflow.set_tracking_uri(uri)
    from ptyparity import names, parity, tracking

    tracking.init_store()
    sh(["simulate", "--out-dir", f"{work}/data", "--no-log-data"], env)
    infer = {}
    for backend in ("torch", "tensorflow"):
        for seed in args.seeds:
            name = f"{backend}-s{seed}"
            print(f"train + infer {name}", flush=True)
            sh(["train", "--backend", backend, "--train-data", f"{work}/data/train.npz", "--n-groups",
                str(args.n_groups), "--max-epochs", str(args.epochs), "--n-filters-scale", "1", "--seed", str(seed),
                "--quiet", "--no-debug-dump", "--run-name", f"train-{name}"], env)
            (train,) = mlflow.search_runs(experiment_names=["ptyparity"],
                                          filter_string=f"attributes.run_name = 'train-{name}'", output_format="list")
            sh(["infer", "--model", f"runs:/{train.info.run_id}/model", "--data", f"{work}/data/test.npz",
                "--run-name", f"infer-{name}"], env)
            (run,) = mlflow.search_runs(experiment_names=["ptyparity"],
                                        filter_string=f"attributes.run_name = 'infer-{name}'", output_format="list")
            canvas = np.load(tracking.download_artifact(run.info.run_id, names.CANVAS_NPZ), allow_pickle=False)
            infer[name] = (run.data.metrics, canvas["canvas"], canvas["count"])

    def values(a, b):
        (ma, ca, na), (mb, cb, nb) = infer[a], infer[b]
        checks = parity.ratio_checks(ma, mb, tolerance=1.0)
        _, scores, _ = parity.canvas_checks(ca, na, cb, nb, thresholds=parity.DEFAULT_THRESHOLDS)
        out = {c.name: c.value for c in checks}
        out.update({k: scores[k] for k in ("canvas.amp.ssim", "canvas.phase.ssim")})
        out["gt.amp.ssim-flat"] = min(ma["gt.amp.ssim"] - ma["gt.amp.ssim_flat"], mb["gt.amp.ssim"] - mb["gt.amp.ssim_flat"])
        out["collapsed_fraction"] = max(ma["patch.amp.collapsed_fraction"], mb["patch.amp.collapsed_fraction"])
        return out

    same = {f"{a} vs {b}": values(a, b) for backend in ("torch", "tensorflow")
            for a, b in itertools.combinations([f"{backend}-s{s}" for s in args.seeds], 2)}
    cross = {f"torch-s{s} vs tensorflow-s{s}": values(f"torch-s{s}", f"tensorflow-s{s}") for s in args.seeds}
    keys = list(next(iter(same.values())))
    print(f"\n{'pair':34s}" + "".join(f"{k[:18]:>20s}" for k in keys))
    for label, group in (("same backend", same), ("torch vs tf", cross)):
        for pair, v in group.items():
            print(f"{pair:34s}" + "".join(f"{v[k]:20.4f}" for k in keys))
        ratio_dev = max(abs(v[k] - 1) for v in group.values() for k in keys if k.startswith("ratio."))
        print(f"  {label}: max |ratio - 1| = {ratio_dev:.3f}; min canvas amp/phase SSIM = "
              f"{min(v['canvas.amp.ssim'] for v in group.values()):.3f}/"
              f"{min(v['canvas.phase.ssim'] for v in group.values()):.3f}\n")
    with open(args.out, "w") as fh:
        json.dump({"same_backend": same, "torch_vs_tf": cross, "seeds": args.seeds, "n_groups": args.n_groups,
                   "epochs": args.epochs}, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
