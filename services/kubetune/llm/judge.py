"""An LLM judge: a score from 1 to 5 for an answer to an instruction, on a rubric, under a JSON schema.

The judge gives a one-sentence reason before the score (so the score follows from what it wrote), at
temperature 0 with a seed made from what is judged. It needs only an instruction, an answer and a rubric, so
the same judge curates a DatasetBuild's samples, ranks the judged preference method's candidates, and can score
a base and a tuned model's answers; a score it cannot give (cut, not JSON) is counted, never guessed.
"""

from __future__ import annotations

from kubetune.llm.chat import Completion, Request, count, read_json, request_seed

SYSTEM_PROMPT = (
    "You grade answers written by an assistant. Rubric: {rubric} "
    "Read the instruction and the answer, write one sentence on how well the answer meets the rubric, then "
    'give an integer score from 1 to 5. Reply with JSON only: {{"reason": "...", "score": 3}}.'
)

SCHEMA = {
    "type": "object",
    "properties": {
        "reason": {"type": "string", "minLength": 1, "maxLength": 400},
        "score": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["reason", "score"],
    "additionalProperties": False,
}


def request(instruction: str, answer: str, rubric: str, *, max_tokens: int, seed: int) -> Request:
    """The judge's request for one answer; its seed is made from ``seed`` and what is judged."""
    user = f"Instruction: {instruction}\n\nAnswer: {answer}"
    return Request(
        [{"role": "system", "content": SYSTEM_PROMPT.format(rubric=rubric)}, {"role": "user", "content": user}],
        SCHEMA,
        request_seed(seed, "judge", instruction + answer),
        temperature=0.0,
        max_tokens=max_tokens,
    )


def read(completion: Completion, dropped: dict[str, int]) -> tuple[int, str] | None:
    """(score, reason), or None with the reason counted (``judge_truncated``, ``judge_invalid``)."""
    seen: dict[str, int] = {}
    payload = read_json(completion, seen)
    if payload is None:
        count(dropped, "judge_truncated" if "truncated_answer" in seen else "judge_invalid")
        return None
    score = payload.get("score") if isinstance(payload, dict) else None
    reason = payload.get("reason") if isinstance(payload, dict) else None
    if isinstance(score, bool) or not isinstance(score, int) or not 1 <= score <= 5 or not isinstance(reason, str):
        count(dropped, "judge_invalid")
        return None
    return score, reason.strip()
