"""vLLM on CPU: start-up time and decode throughput of SmolLM2-135M per engine setting, one engine per process.

    .venv/bin/python bench/vllm_cpu_throughput.py            # every setting, a table at the end
    .venv/bin/python bench/vllm_cpu_throughput.py --one float32 eager 0

Each setting runs 12 chat prompts with 200 new tokens each (ignore_eos, so every run decodes the same
number of tokens), once without and once with the JSON schema kubetune's datagen uses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
SETTINGS = [  # dtype, graph mode, CPUs vLLM reserves for its engine process
    ("float32", "eager", "1"),
    ("float32", "eager", "0"),
    ("bfloat16", "compiled", "0"),
]


def one(dtype: str, mode: str) -> dict:
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    from kubetune.datagen.generate import pairs_schema

    started = time.perf_counter()
    llm = LLM(
        model=str(MODEL),
        dtype=dtype,
        enforce_eager=mode == "eager",
        max_model_len=2048,
        gpu_memory_utilization=0.3,
        seed=42,
    )
    result = {"startup_s": round(time.perf_counter() - started, 1)}
    prompts = [[{"role": "user", "content": f"Write three questions about topic {i} as JSON."}] for i in range(12)]
    for structured in (False, True):
        params = SamplingParams(
            temperature=0.7,
            max_tokens=200,
            min_tokens=200 if not structured else 0,
            ignore_eos=not structured,
            seed=42,
            structured_outputs=StructuredOutputsParams(json=pairs_schema(3)) if structured else None,
        )
        t = time.perf_counter()
        outs = llm.chat(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - t
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        key = "json_schema" if structured else "free"
        result[f"{key}_tokens"] = tokens
        result[f"{key}_tok_per_s"] = round(tokens / seconds, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", nargs=3, metavar=("DTYPE", "MODE", "RESERVED"))
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], args.one[1])), flush=True)
        return
    rows = []
    for dtype, mode, reserved in SETTINGS:
        env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": reserved}
        proc = subprocess.run(
            [sys.executable, __file__, "--one", dtype, mode, reserved],
            env=env,
            text=True,
            capture_output=True,
            timeout=900,
        )
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        result = json.loads(line[7:]) if line else {"error": proc.stderr[-300:]}
        rows.append({"dtype": dtype, "mode": mode, "reserved_cpus": reserved, **result})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{os.cpu_count()} CPUs")
    print("| dtype | graphs | reserved CPUs | start-up s | free tok/s | JSON-schema tok/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dtype']} | {r['mode']} | {r['reserved_cpus']} | {r.get('startup_s')} | "
            f"{r.get('free_tok_per_s')} | {r.get('json_schema_tok_per_s')} |"
        )


if __name__ == "__main__":
    main()
