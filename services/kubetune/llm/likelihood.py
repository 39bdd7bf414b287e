"""How likely a causal LM finds an answer given its source and instruction: the mean log-probability of the answer's
tokens after a prompt that holds the source text and the question. An answer the source supports is likely (the
model can read it off the text); fluent nonsense ("Serialization happens when the stream forgets its objects") and
many answers that contradict the source are not. The curation's grounding drops a sample below a floor
(``low_likelihood``); on the labelled bench (bench/quality) SmolLM2-135M-Instruct's scores separate word salad
from good rows with an AUC of 0.94, and contradicting answers with 0.88.

The model is read from a local folder (``curation.scoringModel``), never a hub; on a GPU in bfloat16, else float32
on the CPU. One sample a forward pass: the source is cut to its first ``MAX_SOURCE_CHARS`` characters and the prompt
to its last ``MAX_PROMPT_TOKENS`` tokens, the answer to its first ``MAX_ANSWER_TOKENS``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

MAX_SOURCE_CHARS = 3000
MAX_PROMPT_TOKENS = 700
MAX_ANSWER_TOKENS = 200


@functools.cache
def _model(path: str) -> tuple[Any, Any, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder, never a hub
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(path) / "config.json").exists():
        raise FileNotFoundError(f"curation.scoringModel {path} holds no config.json: name a causal LM's folder")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return AutoTokenizer.from_pretrained(path), model, device


def prompt(source: str | None, instruction: str) -> str:
    """The scoring prompt: the source text (cut), then the question; without a source (``None``) the question alone,
    which is how bench/quality measures what the source adds."""
    question = f"Question: {instruction}\nAnswer:"
    return question if source is None else f"Text:\n{source[:MAX_SOURCE_CHARS]}\n\n{question}"


def token_logprobs(
    path: str, items: Sequence[tuple[str | None, str, str]], progress: Callable[[int], None] | None = None
) -> list[list[float]]:
    """For each (source, instruction, answer), the log-probability of each of the answer's tokens under the model at
    ``path``, after :func:`prompt`: an empty list for an empty answer."""
    if not items:
        return []
    import torch

    tokenizer, model, device = _model(path)
    scores = []
    for done, (source, instruction, answer) in enumerate(items, 1):
        context = tokenizer(prompt(source, instruction), add_special_tokens=False).input_ids[-MAX_PROMPT_TOKENS:]
        target = tokenizer(" " + answer.strip(), add_special_tokens=False).input_ids[:MAX_ANSWER_TOKENS]
        if target:
            ids = torch.tensor([context + target], device=device)
            with torch.no_grad():
                logits = model(ids).logits[0, len(context) - 1 : -1].float()
            picked = logits.log_softmax(-1).gather(1, torch.tensor(target, device=device)[:, None])
            scores.append(picked[:, 0].tolist())
        else:
            scores.append([])
        if progress is not None:
            progress(done)
    return scores


def answer_logprobs(
    path: str, items: Sequence[tuple[str, str, str]], progress: Callable[[int], None] | None = None
) -> list[float]:
    """For each (source, instruction, answer), the mean log-probability per answer token under the model at
    ``path`` (0 is certain, and for an empty answer; the lower, the less the source and the question explain the
    answer)."""
    return [sum(t) / len(t) if t else 0.0 for t in token_logprobs(path, items, progress)]
