"""Status shared by both resources: a phase for people, metav1.Condition-shaped conditions for machines."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from kubetune.spec.base import SpecModel


class Phase(StrEnum):
    PENDING = "Pending"  # accepted, nothing started yet
    WAITING = "Waiting"  # waits on another resource (a FineTuneJob on its DatasetBuild)
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    VALID = "SpecValid"  # the spec parsed and passed validation
    READY = "Ready"  # the resource's output exists and is usable
    COMPLETE = "Complete"  # the work finished (succeeded or failed)


class Condition(SpecModel):
    """One condition, in the shape of Kubernetes' metav1.Condition."""

    type: str
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase word a program can switch on.")
    message: str = ""
    last_transition_time: str = ""
    observed_generation: int | None = None


def now() -> str:
    """The current time in the RFC 3339 form Kubernetes uses."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], new: Condition) -> list[dict]:
    """Conditions with ``new`` in place of the one of its type, keeping lastTransitionTime when unchanged."""
    wire = new.to_wire()
    if not wire.get("lastTransitionTime"):
        wire["lastTransitionTime"] = now()
    out = []
    replaced = False
    for old in conditions:
        if old.get("type") == new.type:
            if old.get("status") == new.status:
                wire["lastTransitionTime"] = old.get("lastTransitionTime", wire["lastTransitionTime"])
            out.append(wire)
            replaced = True
        else:
            out.append(old)
    if not replaced:
        out.append(wire)
    return out


class OutputStatus(SpecModel):
    """Where a finished resource put what it made."""

    path: str | None = Field(None, description="Folder holding the dataset or the adapter.")
    digest: str | None = Field(None, description="sha256 over the output's files, from its manifest.")
    model_name: str | None = Field(None, description="Registered model name (FineTuneJob).")
    model_version: str | None = Field(None, description="Registered model version (FineTuneJob).")


class ResourceStatus(SpecModel):
    """The status subresource of a DatasetBuild or a FineTuneJob."""

    phase: Phase = Field(Phase.PENDING, strict=False)  # read back from the API as a string
    progress: str | None = Field(None, description="Human-readable progress, e.g. 'generate 3/12'.")
    message: str | None = None
    observed_generation: int | None = None
    start_time: str | None = None
    completion_time: str | None = None
    job_name: str | None = Field(None, description="The Kubernetes Job doing the work.")
    output: OutputStatus | None = None
    conditions: list[Condition] = Field(default_factory=list)
