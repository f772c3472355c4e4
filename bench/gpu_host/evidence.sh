#!/bin/bash
# One device call (built by bench/gpu_host/make_bundle.sh): seedcka and fast for measured GPU
# cases, one process per case side by side, on the GPU that trained them (their JSONs must be in
# bench/results/quality/; each is copied out when its case is done).
#   run(command="bash .gpu/evidence.sh LIMIT CASE [CASE ...]", carry=[".gpu", ".whl"], timeout_s=LIMIT + 10)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=$1
shift
[ $# -gt 0 ] || { echo "usage: evidence.sh LIMIT CASE [CASE ...]"; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 .gpu/prep.py || exit 1
THREADS=$(( $(nproc) / $# ))
[ $THREADS -ge 1 ] || THREADS=1
LEFT=$((LIMIT - SECONDS - 5))
[ $LEFT -gt 30 ] || { echo "only $LEFT s left after set-up: nothing run"; exit 1; }
for c in "$@"; do
  ( export OMP_NUM_THREADS=$THREADS
    timeout -k 10 $LEFT python3 bench/bench_quality.py seedcka --only $c --device cuda &&
    REST=$((LIMIT - SECONDS - 5)); [ $REST -ge 1 ] || REST=1
    timeout -k 10 $REST python3 bench/bench_quality.py fast --only $c --device cuda
    cp bench/results/quality/$c.json $OUT/ ) > $OUT/$c.log 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"
for c in "$@"; do tail -4 $OUT/$c.log; done
echo "done at $SECONDS s"
