"""Progress records as people read them: one line and a bar's figures for ``kubetune run``, and the
``status.progress`` and ``status.progressDetail`` the operator writes from the same records.

A record is what a service writes (kubetune.pod_report): the datagen pipeline's ``stage``, ``done``, ``total``,
``part``, ``parts``; the trainer's ``step``, ``maxSteps``, ``loss``, ``tokensPerSecond``, ``etaSeconds``,
``epoch``, ``phase``. Keys that are missing or of the wrong type are left out, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1.constants import DATASET_BUILD


@dataclass(frozen=True)
class Report:
    """A progress.json as shown: how far, what runs now, the figures beside, and when a plain line is due."""

    completed: int
    total: int | None
    unit: str  # of completed and total: "stages" or "steps"
    label: str  # the stage or the phase running now
    figures: str  # loss, tokens/s, ETA: as many as the file holds
    milestone: Any  # a plain line is printed each time this changes
    line: str  # the plain line


def _number(value: Any) -> float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s" if m else f"{s}s"


def _build_report(p: dict[str, Any]) -> Report:
    """The datagen pipeline's: ``stage``, ``done`` and ``total`` stages, and ``part``/``parts`` of a stage."""
    stage = str(p.get("stage", ""))
    done, total = int(_number(p.get("done")) or 0), _number(p.get("total"))
    part, parts = _number(p.get("part")), _number(p.get("parts"))
    label = f"{stage} part {int(part)}/{int(parts)}" if part is not None and parts is not None else stage
    total = int(total) if total is not None else None
    counted = f"{done}/{total if total is not None else '?'} stages done"
    return Report(done, total, "stages", label, "", stage, counted if stage == "done" else f"{counted}; {label}")


def _job_report(p: dict[str, Any]) -> Report:
    """The trainer's: ``step``, ``maxSteps``, and (newer trainers) ``loss``, ``tokensPerSecond``,
    ``etaSeconds``, ``phase``."""
    step, max_steps = int(_number(p.get("step")) or 0), int(_number(p.get("maxSteps")) or 0)
    phase = str(p.get("phase") or "train")
    figures = []
    if (loss := _number(p.get("loss"))) is not None:
        figures.append(f"loss {loss:.4g}")
    if (speed := _number(p.get("tokensPerSecond"))) is not None:
        figures.append(f"{speed:,.0f} tokens/s" if speed >= 100 else f"{speed:.3g} tokens/s")
    if (eta := _number(p.get("etaSeconds"))) is not None and phase != "done":
        figures.append(f"ETA {_duration(eta)}")
    if max_steps > 0:
        tenth, counted = step * 10 // max_steps, f"step {step}/{max_steps} ({step * 100 // max_steps}%)"
    else:
        tenth, counted = step, f"step {step}"
    line = ", ".join([counted, *([] if phase == "train" else [phase]), *figures])
    return Report(step, max_steps or None, "steps", phase, ", ".join(figures), (tenth, phase == "done"), line)


def report(kind: str, progress: dict[str, Any]) -> Report:
    """What a resource's progress.json says; keys that are missing or of the wrong type are left out."""
    return _build_report(progress) if kind == DATASET_BUILD else _job_report(progress)


_KEYS = {"stage": str, "done": int, "total": int, "part": int, "parts": int, "step": int, "maxSteps": int}
_FIELDS = {**_KEYS, "loss": float, "tokensPerSecond": float, "etaSeconds": float, "epoch": float, "phase": str}


def status_fields(kind: str, record: dict[str, Any], updated: str) -> dict[str, Any]:
    """``status.progress`` and ``status.progressDetail`` for a progress record read from a pod's log: the
    record's known keys of the right type (an int is a float too, never the other way round)."""
    detail: dict[str, Any] = {}
    for key, kind_of in _FIELDS.items():
        value = record.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, kind_of) or (kind_of is float and isinstance(value, int)):
            detail[key] = value
    return {"progress": report(kind, record).line, "progressDetail": {**detail, "updated": updated}}
