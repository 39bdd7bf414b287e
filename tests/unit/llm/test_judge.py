"""The LLM judge on its own: an instruction, an answer, a rubric and (where known) the source in; a score per
criterion and a reason, or a counted reason for none, out. No DatasetBuild here, as when the trainer judges a base
and a tuned model's answers. The judge inside the pipeline (curation, the judged preference method) is in
tests/unit/datagen/test_pipeline.py."""

from __future__ import annotations

import pytest

from kubetune.llm import judge
from kubetune.llm.chat import Completion

RUBRIC = "Correct and complete. 5 = excellent, 1 = wrong."
SOURCE = "LoRA freezes the base model and trains two low-rank matrices per layer."
SCORES = '"faithfulness": {0}, "helpfulness": 4, "style": 4'


def test_the_request_carries_the_rubric_the_source_and_is_seeded_by_what_is_judged():
    asked = judge.request("What is LoRA?", "Two low-rank matrices.", RUBRIC, source=SOURCE, max_tokens=128, seed=7)
    system, user = asked.messages
    assert RUBRIC in system["content"] and all(name in system["content"] for name in judge.CRITERIA)
    assert user["content"] == f"Source: {SOURCE}\n\nInstruction: What is LoRA?\n\nAnswer: Two low-rank matrices."
    assert asked.schema["required"] == ["reason", "faithfulness", "helpfulness", "style"]
    assert asked.temperature == 0.0 and asked.max_tokens == 128
    again = judge.request("What is LoRA?", "Two low-rank matrices.", "other", source=SOURCE, max_tokens=64, seed=7)
    assert again.seed == asked.seed, "the seed depends on what is judged, not on how"
    other = judge.request("What is LoRA?", "A quantization method.", RUBRIC, source=SOURCE, max_tokens=128, seed=7)
    assert other.seed != asked.seed
    assert judge.request("What is LoRA?", "Two low-rank matrices.", RUBRIC, max_tokens=128, seed=7).seed != asked.seed


def test_without_a_source_faithfulness_is_not_asked():
    asked = judge.request("What is LoRA?", "Two low-rank matrices.", RUBRIC, max_tokens=128, seed=7)
    assert "faithfulness" not in asked.messages[0]["content"] and "Source:" not in asked.messages[1]["content"]
    assert asked.schema["required"] == ["reason", "helpfulness", "style"]


def test_scores_are_read_per_criterion_with_their_reason_and_the_lowest_is_the_score():
    dropped: dict[str, int] = {}
    text = '{"reason": " Invents a rank. ", "faithfulness": 1, "helpfulness": 5, "style": 4}'
    verdict = judge.read(Completion(text, "stop", 12), dropped, judge.criteria_for(SOURCE))
    assert verdict == judge.Verdict({"faithfulness": 1, "helpfulness": 5, "style": 4}, "Invents a rank.")
    assert verdict.score == 1 and dropped == {}


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        pytest.param(f'{{"reason": "ok", {SCORES.format(7)}}}', "stop", "judge_invalid", id="score-out-of-range"),
        pytest.param('{"reason": "ok", "faithful', "length", "judge_truncated", id="cut-by-max-tokens"),
        pytest.param(f'{{"reason": "ok", {SCORES.format("true")}}}', "stop", "judge_invalid", id="boolean-score"),
        pytest.param(f'{{"reason": "ok", {SCORES.format(3.5)}}}', "stop", "judge_invalid", id="fractional-score"),
        pytest.param(f"{{{SCORES.format(4)}}}", "stop", "judge_invalid", id="no-reason"),
        pytest.param(
            '{"reason": "ok", "helpfulness": 4, "style": 4}', "stop", "judge_invalid", id="a-criterion-missing"
        ),
        pytest.param("not json", "stop", "judge_invalid", id="not-json"),
    ],
)
def test_a_judge_answer_that_is_no_score_is_counted(text, finish, reason):
    dropped: dict[str, int] = {}
    assert judge.read(Completion(text, finish, 3), dropped, judge.criteria_for(SOURCE)) is None
    assert dropped == {reason: 1}
