"""Serve a LoRA adapter with vLLM's LoRA support (the CPU build) beside its base model and print, as JSON, the
base's and the adapter's greedy answers to the same prompts: ``python tests/e2e/serve_lora.py BASE ADAPTER``.

A script, not a test body: vLLM starts its engine core in a spawned process, which re-imports ``__main__``."""

from __future__ import annotations

import json
import os
import sys

PROMPTS = ["What is LoRA in fine-tuning?", "Why deduplicate a training dataset?"]


def main(base: str, adapter: str) -> None:
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    # As VllmEngine on a CPU (kubetune.llm.engine): float32, no graph compilation, no chunked prefill.
    llm = LLM(model=base, enable_lora=True, max_lora_rank=64, max_loras=1, dtype="float32", enforce_eager=True,
              max_model_len=1024, gpu_memory_utilization=0.2, enable_chunked_prefill=False, seed=0)  # fmt: skip
    params = SamplingParams(temperature=0.0, max_tokens=48)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    answers = {
        "base": [o.outputs[0].text for o in llm.chat(chats, params, use_tqdm=False)],
        "tuned": [
            o.outputs[0].text
            for o in llm.chat(chats, params, use_tqdm=False, lora_request=LoRARequest("published", 1, adapter))
        ],
    }
    print(json.dumps(answers))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
