"""Output quality, not only loss: the base and the tuned model's answers to test prompts scored against the
test split's reference answers.

- ROUGE-L (Lin 2004): the longest common subsequence of the answer's and the reference's words, as an F-measure
  of its precision (share of the answer) and recall (share of the reference), beta 1. Words are casefolded
  ``\\w+`` tokens, no stemming: the same figure ``rouge_score``'s ``rougeL`` gives without its stemmer.
- Embedding similarity: the cosine of the answer and the reference under a sentence-transformers model
  (``evaluation.embeddingModel``, e.g. the curation's all-MiniLM-L6-v2), which credits a paraphrase ROUGE misses.

Both are means over the answered prompts, per model; each generation row keeps its own figures.
"""

from __future__ import annotations

import re
from typing import Any

_WORD = re.compile(r"\w+")


def _lcs(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, by one row of the dynamic programme at a time."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1 of ``answer`` against ``reference`` (0.0 when either has no word)."""
    a, r = _WORD.findall(answer.casefold()), _WORD.findall(reference.casefold())
    common = _lcs(a, r) if a and r else 0
    if not common:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def score_generations(generations: list[dict[str, Any]], embedding_model: str | None = None) -> dict[str, Any]:
    """Per model (base, tuned), the mean ROUGE-L and, with ``embedding_model``, the mean cosine against the
    references; each row of ``generations`` gets its ``{side}_rouge_l`` (and ``{side}_similarity``)."""
    rows = [g for g in generations if g.get("reference")]
    result: dict[str, Any] = {"answers": len(rows)}
    for side in ("base", "tuned"):
        for g in rows:
            g[f"{side}_rouge_l"] = round(rouge_l(g[side], g["reference"]), 4)
        result[f"{side}_rouge_l"] = _mean([g[f"{side}_rouge_l"] for g in rows])
    if embedding_model and rows:
        from kubetune.llm.embeddings import embedder

        model = embedder(embedding_model)
        references = model.encode([g["reference"] for g in rows])
        for side in ("base", "tuned"):
            answers = model.encode([g[side] for g in rows])
            for g, a, r in zip(rows, answers, references, strict=True):
                g[f"{side}_similarity"] = round(float(a @ r), 4)
            result[f"{side}_similarity"] = _mean([g[f"{side}_similarity"] for g in rows])
        result["embedding_model"] = embedding_model
    return result
