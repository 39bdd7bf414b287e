"""Chat requests under JSON schemas and their completions; seeds, retries and reading the JSON, over any engine.

An engine answers a batch of :class:`Request` s, each a conversation with its own JSON schema, temperature
and seed; it returns one :class:`Completion` per request, in order. A request carries its own seed (derived
from the spec's seed and what the request is about), so an answer does not depend on which batch, shard or
resumed run asked for it: the same spec, seed and model give the same dataset however the work was cut.

The engines: vLLM's offline batching (:mod:`kubetune.llm.engine`) and an OpenAI-compatible server
(:mod:`kubetune.llm.endpoint`). This module is standard library only: the judge and the endpoint backend
build on it without vLLM or torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol


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


def count(dropped: dict[str, int], reason: str, n: int = 1) -> None:
    """One more (or ``n`` more) dropped for ``reason``: the funnel's and the judge's tally."""
    dropped[reason] = dropped.get(reason, 0) + n


def is_json(completion: Completion) -> bool:
    if completion.finish_reason == "length":
        return False
    try:
        json.loads(completion.text)
    except json.JSONDecodeError:
        return False
    return True


def read_json(completion: Completion, dropped: dict[str, int]) -> Any:
    """The completion's JSON, or None with the reason counted (``truncated_answer`` or ``invalid_json``)."""
    if completion.finish_reason == "length":
        count(dropped, "truncated_answer")
        return None
    try:
        return json.loads(completion.text)
    except json.JSONDecodeError:
        count(dropped, "invalid_json")
        return None


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
