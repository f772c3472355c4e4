#!/bin/bash
# The device check for one quality case on the GPU (built by bench/gpu_host/make_bundle.sh).
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
python3 .gpu/prep.py || exit 1
CASE=${1:-birds-minilm-5k-t3}
(while sleep 15; do cp bench/results/quality/$CASE.json $OUT/ 2>/dev/null; done) &
timeout ${2:-420} python3 bench/bench_quality.py run --only $CASE --device cuda 2>&1 | tee $OUT/quality.log
cp bench/results/quality/$CASE.json $OUT/
