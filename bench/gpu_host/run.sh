#!/bin/bash
# The device check, one call (built by bench/gpu_host/make_bundle.sh): the CUDA test, bench_gpu, then the Trainer comparison.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site:.gpu/site:. HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/smi.txt
python3 -c "import torch, transformers, pydantic; print('torch', torch.__version__, 'transformers', transformers.__version__, 'pydantic', pydantic.__version__, torch.cuda.get_device_name())" | tee $OUT/versions.txt
python3 .gpu/prep.py || exit 1
timeout 120 python3 -m pytest -q --noconftest -p device_fixtures -p no:cacheprovider tests/test_device.py 2>&1 | tail -15 | tee $OUT/pytest.txt
timeout 330 python3 bench/bench_gpu.py --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log
timeout 110 python3 bench/bench_train.py --device cuda --steps 50 --warmup 5 --repeats 2 --max-length 128 --out $OUT/train.json 2>&1 | tail -25 | tee $OUT/train.log
