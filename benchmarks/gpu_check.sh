#!/usr/bin/env bash
# One device call (<= 8 minutes on a GPU): the CelebA ladder's sampler and training timings.
#   bash benchmarks/gpu_check.sh [OUT_DIR]          (default: $OUT, else results/gpu_check)
# Needs a CUDA JAX in .venv (`make setup`, then `.venv/bin/pip install -U "jax[cuda13]"`).
# Writes, per setting, a JSON file and the printed tables (log.txt) into OUT_DIR:
#  1. benchmarks.gpu with XLA command buffers off, then on for the whole scan (CONDITIONAL
#     and WHILE included): ms per call of levels 1-5 at batch 128 in bfloat16 against their
#     FLOPs; EM at level 5 against ML-EM (two schedules) at equal step count.
#  2. benchmarks.train on celeba64_level5 (batch 128, bfloat16): steps/s, TFLOP/s, and MFU
#     against the dense bf16 peak given in PEAK_TFLOPS (default 989, an H100/H200 SXM).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu_check}}"
PY="${PY:-.venv/bin/python}"
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
mkdir -p "$OUT_DIR"
unset JAX_PLATFORMS
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
  OFF="--xla_gpu_enable_command_buffer="
  ON="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,CONDITIONAL,WHILE"
  for mode in off on; do
    flags=$OFF; [ "$mode" = on ] && flags=$ON
    echo "== command buffers $mode"
    XLA_FLAGS="$flags" timeout 200 "$PY" -m benchmarks.gpu --batch_size 128 --dtype bfloat16 \
      --steps 64 --json "$OUT_DIR/sampler_command_buffers_$mode.json" || echo "failed: $mode"
  done
  echo "== training step, celeba64_level5"
  timeout 120 "$PY" -m benchmarks.train --config configs/celeba64_level5.py --dtype bfloat16 \
    --batch_size 128 --steps 20 --json "$OUT_DIR/train_level5.json" || echo "failed: train"
  "$PY" - "$OUT_DIR/train_level5.json" "$PEAK_TFLOPS" <<'PYEOF' || true
import json, sys
rows = json.load(open(sys.argv[1]))
for r in rows:
    print(f"{r['level']}: {r['achieved_tflops']:.1f} TFLOP/s = MFU "
          f"{r['achieved_tflops'] / float(sys.argv[2]):.1%} of {sys.argv[2]} TFLOP/s bf16")
PYEOF
} 2>&1 | tee "$OUT_DIR/log.txt"
