"""Chat-template formatting, the seeded train/test split grouped by source document, and the dataset card."""

from __future__ import annotations

import random
from typing import Any

# Columns every row carries, whatever the build's type: where it came from and how it was made.
LINEAGE_COLUMNS = ("source", "chunk_id", "origin")


def _lineage(sample: dict) -> dict:
    row = {k: sample[k] for k in LINEAGE_COLUMNS}
    row.update({k: v for k, v in sample.items() if k.startswith("judge_") or k.endswith("_score")})
    if "answer_logprob" in sample:  # curation.scoringModel's score (grounding)
        row["answer_logprob"] = sample["answer_logprob"]
    if sample.get("rejected_flaw"):  # a preference row whose rejected answer the curation would have dropped
        row["rejected_flaw"] = sample["rejected_flaw"]
    if "id" in sample:  # an instruction row's own id, kept through curation
        row["id"] = sample["id"]
    return row


def to_record(sample: dict, tokenizer: Any, system_prompt: str | None) -> dict[str, Any]:
    """One SFT row: the conversation, and its rendering split into prompt and completion.

    ``prompt`` ends where the assistant's turn begins, so a trainer that puts the loss on completions
    only learns the answers, never the questions. Both come from the tokenizer's own chat template.
    """
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages += [{"role": "user", "content": sample["instruction"]}, {"role": "assistant", "content": sample["answer"]}]
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer")
    return {
        "messages": messages,
        "prompt": prompt,
        "completion": full[len(prompt) :],
        "instruction": sample["instruction"],
        "answer": sample["answer"],
        **_lineage(sample),
    }


def to_preference_record(sample: dict, system_prompt: str | None) -> dict[str, Any]:
    """One DPO row in TRL's conversational preference format: ``prompt`` (the messages before the answer),
    ``chosen`` and ``rejected`` (the assistant's turn each); the trainer applies the chat template."""
    prompt = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prompt.append({"role": "user", "content": sample["instruction"]})
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": sample["chosen"]}],
        "rejected": [{"role": "assistant", "content": sample["rejected"]}],
        "instruction": sample["instruction"],
        **_lineage(sample),
    }


def split(rows: list[dict], test_size: float, seed: int, group: str = "source") -> tuple[list[dict], list[dict]]:
    """A seeded split by whole groups (rows sharing ``row[group]``, a source document): ``test_size`` of the
    rows, rounded to whole groups, are held out (at least one group when there are two or more), so a
    document's samples never straddle train and test. Rows keep their order within each side."""
    groups = sorted({r[group] for r in rows})
    random.Random(seed).shuffle(groups)
    sizes: dict[str, int] = {}
    for r in rows:
        sizes[r[group]] = sizes.get(r[group], 0) + 1
    target = len(rows) * test_size
    held: set[str] = set()
    n_test = 0
    for g in groups[:-1] if test_size > 0 else []:
        if n_test >= target or (held and n_test + sizes[g] - target > target - n_test):
            break  # adding this group would overshoot more than stopping short
        held.add(g)
        n_test += sizes[g]
    test = [r for r in rows if r[group] in held]
    train = [r for r in rows if r[group] not in held]
    return train, test
