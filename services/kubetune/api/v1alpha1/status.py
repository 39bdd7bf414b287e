"""Status shared by both resources: a phase for people, metav1.Condition-shaped conditions for machines."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from pydantic import Field

from kubetune.api.v1alpha1.base import SpecModel


class Phase(StrEnum):
    PENDING = "Pending"  # accepted, nothing started yet
    WAITING = "Waiting"  # waits on another resource (a FineTuneJob on its DatasetBuild)
    RUNNING = "Running"
    SUSPENDED = "Suspended"  # spec.suspend: its Job is stopped until the field is false again
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    VALID = "SpecValid"  # the spec parsed and passed validation
    READY = "Ready"  # the resource's output exists and is usable
    COMPLETE = "Complete"  # the work finished (succeeded or failed)
    PUBLISHED = "Published"  # FineTuneJob: the adapter was published (False: the gate kept it back)


class Condition(SpecModel):
    """One condition, in the shape of Kubernetes' metav1.Condition."""

    type: str = Field(description="SpecValid, Complete, Ready or Published (FineTuneJob).")
    status: str = Field(description="True, False or Unknown.")
    reason: str = Field(description="A CamelCase word a program can switch on.")
    message: str = Field("", description="What a person should know, e.g. the failure's cause.")
    last_transition_time: str = Field("", description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(None, description="The metadata.generation this condition is about.")


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
    digest: str | None = Field(
        None, description="sha256 over the output's files: the dataset's (its manifest's), or the adapter's."
    )
    rows: dict[str, int] | None = Field(None, description="DatasetBuild: rows per split.")
    eval_loss: float | None = Field(None, description="FineTuneJob: the final evaluation loss on the test split.")
    model_name: str | None = Field(None, description="Registered model name (FineTuneJob).")
    model_version: str | None = Field(None, description="Registered model version (FineTuneJob).")


class PublishedStatus(SpecModel):
    """One place a FineTuneJob's adapter was published to."""

    target: str = Field(description="The kind of target: mlflow.")
    reference: str = Field(description="Where it is there, e.g. models:/NAME/VERSION.")
    digest: str | None = Field(None, description="The adapter's digest (sha256 over its files).")


class ProgressDetail(SpecModel):
    """The last progress record the running pod logged (a DatasetBuild's stage, a FineTuneJob's step)."""

    stage: str | None = Field(None, description="DatasetBuild: the stage running now.")
    done: int | None = Field(None, description="DatasetBuild: stages done.")
    total: int | None = Field(None, description="DatasetBuild: stages planned.")
    part: int | None = Field(None, description="DatasetBuild: the part of an LLM stage running now.")
    parts: int | None = Field(None, description="DatasetBuild: parts of that stage.")
    step: int | None = Field(None, description="FineTuneJob: optimizer steps done.")
    max_steps: int | None = Field(None, description="FineTuneJob: optimizer steps planned.")
    loss: float | None = Field(None, description="FineTuneJob: the last logged training loss.")
    tokens_per_second: float | None = Field(None, description="FineTuneJob: training tokens per second so far.")
    eta_seconds: float | None = Field(None, description="FineTuneJob: seconds of training left, at that rate.")
    epoch: float | None = Field(None, description="FineTuneJob: epochs done (a fraction within one).")
    phase: str | None = Field(None, description="FineTuneJob: train, evaluate, save or done.")
    updated: str | None = Field(None, description="When the operator read this record from the pod.")


class ResourceStatus(SpecModel):
    """The status subresource of a DatasetBuild or a FineTuneJob."""

    phase: Phase = Field(  # read back from the API as a string
        Phase.PENDING,
        strict=False,
        description="Pending, Waiting (for what spec.dataset or spec.startFrom names), Running, Suspended, "
        "Succeeded or Failed.",
    )
    progress: str | None = Field(
        None, description="Progress in one line, e.g. 'step 6/12 (50%), loss 1.93, 410 tokens/s, ETA 1m20s'."
    )
    progress_detail: ProgressDetail | None = Field(None, description="The figures of that line, as numbers.")
    message: str | None = Field(None, description="The phase in words; on failure, the cause.")
    observed_generation: int | None = Field(None, description="The metadata.generation the operator last acted on.")
    start_time: str | None = Field(None, description="When the work started (RFC 3339).")
    completion_time: str | None = Field(None, description="When it succeeded or failed (RFC 3339).")
    job_name: str | None = Field(None, description="The Kubernetes Job doing the work.")
    restarts: int | None = Field(
        None,
        ge=0,
        description="FineTuneJob on several pods: how often the whole group was started again, from the last "
        "checkpoint, after one of its pods failed (at most the operator's KUBETUNE_BACKOFF_LIMIT).",
    )
    output: OutputStatus | None = None
    published: list[PublishedStatus] | None = Field(
        None, description="FineTuneJob: where the adapter was published, per target."
    )
    conditions: list[Condition] = Field(
        default_factory=list, description="Conditions in metav1.Condition's shape, one per type."
    )
