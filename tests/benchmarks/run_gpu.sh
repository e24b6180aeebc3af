#!/usr/bin/env bash
# Every GPU figure of the README's performance section in one call, on one CUDA device:
# the CUDA tests, the landscape forward at each precision, the training loop, and what each
# precision does to the sharpness of the trained models under RESULTS (a finished default run).
#   bash tests/benchmarks/run_gpu.sh [RESULTS] [OUT]      (defaults: results, bench-gpu)
# Each part writes OUT/<part>.txt; a failing part is reported and the next one still runs.
set -uo pipefail
results=${1:-results}
out=${2:-bench-gpu}
here=$(dirname "$0")
mkdir -p "$out"
export PYTHONUNBUFFERED=1
status=0

part() {  # part NAME COMMAND...: run, keep its output, note a failure
    local name=$1
    shift
    echo "=== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

part gpu nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
part landscape python3 "$here/bench_landscape.py" --device cuda --widths 1.0
part tests python3 -m pytest -q -p no:cacheprovider tests/landscape/test_landscape.py tests/train/test_train.py \
    tests/train/test_optim.py tests/train/test_models.py -k "not kill_9"
part precision python3 "$here/bench_precision.py" --device cuda --results "$results" \
    --precisions tf32 bfloat16 float16
part train python3 "$here/bench_train.py" --device cuda
part train_amp_fp16 python3 "$here/bench_train.py" --device cuda --amp --storage float16
part landscape_demo_width python3 "$here/bench_landscape.py" --device cuda --widths 0.125 \
    --no-compile
exit $status
