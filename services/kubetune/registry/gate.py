"""The publishing gate (``spec.publish.gate``): what the evaluation must show before anything is published."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1.finetunejob import GateSpec


def _f(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".")


def failures(gate: GateSpec | None, metrics: dict[str, Any]) -> list[str]:
    """Each condition of ``gate`` the trainer's ``metrics`` do not meet, in one line naming the field and the
    figures; empty when the model may be published (or there is no gate). A figure the evaluation could not
    give (no test split, no judge verdict) fails the condition that needs it."""
    if gate is None:
        return []
    failed = []
    tuned, base = metrics.get("eval_loss"), metrics.get("initial_eval_loss")
    judge = metrics.get("judge") or {}
    score, base_score = judge.get("tuned_score"), judge.get("base_score")
    if gate.max_eval_loss is not None:
        if tuned is None:
            failed.append("publish.gate.maxEvalLoss: no eval loss (the dataset has no test split to score)")
        elif not tuned < gate.max_eval_loss:
            failed.append(f"publish.gate.maxEvalLoss: eval loss {_f(tuned)} is not below {_f(gate.max_eval_loss)}")
    if gate.min_judge_score is not None:
        if score is None:
            failed.append("publish.gate.minJudgeScore: the judge scored no answer of the tuned model")
        elif score < gate.min_judge_score:
            failed.append(f"publish.gate.minJudgeScore: judge score {_f(score)} is below {_f(gate.min_judge_score)}")
    if gate.must_beat_base:
        if tuned is None or base is None:
            failed.append("publish.gate.mustBeatBase: no eval loss of both models (no test split to score)")
        elif not tuned < base:
            failed.append(f"publish.gate.mustBeatBase: eval loss {_f(tuned)} is not below the base model's {_f(base)}")
        if score is not None and base_score is not None and not score > base_score:
            failed.append(
                f"publish.gate.mustBeatBase: judge score {_f(score)} is not above the base model's {_f(base_score)}"
            )
    return failed
