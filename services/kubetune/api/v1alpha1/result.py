"""What a pod hands the operator when it ends: one model, written by the services and read by the planner.

A pod has no API access, so its result travels as the container's termination message
(``terminationMessagePath``), which the kubelet copies into the pod's status and keeps to 4 KiB. The datagen pod
reports the dataset's digest and row counts; the trainer the adapter's digest, eval loss, gate and where it was
published; the sizing step the GPUs it planned; a pod that fails after doing part of its work, the error and what
it had published. :meth:`PodResult.message` fits the JSON into the kubelet's limit, never cutting it short;
:meth:`PodResult.parse` reads it back, keeping what is well formed of a message an older or newer pod wrote.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

TERMINATION_LIMIT = 4096  # bytes the kubelet keeps of a termination message
ERROR_LIMIT = 512  # characters of a failure's reason kept in a message that must shrink


class _ResultModel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", strict=True)


class PublishedTarget(_ResultModel):
    """One place the dataset or the adapter went."""

    target: str = Field(description="mlflow or oci")
    reference: str = Field(description="models:/NAME/VERSION, or REGISTRY/REPOSITORY:TAG@DIGEST")
    digest: str | None = Field(None, description="the digest of what was published")


class GateOutcome(_ResultModel):
    """What the publishing gate (``spec.publish.gate``) found."""

    passed: bool
    failures: list[str] = Field(default_factory=list)


class PodResult(_ResultModel):
    """A pod's result: every field optional, as each service fills in its own."""

    digest: str | None = Field(None, description="the dataset's (datagen) or the adapter's (trainer) digest")
    rows: dict[str, int] | None = Field(None, description="rows per split (datagen)")
    eval_loss: float | None = Field(None, description="the tuned model's loss on the test split (trainer)")
    model_name: str | None = Field(None, description="the registered model (trainer, MLflow)")
    model_version: str | None = Field(None, description="its version")
    published: list[PublishedTarget] | None = Field(None, description="where it went; None: nowhere to publish")
    published_omitted: int = Field(0, description="published entries left out to fit the message")
    gate: GateOutcome | None = None
    gpus: int | None = Field(None, description="GPUs one step needs (the sizing step; None: it fits none)")
    gpu_type: str | None = None
    per_gpu_gib: float | None = Field(None, alias="perGpuGiB", description="the plan's peak per GPU, in GiB")
    verdict: str | None = Field(None, description="the memory plan's one-line verdict (the sizing step)")
    progress: dict[str, Any] | None = Field(None, description="the last progress record")
    error: str | None = Field(None, description="why a pod that did part of its work failed")

    def message(self) -> str:
        """Compact JSON within the kubelet's TERMINATION_LIMIT, never cut short (the operator parses it). What
        gives way, in order: the progress record, the length of the error, the digest each published entry
        repeats, the published entries themselves (counted in ``publishedOmitted``), and last every field but
        the digest and the error."""
        wire = self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)

        def text() -> str:
            return json.dumps(wire, separators=(",", ":"))

        def fits() -> bool:
            return len(text().encode()) <= TERMINATION_LIMIT

        if not fits():
            wire.pop("progress", None)
        if not fits() and isinstance(wire.get("error"), str):
            wire["error"] = wire["error"][:ERROR_LIMIT]
        entries = wire.get("published")
        if not fits() and isinstance(entries, list):
            wire["published"] = entries = [{k: v for k, v in e.items() if k != "digest"} for e in entries]
            while not fits() and entries:
                entries.pop()
                wire["publishedOmitted"] = wire.get("publishedOmitted", 0) + 1
        if not fits():
            wire = {k: v for k, v in wire.items() if k in ("digest", "error", "publishedOmitted")}
        return text()

    @classmethod
    def parse(cls, text: str) -> PodResult | None:
        """The result a termination message holds; None when it holds none (not a JSON object: the end of a
        failed pod's log). A field that does not fit the model (a pod of another version) is left out, not the
        whole result."""
        try:
            found = json.loads(text)
        except ValueError:
            return None
        if not isinstance(found, dict):
            return None
        for _ in range(len(found) + 1):
            try:
                return cls.model_validate(found)
            except pydantic.ValidationError as exc:
                bad = {error["loc"][0] for error in exc.errors() if error["loc"]}
                found = {k: v for k, v in found.items() if k not in bad}
        return None
