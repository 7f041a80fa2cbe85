#!/usr/bin/env bash
# One GPU check for a lent GPU machine, in one call of at most 8 minutes (issue 17 point 8):
#
#   bash benchmarks/gpu_check.sh            # JSON lines on stdout, and in $OUT/gpu_check.jsonl when $OUT is set
#
# 1. every GPU path against its CPU path (benchmarks/gpu_check.py): CuPy connected components,
#    faiss-gpu kNN, predict on CUDA with AMP (fp16, bf16), Ray Train with a GPU worker;
# 2. then the GPU benchmarks: bench_cc.py at 256^3 (its connected_components_gpu line) and faiss kNN
#    at N = 10^6 on the GPU against the CPU.
#
# Each step has its own time limit (GPU_CHECK_SECONDS, default 450, is the whole budget; a step that
# would start with less than its limit left is reported as skipped). Where there is no GPU every step
# prints a {"check": ..., "skipped": "no GPU: ..."} line and the script exits 0. It installs nothing
# and reaches no network: it uses the working tree and .venv as they are (PYTHON overrides the
# interpreter). Exit status: 0 when every step that ran agreed with its CPU path, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
BUDGET="${GPU_CHECK_SECONDS:-450}"
START=$(date +%s)
LOG=""
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG="$OUT/gpu_check.jsonl" && : > "$LOG"; fi
export PYTHONWARNINGS="${PYTHONWARNINGS:-ignore::DeprecationWarning}" RAY_USAGE_STATS_ENABLED=0
FAILED=0

emit() {  # one JSON line to stdout and the log
    echo "$1"
    if [ -n "$LOG" ]; then echo "$1" >> "$LOG"; fi
}

step() {  # step NAME LIMIT_SECONDS COMMAND...: run with a time limit, keep its JSON lines, note failures
    local name="$1" limit="$2"; shift 2
    local left=$(( BUDGET - ($(date +%s) - START) ))
    if [ "$left" -lt "$limit" ]; then
        emit "{\"check\": \"$name\", \"skipped\": \"time: ${left} s of the ${BUDGET} s budget left, the step may take ${limit} s\"}"
        return
    fi
    local t0 rc out
    t0=$(date +%s)
    out="$(timeout --kill-after=10 "$limit" "$@" 2> >(sed "s/^/[$name] /" >&2))"
    rc=$?
    while IFS= read -r line; do
        case "$line" in "{"*) emit "$line" ;; *) [ -n "$line" ] && echo "[$name] $line" >&2 ;; esac
    done <<< "$out"
    if [ "$rc" -ne 0 ]; then
        FAILED=1
        local why="exit $rc"; [ "$rc" -eq 124 ] && why="timed out after ${limit} s"
        emit "{\"check\": \"$name\", \"failed\": \"$why\", \"seconds\": $(( $(date +%s) - t0 ))}"
    fi
}

HAS_GPU=0
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then HAS_GPU=1; fi

step machine 60 "$PY" benchmarks/gpu_check.py machine
if [ "$HAS_GPU" -eq 0 ]; then
    for name in cupy_cc faiss_gpu predict_amp ray_train_gpu bench_cc_gpu bench_knn; do
        emit "{\"check\": \"$name\", \"skipped\": \"no GPU: nvidia-smi finds none on this machine\"}"
    done
    emit "{\"check\": \"done\", \"seconds\": $(( $(date +%s) - START )), \"gpu\": false, \"failed\": $FAILED}"
    exit "$FAILED"
fi
step cupy_cc 90 "$PY" benchmarks/gpu_check.py cupy_cc
step faiss_gpu 60 "$PY" benchmarks/gpu_check.py faiss_gpu
step predict_amp 90 "$PY" benchmarks/gpu_check.py predict_amp
step ray_train_gpu 90 "$PY" benchmarks/gpu_check.py ray_train_gpu
# the GPU benchmarks (bench_cc.py prints its GPU line only where CuPy sees the GPU)
step bench_cc_gpu 90 "$PY" benchmarks/bench_cc.py --size 256 --block 64 --variants uint32 --repeats 1 --workers 4
step bench_knn 60 "$PY" benchmarks/gpu_check.py bench_knn
emit "{\"check\": \"done\", \"seconds\": $(( $(date +%s) - START )), \"gpu\": true, \"failed\": $FAILED}"
exit "$FAILED"
