#!/usr/bin/env bash
# The one command for the lent GPU machine (no internet there): install the carried bitsandbytes wheel into
# /tmp/site, print the versions, run the benchmark into $OUT. Run from the repository root, with
# bench/gpu/wheels/ carried (pip download --no-deps -d bench/gpu/wheels bitsandbytes==0.50.2).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/gpu/out}
mkdir -p "$OUT"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
  --format=csv | tee "$OUT/nvidia-smi.txt"
if ls bench/gpu/wheels/*.whl >/dev/null 2>&1; then
  timeout 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site bench/gpu/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
timeout 120 "$PY" - <<'PYEOF' || exit 1
import importlib.metadata as md, sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "|", torch.cuda.get_device_name(0))
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "trl", "datasets"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import bitsandbytes as bnb, bitsandbytes.functional as F
w = torch.randn(256, 256, device="cuda", dtype=torch.bfloat16)
q, s = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
err = (F.dequantize_4bit(q, s) - w).norm() / w.norm()
print(f"bitsandbytes NF4 round trip on the GPU: relative error {err:.3f}")
PYEOF
timeout 450 "$PY" bench/gpu/run.py --out "$OUT" --timeout 200 "$@" 2>&1 | tee "$OUT/log.txt"
# Two ranks, DDP and FSDP, where the machine has two GPUs (the one-GPU machines lent so far cannot): the model
# folder must be on that machine, at models/SmolLM2-135M-Instruct.
if [ "$(nvidia-smi -L | wc -l)" -ge 2 ] && [ -d models/SmolLM2-135M-Instruct ]; then
  timeout 400 "$PY" bench/distributed/run.py --gpu "${GPU_TYPE:-H100-80GB}" --out "$OUT/distributed" 2>&1 \
    | tee "$OUT/distributed.txt"
else
  echo "bench/distributed: skipped (needs two GPUs and models/SmolLM2-135M-Instruct)" | tee "$OUT/distributed.txt"
fi
