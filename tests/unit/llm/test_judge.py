"""The LLM judge on its own: an instruction, an answer and a rubric in; a score and a reason, or a counted
reason for none, out. No DatasetBuild here, as when the trainer judges a base and a tuned model's answers.
The judge inside the pipeline (curation, the judged preference method) is in test_datagen_pipeline.py."""

from __future__ import annotations

import pytest

from kubetune.llm import judge
from kubetune.llm.chat import Completion

RUBRIC = "Correct and complete. 5 = excellent, 1 = wrong."


def test_the_request_carries_the_rubric_and_is_seeded_by_what_is_judged():
    asked = judge.request("What is LoRA?", "Two low-rank matrices.", RUBRIC, max_tokens=128, seed=7)
    system, user = asked.messages
    assert (
        RUBRIC in system["content"]
        and user["content"] == "Instruction: What is LoRA?\n\nAnswer: Two low-rank matrices."
    )
    assert asked.schema is judge.SCHEMA and asked.temperature == 0.0 and asked.max_tokens == 128
    again = judge.request("What is LoRA?", "Two low-rank matrices.", "another rubric", max_tokens=64, seed=7)
    assert again.seed == asked.seed, "the seed depends on what is judged, not on how"
    other = judge.request("What is LoRA?", "A quantization method.", RUBRIC, max_tokens=128, seed=7)
    assert other.seed != asked.seed
    assert judge.request("What is LoRA?", "Two low-rank matrices.", RUBRIC, max_tokens=128, seed=8).seed != asked.seed


def test_a_score_is_read_with_its_reason():
    dropped: dict[str, int] = {}
    verdict = judge.read(Completion('{"reason": " Correct and complete. ", "score": 5}', "stop", 12), dropped)
    assert verdict == (5, "Correct and complete.") and dropped == {}


@pytest.mark.parametrize(
    ("text", "finish", "reason"),
    [
        pytest.param('{"reason": "ok", "score": 7}', "stop", "judge_invalid", id="score-out-of-range"),
        pytest.param('{"reason": "ok", "sco', "length", "judge_truncated", id="cut-by-max-tokens"),
        pytest.param('{"reason": "ok", "score": true}', "stop", "judge_invalid", id="boolean-score"),
        pytest.param('{"reason": "ok", "score": 3.5}', "stop", "judge_invalid", id="fractional-score"),
        pytest.param('{"score": 4}', "stop", "judge_invalid", id="no-reason"),
        pytest.param("not json", "stop", "judge_invalid", id="not-json"),
    ],
)
def test_a_judge_answer_that_is_no_score_is_counted(text, finish, reason):
    dropped: dict[str, int] = {}
    assert judge.read(Completion(text, finish, 3), dropped) is None
    assert dropped == {reason: 1}
