#!/bin/bash
# One device call (built by bench/gpu_host/make_bundle.sh): the CUDA tests, then one quality case
# in the time left (its JSON, written after every group, is copied out every 15 s).
#   run(command="bash .gpu/check.sh CASE LIMIT", carry=[".gpu", ".whl"], timeout_s=LIMIT + 10)
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
CASE=${1:-birds-minilm-5k-b-t3}
LIMIT=${2:-580}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/smi.txt
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())" | tee $OUT/versions.txt
python3 .gpu/prep.py || exit 1
timeout 90 python3 -m pytest -q --noconftest -p device_fixtures -p no:cacheprovider tests/test_device.py 2>&1 | tail -15 | tee $OUT/pytest.txt
(while sleep 15; do cp bench/results/quality/$CASE.json $OUT/ 2>/dev/null; done) &
echo "quality: $((LIMIT - SECONDS - 5)) s left at $SECONDS s"
timeout $((LIMIT - SECONDS - 5)) python3 bench/bench_quality.py run --only $CASE --device cuda 2>&1 | tee $OUT/quality.log
cp bench/results/quality/$CASE.json $OUT/
