"""Chat-template formatting and the seeded train/test split."""

from __future__ import annotations

import random
from typing import Any

from kubetune.datagen.generate import Pair


def to_record(pair: Pair, tokenizer: Any, system_prompt: str | None) -> dict[str, Any]:
    """One training row: the conversation, and its rendering split into prompt and completion.

    ``prompt`` ends where the assistant's turn begins, so a trainer that puts the loss on completions
    only learns the answers, never the questions. Both come from the tokenizer's own chat template.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": pair.instruction}, {"role": "assistant", "content": pair.answer}]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    return {
        "messages": messages,
        "prompt": prompt,
        "completion": full[len(prompt) :],
        "instruction": pair.instruction,
        "answer": pair.answer,
        "chunk_id": pair.chunk_id,
    }


def split(rows: list[dict], test_size: float, seed: int) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle, then ``test_size`` of the rows held out (at least one when there are two or more)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_test = round(len(rows) * test_size)
    if test_size > 0 and len(rows) >= 2:
        n_test = min(max(n_test, 1), len(rows) - 1)
    test = [rows[i] for i in sorted(order[:n_test])]
    train = [rows[i] for i in sorted(order[n_test:])]
    return train, test
