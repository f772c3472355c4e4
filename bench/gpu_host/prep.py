"""On the GPU host: MiniLM-L6 into /tmp/minilm, its float16-carried weights cast to float32."""

import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

src, dst = Path(".gpu/minilm"), Path("/tmp/minilm")
shutil.copytree(src, dst, dirs_exist_ok=True)
weights = load_file(str(dst / "model.fp16.safetensors"))
(dst / "model.fp16.safetensors").unlink()
full = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in weights.items()}
save_file(full, str(dst / "model.safetensors"), metadata={"format": "pt"})
print("prep: model at", dst, sum(v.numel() for v in weights.values()), "parameters")
