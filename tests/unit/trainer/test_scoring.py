"""Output quality against the references: ROUGE-L on known pairs, and both figures on generation rows."""

from __future__ import annotations

import pytest

from kubetune.trainer import scoring


@pytest.mark.parametrize(
    ("answer", "reference", "expected"),
    [
        ("LoRA trains two small matrices", "LoRA trains two small matrices", 1.0),
        ("the cat sat", "nothing alike here", 0.0),
        ("", "LoRA", 0.0),
        # Lin 2004's example: the LCS "police the gunman" is 3 of 4 words on each side; in the reordered answer it
        # is "the gunman" (or "police killed"), 2 of 4.
        ("police killed the gunman", "police kill the gunman", 0.75),
        ("the gunman police killed", "police killed the gunman", 0.5),
    ],
)
def test_rouge_l(answer, reference, expected):
    assert scoring.rouge_l(answer, reference) == pytest.approx(expected, abs=1e-3)


def test_the_tuned_answers_closer_to_the_references_score_higher(minilm):
    generations = [
        {"reference": "LoRA trains two low-rank matrices per layer and freezes the base.",
         "base": "I am a language model.", "tuned": "It trains two low-rank matrices per layer; the base is frozen."},
        {"reference": "QLoRA stores the base in 4-bit NormalFloat.",
         "base": "Quantization is a topic.", "tuned": "QLoRA keeps the frozen base in 4-bit NormalFloat."},
    ]  # fmt: skip
    result = scoring.score_generations(generations, str(minilm))
    assert result["answers"] == 2 and result["embedding_model"] == str(minilm)
    assert result["tuned_rouge_l"] > result["base_rouge_l"] + 0.3
    assert result["tuned_similarity"] > result["base_similarity"] + 0.3
    assert all(0 <= g["tuned_rouge_l"] <= 1 and -1 <= g["tuned_similarity"] <= 1 for g in generations)
    assert "base_similarity" not in scoring.score_generations([dict(g) for g in generations])
