"""kopf's entry points: thin. Each reads the resource, asks the planner, applies the answer and writes status.

The reconciles, the suspend and clean-up handlers are synchronous (kopf runs them in its thread pool); the handlers
of every watch event are coroutines that mostly decide there is nothing to do. API access is :mod:`kube`'s, kopf's
own state is kept as :mod:`storage` says, and :mod:`poller` looks again at running and waiting resources.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import pydantic
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB, GROUP, VERSION
from kubetune.api.v1alpha1.finetunejob import Dependencies
from kubetune.api.v1alpha1.resources import SpecError, parse_resource
from kubetune.api.v1alpha1.status import TERMINAL_PHASES, Phase, now
from kubetune_operator import builders, health, kube, metrics, planner, poller, storage
from kubetune_operator.constants import ATTEMPT_LABEL, MANAGED_BY, OWNER_LABEL, QUEUE_LABEL, STEP_LABEL, Settings

SETTINGS = Settings()
PLURAL = kube.PLURAL
log = logging.getLogger("kubetune.operator")


@kopf.on.startup(id="configure")
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = storage.UnmarkedProgress(prefix=GROUP)
    settings.persistence.diffbase_storage = storage.DIFF_BASES
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    # No watching of CRDs or Namespaces: the CRDs are installed before the operator (the chart does it) and
    # the namespaces are named exactly, so the operator needs no cluster-wide read access for either.
    settings.scanning.disabled = True
    # The handlers are synchronous and wait on the API, not the CPU: more threads than kopf's default (the CPU
    # count + 4), so that a thousand resources starting at once do not queue behind each other's requests.
    settings.execution.max_workers = SETTINGS.workers
    kube.connect(SETTINGS.workers, settings.execution.executor)
    health.READINESS.contact("leading" if health.READINESS.elected else "running")


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def _create_children(
    body: kopf.Body | dict[str, Any], decision: planner.Decision
) -> tuple[planner.Decision, str | None, bool]:
    """Create the decision's children, owned by ``body``: the decision (a child the server refuses makes it the
    resource's failure), the name of the Job, and whether that Job existed already."""
    kind, meta = body["kind"], body["metadata"]
    job_name, existed = None, False
    for child in decision.children:
        kopf.adopt(child, owner=body)
        try:
            created = kube.create(child)
        except (ApiException, pydantic.ValidationError) as exc:
            if isinstance(exc, ApiException) and exc.status not in (400, 422):
                raise  # the API is unwell: kopf retries
            # The server (or the client's own schema check) refuses what the operator built from this spec and its
            # settings (e.g. a default limit below a request): retrying cannot help, so it becomes the
            # resource's status, not a retry loop.
            return planner.child_refused(child, kube.api_message(exc)), None, False
        if created:
            log.info("%s %s/%s: created %s %s", kind, meta["namespace"], meta["name"], child["kind"],
                     child["metadata"]["name"])  # fmt: skip
        if child["kind"] == "Job":
            job_name, existed = child["metadata"]["name"], not created
    return decision, job_name, existed


def _reconcile(body: kopf.Body | dict[str, Any], dependencies: Any = None, dependents: Any = None) -> None:
    """Plan a resource that has no Job yet and create its children. ``dependencies`` (a FineTuneJob's): a function
    of its spec and namespace that reads what it depends on, called only when there is something to plan.
    ``dependents``: kopf's index of who waits on whom, to wake them when this resource fails at once."""
    kind, meta = body["kind"], body["metadata"]
    status = dict(body.get("status") or {})
    looked_again = status.get("phase") == Phase.WAITING
    if looked_again:
        # A waiting job is looked at again (woken, or by the poller) from a stub, or by kopf at a restart from
        # its listing, which may predate what another look did since: the Job created, even its end. Read it
        # again rather than plan twice.
        fresh = kube.get(kind, meta["namespace"], meta["name"])
        if fresh is None:
            return  # deleted meanwhile
        body, meta, status = fresh, fresh["metadata"], dict(fresh.get("status") or {})
    if status.get("phase") in TERMINAL_PHASES or meta.get("deletionTimestamp"):
        return  # done (the Job's status drove it there), or going
    if status.get("jobName"):  # already running: the Job's status drives the rest
        if not looked_again:  # kopf's own call, at an operator's start: spec.suspend may have changed meanwhile
            _suspend(kind, body, if_apart=True)
        return
    try:
        resource = parse_resource(dict(body))
    except SpecError as exc:
        decision = planner.invalid_spec(exc.errors)
    else:
        waited = dependencies(body.get("spec") or {}, meta["namespace"]) if dependencies else ()
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
        decision = planner.plan(resource, SETTINGS, *waited, previous_reason=ready.get("reason"))
    decision, job_name, existed = _create_children(body, decision)
    patch = planner.status_patch(decision, status, meta.get("generation"))
    if job_name and not decision.permanent:
        patch["status"]["jobName"] = job_name
    if not planner.changes(patch, status):
        return  # looked again, and nothing changed (still waiting on the same)
    log.info(
        "%s %s/%s: %s (%s) %s", kind, meta["namespace"], meta["name"], decision.phase, decision.reason, decision.message
    )
    # Only from the phase read (once there is one): of two reconciles of one resource at once (a wake-up and
    # the poller's look), one writes; the other is told (kube.PhaseChanged), and looks again.
    kube.patch_status_from(kind, meta["namespace"], meta["name"], status.get("phase"), patch)
    metrics.RECONCILES.labels(kind, decision.reason).inc()
    if decision.permanent:
        kopf.warn(body, reason=decision.reason, message=decision.message)
        if dependents is not None:
            _wake(kind, meta["namespace"], meta["name"], dependents)
        raise kopf.PermanentError(decision.message)
    if decision.children:
        kopf.info(body, reason=decision.reason, message=decision.message)
    job = kube.read_job(meta["namespace"], job_name) if existed else None
    if job and job.get("status"):
        # Planned before, its status write lost (a retry after an API error): the Job may have moved, even
        # ended, meanwhile, and its events then found no record of it. Carry its status now (kopf's retry of
        # this handler would stop at the jobName just written).
        labels = job["metadata"].get("labels") or {}
        kube.retried(lambda _: _carry_job_status(labels, meta["namespace"], job_name, job["status"], dependents or {}),
                 f"{kind} {meta['namespace']}/{meta['name']}")  # fmt: skip
    if existed:  # made by an operator that stopped before recording it, with the spec of then
        _suspend(kind, body, if_apart=True, read_first=True)
    # A waiting job is done with as far as kopf goes (so it records the spec handled, and an edit is seen at
    # once): what it waits for wakes it when it finishes, and the poller looks again every KUBETUNE_WAIT_SECONDS.


@kopf.on.resume(GROUP, VERSION, PLURAL[DATASET_BUILD], id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL[DATASET_BUILD], id="reconcile")
@metrics.counted(DATASET_BUILD, "reconcile")
def reconcile_dataset_build(body: kopf.Body, dependents: kopf.Index, **_: Any) -> None:
    _reconcile(body, dependents=dependents)


@kopf.on.resume(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="reconcile")
@kopf.on.create(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="reconcile")
@metrics.counted(FINE_TUNE_JOB, "reconcile")
def reconcile_fine_tune_job(body: kopf.Body | dict[str, Any], dependents: kopf.Index | None = None, **_: Any) -> None:
    _reconcile(body, _dependencies, dependents)


def _dependencies(spec: Any, namespace: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The DatasetBuild and the startFrom FineTuneJob a FineTuneJob's spec names, as read now (None: it names
    none, or it does not exist)."""
    named = Dependencies.of(spec)
    return kube.get(DATASET_BUILD, namespace, named.dataset_build), kube.get(
        FINE_TUNE_JOB, namespace, named.fine_tune_job
    )


@kopf.index(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="dependents")
async def dependents(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str, str], str]:
    """Which FineTuneJobs wait on which resource: (namespace, kind, name) -> the FineTuneJob's name."""
    return {(namespace, kind, waited): name for kind, waited in Dependencies.of(spec).items()}


def _wake(kind: str, namespace: str, name: str, index: kopf.Index) -> None:
    """A resource finished: reconcile now the FineTuneJobs that wait on it, rather than at the poller's next look
    (KUBETUNE_WAIT_SECONDS is the safety net, not the clock). A job already started is left alone."""
    for waiting in index.get((namespace, kind, name), []):
        try:
            reconcile_fine_tune_job(_waiting_stub(namespace, waiting), index)
        except (kopf.TemporaryError, kopf.PermanentError):
            pass  # moved meanwhile, or cannot run: its status says so
        except Exception:  # one dependent's trouble must not keep the others waiting
            metrics.ERRORS.labels(FINE_TUNE_JOB, "wake").inc()
            log.exception("%s %s/%s: waking it", FINE_TUNE_JOB, namespace, waiting)


def _waiting_stub(namespace: str, name: str) -> dict[str, Any]:
    """A FineTuneJob as a waiting one, to reconcile: the reconcile reads it first (one request; gone, started or
    done: nothing to do). Still waiting, or failed: its status says so already."""
    return {"kind": FINE_TUNE_JOB, "metadata": {"namespace": namespace, "name": name},
            "status": {"phase": Phase.WAITING}}  # fmt: skip


def _is_deletion(type: str | None, **_: Any) -> bool:
    return type == "DELETED"


@kopf.on.event(GROUP, VERSION, PLURAL[DATASET_BUILD], id="deleted", when=_is_deletion)
@kopf.on.event(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="deleted", when=_is_deletion)
def deleted(body: kopf.Body, namespace: str, name: str, dependents: kopf.Index, **_: Any) -> None:
    """A resource others wait on was deleted: they say so now ("was deleted; waiting for it to be applied
    again"), not at the poller's next look. The watch's DELETED event: an event handler needs no finalizer, which
    a delete handler would add to every resource."""
    if dependents.get((namespace, body["kind"], name)):
        _wake(body["kind"], namespace, name, dependents)


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: "kubetune"}, id="job-status")
@metrics.counted("Job", "job-status")
async def job_status(
    type: str | None, labels: dict[str, str], namespace: str, name: str, status: dict[str, Any], memo: kopf.Memo,
    dependents: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """A Job moved: copy its outcome into the status of the resource that owns it.

    An event handler, not a field handler: kopf would keep the field's last value in two annotation patches per
    Job (each a write, and an event back to every watcher), and this needs none. What it gives up, kopf's
    retries, it does itself (:func:`kube.retried`). The status last carried over is remembered (kopf's per-object
    memo), so an event that changed only the Job's metadata costs nothing.

    A coroutine: most Job events need no request, and are decided on kopf's event loop without a thread; the
    carrying, which reads and writes, goes to kopf's handler threads."""
    status = kube.plain(status)
    if type == "DELETED" or not status or memo.get("carried") == status:
        return  # gone, just created (the reconcile that made it wrote the resource's status), or already said
    if planner.settling(status):
        return  # the controller has decided the end and writes it next: one write for the pair, not two
    labels = dict(labels)

    def carry(_: int) -> None:
        _carry_job_status(labels, namespace, name, status, dependents)

    if await kube.in_thread(kube.retried, carry, f"Job {namespace}/{name}"):
        memo["carried"] = status
    else:
        log.warning("Job %s/%s: its owner kept changing; its next event carries the status", namespace, name)


def _carry_job_status(
    labels: dict[str, str], namespace: str, job_name: str, status: dict[str, Any], dependents: kopf.Index
) -> None:
    """Write what the Job's ``status`` means into its owner's status (and start the owner's next step)."""
    for kind, label in OWNER_LABEL.items():
        if label in labels:
            name = labels[label]
            current = kube.get(kind, namespace, name)
            if current is None:
                return  # the owner is gone; its Jobs follow (ownerReferences)
            current_job = (current.get("status") or {}).get("jobName")
            if current_job is None:  # the reconcile that created the Job writes it next: then this is said
                raise kube.PhaseChanged(f"{kind} {namespace}/{name} has not recorded its Job {job_name} yet")
            if current_job != job_name:
                if ATTEMPT_LABEL in labels and int(labels[ATTEMPT_LABEL]) <= int(
                    (current.get("status") or {}).get("restarts") or 0
                ):
                    return  # a group's earlier attempt, failed and started again as the Job recorded now
                if STEP_LABEL not in labels and (current.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                    # The last step's Job, created by the event that ended the step before it, which records
                    # it next.
                    raise kube.PhaseChanged(f"{kind} {namespace}/{name} has not recorded its Job {job_name} yet")
                return  # a step done with (the shards' Job, after the merge Job took over)
            suspend = bool((current.get("spec") or {}).get("suspend"))
            decision = planner.job_outcome(
                kind, namespace, name, status, SETTINGS, labels.get(QUEUE_LABEL), suspend=suspend
            )
            step, result = labels.get(STEP_LABEL), None
            if decision.phase == Phase.FAILED:  # only at the end are the pods worth a request
                pods = kube.pods_of(namespace, job_name)
                cause = planner.failure_cause(job_name, pods, first=ATTEMPT_LABEL in labels)
                partial = planner.partial_result(job_name, pods)
                decision = planner.with_cause(decision, cause, partial)
            elif decision.phase == Phase.SUCCEEDED:
                result = planner.result_of(job_name, kube.pods_of(namespace, job_name))
                if step is None:
                    decision = planner.with_result(kind, decision, result, now())
            if step is not None:
                resource = parse_resource(dict(current))
                waited = _dependencies(current.get("spec") or {}, namespace) if kind == FINE_TUNE_JOB else (None, None)
                decision = planner.next_step(resource, step, decision, SETTINGS, result, *waited)
            elif decision.phase == Phase.FAILED and ATTEMPT_LABEL in labels:  # one pod of a group failed
                failed_job = kube.read_job(namespace, job_name)
                gpus = builders.gpus_of(failed_job) if failed_job else None  # None: as the spec says
                resource, waited = parse_resource(dict(current)), _dependencies(current.get("spec") or {}, namespace)
                attempt = int(labels[ATTEMPT_LABEL])
                decision = planner.restart_group(resource, decision, attempt, SETTINGS, gpus, *waited)
            if current["metadata"].get("deletionTimestamp") and decision.children:
                log.info("%s %s/%s: being deleted: no next step", kind, namespace, name)
                return
            decision, next_job, _ = _create_children(current, decision)
            phase = (current.get("status") or {}).get("phase")
            if not planner.moves_forward(phase, decision.phase):
                log.debug(
                    "%s %s/%s: Job says %s after %s; kept %s", kind, namespace, name, decision.phase, phase, phase
                )
                return
            patch = planner.status_patch(decision, current.get("status"), current["metadata"].get("generation"))
            if next_job:
                patch["status"]["jobName"] = next_job
            if not planner.changes(patch, current.get("status")):
                return  # a Job event that changes nothing the status shows (e.g. its pod became ready)
            kube.patch_status_from(kind, namespace, name, phase, patch)
            metrics.RECONCILES.labels(kind, decision.reason).inc()
            if phase != decision.phase or next_job:  # a new phase, or the next step's Job
                log.info("%s %s/%s: %s -> %s (%s) %s", kind, namespace, name, phase, decision.phase, decision.reason,
                         decision.message)  # fmt: skip
                post = kopf.warn if decision.phase == Phase.FAILED else kopf.info
                post(current, reason=decision.reason, message=decision.message)
                if decision.phase in TERMINAL_PHASES:
                    _wake(kind, namespace, name, dependents)
            return


def _suspend(
    kind: str, body: kopf.Body | dict[str, Any], *, if_apart: bool = False, read_first: bool = False
) -> None:  # fmt: skip
    """spec.suspend changed: stop or start the resource's Job as the field says, and say so in status.

    ``if_apart``: only where the Job (or the phase) and the field disagree (:func:`_apart`), as an operator that
    has just started finds them when the field was edited while none ran: it cannot tell the edit from kopf's
    diff (:class:`storage.MemoryDiffBase`). ``read_first``: ``body`` is older than a write of this process; read it
    again.

    When another writer moved the status meanwhile (the Job's own event, read with the new spec), the resource
    is read again and this is done again, here: were kopf to retry it instead, an edit back (suspend, then
    resume) would reach kopf as no change at all, and the Job would stay as the first edit left it. If it keeps
    moving, kopf retries the handler."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]

    def step(attempt: int) -> None:
        resource = dict(body) if attempt == 0 and not read_first else kube.get(kind, namespace, name)
        if resource is not None and (not if_apart or _apart(resource)):  # None: deleted meanwhile
            _suspend_as_read(kind, resource)

    if not kube.retried(step, f"{kind} {namespace}/{name}"):
        raise kube.PhaseChanged(f"{kind} {namespace}/{name} kept changing while its Job was suspended or resumed")


def _suspend_as_read(kind: str, resource: dict[str, Any]) -> None:
    meta, status = resource["metadata"], dict(resource.get("status") or {})
    if status.get("phase") in TERMINAL_PHASES:
        return
    suspend = bool((resource.get("spec") or {}).get("suspend"))
    job_patch, decision = planner.suspension(suspend, status.get("jobName"))
    if job_patch is not None:
        kube.patch_job(meta["namespace"], status["jobName"], job_patch)
    generation = meta.get("generation")
    if (
        decision is None
        or status.get("phase") == decision.phase
        or (not suspend and status.get("phase") != Phase.SUSPENDED)
    ):
        # No Job yet (it is created as the field says), or the Job's own status got there first (and said so,
        # a resumed Job's pod even running): only the generation is now observed.
        kube.patch_status(kind, meta["namespace"], meta["name"], {"status": {"observedGeneration": generation}})
        return
    log.info("%s %s/%s: %s (%s)", kind, meta["namespace"], meta["name"], decision.phase, decision.reason)
    kube.patch_status_from(
        kind, meta["namespace"], meta["name"], status.get("phase"), planner.status_patch(decision, status, generation)
    )
    metrics.RECONCILES.labels(kind, decision.reason).inc()
    kopf.info(resource, reason=decision.reason, message=decision.message)


def _apart(resource: dict[str, Any]) -> bool:
    """Whether a running resource's Job (read now), or its phase, disagrees with its ``spec.suspend``. A Job that
    Kueue holds (created suspended, its queue's to start) is Kueue's to start, not a disagreement."""
    status = resource.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES or not status.get("jobName"):
        return False
    job = kube.read_job(resource["metadata"]["namespace"], status["jobName"])
    if job is None:
        return False
    wanted, held = bool((resource.get("spec") or {}).get("suspend")), bool(job["spec"].get("suspend"))
    queued = QUEUE_LABEL in (job["metadata"].get("labels") or {})
    return (wanted != held and (wanted or not queued)) or wanted != (status.get("phase") == Phase.SUSPENDED)


# On updates only: at creation the create handler makes the Job as the field says.
@kopf.on.update(GROUP, VERSION, PLURAL[DATASET_BUILD], field="spec.suspend", id="suspend")
@metrics.counted(DATASET_BUILD, "suspend")
def dataset_build_suspend(body: kopf.Body, **_: Any) -> None:
    _suspend(DATASET_BUILD, body)


@kopf.on.update(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], field="spec.suspend", id="suspend")
@metrics.counted(FINE_TUNE_JOB, "suspend")
def fine_tune_job_suspend(body: kopf.Body, **_: Any) -> None:
    _suspend(FINE_TUNE_JOB, body)


CLEANUP_POLL_SECONDS = 2.0


def _clean_up(kind: str, body: kopf.Body, namespace: str, name: str) -> None:
    """deletionPolicy Delete: hold the resource (kopf's finalizer) until its output folder is gone."""
    status = body.get("status") or {}
    work = kube.read_job(namespace, status.get("jobName"))
    cleanup = kube.read_job(namespace, builders.cleanup_name(kind, name))
    step, message = planner.deletion(work, cleanup)
    log.info("%s %s/%s: deleting: %s", kind, namespace, name, message)
    if step == "stop":
        kube.patch_job(namespace, status["jobName"], {"spec": {"suspend": True}})
    elif step == "clean":
        kube.create(builders.cleanup_job(kind, namespace, name, SETTINGS))
        kopf.info(body, reason="DeletingOutput", message=message)
    elif step == "failed":
        kopf.warn(body, reason="CleanupFailed", message=message)
        raise kopf.PermanentError(message)
    elif step == "done":
        kopf.info(body, reason="OutputDeleted", message=message)
        return
    raise kopf.TemporaryError(message, delay=CLEANUP_POLL_SECONDS)


def _deletes_output(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("deletionPolicy") == "Delete"


@kopf.on.delete(GROUP, VERSION, PLURAL[DATASET_BUILD], id="clean-up", when=_deletes_output)
@metrics.counted(DATASET_BUILD, "clean-up")
def dataset_build_clean_up(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    _clean_up(DATASET_BUILD, body, namespace, name)


@kopf.on.delete(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="clean-up", when=_deletes_output)
@metrics.counted(FINE_TUNE_JOB, "clean-up")
def fine_tune_job_clean_up(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    _clean_up(FINE_TUNE_JOB, body, namespace, name)


POLLER = poller.Poller(SETTINGS, lambda namespace, name: reconcile_fine_tune_job(_waiting_stub(namespace, name)))


@kopf.on.cleanup(id="poller")
def stop_poller(**_: Any) -> None:
    POLLER.stop()


# Coroutines, as every event of every resource comes here: a thread for each would cost more than the work.
@kopf.on.event(GROUP, VERSION, PLURAL[DATASET_BUILD], id="metrics")
async def dataset_build_seen(
    type: str, namespace: str, name: str, uid: str, status: dict[str, Any], **_: Any
) -> None:  # fmt: skip
    _seen(DATASET_BUILD, type, namespace, name, uid, status)


@kopf.on.event(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="metrics")
async def fine_tune_job_seen(
    type: str, namespace: str, name: str, uid: str, status: dict[str, Any], **_: Any
) -> None:  # fmt: skip
    _seen(FINE_TUNE_JOB, type, namespace, name, uid, status)


def _seen(kind: str, type: str, namespace: str, name: str, uid: str, status: dict[str, Any]) -> None:
    deleted = type == "DELETED"
    metrics.PHASES.observe(kind, namespace, name, status.get("phase"), deleted=deleted)
    POLLER.seen(kind, namespace, name, status, deleted=deleted)
    if deleted:
        storage.DIFF_BASES.forget(uid)
