"""The chat engines a DatasetBuild writes with: vLLM's offline batching, or an OpenAI-compatible endpoint.

An engine answers a batch of :class:`Request` s, each a conversation with its own JSON schema, temperature
and seed; it returns one :class:`Completion` per request, in order. A request carries its own seed (derived
from the spec's seed and what the request is about), so an answer does not depend on which batch, shard or
resumed run asked for it: the same spec, seed and model give the same dataset however the work was cut.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from kubetune.spec.datasetbuild import GenerationSpec


@dataclass(frozen=True)
class Request:
    messages: list[dict[str, str]]
    schema: dict
    seed: int
    temperature: float | None = None  # None: the spec's generation.temperature
    max_tokens: int | None = None  # None: the spec's generation.maxTokens


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", or "length" when maxTokens cut it
    tokens: int


class ChatEngine(Protocol):
    """Answers chat requests under JSON schemas, one completion per request, in order."""

    def complete(self, requests: list[Request]) -> list[Completion]: ...


def request_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed from the spec's seed and what the request is about (chunk id, purpose, attempt)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def is_json(completion: Completion) -> bool:
    if completion.finish_reason == "length":
        return False
    try:
        json.loads(completion.text)
    except json.JSONDecodeError:
        return False
    return True


@dataclass
class RetryReport:
    retried: int = 0  # requests asked again
    discarded_tokens: int = 0  # tokens of the answers thrown away for a retry


def complete_with_retries(
    engine: ChatEngine, requests: list[Request], retries: int, valid: Callable[[Completion], bool] = is_json
) -> tuple[list[Completion], RetryReport]:
    """Completions, each asked again (with a new seed) up to ``retries`` times while not ``valid``.

    Returns the completions (the last attempt's where all failed, for the caller to count and drop) and what
    the retries cost.
    """
    completions = engine.complete(requests)
    report = RetryReport()
    for attempt in range(1, retries + 1):
        bad = [i for i, c in enumerate(completions) if not valid(c)]
        if not bad:
            break
        again = engine.complete(
            [replace(requests[i], seed=request_seed(requests[i].seed, f"retry{attempt}")) for i in bad]
        )
        report.retried += len(bad)
        report.discarded_tokens += sum(completions[i].tokens for i in bad)
        for i, completion in zip(bad, again, strict=True):
            completions[i] = completion
    return completions, report


class VllmEngine:
    """vLLM offline batching (``LLM.chat``) with structured outputs; the CPU build works the same way."""

    def __init__(self, spec: GenerationSpec, model: str | None = None):
        import torch
        from vllm import LLM

        self.spec = spec
        on_gpu = torch.cuda.is_available()
        options: dict = {"tensor_parallel_size": spec.tensor_parallel_size} if on_gpu else {}
        if not on_gpu:
            # Measured on 2 cores (bench/README.md): float32 without graph compilation decodes faster than
            # bfloat16 compiled, and starts in under a minute instead of three.
            # Chunked prefill off: vLLM 0.32 rewinds a seeded request's generator when it splits its prompt over
            # two steps, which a CPU torch.Generator cannot do (every request here has a seed), and the engine
            # dies ("CPU Generator does not use offset"; bench/generation/repro_chunked_prefill.py).
            options = {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False}
            if (os.cpu_count() or 1) <= 4:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # one core of two is too many to idle
        self.llm = LLM(
            model=model or spec.model,
            max_model_len=spec.max_model_len,
            seed=spec.seed,
            gpu_memory_utilization=spec.gpu_memory_utilization or (0.9 if on_gpu else 0.3),
            **options,
        )

    def complete(self, requests: list[Request]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not requests:
            return []
        params = [
            SamplingParams(
                temperature=self.spec.temperature if r.temperature is None else r.temperature,
                top_p=self.spec.top_p,
                max_tokens=r.max_tokens or self.spec.max_tokens,
                repetition_penalty=self.spec.repetition_penalty,
                seed=r.seed,
                structured_outputs=StructuredOutputsParams(json=r.schema),
            )
            for r in requests
        ]
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [
            Completion(o.outputs[0].text, o.outputs[0].finish_reason or "stop", len(o.outputs[0].token_ids))
            for o in outputs
        ]


def open_engine(spec: GenerationSpec, model: str | None = None) -> ChatEngine:
    """The engine the spec names; ``model`` overrides the model (a judge on another model)."""
    if spec.backend == "endpoint":
        from kubetune.datagen.endpoint import EndpointEngine

        assert spec.endpoint is not None  # the spec's CEL rule
        return EndpointEngine(spec, model=model)
    return VllmEngine(spec, model=model)
