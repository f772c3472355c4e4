#!/bin/bash
# One device call (built by bench/gpu_host/make_bundle.sh): several quality cases at once on the
# one GPU. MiniLM-L6 at batch 32 leaves an H100 nearly idle (the step is bound by kernel launches
# and Python, see bench/RESULTS.md), so processes side by side share it with little loss. Each
# case resumes from its JSON if one is in the tree (--resume), and every JSON is copied out every
# 15 s, so a case cut off by the limit can be finished by a second call.
#   run(command="bash .gpu/parallel.sh LIMIT CASE [CASE ...]", carry=[".gpu", ".whl"], timeout_s=LIMIT + 10)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=$1
shift
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/smi.txt
python3 .gpu/prep.py || exit 1
[ $# -gt 0 ] || { echo "usage: parallel.sh LIMIT CASE [CASE ...]"; exit 2; }
THREADS=$(( $(nproc) / $# ))
[ $THREADS -ge 1 ] || THREADS=1
LEFT=$((LIMIT - SECONDS - 5))
[ $LEFT -gt 30 ] || { echo "only $LEFT s left after set-up: nothing run"; exit 1; }
(while sleep 15; do for c in "$@"; do cp bench/results/quality/$c.json $OUT/ 2>/dev/null; done; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $OUT/util.txt; done) &
COPIER=$!
echo "$# cases, $THREADS threads each, $LEFT s left at $SECONDS s"
for c in "$@"; do
  OMP_NUM_THREADS=$THREADS timeout -k 10 $LEFT python3 bench/bench_quality.py run --only $c --resume --device cuda > $OUT/$c.log 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"
kill $COPIER 2>/dev/null
for c in "$@"; do cp bench/results/quality/$c.json $OUT/ 2>/dev/null; tail -5 $OUT/$c.log; done
echo "done at $SECONDS s"
