#!/bin/bash
# One device call (built by bench/gpu_host/make_bundle.sh): the CUDA tests, seed 0's evidence
# again for REANALYZE (a case stored before the runner kept every key; "-" for none), and a seed
# extension of several measured GPU cases side by side (bench_quality.py extend --device cuda,
# resumable: each JSON is written after every group and copied out every 15 s, so a case cut off
# by the limit is committed part-way, marked "extending", and finished by a later call).
# The device tool brings back at most eight files from $OUT, and the next call's copy of the
# working tree replaces the JSONs left there: $OUT holds the JSONs and one log, all.log, so at
# most six CASEs with a REANALYZE, seven without.
#   run(command="bash .gpu/extend.sh LIMIT SEEDS REANALYZE CASE [CASE ...]", carry=[".gpu", ".whl"], timeout_s=LIMIT + 10)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
LIMIT=$1
SEEDS=$2
REANALYZE=$3
shift 3
[ $# -gt 0 ] || { echo "usage: extend.sh LIMIT SEEDS REANALYZE CASE [CASE ...]"; exit 2; }
N=$(( $# + 1 + $([ "$REANALYZE" != "-" ] && echo 1 || echo 0) ))
[ $N -le 8 ] || { echo "$N files for \$OUT: the device tool brings back 8 at most"; exit 2; }
L=/tmp/extend-logs
mkdir -p $L
exec > >(tee $OUT/all.log) 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
python3 .gpu/prep.py || exit 1
THREADS=$(( $(nproc) / ($# + 1) ))
[ $THREADS -ge 1 ] || THREADS=1
LEFT=$((LIMIT - SECONDS - 5))
[ $LEFT -gt 30 ] || { echo "only $LEFT s left after set-up: nothing run"; exit 1; }
(while sleep 15; do for c in "$@" $REANALYZE; do cp bench/results/quality/$c.json $OUT/ 2>/dev/null; done; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $L/util.txt; done) &
COPIER=$!
echo "$# cases to $SEEDS seeds, $THREADS threads each, $LEFT s left at $SECONDS s"
( OMP_NUM_THREADS=$THREADS timeout 120 python3 -m pytest -q --noconftest -p device_fixtures -p no:cacheprovider tests/test_device.py 2>&1 | tail -15 > $L/pytest.txt
  if [ "$REANALYZE" != "-" ]; then
    OMP_NUM_THREADS=$THREADS timeout -k 10 $((LIMIT - SECONDS - 5)) python3 bench/bench_quality.py reanalyze --only $REANALYZE --device cuda > $L/reanalyze.log 2>&1
  fi ) &
PIDS=($!)
for c in "$@"; do
  OMP_NUM_THREADS=$THREADS timeout -k 10 $LEFT python3 bench/bench_quality.py extend --seeds $SEEDS --only $c --device cuda > $L/$c.log 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[@]}"
kill $COPIER 2>/dev/null
for c in "$@" $REANALYZE; do cp bench/results/quality/$c.json $OUT/ 2>/dev/null; done
cat $L/pytest.txt; tail -2 $L/reanalyze.log 2>/dev/null
for c in "$@"; do tail -6 $L/$c.log; done
sort $L/util.txt | uniq -c | sort -rn | head -3
echo "done at $SECONDS s"
