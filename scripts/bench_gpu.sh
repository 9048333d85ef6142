#!/usr/bin/env bash
# Both backends' training-step throughput at the realistic size (N=64, f=2, gridsize 2,
# batch 16) on a GPU, with the JSON keys of scripts/bench.py's step section
# (step.realistic.{torch,tensorflow}.groups_per_s, step.realistic.ratio_torch_over_tf).
#
#   scripts/bench_gpu.sh [OUT.json]          # default bench_gpu.json; finishes in <= 8 minutes
#   scripts/bench_gpu.sh --cpu [OUT.json]    # the same on the CPU, few groups: a dry check of this script
#
# Installs nothing: it runs the interpreter of the existing environment ($PYTHON, default
# .venv/bin/python, made from the pinned requirements.txt/constraints.txt). When that
# environment's torch or TensorFlow sees no GPU, the script says which and stops (exit 3)
# instead of timing the CPU under the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then mode=cpu; shift; fi
out=${1:-bench_gpu.json}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}

"$PYTHON" - <<'EOF'
import importlib.metadata as md
for pkg in ("torch", "tensorflow", "tensorflow-cpu", "lightning", "mlflow"):
    try:
        print(f"{pkg} {md.version(pkg)}")
    except md.PackageNotFoundError:
        pass
EOF

if [[ $mode == gpu ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  # Each framework in its own process (as the benchmark runs them); both must see a GPU.
  "$PYTHON" -c "import sys, torch; ok = torch.cuda.is_available(); print('torch sees', torch.cuda.device_count() if ok else 0, 'GPU(s)'); sys.exit(0 if ok else 3)" \
    || { echo "torch sees no GPU (a CPU-only torch build?); install the pinned CUDA wheels or run with --cpu" >&2; exit 3; }
  "$PYTHON" -c "import sys, tensorflow as tf; g = tf.config.list_physical_devices('GPU'); print('tensorflow sees', len(g), 'GPU(s)'); sys.exit(0 if g else 3)" \
    || { echo "tensorflow sees no GPU (tensorflow-cpu?); install the pinned GPU wheels or run with --cpu" >&2; exit 3; }
  # 1024 groups x 4 timed epochs per backend: seconds on a GPU, well inside the 8 minutes.
  args=(--only step --sizes realistic --accelerator gpu --step-groups 1024)
else
  args=(--only step --sizes realistic --accelerator cpu --step-groups 32)
fi
timeout 480 "$PYTHON" scripts/bench.py "${args[@]}" --repeats 3 --json "$out"
echo "wrote $out"
