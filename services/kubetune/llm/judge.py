"""An LLM judge: scores from 1 to 5 for an answer to an instruction, one per criterion, under a JSON schema.

The criteria are scored apart, so a fluent answer that invents a fact cannot hide behind its style:

- ``faithfulness``: every claim of the answer is stated in, or follows from, the source it was written from. The
  judge reads that source (the chunk, or an instruction row's source text); without one, this is not scored.
- ``helpfulness``: the answer answers the instruction fully, and the instruction makes sense on its own.
- ``style``: clear and well written, as an assistant answers.

The judge writes a one-sentence reason before its scores (so the scores follow from what it wrote), at
temperature 0 with a seed made from what is judged. A verdict's overall ``score`` is its lowest criterion: a
sample is as good as its weakest side. A verdict it cannot give (cut, not JSON, a score missing) is counted,
never guessed. The same judge curates a DatasetBuild's samples, ranks the judged preference method's candidates
(against their chunk), and scores a base and a tuned model's answers (no source: helpfulness and style).
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune.llm.chat import Completion, Request, count, read_json, request_seed

CRITERIA = {
    "faithfulness": "every claim of the answer is stated in the source or follows from it; an invented, changed or "
    "contradicting fact scores 1",
    "helpfulness": "the answer fully answers the instruction, and the instruction makes sense on its own, without "
    "the source",
    "style": "clear and well written, as a helpful assistant answers, not a copied web page",
}

SYSTEM_PROMPT = (
    "You grade answers written by an assistant. {rubric} Score each criterion from 1 to 5: {criteria}. "
    "First write one sentence on the answer's main strength or flaw, then the scores. Reply with JSON only: {shape}."
)


def criteria_for(source: str | None) -> tuple[str, ...]:
    """The criteria a verdict holds: faithfulness only where the judge reads a source."""
    return tuple(CRITERIA) if source else ("helpfulness", "style")


def schema(criteria: tuple[str, ...]) -> dict:
    score = {"type": "integer", "minimum": 1, "maximum": 5}
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": 400},
            **dict.fromkeys(criteria, score),
        },
        "required": ["reason", *criteria],
        "additionalProperties": False,
    }


@dataclass(frozen=True)
class Verdict:
    scores: dict[str, int]  # per criterion
    reason: str

    @property
    def score(self) -> int:
        """The lowest criterion's score."""
        return min(self.scores.values())


def request(
    instruction: str, answer: str, rubric: str, *, source: str | None = None, max_tokens: int, seed: int
) -> Request:
    """The judge's request for one answer, against ``source`` where given; its seed is made from ``seed`` and
    what is judged."""
    criteria = criteria_for(source)
    listed = "; ".join(f"{name}: {CRITERIA[name]}" for name in criteria)
    shape = "{" + ", ".join(['"reason": "..."', *(f'"{name}": 3' for name in criteria)]) + "}"
    user = f"Instruction: {instruction}\n\nAnswer: {answer}"
    if source:
        user = f"Source: {source}\n\n{user}"
    return Request(
        [
            {"role": "system", "content": SYSTEM_PROMPT.format(rubric=rubric, criteria=listed, shape=shape)},
            {"role": "user", "content": user},
        ],
        schema(criteria),
        request_seed(seed, "judge", (source or "") + instruction + answer),
        temperature=0.0,
        max_tokens=max_tokens,
    )


def read(completion: Completion, dropped: dict[str, int], criteria: tuple[str, ...]) -> Verdict | None:
    """The verdict on ``criteria``, or None with the reason counted (``judge_truncated``, ``judge_invalid``)."""
    seen: dict[str, int] = {}
    payload = read_json(completion, seen)
    if payload is None:
        count(dropped, "judge_truncated" if "truncated_answer" in seen else "judge_invalid")
        return None
    payload = payload if isinstance(payload, dict) else {}
    scores = {name: payload.get(name) for name in criteria}
    reason = payload.get("reason")
    valid = all(isinstance(s, int) and not isinstance(s, bool) and 1 <= s <= 5 for s in scores.values())
    if not valid or not isinstance(reason, str):
        count(dropped, "judge_invalid")
        return None
    return Verdict(scores, reason.strip())  # type: ignore[arg-type]  # checked above: ints
