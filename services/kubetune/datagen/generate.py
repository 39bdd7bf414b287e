"""Ask an LLM for instruction-answer pairs about each chunk, and parse what it answers.

The engine is vLLM's offline batching with JSON-schema structured outputs, so every answer is meant to be
JSON of a known shape; an answer that still fails (cut by ``maxTokens``, empty fields) is counted and
dropped, never fatal. Engines sit behind :class:`PairWriter`, so an OpenAI-compatible endpoint can join.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Protocol

from kubetune.spec.datasetbuild import CurationSpec, GenerationSpec

DEFAULT_SYSTEM_PROMPT = (
    "You write training data for a helpful assistant. Read the text the user gives and write {n} "
    "instruction-answer pairs about it. Each instruction is a question or task a user could ask without "
    "seeing the text; each answer is correct according to the text, complete, and never mentions "
    '"the text". Reply with JSON only: {{"pairs": [{{"instruction": "...", "answer": "..."}}]}}.'
)


# Bounds in the schema stop a small model's repetition loops inside a string before maxTokens cuts the JSON.
MAX_INSTRUCTION_CHARS = 300
MAX_ANSWER_CHARS = 1200


def pairs_schema(n: int) -> dict:
    """The JSON schema every answer must follow: up to ``n`` pairs of non-empty strings."""
    pair = {
        "type": "object",
        "properties": {
            "instruction": {"type": "string", "minLength": 1, "maxLength": MAX_INSTRUCTION_CHARS},
            "answer": {"type": "string", "minLength": 1, "maxLength": MAX_ANSWER_CHARS},
        },
        "required": ["instruction", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "items": pair, "minItems": 1, "maxItems": n}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


def conversation(chunk_text: str, spec: GenerationSpec) -> list[dict[str, str]]:
    system = (spec.system_prompt or DEFAULT_SYSTEM_PROMPT).format(n=spec.pairs_per_chunk)
    return [{"role": "system", "content": system}, {"role": "user", "content": chunk_text}]


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop", or "length" when maxTokens cut it
    tokens: int


class PairWriter(Protocol):
    """An engine that answers a batch of chat conversations under a JSON schema."""

    def complete(self, conversations: list[list[dict[str, str]]], schema: dict) -> list[Completion]: ...


class VllmPairWriter:
    """vLLM offline batching (``LLM.chat``) with structured outputs; the CPU build works the same way."""

    def __init__(self, spec: GenerationSpec):
        import torch
        from vllm import LLM

        self.spec = spec
        on_gpu = torch.cuda.is_available()
        cpu_options = {}
        if not on_gpu:
            # Measured on 2 cores (bench/README.md): float32 without graph compilation decodes faster than
            # bfloat16 compiled, and starts in under a minute instead of three.
            cpu_options = {"dtype": "float32", "enforce_eager": True}
            if (os.cpu_count() or 1) <= 4:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # one core of two is too many to idle
        self.llm = LLM(
            model=spec.model,
            max_model_len=spec.max_model_len,
            seed=spec.seed,
            gpu_memory_utilization=spec.gpu_memory_utilization or (0.9 if on_gpu else 0.3),
            **cpu_options,
        )

    def complete(self, conversations: list[list[dict[str, str]]], schema: dict) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = SamplingParams(
            temperature=self.spec.temperature,
            top_p=self.spec.top_p,
            max_tokens=self.spec.max_tokens,
            repetition_penalty=self.spec.repetition_penalty,
            seed=self.spec.seed,
            structured_outputs=StructuredOutputsParams(json=schema),
        )
        outputs = self.llm.chat(conversations, params, use_tqdm=True)
        return [
            Completion(o.outputs[0].text, o.outputs[0].finish_reason or "stop", len(o.outputs[0].token_ids))
            for o in outputs
        ]


@dataclass(frozen=True)
class Pair:
    instruction: str
    answer: str
    chunk_id: str


def parse_pairs(completion: Completion, chunk_id: str, curation: CurationSpec, dropped: dict[str, int]) -> list[Pair]:
    """The valid pairs of one answer; each reason for dropping is counted in ``dropped``."""

    def drop(reason: str, count: int = 1) -> None:
        dropped[reason] = dropped.get(reason, 0) + count

    if completion.finish_reason == "length":
        drop("truncated_answer")
        return []
    try:
        payload = json.loads(completion.text)
    except json.JSONDecodeError:
        drop("invalid_json")
        return []
    items = payload.get("pairs") if isinstance(payload, dict) else None
    if not isinstance(items, list):
        drop("wrong_shape")
        return []
    pairs = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("instruction"), str)
            or not isinstance(item.get("answer"), str)
        ):
            drop("wrong_shape")
            continue
        instruction, answer = item["instruction"].strip(), item["answer"].strip()
        if len(instruction) < curation.min_instruction_chars:
            drop("instruction_too_short")
        elif len(answer) < curation.min_answer_chars:
            drop("answer_too_short")
        else:
            pairs.append(Pair(instruction, answer, chunk_id))
    return pairs
