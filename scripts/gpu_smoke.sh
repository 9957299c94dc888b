#!/usr/bin/env bash
# GPU smoke suite: one line per check, at most 8 minutes on one H100/H200.
#
#   bash scripts/gpu_smoke.sh            # from the repository root, inside the GPU container
#
# Runs every test in tests/gpu/ (marker `gpu`; each one that cannot run here prints why it
# was skipped), then the ~1B bf16 MFU figure of benchmarks/bench_train_step.py, then
# seconds per refit per transport of benchmarks/bench_refit.py. Exits 0 when every check
# that ran passed (skips are fine), 1 otherwise.
#
# Time: each stage is cut at its budget (pytest 280 s, train-step benchmark 90 s, refit
# benchmark 95 s) and never runs past TOTAL_S (465 s) from the start of the script, so the
# whole script stays under 8 minutes with room for start-up; a stage cut short prints FAIL.
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 VLLM_LOGGING_LEVEL="${VLLM_LOGGING_LEVEL:-ERROR}"
export RAY_USAGE_STATS_ENABLED=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
TOTAL_S=465
PYTEST_S=280
TRAIN_BENCH_S=90
REFIT_BENCH_S=95
report="$(mktemp)"
log="$(mktemp)"
status=0

# The stage budget, cut to what is left of TOTAL_S (at least 1 s, so `timeout` stays valid).
budget() {
    local left=$(( TOTAL_S - SECONDS ))
    local want=$1
    [ "$left" -lt "$want" ] && want=$left
    [ "$want" -lt 1 ] && want=1
    echo "$want"
}

limit="$(budget $PYTEST_S)"
GPU_SMOKE_REPORT="$report" timeout "$limit" "$PYTHON" -m pytest tests/gpu -m gpu -q -p no:cacheprovider >"$log" 2>&1
rc=$?
if [ "$rc" -ne 0 ] && [ "$rc" -ne 5 ]; then status=1; fi   # 5: nothing collected
cat "$report"
if [ "$rc" -eq 124 ]; then echo "[gpu-smoke] FAIL tests/gpu: timed out after $limit s (checks not listed above did not finish)"; fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "[gpu-smoke] SKIP bench_train_step_1b_mfu: no CUDA device"
    echo "[gpu-smoke] SKIP bench_refit: no CUDA device"
else
    bench="$(mktemp)"
    limit="$(budget $TRAIN_BENCH_S)"
    if timeout "$limit" "$PYTHON" benchmarks/bench_train_step.py --quick --repeats 3 >"$bench" 2>&1; then
        figure="$(grep -A1 'TFLOP/s/GPU' "$bench" | tail -1 | awk '{printf "s/step=%s tokens/s=%s TFLOP/s/GPU=%s MFU=%s", $1, $2, $3, $4}')"
        echo "[gpu-smoke] PASS bench_train_step_1b_mfu: $figure"
    else
        echo "[gpu-smoke] FAIL bench_train_step_1b_mfu: (limit $limit s) $(tail -1 "$bench")"
        status=1
    fi
    missing="$("$PYTHON" -c "
import importlib.util
print(' and '.join(m for m in ('vllm', 'ray') if importlib.util.find_spec(m) is None))")"
    if [ -n "$missing" ]; then
        echo "[gpu-smoke] SKIP bench_refit: $missing not installed"
    else
        limit="$(budget $REFIT_BENCH_S)"
        # One model size (~110M parameters, 424 MiB fp32): one engine start per layout.
        if timeout "$limit" "$PYTHON" benchmarks/bench_refit.py --sizes medium --repeats 2 --smoke >"$bench" 2>&1; then
            grep '^\[gpu-smoke\]' "$bench"
        else
            grep '^\[gpu-smoke\]' "$bench"
            echo "[gpu-smoke] FAIL bench_refit: (limit $limit s) $(tail -1 "$bench")"
            status=1
        fi
    fi
    rm -f "$bench"
fi
echo "[gpu-smoke] total ${SECONDS} s (limit ${TOTAL_S} s)"
if [ "$status" -ne 0 ]; then
    echo "--- pytest output (tail) ---"
    tail -40 "$log"
fi
rm -f "$report" "$log"
exit "$status"
