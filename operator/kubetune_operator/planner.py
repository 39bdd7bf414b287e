"""Pure planning: (resource, what is observed) -> what should exist and what the status should say.

No API calls here; the handlers apply what these functions return, and unit tests call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune.api.v1alpha1.resources import FieldError, Resource
from kubetune.api.v1alpha1.result import ERROR_LIMIT, PodResult
from kubetune.api.v1alpha1.status import TERMINAL_PHASES, Condition, ConditionType, Phase, now, set_condition
from kubetune.pod_report import last_record
from kubetune_operator import builders, progress_text
from kubetune_operator.constants import SHARDS_STEP, SIZING_STEP, Settings


@dataclass
class Decision:
    """What to do about one resource now."""

    phase: Phase
    reason: str  # CamelCase, for conditions and Events
    message: str
    children: list[dict[str, Any]] = field(default_factory=list)  # to create when absent
    retry_after: float | None = None  # look again later (waiting on a dependency)
    permanent: bool = False  # retrying cannot help: the spec must change
    output: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)  # status.progress and status.progressDetail
    published: list[dict[str, Any]] | None = None  # status.published
    publish_condition: Condition | None = None  # the Published condition, once the job has decided
    restarts: int | None = None  # status.restarts: a group of pods started again from its last checkpoint


def invalid_spec(errors: list[FieldError]) -> Decision:
    message = "; ".join(
        f"{e.path}: {e.message}" + (f" (got {e.value!r})" if e.value is not None else "") for e in errors
    )
    return Decision(Phase.FAILED, "InvalidSpec", message, permanent=True)


def child_refused(child: dict[str, Any], server_message: str) -> Decision:
    """The API server refused a child the operator built: the resource fails with the server's reason."""
    name = f"{child['kind']} {child['metadata']['name']}"
    return Decision(Phase.FAILED, f"{child['kind']}Refused", f"the API server refused {name}: {server_message}",
                    permanent=True)  # fmt: skip


def _wait_for(
    kind: str,
    name: str,
    dependency: dict[str, Any] | None,
    settings: Settings,
    waiting_reason: str,
    previous_reason: str | None = None,
) -> Decision | str:
    """A Decision to wait or fail while the ``kind`` ``name`` a resource depends on is missing, running or
    failed; its output path once it has succeeded. ``previous_reason``: the waiting resource's reason so far; it
    tells a dependency deleted while waited on from one not applied yet."""
    if dependency is None:
        if previous_reason in (waiting_reason, f"{kind}Deleted"):  # it was there while waited on
            message = f"{kind} {name} was deleted; waiting for it to be applied again"
            return Decision(Phase.WAITING, f"{kind}Deleted", message, retry_after=settings.wait_seconds)
        message = f"waiting for {kind} {name} to exist"
        return Decision(Phase.WAITING, f"{kind}NotFound", message, retry_after=settings.wait_seconds)
    status = dependency.get("status") or {}
    phase = status.get("phase")
    if phase == Phase.FAILED:
        cause = status.get("message") or "no cause given"
        return Decision(Phase.FAILED, "DependencyFailed", f"{kind} {name} failed: {cause}", permanent=True)
    if phase != Phase.SUCCEEDED:
        return Decision(
            Phase.WAITING,
            waiting_reason,
            f"waiting for {kind} {name} (phase {phase or 'Pending'})",
            retry_after=settings.wait_seconds,
        )
    namespace = dependency.get("metadata", {}).get("namespace", "")
    return (status.get("output") or {}).get("path") or builders.output_path(
        settings.storage_root, kind, namespace, name
    )


def _started(resource: Resource, children: list[dict[str, Any]], work: str, reason: str = "JobCreated") -> Decision:
    """The Decision that creates a resource's children: Running, or Pending while Kueue holds its Job."""
    queue = resource.spec.queue_name
    if queue:
        return Decision(Phase.PENDING, "Queued", _queued_message(queue), children=children)
    if resource.spec.suspend:
        return Decision(Phase.SUSPENDED, "Suspended", SUSPENDED_MESSAGE, children=children)
    return Decision(Phase.RUNNING, reason, work, children=children)


SUSPENDED_MESSAGE = "suspended (spec.suspend); set it to false to go on"


def suspension(suspend: bool, job_name: str | None) -> tuple[dict[str, Any] | None, Decision | None]:
    """What a change of ``spec.suspend`` does: the patch of the resource's Job, if it has one yet, and the
    resource's new state. A resource without a Job keeps its state: its Job is created as the field says."""
    if job_name is None:
        return None, None
    if suspend:
        return {"spec": {"suspend": True}}, Decision(Phase.SUSPENDED, "Suspended", SUSPENDED_MESSAGE)
    return {"spec": {"suspend": False}}, Decision(Phase.PENDING, "Resumed", "resumed; waiting for the pod to start")


def _queued_message(queue: str) -> str:
    return f"waiting for Kueue to admit the Job from queue {queue}"


def plan(
    resource: Resource,
    settings: Settings,
    dependency: dict[str, Any] | None = None,
    start_from: dict[str, Any] | None = None,
    gpus: int | None = None,
    previous_reason: str | None = None,
    attempt: int = 0,
) -> Decision:
    """The children a valid resource needs, or why it must wait or fail.

    ``dependency`` is the DatasetBuild a FineTuneJob names, ``start_from`` the FineTuneJob its
    ``spec.startFrom`` names (their bodies as read from the API), or None when they do not exist (yet):
    resources applied together by GitOps may arrive in any order. ``gpus`` is what the sizing step planned for
    a FineTuneJob whose ``resources.gpus`` is auto; without it, such a job starts with that step.
    ``previous_reason``: the resource's status reason so far (a dependency it waited on, now gone, was deleted).
    ``attempt``: which start of a group of pods (distributed.numNodes > 1) this is; 0 the first.
    """
    if resource.kind == DATASET_BUILD:
        shards = resource.spec.generation.shards
        if shards > 1:
            work = f"generating the dataset in {shards} shards"
            return _started(resource, [builders.config_map(resource), builders.shard_job(resource, settings)], work)
        return _started(
            resource, [builders.config_map(resource), builders.job(resource, settings)], "generating the dataset"
        )
    named = resource.spec.dependencies()
    if named.dataset_build is None:
        dataset = resource.spec.dataset.path
    else:
        found = _wait_for(
            DATASET_BUILD, named.dataset_build, dependency, settings, "WaitingForDataset", previous_reason
        )
        if isinstance(found, Decision):
            return found
        dataset = found
    previous = None
    if named.fine_tune_job is not None:
        found = _wait_for(
            FINE_TUNE_JOB, named.fine_tune_job, start_from, settings, "WaitingForBaseModel", previous_reason
        )
        if isinstance(found, Decision):
            return found
        previous = found
    if resource.spec.resources.gpu_count() is None and gpus is None:
        sizing = builders.sizing_job(resource, settings, dataset=dataset, start_from=previous)
        work = f"sizing the job for {resource.spec.resources.gpu_type} GPUs (resources.gpus auto)"
        return _started(resource, [builders.config_map(resource), sizing], work)
    job = builders.job(resource, settings, dataset=dataset, start_from=previous, gpus=gpus, attempt=attempt)
    nodes = resource.spec.distributed.num_nodes
    if nodes > 1:
        work = f"training on {nodes} pods together"
        return _started(resource, [builders.config_map(resource), builders.headless_service(resource), job], work)
    return _started(resource, [builders.config_map(resource), job], "training")


def restart_group(
    resource: Resource,
    failed: Decision,
    attempt: int,
    settings: Settings,
    gpus: int | None,
    dependency: dict[str, Any] | None = None,
    start_from: dict[str, Any] | None = None,
) -> Decision:
    """A group of pods (distributed.numNodes > 1) whose Job ``attempt`` failed (``failed``, its cause said): the
    whole group again, as a new Job with the same ``gpus`` a pod (None: the failed Job could not be read; as the
    spec says, sized again for auto), which resumes from the last checkpoint on the
    shared volume; or the failure, once the group was started again KUBETUNE_BACKOFF_LIMIT times. JobSet's
    RestartJobSet, as the operator's own step (builders.job says why)."""
    if attempt >= settings.backoff_limit:
        message = f"{failed.message} (the group of pods was started again {attempt} time(s), the operator's limit)"
        return replace(failed, message=message, restarts=attempt)
    if gpus is None and resource.spec.resources.gpu_count() is None:
        message = (
            f"{failed.message}; cannot start the group again: its Job, and the GPU count it was sized for, is gone"
        )
        return replace(failed, message=message, restarts=attempt)
    decision = plan(resource, settings, dependency, start_from, gpus=gpus, attempt=attempt + 1)
    if decision.phase == Phase.FAILED:
        return decision
    if not decision.children:  # what it trains on went away meanwhile
        message = f"{failed.message}; cannot start the group again: {decision.message}"
        return replace(failed, message=message, restarts=attempt)
    nodes = resource.spec.distributed.num_nodes
    message = (
        f"{failed.message}; starting all {nodes} pods again from the last checkpoint "
        f"(restart {attempt + 1} of at most {settings.backoff_limit})"
    )
    if decision.phase == Phase.RUNNING:
        decision = replace(decision, reason="GroupRestarted", message=message)
    return replace(_onward(decision), restarts=attempt + 1)


def job_outcome(
    kind: str,
    namespace: str,
    name: str,
    job_status: dict[str, Any],
    settings: Settings,
    queue: str | None = None,
    suspend: bool = False,
) -> Decision:
    """The resource's phase read off its Job's status (batch/v1 JobStatus), as the Job controller defines it.

    Only the ``Complete`` and ``Failed`` conditions are terminal. The controller first writes
    ``SuccessCriteriaMet`` (or ``FailureTarget``) with the finished pods still in ``uncountedTerminatedPods``
    and no ``active`` or ``succeeded`` count, then the terminal condition: that first step is the end of a
    running Job, not a Job waiting for its pod.

    ``queue`` is the Kueue queue the Job is labelled with, if any. Such a Job is created suspended: the
    controller writes ``Suspended`` True (and ``False`` once Kueue unsuspends it); until then it is Queued.
    ``suspend`` is the resource's ``spec.suspend``: its unfinished Job is Suspended, not waiting or running.
    """
    every = {c.get("type"): c for c in job_status.get("conditions") or []}
    conditions = _true_conditions(job_status)
    if "Complete" in conditions:
        output = {"path": builders.output_path(settings.storage_root, kind, namespace, name)}
        return Decision(Phase.SUCCEEDED, "JobSucceeded", "done", output=output)
    if "Failed" in conditions:
        cond = conditions["Failed"]
        return Decision(
            Phase.FAILED, cond.get("reason") or "JobFailed", cond.get("message") or "the Job failed", permanent=True
        )
    if suspend:  # stopped, or its pod still stopping: either way it stays stopped until the field is false
        return Decision(Phase.SUSPENDED, "Suspended", SUSPENDED_MESSAGE)
    if "Suspended" in conditions:
        if queue:
            return Decision(Phase.PENDING, "Queued", _queued_message(queue))
        return Decision(Phase.PENDING, "JobSuspended", "the Job is suspended")
    if "SuccessCriteriaMet" in conditions:
        return Decision(Phase.RUNNING, "JobFinishing", "the pod succeeded; the Job is finishing")
    if "FailureTarget" in conditions:
        cond = conditions["FailureTarget"]
        return Decision(Phase.RUNNING, "JobFailing", cond.get("message") or "the Job is failing")
    if job_status.get("succeeded") and not job_status.get("active"):  # before 1.31: no SuccessCriteriaMet
        return Decision(Phase.RUNNING, "JobFinishing", "the pod succeeded; the Job is finishing")
    uncounted = job_status.get("uncountedTerminatedPods") or {}
    if job_status.get("active") or job_status.get("ready") or any(uncounted.values()):
        return Decision(Phase.RUNNING, "JobRunning", "the pod is running")
    if job_status.get("failed"):
        return Decision(Phase.RUNNING, "JobRetrying", f"{job_status['failed']} pod(s) failed; retrying")
    if queue and "Suspended" not in every:  # created suspended; the controller has not said so yet
        return Decision(Phase.PENDING, "Queued", _queued_message(queue))
    return Decision(Phase.PENDING, "JobPending", "waiting for the pod to start")


def _true_conditions(job_status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A Job status's conditions that hold, by type."""
    return {c.get("type"): c for c in job_status.get("conditions") or [] if c.get("status") == "True"}


def settling(job_status: dict[str, Any]) -> bool:
    """Whether the Job controller has decided a Job's end (``SuccessCriteriaMet`` or ``FailureTarget``) and not
    yet written it (``Complete`` or ``Failed`` follows once its pods are counted): a moment that says nothing the
    resource's status should show, and whose write the terminal one would overwrite at once."""
    true = _true_conditions(job_status).keys()
    return bool(true & {"SuccessCriteriaMet", "FailureTarget"}) and not true & {"Complete", "Failed"}


def next_step(
    resource: Resource,
    step: str | None,
    outcome: Decision,
    settings: Settings,
    result: PodResult | None = None,
    dependency: dict[str, Any] | None = None,
    start_from: dict[str, Any] | None = None,
) -> Decision:
    """What a Job's outcome means when the Job is one step of several (its ``kubetune.dev/step`` label): the
    shards' Indexed Job complete starts the merge Job, the sizing Job's ``result`` the training Job with the
    GPUs planned (the resource stays Running); a step's failure fails the resource, saying which step. A Job
    without a step is the last one: its outcome is the resource's. ``dependency`` and ``start_from`` as for
    :func:`plan`."""
    if step == SIZING_STEP:
        return _sized(resource, outcome, settings, result, dependency, start_from)
    if step != SHARDS_STEP:
        return outcome
    shards = resource.spec.generation.shards
    if outcome.phase == Phase.SUCCEEDED:
        work = f"the {shards} shards are done; merging their parts and finishing the build"
        return _onward(_started(resource, [builders.job(resource, settings)], work, reason="ShardsSucceeded"))
    if outcome.phase == Phase.FAILED:
        return replace(outcome, message=f"a shard failed: {outcome.message}")
    if outcome.reason == "JobRunning":
        return replace(outcome, message=f"{shards} shards generating")
    return outcome


def _sized(
    resource: Resource,
    outcome: Decision,
    settings: Settings,
    result: PodResult | None,
    dependency: dict[str, Any] | None,
    start_from: dict[str, Any] | None,
) -> Decision:
    if outcome.phase == Phase.FAILED:
        return replace(outcome, message=f"sizing the job failed: {outcome.message}")
    if outcome.phase != Phase.SUCCEEDED:
        return outcome
    gpus = result.gpus if result is not None else None
    verdict = (result.verdict if result is not None else None) or "the sizing pod reported no plan"
    if gpus is None or gpus < 1:
        advice = (
            "no GPU count this job can train on holds it (qlora and distributed.strategy ddp do not shard; fsdp "
            "takes up to 16 GPUs a pod): choose method qlora or lora, a smaller training.maxLength or batch, "
            "gradient checkpointing, or a larger resources.gpuType"
        )
        return Decision(Phase.FAILED, "DoesNotFit", f"{verdict}; {advice}", permanent=True)
    decision = plan(resource, settings, dependency, start_from, gpus=gpus)
    if decision.phase == Phase.FAILED:
        return decision
    if not decision.children:  # what the job was sized for went away (or is being rebuilt) meanwhile
        message = (
            f"{decision.message} ({decision.reason}): the job was sized for what was there when it started, and "
            "cannot train on what is not there now; create the FineTuneJob again"
        )
        return Decision(Phase.FAILED, "DependencyGone", message, permanent=True)
    if decision.phase == Phase.RUNNING:
        decision = replace(decision, reason="Sized", message=f"{verdict}: training on {gpus} GPU(s)")
    return _onward(decision)


def _onward(decision: Decision) -> Decision:
    """A later step's Decision: the resource has started, so a step that Kueue holds keeps it Running (saying
    it is queued), never back to Pending; suspended or Running as the step says."""
    if decision.phase == Phase.PENDING:
        return replace(decision, phase=Phase.RUNNING)
    return decision


def failure_cause(job_name: str, pods: list[dict[str, Any]], first: bool = False) -> str | None:
    """Why a Job's pods failed, in one line: the last line of the newest termination message among its pods
    (``first``: of the first pod that failed, for a group of pods, whose other pods fail because that one did).

    The containers run with ``terminationMessagePolicy: FallbackToLogsOnError``, so a message is the end of
    the log when the process wrote none; the services end a failure with one line saying why (``trainer
    failed: ...``). A container ended by a signal (exit code above 128: killed, out of memory) is said to be
    so, naming its pod. Pods are matched by their ``job-name`` label here too, whatever the list was filtered by.
    """
    killed = _killed(job_name, pods)
    ended = _terminated(job_name, pods, succeeded=False)
    if first and killed and (not ended or min(killed)[0] <= min(ended)[0]):
        return min(killed)[1]
    if not ended:
        return max(killed)[1] if killed else None
    message = (min if first else max)(ended)[1]
    partial = PodResult.parse(message)
    if partial is not None and partial.error is not None:  # kubetune.pod_report.fail
        return partial.error[:ERROR_LIMIT]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1][:512] if lines else None


def partial_result(job_name: str, pods: list[dict[str, Any]]) -> PodResult | None:
    """What a failed pod reported doing before it failed (kubetune.pod_report.fail), or None."""
    ended = _terminated(job_name, pods, succeeded=False)
    return PodResult.parse(max(ended)[1]) if ended else None


def _terminated(job_name: str, pods: list[dict[str, Any]], succeeded: bool) -> list[tuple[str, str]]:
    """(finishedAt, termination message) of each container of the Job's pods that ended as asked."""
    ended = []
    for pod in pods:
        if (pod.get("metadata", {}).get("labels") or {}).get("job-name") != job_name:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("message") and (terminated.get("exitCode") == 0) == succeeded:
                ended.append((terminated.get("finishedAt") or "", terminated["message"]))
    return ended


def _killed(job_name: str, pods: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(finishedAt, what happened) of each container of the Job's pods that a signal ended (exit code > 128)."""
    killed = []
    for pod in pods:
        meta = pod.get("metadata", {})
        if (meta.get("labels") or {}).get("job-name") != job_name:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            code = terminated.get("exitCode") or 0
            if code > 128 and code != 143:  # 143: SIGTERM, the Job controller stopping it, an effect, not a cause
                how = " (OOMKilled)" if terminated.get("reason") == "OOMKilled" else ""
                what = f"pod {meta.get('name')} was killed{how}: signal {code - 128}, exit code {code}"
                killed.append((terminated.get("finishedAt") or "", what))
    return killed


def result_of(job_name: str, pods: list[dict[str, Any]]) -> PodResult | None:
    """What a succeeded pod reported (kubetune.pod_report.finish): its termination message; None when no pod
    wrote one (an older image) or it holds no result."""
    ended = _terminated(job_name, pods, succeeded=True)
    return PodResult.parse(max(ended)[1]) if ended else None


_OUTPUT_KEYS = ("digest", "rows", "evalLoss", "modelName", "modelVersion")


def with_result(kind: str, decision: Decision, result: PodResult | None, updated: str) -> Decision:
    """A succeeded Job's decision with what its pod reported: status.output's digest, rows, eval loss, model
    name and version, and the last progress record as status.progress."""
    if result is None or decision.phase != Phase.SUCCEEDED:
        return decision
    wire = result.model_dump(mode="json", by_alias=True, exclude_none=True)
    output = {**decision.output, **{key: wire[key] for key in _OUTPUT_KEYS if key in wire}}
    record = result.progress
    progress = progress_text.status_fields(kind, record, updated) if record is not None else decision.progress
    published, condition = _publication(result)
    return replace(decision, output=output, progress=progress, published=published, publish_condition=condition)


def _publication(result: PodResult) -> tuple[list[dict[str, Any]] | None, Condition | None]:
    """status.published and the Published condition from a FineTuneJob pod's result: True with where it went,
    False (GateFailed) with the gate's failures, or none when there was nothing to publish to."""
    if result.published is None:
        return None, None
    published = [e.model_dump(mode="json", exclude_none=True) for e in result.published]
    if result.gate is not None and not result.gate.passed:
        message = "not published: " + ("; ".join(result.gate.failures) or "the gate failed")
        return published, Condition(type=ConditionType.PUBLISHED, status="False", reason="GateFailed", message=message)
    if published:
        message = "published to " + ", ".join(f"{e['target']} {e['reference']}" for e in published)
        if result.published_omitted > 0:  # PodResult.message: the message had no room
            message += f" and {result.published_omitted} more (the pod's log lists them)"
        return published, Condition(type=ConditionType.PUBLISHED, status="True", reason="Published", message=message)
    return published, None


def with_cause(decision: Decision, cause: str | None, partial: PodResult | None = None) -> Decision:
    """A failed Job's decision with its pods' reason appended to the message (the Job says only "backoff
    limit"), and what its pod had published before it failed (``partial``): status.published and condition
    Published False, reason PublishFailed."""
    if decision.phase != Phase.FAILED:
        return decision
    if cause is not None:
        decision = replace(decision, message=f"{decision.message}: {cause}")
    published, _ = _publication(partial or PodResult())
    if published is None:  # the pod failed before publishing anything (or wrote no result)
        return decision
    message = (partial.error if partial is not None else None) or cause or "publishing failed"
    condition = Condition(type=ConditionType.PUBLISHED, status="False", reason="PublishFailed", message=message)
    return replace(decision, published=published, publish_condition=condition)


# A resource's phase only moves forward: Pending/Waiting -> Running -> Succeeded/Failed; Suspended is entered
# and left only when spec.suspend changes, from and to any phase but the last two.
_RANK = {Phase.PENDING: 0, Phase.WAITING: 0, Phase.RUNNING: 1, Phase.SUCCEEDED: 2, Phase.FAILED: 2}


def moves_forward(current: str | None, new: Phase) -> bool:
    """Whether ``new`` may replace the phase ``current`` (a Job status read late must not undo a later one)."""
    if current in TERMINAL_PHASES:
        return new == current
    if current is None or current not in _RANK or Phase.SUSPENDED in (current, new):
        return True
    return _RANK[new] > _RANK[Phase(current)] or (_RANK[new] == _RANK[Phase(current)] and new == current)


def status_patch(decision: Decision, current: dict[str, Any] | None, generation: int | None) -> dict[str, Any]:
    """The status subresource patch that records ``decision``."""
    current = current or {}
    conditions = list(current.get("conditions") or [])
    valid = decision.reason != "InvalidSpec"
    conditions = set_condition(
        conditions,
        Condition(
            type=ConditionType.VALID,
            status=str(valid),
            reason="Valid" if valid else "InvalidSpec",
            message="" if valid else decision.message,
            observed_generation=generation,
        ),
    )
    done = decision.phase in (Phase.SUCCEEDED, Phase.FAILED)
    conditions = set_condition(
        conditions,
        Condition(
            type=ConditionType.COMPLETE,
            status=str(done),
            reason=decision.reason,
            message=decision.message,
            observed_generation=generation,
        ),
    )
    conditions = set_condition(
        conditions,
        Condition(
            type=ConditionType.READY,
            status=str(decision.phase == Phase.SUCCEEDED),
            reason=decision.reason,
            message=decision.message,
            observed_generation=generation,
        ),
    )
    patch: dict[str, Any] = {
        "phase": str(decision.phase),
        "message": decision.message,
        "observedGeneration": generation,
        "conditions": conditions,
    }
    if decision.phase == Phase.RUNNING and not current.get("startTime"):
        patch["startTime"] = now()
    if done and not current.get("completionTime"):
        patch["completionTime"] = now()
    if decision.output:
        patch["output"] = decision.output
    if decision.restarts is not None:
        patch["restarts"] = decision.restarts
    if decision.published is not None:
        patch["published"] = decision.published
    if decision.publish_condition is not None:
        condition = decision.publish_condition.model_copy(update={"observed_generation": generation})
        patch["conditions"] = set_condition(conditions, condition)
    patch.update(decision.progress)
    return {"status": patch}


def changes(patch: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Whether a status patch would change anything in ``current`` (conditions keep their transition times when
    their status holds, so an unchanged decision patches to equal values)."""
    current = current or {}
    return any(current.get(key) != value for key, value in patch["status"].items())


COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # the Job controller's label on an Indexed Job's pod


def running_pod(job_name: str, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Job's newest running pod (a retried Job has failed ones beside it), whose log tells its progress; of an
    Indexed Job's, pod 0's (a group of pods: rank 0 is the one that reports)."""
    running = [
        p
        for p in pods
        if (p.get("metadata", {}).get("labels") or {}).get("job-name") == job_name
        and (p.get("status") or {}).get("phase") == "Running"
        and (p["metadata"].get("labels") or {}).get(COMPLETION_INDEX, "0") == "0"
    ]
    return max(running, key=lambda p: p["metadata"].get("creationTimestamp") or "", default=None)


def progress_patch(kind: str, current: dict[str, Any] | None, log: str, updated: str) -> dict[str, Any] | None:
    """The status patch for the last progress record in the end of a running pod's log; None when the log
    holds none, or the same record as the status already shows (no write for nothing)."""
    record = last_record(log)
    if record is None:
        return None
    fields = progress_text.status_fields(kind, record, updated)
    shown = dict((current or {}).get("progressDetail") or {})
    shown.pop("updated", None)
    fields_detail = {k: v for k, v in fields["progressDetail"].items() if k != "updated"}
    if shown == fields_detail and (current or {}).get("progress") == fields["progress"]:
        return None
    return {"status": fields}


def _finished(job: dict[str, Any]) -> str | None:
    """ "Complete" or "Failed" when a Job has ended, else None."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"]
    return None


def deletion(work: dict[str, Any] | None, cleanup: dict[str, Any] | None) -> tuple[str, str]:
    """The next step in deleting a resource whose ``deletionPolicy`` is Delete, from its Job (``work``) and its
    clean-up Job as read now (None: absent): ``stop`` the Job still running (its pod would write on), ``wait``,
    ``clean`` (create the clean-up Job), ``done`` or ``failed``; with a message for the Event or the log."""
    if cleanup is None:
        if work is not None and _finished(work) is None:
            if not (work.get("spec") or {}).get("suspend"):
                return "stop", "stopping the Job before the output is removed"
            if (work.get("status") or {}).get("active"):
                return "wait", "waiting for the Job's pod to stop"
        return "clean", "removing the output folder"
    ended = _finished(cleanup)
    if ended == "Complete":
        return "done", "the output folder was removed"
    if ended == "Failed":
        return "failed", "the clean-up Job failed; the output folder may remain"
    return "wait", "waiting for the clean-up Job"
