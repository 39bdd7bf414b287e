"""Where and how a resource's pod runs: its size, the nodes it may land on, its priority and its Kueue queue.

Both kinds take the same fields, flat in the spec and spelt as in a PodSpec (``nodeSelector``, ``tolerations``,
``priorityClassName``, ...), so a value copied from a pod manifest or a Kustomize patch of ``/spec/nodeSelector``
means what it means there. The operator puts them on the pod of the resource's Job, over the Helm chart's
defaults; a Toleration is checked as the API server checks one in a pod, so a bad one is refused at apply
time rather than when the Job is created.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

from kubetune.api.v1alpha1.base import CelRule, SpecModel

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# A label key: an optional DNS-subdomain prefix and '/', then a name (as a taint's key).
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


# The GPU types the memory planner knows (kubetune.trainer.memory.GPU_TYPES holds their sizes).
GPU_TYPES = ("H100-80GB", "H200-141GB", "A100-40GB", "A100-80GB", "L40S-48GB", "L4-24GB", "A10G-24GB", "T4-16GB")
AUTO = "auto"


class ResourcesSpec(SpecModel):
    """What the resource's pod (the trainer, or a DatasetBuild's vLLM engine) asks the scheduler for."""

    gpus: Annotated[int, Field(ge=0, le=16)] | Literal["auto"] = Field(
        0,
        description="nvidia.com/gpu count, as both request and limit. 0: the operator's default for this kind of "
        "pod (none, so the CPU, unless the Helm chart's workloads.datagen.resources or workloads.trainer.resources "
        "gives one). auto: a FineTuneJob is sized by the memory planner for gpuType before its training pod is "
        "created (one GPU when the plan fits one; the job fails, saying why, when it does not); a DatasetBuild gets "
        "as many as its engine spans (generation.tensorParallelSize).",
    )
    gpu_type: Literal[GPU_TYPES] | None = Field(  # type: ignore[valid-type]
        None,
        description="The GPU of the nodes the pod runs on, as the memory planner names it (kubetune plan --gpu). "
        "gpus auto on a FineTuneJob needs it. It places nothing: steer the pod with nodeSelector.",
    )
    cpu: str | None = Field(None, description="CPU request, e.g. '4'.")
    memory: str | None = Field(None, description="Memory request, e.g. '16Gi'.")

    def gpu_count(self) -> int | None:
        """The GPU count when it is a number (0 included); None for auto."""
        return None if self.gpus == AUTO else self.gpus


class Toleration(SpecModel):
    """A pod toleration (core/v1 Toleration): the pod may run on nodes with a matching taint."""

    key: str | None = Field(
        None,
        pattern=QUALIFIED_NAME,
        max_length=316,
        description="The taint key; none (with operator Exists) tolerates every taint.",
    )
    operator: Literal["Exists", "Equal"] = Field(
        "Equal", description="Equal: the taint's value must equal value; Exists: any value (set no value)."
    )
    value: str | None = Field(None, pattern=LABEL_VALUE, max_length=63, description="The taint value (operator Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="The taint effect tolerated; none: every effect."
    )
    toleration_seconds: int | None = Field(
        None,
        description="How long the pod stays on a node after a NoExecute taint appears; none: for ever.",
    )

    cel_rules: ClassVar = (
        CelRule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            lambda t: t.operator != "Exists" or not t.value,
        ),
        CelRule(
            "has(self.key) || self.operator == 'Exists'",
            "operator must be Exists when key is empty (a toleration of every taint)",
            lambda t: t.key is not None or t.operator == "Exists",
        ),
        CelRule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds needs effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )


class SchedulingSpec(SpecModel):
    """The pod fields both kinds take; each spec model inherits them, so they sit flat in its spec."""

    def deprecations(self) -> list[str]:
        """A warning for each deprecated field set (kubetune validate prints them)."""
        return []

    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    node_selector: dict[str, str] | None = Field(
        None,
        description="Node labels the pod must match, merged over the operator's default (these keys win).",
    )
    # Bounded so the API server's CEL cost estimate of the per-toleration rules stays small.
    tolerations: list[Toleration] | None = Field(
        None, max_length=64, description="Tolerations of the pod, added to the operator's default ones."
    )
    priority_class_name: str | None = Field(
        None, pattern=DNS_SUBDOMAIN, max_length=253, description="The PriorityClass of the pod."
    )
    service_account_name: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="The pod's ServiceAccount (for image pulls, workload identity); no API token is mounted. "
        "Default: the operator's workload ServiceAccount.",
    )
    image_pull_secrets: list[Annotated[str, Field(pattern=DNS_SUBDOMAIN, max_length=253)]] | None = Field(
        None,
        max_length=16,
        description="Names of Secrets the images are pulled with; replaces the operator's default list.",
    )
    queue_name: str | None = Field(
        None,
        pattern=DNS_LABEL,
        max_length=63,
        description="A Kueue LocalQueue: the Job is created suspended with the kueue.x-k8s.io/queue-name label, "
        "and the resource stays Pending (reason Queued) until Kueue admits it.",
    )
    suspend: bool = Field(
        False,
        description="true stops the resource's Job (its pod is deleted; the work done so far stays on the volume) "
        "or creates it stopped; false starts it again, from the last checkpoint (FineTuneJob) or the last finished "
        "part (DatasetBuild). May change after the resource is created.",
    )
    deletion_policy: Literal["Retain", "Delete"] = Field(
        "Retain",
        description="What deleting the resource does to its output folder on the shared volume (the dataset, or "
        "the adapter and checkpoints): Retain keeps it; Delete removes it (a clean-up Job) before the resource "
        "goes. Its Job and ConfigMap go either way. May change after the resource is created.",
    )

    # Fields that say when the work runs and what happens after, not what it makes: they may change after the
    # resource is created, and are not part of what a result is pinned to.
    RUN_CONTROL: ClassVar = ("suspend", "deletionPolicy")

    def result_wire(self) -> dict:
        """The wire form without :attr:`RUN_CONTROL`: what an output folder and a resumed run are pinned to."""
        return {k: v for k, v in self.to_wire().items() if k not in self.RUN_CONTROL}

    cel_rules: ClassVar = (
        CelRule(
            "!self.suspend || !has(self.queueName)",
            "suspend must be false with a queueName: a resource in a Kueue queue is stopped through Kueue (its "
            "Workload's spec.active: false)",
            lambda s: not s.suspend or s.queue_name is None,
        ),
    )
