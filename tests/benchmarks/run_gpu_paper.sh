#!/usr/bin/env bash
# The cost of the paper preset on one GPU, in one call of at most ~8 minutes:
#   1. bench_paper.py: every stage timed as its job runs it, fraction of the GEMM rate, GPU-hours;
#   2. bench_refine.py: tf32/bfloat16/float16 against IEEE float32 on a trained CNN10 of the
#      paper's size, and the IEEE-refined sharpness (landscape.refine);
#   3. training throughput of 1, 2 and 4 concurrent processes on the card (aggregate clips/s):
#      whether grid runs should share a GPU.
#   bash tests/benchmarks/run_gpu_paper.sh [OUT] [cpu]     (OUT defaults to bench-gpu; `cpu`
#   runs every part at the reduced CPU size, to check the script itself)
# The training levers (docs/performance.md), a second call of at most ~6 minutes:
#   PARTS="env train_variants train_levers" bash tests/benchmarks/run_gpu_paper.sh OUT
#   train_variants: every training configuration of the preset autotuned (as jobs run now) and
#      eager (cuDNN's heuristic kernels, as before), with their GPU-hours;
#   train_levers: CNN10 at width 1, Adam, batch 32: autotune, eager, autotune+compile
#      (train.compile) and autotune+cudagraphs (torch.compile mode reduce-overhead).
# The measures and landscapes as their jobs run now, paper.yaml + gpu-fast.yaml (a third call of
# at most ~9 minutes; the first to run, since the projections in docs/performance.md rest on it):
#   PARTS="env measures landscapes" bash tests/benchmarks/run_gpu_paper.sh OUT
#   measures: every measure autotuned and on the fast forward at each precision, and as before
#      (--before: the plain model, cuDNN's heuristic kernels), with the floors;
#   landscapes: CNN10 and CNN14 grid points at every precision, compiled IEEE float32 and float16.
# PARTS (default "env paper refine concurrent") names the parts to run, in this order.
# Each part writes OUT/<part>.txt as it goes and has its own time limit; a failing or timed-out
# part is reported and the next one still runs. Run from the repository root.
set -uo pipefail
out=${1:-bench-gpu}
mode=${2:-cuda}
here=$(dirname "$0")
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
parts=" ${PARTS:-env paper refine concurrent} "
if [ "$mode" = cpu ]; then
    dev=(--device cpu --reduced --threads 1)
    limits=(300 300 200 300 300 300 300)
    train_clips=64
    levers=(--device cpu --threads 1 --widths 0.125 --frames 100 --clips 64)
else
    dev=(--device cuda)
    limits=(240 110 90 150 210 200 300)
    train_clips=2048
    levers=(--device cuda --widths 1.0 --clips 1024)
fi
status=0
started=$SECONDS

part() {  # part NAME SECONDS COMMAND...: run under a time limit, keep its output, note a failure
    local name=$1 limit=$2
    shift 2
    [[ $parts == *" $name "* ]] || return 0
    echo "=== $name (limit ${limit} s, $((SECONDS - started)) s so far): $*"
    local t0=$SECONDS
    timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - t0)) s"
    [ "$rc" -eq 0 ] || status=1
}

concurrent() {  # concurrent N: N training processes timed over the same window
    local n=$1 start
    start=$($py -c "import time; print(time.time() + ${CONCURRENT_START_S:-18})")
    local pids=()
    for i in $(seq "$n"); do
        "$py" "$here/bench_paper.py" "${dev[@]}" --only train --archs cnn10 --optimizers adam \
            --batch-sizes 32 --train-clips "$train_clips" --epochs 2 --start-at "$start" \
            >"$out/concurrent_${n}_$i.txt" 2>&1 &
        pids+=($!)
    done
    local rc=0
    for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
    cat "$out"/concurrent_"${n}"_*.txt
    "$py" - "$n" "$out"/concurrent_"${n}"_*.txt <<'EOF'
import re, sys
n, files = int(sys.argv[1]), sys.argv[2:]
windows = []
for f in files:
    m = re.search(r"window ([\d.]+) ([\d.]+) clips (\d+)", open(f).read())
    if m:
        windows.append((float(m[1]), float(m[2]), int(m[3])))
if len(windows) < n:
    sys.exit(f"{n} processes: only {len(windows)} finished")
t0, t1 = min(w[0] for w in windows), max(w[1] for w in windows)
clips = sum(w[2] for w in windows)
print(f"{n} concurrent processes: {clips / (t1 - t0):,.1f} clips/s together over "
      f"{t1 - t0:.1f} s (each {', '.join(f'{w[2] / (w[1] - w[0]):,.1f}' for w in windows)})")
EOF
    return $rc
}
export -f concurrent
export py here out train_clips
export DEV="${dev[*]}"

part env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm \
    --format=csv 2>/dev/null; $py -c 'import torch, curvlinops, h5py, ascsharp; \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available())'"
part paper "${limits[0]}" "$py" "$here/bench_paper.py" "${dev[@]}" --sam
part refine "${limits[1]}" "$py" "$here/bench_refine.py" "${dev[@]}"
part concurrent "${limits[2]}" bash -c 'read -ra dev <<<"$DEV"; for n in 1 2 4; do
    concurrent "$n" || exit 1; done'
part train_variants "${limits[3]}" "$py" "$here/bench_paper.py" "${dev[@]}" --only train --sam \
    --train-variants autotune eager
part train_levers "${limits[4]}" "$py" "$here/bench_train.py" "${levers[@]}" --batch-size 32 \
    --repeats 3 --variants autotune eager autotune+compile autotune+cudagraphs
fast=(--preset workflow/presets/paper.yaml workflow/presets/gpu-fast.yaml)
part measures "${limits[5]}" "$py" "$here/bench_paper.py" "${dev[@]}" "${fast[@]}" --before \
    --only hessian adaptive_average adaptive_worst pacbayes
part landscapes "${limits[6]}" "$py" "$here/bench_paper.py" "${dev[@]}" "${fast[@]}" \
    --only landscape --compiled float32 float16
echo "=== all parts: $((SECONDS - started)) s, status $status; outputs in $out/"
exit $status
