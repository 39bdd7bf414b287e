#!/usr/bin/env bash
# bench/methods on a lent GPU machine that has torch, transformers, peft and accelerate but no internet:
# the other packages travel as wheels in .whl/ (trl, datasets, dill, multiprocess, pydantic and its three
# needs, bitsandbytes), the model as a config and a tokenizer in .gpu-model/NAME/ (random weights are made
# there). Run from the repository root:  OUT=DIR bash bench/methods/device.sh .gpu-model/NAME [run.py options]
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
OUT=${OUT:-bench/methods/out}
MODEL=$1
shift
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia-smi.txt"
timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/services
timeout 120 python3 - <<'PYEOF' 2>&1 | tee "$OUT/versions.txt" || exit 1
import importlib.metadata as md, sys
for name in ("torch", "transformers", "peft", "accelerate", "trl", "datasets", "bitsandbytes", "pyarrow",
             "huggingface-hub", "fsspec", "pydantic", "typing-extensions"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "not installed")
import datasets, trl, kubetune.trainer.sft  # noqa: F401  what the trainer imports, before any device time is spent
print("python", sys.version.split()[0], "imports ok")
PYEOF
timeout 520 python3 bench/methods/run.py --model "$MODEL" --random-weights --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
