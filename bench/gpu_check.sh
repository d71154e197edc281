#!/usr/bin/env bash
# One-shot GPU check (target: < 8 minutes on one H100/H200). Run from anywhere:
#   bash bench/gpu_check.sh [OUTDIR]        (default OUTDIR: bench/gpu_check_out)
# 1. the GPU tests: simulated rounding is not elided by XLA (error non-zero, bit-equal to CPU),
#    the compiled native-FP8 program holds an FP8 GEMM; plus the CPU-equivalence tests of native FP8
# 2. bench/quantize.py              (quantize throughput vs the native cast round trip)
# 3. bench/train_step.py            at full scale (6 layers, d=384, length 512, batch 32)
# 4. bench/train_step_full.py       samples/s, TFLOP/s and MFU vs the chip's BF16 peak (JSON line)
# 5. bench/fp8_gemm.py              native FP8 vs BF16 / simulated at 8192^3 (JSON line)
# Each step has its own time limit; a failing step is reported and the script goes on. The last
# line is a JSON summary of the steps' exit codes; the JSON lines of the benches are in OUTDIR.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-bench/gpu_check_out}"
mkdir -p "$OUT"
export HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 WANDB_MODE=offline XLA_PYTHON_CLIENT_PREALLOCATE=false
PY="${PYTHON:-python}"
declare -A RC
run() {  # run NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  RC[$name]=${PIPESTATUS[0]}
  echo "=== $name: exit ${RC[$name]} in $((SECONDS - t0))s"
}
"$PY" -c "import jax; print('backend', jax.default_backend(), jax.devices())" | tee "$OUT/devices.log"
run gpu_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_native_fp8.py -rs
run quantize 60 "$PY" bench/quantize.py --repeats 10
run train_step 150 "$PY" bench/train_step.py --layers 6 --d 384 --length 512 --batch 32 --steps 10
run train_step_full 90 "$PY" bench/train_step_full.py --steps 20
run fp8_gemm 45 "$PY" bench/fp8_gemm.py
for n in train_step_full fp8_gemm; do tail -n 1 "$OUT/$n.log" > "$OUT/$n.json"; done
printf '{"bench": "gpu_check", "exit_codes": {'
first=1; for k in gpu_tests quantize train_step train_step_full fp8_gemm; do
  [ $first = 1 ] || printf ', '; first=0; printf '"%s": %s' "$k" "${RC[$k]:-null}"; done
printf '}}\n'
