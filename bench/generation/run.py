"""DatasetBuild's generate stage against a bare vLLM script: same engine, prompts, seeds and sampling.

    flock /tmp/kubetune-heavy.lock .venv/bin/python bench/generation/run.py      # see bench/generation/README.md

One process, one ``vllm.LLM``: kubetune's own ``VllmEngine(spec.generation)`` (float32, enforce_eager,
gpu_memory_utilization 0.3, no chunked prefill, no reserved CPU on <= 4 cores); the bare side calls the same
``engine.llm``.

* Prompts: ``pipeline.prepare()`` on examples/quickstart.yaml's DatasetBuild (the chunks the pipeline sends),
  repeated ``--copies`` times with distinct chunk ids (``<id>~copyK``), so every copy gets its own request seed.
* bare: ONE ``llm.chat(messages, [SamplingParams(...)], use_tqdm=False)`` over all prompts, with the
  messages, schema and per-request seed of ``generate.sample_requests`` and the spec's sampling.
* kubetune: ``Build(spec, tmp, log, engine_factory).parted("generate", chunks, _generate)``: the real stage
  (parts of generation.batchSize, each written to disk, ``complete_with_retries`` for malformed answers,
  ``parse_samples``), in a fresh output folder per run, so no part is reused.

Before any timed run a warm-up (both sides, short budget) compiles the JSON-schema grammar; before each timed
run the prefix cache is reset, so every run pays the same prefill. The rounds alternate the order
(bare, kubetune@64, kubetune@16 / kubetune@16, kubetune@64, bare, ...); the median is reported.

Validity is counted per completion, as ``parse_samples`` reads it: ``truncated_answer`` (finish_reason
length), ``invalid_json``, ``wrong_shape`` (not {"pairs": [non-empty list of {instruction, answer}
non-empty strings]}); else valid. When the rate at ``maxTokens`` is under 99 %, the bare side and
kubetune@64 run again with ``--big-max-tokens``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "services"))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- specs and prompts ------------------------------------------------------------------------------------------


def quickstart_spec():
    from kubetune.api.v1alpha1.resources import load_resources

    path = ROOT / "examples" / "quickstart.yaml"
    (res,) = [r for r in load_resources(path.read_text(), str(path)) if r.kind == "DatasetBuild"]
    return res.spec


def with_generation(spec, **changes):
    """The spec with generation fields changed (camelCase wire names), validated again."""
    from kubetune.api.v1alpha1.resources import parse_spec

    wire = spec.to_wire()
    wire["generation"] = {**wire["generation"], **changes}
    return parse_spec("DatasetBuild", wire)


def corpus(spec, copies: int) -> tuple[list[dict], int]:
    """kubetune's own chunks of examples/data (prepare(): ingest, clean, dedup, chunk), ``copies`` times."""
    from kubetune.datagen import pipeline

    chunks = pipeline.prepare(pipeline.Build(spec, None, lambda _: None, engine_factory=None))
    return [
        {**c, "chunk_id": c["chunk_id"] if k == 0 else f"{c['chunk_id']}~copy{k}"}
        for k in range(copies)
        for c in chunks
    ], len(chunks)


# -- validity, as parse_samples reads an answer ------------------------------------------------------------------


def reason(text: str, finish_reason: str) -> str:
    """'valid', or the reason parse_samples would count: truncated_answer, invalid_json, wrong_shape."""
    if finish_reason == "length":
        return "truncated_answer"
    try:
        payload = json.loads(text)
    except json.JSONDecodeError:
        return "invalid_json"
    items = payload.get("pairs") if isinstance(payload, dict) else None
    if not isinstance(items, list) or not items:
        return "wrong_shape"
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(f), str) and item[f].strip() for f in ("instruction", "answer")
        ):
            return "wrong_shape"
    return "valid"


def tally(reasons: list[str]) -> dict:
    out = {r: reasons.count(r) for r in sorted(set(reasons))}
    return {
        "n": len(reasons),
        "valid": out.get("valid", 0),
        "valid_rate": out.get("valid", 0) / max(len(reasons), 1),
        "reasons": {k: v for k, v in out.items() if k != "valid"},
    }


# -- the instrumented kubetune engine ---------------------------------------------------------------------------


class ChatRecorder:
    """``engine.llm`` for the kubetune view: the same LLM, with each chat call's prompt and cached tokens noted."""

    def __init__(self, llm, sink: list):
        self._llm, self._sink = llm, sink

    def chat(self, *args, **kwargs):
        outputs = self._llm.chat(*args, **kwargs)
        self._sink.append(
            {
                "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
                "cached_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
            }
        )
        return outputs

    def __getattr__(self, name):
        return getattr(self._llm, name)


class Recorder:
    """kubetune's VllmEngine (a shallow copy sharing the one LLM, its spec the Build's generation spec),
    timing every ``complete`` call: how many requests, seconds, tokens, and whether it was a retry."""

    def __init__(self, base, generation, original_seeds: set[int]):
        self.engine = copy.copy(base)
        self.engine.spec = generation
        self.chats: list[dict] = []
        self.engine.llm = ChatRecorder(base.llm, self.chats)
        self.original = original_seeds
        self.calls: list[dict] = []
        self.by_seed: dict[int, object] = {}

    def complete(self, requests):
        started = time.perf_counter()
        completions = self.engine.complete(requests)
        seconds = time.perf_counter() - started
        retry = any(r.seed not in self.original for r in requests)
        self.calls.append(
            {
                "requests": len(requests),
                "seconds": round(seconds, 3),
                "tokens": sum(c.tokens for c in completions),
                "retry": retry,
                **(self.chats[-1] if self.chats else {}),
            }
        )
        for r, c in zip(requests, completions, strict=True):
            self.by_seed[r.seed] = c
        return completions


def patch_llm(mode: str) -> dict:
    """vllm.LLM as VllmEngine will construct it, its keyword arguments noted. ``as-is``: VllmEngine's options
    unchanged; ``chunked-prefill`` / ``no-chunked-prefill``: ``enable_chunked_prefill`` forced on (vLLM's
    default, VllmEngine before it turned it off on CPU) or off."""
    import vllm

    seen: dict = {}
    original = vllm.LLM

    class LLM(original):
        def __init__(self, *args, **kwargs):
            if mode != "as-is":
                kwargs["enable_chunked_prefill"] = mode == "chunked-prefill"
            seen.update({k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in kwargs.items()})
            seen["VLLM_CPU_NUM_OF_RESERVED_CPU"] = os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")
            super().__init__(*args, **kwargs)

    vllm.LLM = LLM
    return seen


def descendants() -> list[int]:
    """The ids of this process's live descendants (vLLM's engine core and worker), children first."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out, frontier = [], [os.getpid()]
    while frontier:
        p = frontier.pop()
        for child, ppid in parent.items():
            if ppid == p and child not in out:
                out.append(child)
                frontier.append(child)
    return out


def scheduler_config(llm) -> dict:
    try:
        config = llm.llm_engine.vllm_config
        return {
            "max_num_batched_tokens": config.scheduler_config.max_num_batched_tokens,
            "max_num_seqs": config.scheduler_config.max_num_seqs,
            "enable_chunked_prefill": config.scheduler_config.enable_chunked_prefill,
            "enable_prefix_caching": config.cache_config.enable_prefix_caching,
        }
    except AttributeError as exc:
        return {"error": str(exc)}


def _tree_cpu_s() -> float:
    """CPU seconds (user + system) of this process and its live descendants (vLLM's engine core, worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    return sum(cpu.get(p, 0.0) for p in [os.getpid(), *descendants()])


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine spent busy (all processes), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Interference:
    """How much CPU other processes took while a run was timed (this machine is shared)."""

    def __enter__(self):
        self.busy, self.mine, self.t = _busy_cpu_s(), _tree_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        other = max((_busy_cpu_s() - self.busy) - (_tree_cpu_s() - self.mine), 0.0)
        self.result = {
            "other_processes_cpu_s": round(other, 1),
            "other_processes_share": round(other / (wall * (os.cpu_count() or 1)), 3),
        }


# -- the two sides ------------------------------------------------------------------------------------------------


def run_bare(llm, requests, gen) -> dict:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    llm.reset_prefix_cache()
    started = time.perf_counter()
    params = [
        SamplingParams(
            temperature=gen.temperature,
            top_p=gen.top_p,
            max_tokens=gen.max_tokens,
            repetition_penalty=gen.repetition_penalty,
            seed=r.seed,
            structured_outputs=StructuredOutputsParams(json=r.schema),
        )
        for r in requests
    ]
    outputs = llm.chat([r.messages for r in requests], params, use_tqdm=False)
    wall = time.perf_counter() - started
    texts = [o.outputs[0].text for o in outputs]
    reasons = [reason(o.outputs[0].text, o.outputs[0].finish_reason or "stop") for o in outputs]
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "side": "bare",
        "wall_s": round(wall, 3),
        "tokens": tokens,
        "tok_per_s": round(tokens / wall, 1),
        "prompt_tokens": sum(len(o.prompt_token_ids or []) for o in outputs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        "validity": tally(reasons),
        "_texts": {r.seed: t for r, t in zip(requests, texts, strict=True)},
    }


def run_kubetune(engine, spec, chunks, requests, bare_texts: dict | None) -> dict:
    from kubetune.datagen import pipeline
    from kubetune.llm.chat import request_seed

    original = {r.seed for r in requests}
    recorders: list[Recorder] = []

    def factory(generation, model=None):
        assert model is None
        recorders.append(Recorder(engine, generation, original))
        return recorders[-1]

    engine.llm.reset_prefix_cache()
    out = Path(tempfile.mkdtemp(prefix="kubetune-bench-gen-"))
    lines: list[str] = []
    try:
        started = time.perf_counter()
        b = pipeline.Build(spec, out, lines.append, engine_factory=factory)
        rows = b.parted("generate", chunks, lambda part, first: pipeline._generate(b, part, first))
        wall = time.perf_counter() - started
        parts = sorted(p.name for p in (out / "stages" / "generate").glob("part-*.done.json"))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    (rec,) = recorders
    report = b.funnel.stages[-1]
    first = [rec.by_seed[r.seed] for r in requests]
    final = []
    for r in requests:
        seed, k = r.seed, 1
        while (retried := request_seed(r.seed, f"retry{k}")) in rec.by_seed:
            seed, k = retried, k + 1
        final.append(rec.by_seed[seed])
    llm_first = sum(c["seconds"] for c in rec.calls if not c["retry"])
    llm_retry = sum(c["seconds"] for c in rec.calls if c["retry"])
    tokens_all = sum(c["tokens"] for c in rec.calls)
    result = {
        "side": "kubetune",
        "batch_size": spec.generation.batch_size,
        "wall_s": round(wall, 3),
        "tokens": tokens_all,  # every token the LLM wrote, retries included
        "tok_per_s": round(tokens_all / wall, 1),
        "funnel_tokens": report.tokens,  # what the stage report counts (final completions only)
        "prompt_tokens": sum(c.get("prompt_tokens", 0) for c in rec.calls),
        "cached_prompt_tokens": sum(c.get("cached_tokens", 0) for c in rec.calls),
        "parts_written": len(parts),
        "calls": rec.calls,
        "llm_first_s": round(llm_first, 3),
        "llm_retry_s": round(llm_retry, 3),
        "other_s": round(wall - llm_first - llm_retry, 3),  # requests, parsing, part files, progress.json
        "retried_requests": b.retries,
        "rows": len(rows),
        "funnel_dropped": report.dropped,
        "validity_first_attempt": tally([reason(c.text, c.finish_reason) for c in first]),
        "validity": tally([reason(c.text, c.finish_reason) for c in final]),
    }
    if bare_texts:
        same = sum(bare_texts.get(r.seed) == c.text for r, c in zip(requests, first, strict=True))
        result["first_attempt_identical_to_bare"] = same
    return result


# -- main ---------------------------------------------------------------------------------------------------------


def summarise(runs: list[dict], key: str) -> dict:
    walls = [r["wall_s"] for r in runs]
    out = {
        "config": key,
        "runs": len(runs),
        "wall_s": walls,
        "median_wall_s": round(statistics.median(walls), 2),
        "median_tok_per_s": round(statistics.median(r["tok_per_s"] for r in runs), 1),
        "tokens": [r["tokens"] for r in runs],
        "validity": [r["validity"] for r in runs],
        "other_processes_share": [r.get("other_processes_share") for r in runs],
    }
    if runs[0]["side"] == "kubetune":
        for k in ("llm_first_s", "llm_retry_s", "other_s"):
            out[f"median_{k}"] = round(statistics.median(r[k] for r in runs), 2)
        out["retried_requests"] = [r["retried_requests"] for r in runs]
        out["validity_first_attempt"] = [r["validity_first_attempt"] for r in runs]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--copies", type=int, default=4, help="copies of the corpus (distinct chunk ids and seeds)")
    parser.add_argument("--reps", type=int, default=2, help="timed runs per configuration")
    parser.add_argument("--small-batch", type=int, default=16, help="the smaller generation.batchSize")
    parser.add_argument("--big-max-tokens", type=int, default=768, help="maxTokens of the sized-budget runs")
    parser.add_argument(
        "--big",
        choices=("auto", "always", "never"),
        default="auto",
        help="run the sized budget: when the valid rate is under 99 %% (auto), always, never",
    )
    parser.add_argument("--big-reps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument(
        "--engine",
        choices=("as-is", "no-chunked-prefill", "chunked-prefill"),
        default="as-is",
        help="as-is: VllmEngine's options unchanged; the others force enable_chunked_prefill off or on "
        "(on: vLLM 0.32 on CPU dies once a batch's prompts exceed max_num_batched_tokens, see README)",
    )
    args = parser.parse_args()
    os.chdir(ROOT)  # the spec's relative paths (examples/data, models/...)
    t0 = time.perf_counter()

    from kubetune.datagen import generate
    from kubetune.datagen.documents import Chunk
    from kubetune.llm.chat import Request
    from kubetune.llm.engine import VllmEngine

    base_spec = quickstart_spec()
    chunks, distinct = corpus(base_spec, args.copies)
    gen = base_spec.generation
    log(
        f"{distinct} chunks x {args.copies} copies = {len(chunks)} prompts; maxTokens {gen.max_tokens}, "
        f"batchSize {gen.batch_size}, temperature {gen.temperature}, top_p {gen.top_p}, "
        f"repetition_penalty {gen.repetition_penalty}, malformedRetries {gen.malformed_retries}"
    )

    llm_options = patch_llm(args.engine)
    started = time.perf_counter()
    engine = VllmEngine(gen)
    startup = time.perf_counter() - started
    log(f"engine up in {startup:.1f}s")
    llm = engine.llm

    def requests_for(spec):
        return generate.sample_requests([Chunk(**c) for c in chunks], spec)

    # Warm-up: both code paths, the same schema, a short budget.
    started = time.perf_counter()
    warm = requests_for(base_spec)[:distinct]
    engine.complete([Request(r.messages, r.schema, r.seed, max_tokens=16) for r in warm])
    run_bare(llm, warm, with_generation(base_spec, maxTokens=16).generation)
    warmup = time.perf_counter() - started
    log(f"warm-up {warmup:.1f}s")

    results: dict = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "vllm": __import__("vllm").__version__,
        "torch": __import__("torch").__version__,
        "model": gen.model,
        "prompts": len(chunks),
        "distinct_chunks": distinct,
        "copies": args.copies,
        "sampling": {
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "repetition_penalty": gen.repetition_penalty,
            "pairs_per_chunk": gen.pairs_per_chunk,
            "malformed_retries": gen.malformed_retries,
        },
        "engine": args.engine,
        "llm_options": llm_options,
        "scheduler": scheduler_config(llm),
        "engine_startup_s": round(startup, 1),
        "warmup_s": round(warmup, 1),
        "runs": [],
    }

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        clean = {**results, "runs": [{k: v for k, v in r.items() if not k.startswith("_")} for r in results["runs"]]}
        (args.out / "results.json").write_text(json.dumps(clean, indent=2))

    def series(max_tokens: int, batches: list[int], reps: int) -> None:
        spec = with_generation(base_spec, maxTokens=max_tokens)
        requests = requests_for(spec)
        kinds = ["bare"] + [f"kubetune@{b}" for b in batches]
        bare_texts = None
        for rep in range(reps):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                with Interference() as seen:
                    if kind == "bare":
                        r = run_bare(llm, requests, spec.generation)
                        bare_texts = r["_texts"]
                    else:
                        spec_b = with_generation(spec, maxTokens=max_tokens, batchSize=int(kind.split("@")[1]))
                        r = run_kubetune(engine, spec_b, chunks, requests, bare_texts)
                r |= seen.result
                r |= {"config": f"{kind} max_tokens={max_tokens}", "max_tokens": max_tokens, "rep": rep}
                results["runs"].append(r)
                v = r["validity"]
                extra = (
                    f" (LLM first {r['llm_first_s']:.1f}s, retries {r['llm_retry_s']:.1f}s "
                    f"[{r['retried_requests']} req], other {r['other_s']:.2f}s, {r['parts_written']} parts)"
                    if r["side"] == "kubetune"
                    else ""
                )
                log(
                    f"{r['config']} rep {rep}: {r['wall_s']:.1f}s, {r['tokens']} tokens, {r['tok_per_s']} tok/s, "
                    f"valid {v['valid']}/{v['n']} {v['reasons']}{extra}; other processes took "
                    f"{r['other_processes_cpu_s']} CPU s ({100 * r['other_processes_share']:.0f} % of the machine)"
                )
                save()

    series(gen.max_tokens, [gen.batch_size, args.small_batch], args.reps)
    bare_runs = [r for r in results["runs"] if r["side"] == "bare"]
    rate = min(r["validity"]["valid_rate"] for r in bare_runs)
    if args.big == "always" or (args.big == "auto" and rate < 0.99):
        series(args.big_max_tokens, [gen.batch_size], args.big_reps)

    configs: dict[str, list] = {}
    for r in results["runs"]:
        configs.setdefault(r["config"], []).append(r)
    results["summary"] = [summarise(runs, key) for key, runs in configs.items()]
    for s in results["summary"]:
        mt = s["config"].split("max_tokens=")[1]
        bare = next(x for x in results["summary"] if x["config"] == f"bare max_tokens={mt}")
        base = max(statistics.median(bare["wall_s"]), 1e-9)
        s["ratio_vs_bare"] = round(statistics.median(s["wall_s"]) / base, 3)
        if "median_llm_retry_s" in s:  # like for like: the bare script asks nothing again
            runs = configs[s["config"]]
            s["ratio_vs_bare_without_retries"] = round(
                statistics.median(r["wall_s"] - r["llm_retry_s"] for r in runs) / base, 3
            )
    results["total_s"] = round(time.perf_counter() - t0, 1)
    save()
    write_markdown(results, args.out / "results.md")
    log(f"done in {results['total_s']:.0f}s")
    print((args.out / "results.md").read_text())


def pct(v: dict) -> str:
    return f"{100 * v['valid'] / v['n']:.1f} % ({v['valid']}/{v['n']})"


def write_markdown(results: dict, path: Path) -> None:
    lines = [
        f"SmolLM2-135M-Instruct, {results['prompts']} prompts ({results['distinct_chunks']} quickstart chunks x "
        f"{results['copies']}), vllm {results['vllm']}, torch {results['torch']}, {results['machine']['cpus']} CPUs; "
        f"engine start-up {results['engine_startup_s']} s, warm-up {results['warmup_s']} s, whole run "
        f"{results['total_s']} s.",
        "",
        "| configuration | wall s (median; runs) | kubetune / bare (without retries) | tokens (runs) | tok/s | "
        "valid JSON (first attempt) | valid JSON (after retries) | dropped (after retries) | retried requests | "
        "kubetune time: LLM first pass / retries / other s | CPU taken by other processes (runs) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in results["summary"]:
        kube = "validity_first_attempt" in s
        first = s["validity_first_attempt"] if kube else s["validity"]
        reasons: dict[str, int] = {}
        for v in s["validity"]:
            for k, n in v["reasons"].items():
                reasons[k] = reasons.get(k, 0) + n
        lines.append(
            f"| {s['config']} | {s['median_wall_s']} ({', '.join(f'{w:.1f}' for w in s['wall_s'])}) | "
            f"{s['ratio_vs_bare']:.3f}"
            + (f" ({s['ratio_vs_bare_without_retries']:.3f})" if kube else "")
            + f" | {', '.join(map(str, s['tokens']))} | {s['median_tok_per_s']} | "
            f"{' / '.join(pct(v) for v in first)} | {' / '.join(pct(v) for v in s['validity']) if kube else '-'} | "
            f"{reasons or '-'} (all runs) | {', '.join(map(str, s['retried_requests'])) if kube else '-'} | "
            + (f"{s['median_llm_first_s']} / {s['median_llm_retry_s']} / {s['median_other_s']} |" if kube else "- |")
            + f" {', '.join(f'{100 * x:.0f} %' for x in s['other_processes_share'])} |"
        )
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
