"""vLLM 0.32 on CPU dies when a seeded request's prompt is split over two steps; VllmEngine's fix.

    flock /tmp/kubetune-heavy.lock .venv/bin/python bench/generation/repro_chunked_prefill.py

Each case runs in its own process: ``VllmEngine(spec.generation)`` (the quickstart spec), then ``complete()``
on the quickstart's 12 chunks twice over (24 requests, each with its own seed, about 8,200 prompt tokens:
more than vLLM's ``max_num_batched_tokens`` of 4,096), maxTokens 8.

* chunked-prefill: ``enable_chunked_prefill=True``, vLLM's default and VllmEngine's options before it turned
  it off on CPU. The scheduler splits a prompt over two steps; for the request whose prefill is partial the
  model runner discards the sampled token and rewinds that request's generator,
  ``gen.set_offset(gen.get_offset() - 4)``, which a CPU ``torch.Generator`` does not support:
  ``RuntimeError: CPU Generator does not use offset``, and the engine core dies. The quickstart's 12 prompts
  (4,092 tokens) fit the budget by 4 tokens, which is why ``make demo`` never hit it.
* as-is: VllmEngine as it stands (``enable_chunked_prefill=False`` on CPU): prompts are scheduled whole.

Writes ``repro_chunked_prefill.json`` next to this file.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def case(mode: str) -> None:
    sys.path.insert(0, str(HERE))
    import run  # this folder's benchmark: the spec, the corpus, the LLM patch

    os.chdir(run.ROOT)
    from kubetune.datagen import generate
    from kubetune.datagen.documents import Chunk
    from kubetune.llm.chat import Request
    from kubetune.llm.engine import VllmEngine

    spec = run.quickstart_spec()
    chunks, _ = run.corpus(spec, 2)
    options = run.patch_llm(mode)
    engine = VllmEngine(spec.generation)
    requests = [
        Request(r.messages, r.schema, r.seed, max_tokens=8)
        for r in generate.sample_requests([Chunk(**c) for c in chunks], spec)
    ]
    started = time.perf_counter()
    try:
        completions = engine.complete(requests)
        result = {"ok": True, "completions": len(completions)}
    except Exception as exc:
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    result |= {
        "mode": mode,
        "requests": len(requests),
        "seconds": round(time.perf_counter() - started, 1),
        "llm_options": options,
        "scheduler": run.scheduler_config(engine.llm),
    }
    print("RESULT " + json.dumps(result), flush=True)
    # A dead engine core can hang the interpreter's shutdown: end the engine processes this one started.
    for pid in reversed(run.descendants()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os._exit(0)


def main() -> None:
    results = []
    for mode in ("chunked-prefill", "as-is"):
        with tempfile.TemporaryFile("w+") as log:
            subprocess.run([sys.executable, __file__, mode], stdout=log, stderr=subprocess.STDOUT, timeout=600)
            log.seek(0)
            out = log.read()
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        result = json.loads(line[7:]) if line else {"mode": mode, "ok": False, "error": out[-300:]}
        result["worker_error"] = next((ln.strip() for ln in out.splitlines() if "does not use offset" in ln), None)
        results.append(result)
        print(json.dumps(result), flush=True)
    (HERE / "repro_chunked_prefill.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        case(sys.argv[1])
    else:
        main()
