#!/usr/bin/env bash
# GPU smoke suite: one line per check, at most ~8 minutes on one H100/H200.
#
#   bash scripts/gpu_smoke.sh            # from the repository root, inside the GPU container
#
# Runs every test in tests/gpu/ (marker `gpu`; each one that cannot run here prints why it
# was skipped), then the ~1B bf16 MFU figure of benchmarks/bench_train_step.py. Exits 0 when
# every check that ran passed (skips are fine), 1 otherwise.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
report="$(mktemp)"
log="$(mktemp)"
status=0

GPU_SMOKE_REPORT="$report" timeout 360 "$PYTHON" -m pytest tests/gpu -m gpu -q -p no:cacheprovider >"$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi   # 5: nothing collected
if [ "$rc" -eq 124 ]; then echo "[gpu-smoke] FAIL tests/gpu: timed out after 360 s"; fi

cat "$report"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu-smoke] SKIP bench_train_step_1b_mfu: no CUDA device"
else
    bench="$(mktemp)"
    if timeout 240 "$PYTHON" benchmarks/bench_train_step.py --quick --repeats 3 >"$bench" 2>&1; then
        figure="$(grep -A1 'TFLOP/s/GPU' "$bench" | tail -1 | awk '{printf "s/step=%s tokens/s=%s TFLOP/s/GPU=%s MFU=%s", $1, $2, $3, $4}')"
        echo "[gpu-smoke] PASS bench_train_step_1b_mfu: $figure"
    else
        echo "[gpu-smoke] FAIL bench_train_step_1b_mfu: $(tail -1 "$bench")"
        status=1
    fi
    rm -f "$bench"
fi
if [ "$status" -ne 0 ]; then
    echo "--- pytest output (tail) ---"
    tail -40 "$log"
fi
rm -f "$report" "$log"
exit "$status"
