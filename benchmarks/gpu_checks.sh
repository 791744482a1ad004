#!/bin/bash
# Every GPU check in one prepared run, for a machine with CUDA (issue 13's GPU targets, issue 12's worst case
# at full budgets). Each step is bounded, and results are packed after each one, so a run cut short keeps
# what it measured.
#
#   benchmarks/gpu_checks.sh OUT_DIR VAL_FOLDER [TOTAL_SECONDS]
#
# OUT_DIR gets bench.tar.gz (gpu_parity, latency, app_latency and attack_speed .md/.json), worst_case.json
# (python -m mgnet.modelcard --stage worst-case: 500 val images, APGD 100 iterations, Square 5,000 queries)
# and log.txt. The worst case gets what is left of TOTAL_SECONDS (default 540). Read them, then copy them
# into benchmarks/results/ (with a _gpu suffix) and checkpoints/ by hand (benchmarks/results/gpu.md).
set -u
out=$1
val=$2
total=${3:-540}
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
mkdir -p "$out"
exec > >(tee -a "$out/log.txt") 2>&1

pack() { tar czf "$out/bench.tar.gz" -C "$work" . ; }
step() {  # step SECONDS COMMAND...: run with a time limit, say how it ended, pack the results
    local limit=$1; shift
    local start=$SECONDS
    echo "== $* (limit ${limit}s)"
    timeout "$limit" "$@"
    echo "== exit $? after $((SECONDS - start))s"
    pack
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$work/gpu.txt" 2>&1
cat "$work/gpu.txt"
step 90 python3 benchmarks/gpu_parity.py --data "$val" --limit 500 --out "$work"
step 60 python3 benchmarks/latency.py --devices cuda --repeats 50 --threads 2 --out "$work"
step 90 python3 benchmarks/app_latency.py --library-only --device cuda --repeats 5 --out "$work"
step 60 python3 benchmarks/attack_speed.py --device cuda --repeats 3 --out "$work"
step $((total - SECONDS - 10)) python3 -m mgnet.modelcard --data "$val" --stage worst-case --worst-batch 500 --out "$out"
