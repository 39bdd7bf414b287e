"""kopf handlers: thin. Each reads the resource, asks the planner, applies the answer and writes status.

Handlers are synchronous (kopf runs them in a thread pool) and talk to the API through the official
client, configured once at start-up from the in-cluster service account or the kubeconfig.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
import pydantic
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.spec.constants import DATASET_BUILD, FINE_TUNE_JOB, GROUP, NAMES, VERSION
from kubetune.spec.resources import SpecError, parse_resource
from kubetune.spec.status import TERMINAL_PHASES, Phase, now
from kubetune_operator import builders, health, metrics, planner
from kubetune_operator.constants import FIELD_MANAGER, MANAGED_BY, OWNER_LABEL, QUEUE_LABEL, STEP_LABEL, Settings

SETTINGS = Settings()
PLURAL = {kind: names[0] for kind, names in NAMES.items()}
log = logging.getLogger("kubetune.operator")


class _DiffBase(kopf.DiffBaseStorage):
    """kopf's diff base, the spec it last handled (how it tells a ``spec.suspend`` edit), kept in this process.

    kopf's default keeps it in an annotation of each resource: one more write per resource, and one more watch
    event back, for every resource ever created (at 2,000 resources, 2,000 of 22,000 requests). In memory,
    an operator that starts (or takes over as leader) has none, so kopf sees each resource as new and calls its
    create handler, the same reconcile as at a resume, which carries out a ``spec.suspend`` edit made while
    no operator ran (:func:`_reconcile`).

    It is built only for the resources that have change handlers: kopf builds it on every event of everything
    watched, a deep copy of the whole object, and for a Job (its pod template, its status) nothing reads it.
    An entry goes with its resource's DELETED event; one whose deletion fell in a gap of the watch stays, as
    kopf's own memory of that resource does (a spec's worth of memory each, until the operator restarts)."""

    def __init__(self) -> None:
        super().__init__()
        self._handled: dict[str, kopf.BodyEssence] = {}  # uid -> the essence kopf last handled

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if not str(body.get("apiVersion", "")).startswith(f"{GROUP}/"):
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self._handled.get(body.metadata.uid or "")

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        self._handled[body.metadata.uid or ""] = _plain(essence)  # type: ignore[assignment]

    def forget(self, uid: str | None) -> None:
        self._handled.pop(uid or "", None)


DIFF_BASES = _DiffBase()


class _Progress(kopf.AnnotationsProgressStorage):
    """kopf's record of a handler being retried, in annotations (``kubetune.dev/reconcile``, gone once it
    succeeds), without kopf's ``kubetune.dev/kopf-managed`` marker. kopf adds the marker to the first patch of
    every resource it handles, a handler that succeeds at once included, whose patch is otherwise empty: one
    write per resource for nothing. The marker tells other kopf-based operators to leave these annotations out
    of their diffs; no other operator handles kubetune's resources, and this one leaves them out by prefix."""

    def _store_marker(self, prefix: str, patch: kopf.Patch, body: kopf.Body) -> None:
        pass


@kopf.on.startup(id="configure")
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = _Progress(prefix=GROUP)
    settings.persistence.diffbase_storage = DIFF_BASES
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 60
    # No watching of CRDs or Namespaces: the CRDs are installed before the operator (the chart does it) and
    # the namespaces are named exactly, so the operator needs no cluster-wide read access for either.
    settings.scanning.disabled = True
    # The handlers are synchronous and wait on the API, not the CPU: more threads than kopf's default (the CPU
    # count + 4), so that a thousand resources starting at once do not queue behind each other's requests.
    settings.execution.max_workers = SETTINGS.workers
    global EXECUTOR
    EXECUTOR = settings.execution.executor
    health.READINESS.contact("leading" if health.READINESS.elected else "running")
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it again here so a later setting counts.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    global API
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = SETTINGS.workers + 2  # every handler thread, the poller, a spare
    API = _TimedApiClient(configuration)


REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read


class _TimedApiClient(client.ApiClient):
    """Every request with a timeout: a connection left half-open (kept alive in the pool) must not hold a
    handler thread, or the poller, forever."""

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("_request_timeout") is None:
            kwargs["_request_timeout"] = REQUEST_TIMEOUT
        return super().call_api(*args, **kwargs)


# One API client for every handler: its connection pool keeps connections open between requests. (An API
# object made without one makes a client of its own: a copy of the configuration and a new connection, with
# a TLS handshake, per request.) Set at start-up; until then (handlers called outside an operator) a new one.
API: client.ApiClient | None = None


def _api() -> client.ApiClient:
    return API or client.ApiClient()


# kopf's pool of threads for synchronous handlers, set at start-up; the async handlers (those that mostly decide
# there is nothing to do, from what the watch shows) hand it their blocking work. None: asyncio's default pool.
EXECUTOR: concurrent.futures.Executor | None = None
T = TypeVar("T")


async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, blocking, run from an async handler in kopf's handler threads, with the handler's context
    (kopf posts Events through its context variables). Cancelled (the operator stopping), it still waits for the
    thread, as kopf does for its synchronous handlers, so nothing is written after the handler has ended."""
    run = functools.partial(contextvars.copy_context().run, fn, *args)
    future = asyncio.get_running_loop().run_in_executor(EXECUTOR, run)
    cancelled: asyncio.CancelledError | None = None
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    return future.result()


@kopf.on.login(id="login")
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


# Every patch names its type: the Python client sends application/merge-patch+json for any custom-object patch
# (a JSON patch list included, which kube-apiserver refuses with 400) and guesses for built-in kinds.
MERGE_PATCH, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"


def _patch_status(kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(_api()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL[kind], name, patch, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
    )


class PhaseChanged(kopf.TemporaryError):
    """The phase changed between reading it and writing the next one: look again."""


def _patch_status_from(kind: str, namespace: str, name: str, phase: str | None, patch: dict[str, Any]) -> None:
    """Write ``patch`` only if the phase is still ``phase`` (None: no status yet), atomically: a JSON patch whose
    ``test`` operation the API server checks before it applies the rest. Two handlers that read the same phase
    (a Job's status event and a spec.suspend change) cannot both move it; the loser is retried."""
    if phase is None:  # nothing to test against (the create handler writes a phase first, so this is rare)
        _patch_status(kind, namespace, name, patch)
        return
    operations = [{"op": "test", "path": "/status/phase", "value": phase}]
    operations += [{"op": "add", "path": f"/status/{key}", "value": value} for key, value in patch["status"].items()]
    try:
        client.CustomObjectsApi(_api()).patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL[kind],
            name,
            operations,
            field_manager=FIELD_MANAGER,
            _content_type=JSON_PATCH,
        )
    except ApiException as exc:
        # A failed ``test`` is a 422 whose message says no more than "the server rejected our request" (patch.go
        # replaces the patch library's), as is a status the CRD's schema refuses: look at the phase to tell them.
        if exc.status == 422 and ((_get(kind, namespace, name) or {}).get("status") or {}).get("phase") != phase:
            raise PhaseChanged(f"{kind} {namespace}/{name} left phase {phase} meanwhile", delay=0.5) from None
        raise


def _create(child: dict[str, Any]) -> bool:
    """Create a child unless it exists (a resumed operator plans the same children again): whether it did."""
    ns = child["metadata"]["namespace"]
    # The client checks the child against the kind's model; the answer, which nothing needs, is read (so that its
    # connection goes back to the pool) but not parsed into the client's models. Strict field validation: a field
    # the cluster's version does not know is refused (the resource fails, saying which), not silently dropped.
    options = {"field_manager": FIELD_MANAGER, "field_validation": "Strict", "_preload_content": False}
    try:
        if child["kind"] == "ConfigMap":
            answer = client.CoreV1Api(_api()).create_namespaced_config_map(ns, child, **options)
        elif child["kind"] == "Job":
            answer = client.BatchV1Api(_api()).create_namespaced_job(ns, child, **options)
        else:
            raise ValueError(f"no creator for {child['kind']}")
        answer.read()
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False
    return True


def _pods_of(namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The pods the Job controller made for a Job (it labels them job-name=NAME)."""
    raw = client.CoreV1Api(_api()).list_namespaced_pod(
        namespace, label_selector=f"job-name={job_name}", _preload_content=False
    )
    return json.loads(raw.data).get("items") or []


def _api_message(exc: Exception) -> str:
    """The message of the Status object an API error carries, else the error itself, on one line."""
    try:
        return json.loads(exc.body)["message"]
    except (AttributeError, TypeError, ValueError, KeyError):
        return " ".join(str(getattr(exc, "reason", None) or exc).split())


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
            created = _create(child)
        except (ApiException, pydantic.ValidationError) as exc:
            if isinstance(exc, ApiException) and exc.status not in (400, 422):
                raise  # the API is unwell: kopf retries
            # The server (or the client's own schema check) refuses what the operator built from this spec and its
            # settings (e.g. a default limit below a request): retrying cannot help, so it becomes the
            # resource's status, not a retry loop.
            return planner.child_refused(child, _api_message(exc)), None, False
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
        fresh = _get(kind, meta["namespace"], meta["name"])
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
        decision = planner.plan(resource, SETTINGS, *waited)
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
    # the poller's look), one writes; the other is told (PhaseChanged), and looks again.
    _patch_status_from(kind, meta["namespace"], meta["name"], status.get("phase"), patch)
    metrics.RECONCILES.labels(kind, decision.reason).inc()
    if decision.permanent:
        kopf.warn(body, reason=decision.reason, message=decision.message)
        if dependents is not None:
            _wake(kind, meta["namespace"], meta["name"], dependents)
        raise kopf.PermanentError(decision.message)
    if decision.children:
        kopf.info(body, reason=decision.reason, message=decision.message)
    job = _read_job(meta["namespace"], job_name) if existed else None
    if job and job.get("status"):
        # Planned before, its status write lost (a retry after an API error): the Job may have moved, even
        # ended, meanwhile, and its events then found no record of it. Carry its status now (kopf's retry of
        # this handler would stop at the jobName just written).
        labels = job["metadata"].get("labels") or {}
        _retried(lambda _: _carry_job_status(labels, meta["namespace"], job_name, job["status"], dependents or {}),
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
    dataset = ((spec.get("dataset") or {}).get("datasetBuildRef") or {}).get("name")
    previous = (((spec.get("startFrom") or {}).get("fineTuneJobRef")) or {}).get("name")
    return _get(DATASET_BUILD, namespace, dataset), _get(FINE_TUNE_JOB, namespace, previous)


def _get(kind: str, namespace: str, name: str | None) -> dict[str, Any] | None:
    """The resource ``kind`` ``name`` as stored now, or None when no name is given or it does not exist (yet)."""
    if not name:
        return None
    try:
        api = client.CustomObjectsApi(_api())
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL[kind], name)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


@kopf.index(GROUP, VERSION, PLURAL[FINE_TUNE_JOB], id="dependents")
async def dependents(namespace: str, name: str, spec: kopf.Spec, **_: Any) -> dict[tuple[str, str, str], str]:
    """Which FineTuneJobs wait on which resource: (namespace, kind, name) -> the FineTuneJob's name."""
    found = {}
    dataset = ((spec.get("dataset") or {}).get("datasetBuildRef") or {}).get("name")
    if dataset:
        found[(namespace, DATASET_BUILD, dataset)] = name
    previous = (((spec.get("startFrom") or {}).get("fineTuneJobRef")) or {}).get("name")
    if previous:
        found[(namespace, FINE_TUNE_JOB, previous)] = name
    return found


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


RETRY_ATTEMPTS = 6  # with the sleeps between them, about 15 s


def _retried(step: Callable[[int], None], what: str) -> bool:
    """Run ``step(attempt)`` until it returns, again after a short sleep when the resource moved meanwhile
    (PhaseChanged) or the API was briefly unwell (429, 5xx, a dropped connection); False when it kept moving.

    For what kopf's retry cannot carry: a Job's terminal event is the last word it says (event handlers are not
    retried), and a retried change handler sees edits made meanwhile merged with the one it failed on."""
    for attempt in range(RETRY_ATTEMPTS):
        last = attempt == RETRY_ATTEMPTS - 1
        try:
            step(attempt)
            return True
        except PhaseChanged:
            pass  # another writer moved it meanwhile: read it again
        except ApiException as exc:
            if exc.status not in (429, 500, 502, 503, 504) or last:
                raise
            log.warning("%s: the API answered %s; trying again", what, exc.status)
        except urllib3.exceptions.HTTPError as exc:
            if last:
                raise
            log.warning("%s: %s; trying again", what, exc)
        if not last:
            time.sleep(min(0.5 * 2**attempt, 8.0))
    return False


def _plain(view: Any) -> dict[str, Any]:
    """A deep copy of one of kopf's body views (status, spec) as plain data, to keep past the handler."""
    return json.loads(json.dumps(dict(view or {})))


@kopf.on.event("batch", "v1", "jobs", labels={MANAGED_BY: "kubetune"}, id="job-status")
@metrics.counted("Job", "job-status")
async def job_status(
    type: str | None, labels: dict[str, str], namespace: str, name: str, status: dict[str, Any], memo: kopf.Memo,
    dependents: kopf.Index, **_: Any,
) -> None:  # fmt: skip
    """A Job moved: copy its outcome into the status of the resource that owns it.

    An event handler, not a field handler: kopf would keep the field's last value in two annotation patches per
    Job (each a write, and an event back to every watcher), and this needs none. What it gives up, kopf's
    retries, it does itself (:func:`_retried`). The status last carried over is remembered (kopf's per-object
    memo), so an event that changed only the Job's metadata costs nothing.

    A coroutine: most Job events need no request, and are decided on kopf's event loop without a thread; the
    carrying, which reads and writes, goes to kopf's handler threads."""
    status = _plain(status)
    if type == "DELETED" or not status or memo.get("carried") == status:
        return  # gone, just created (the reconcile that made it wrote the resource's status), or already said
    if planner.settling(status):
        return  # the controller has decided the end and writes it next: one write for the pair, not two
    labels = dict(labels)

    def carry(_: int) -> None:
        _carry_job_status(labels, namespace, name, status, dependents)

    if await _in_thread(_retried, carry, f"Job {namespace}/{name}"):
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
            current = _get(kind, namespace, name)
            if current is None:
                return  # the owner is gone; its Jobs follow (ownerReferences)
            current_job = (current.get("status") or {}).get("jobName")
            if current_job is None:  # the reconcile that created the Job writes it next: then this is said
                raise PhaseChanged(f"{kind} {namespace}/{name} has not recorded its Job {job_name} yet")
            if current_job != job_name:
                if STEP_LABEL not in labels and (current.get("status") or {}).get("phase") not in TERMINAL_PHASES:
                    # The last step's Job, created by the event that ended the step before it, which records
                    # it next.
                    raise PhaseChanged(f"{kind} {namespace}/{name} has not recorded its Job {job_name} yet")
                return  # a step done with (the shards' Job, after the merge Job took over)
            suspend = bool((current.get("spec") or {}).get("suspend"))
            decision = planner.job_outcome(
                kind, namespace, name, status, SETTINGS, labels.get(QUEUE_LABEL), suspend=suspend
            )
            step, result = labels.get(STEP_LABEL), None
            if decision.phase == Phase.FAILED:  # only at the end are the pods worth a request
                pods = _pods_of(namespace, job_name)
                cause, partial = planner.failure_cause(job_name, pods), planner.partial_result(job_name, pods)
                decision = planner.with_cause(decision, cause, partial)
            elif decision.phase == Phase.SUCCEEDED:
                result = planner.result_of(job_name, _pods_of(namespace, job_name))
                if step is None:
                    decision = planner.with_result(kind, decision, result, now())
            if step is not None:
                resource = parse_resource(dict(current))
                waited = _dependencies(current.get("spec") or {}, namespace) if kind == FINE_TUNE_JOB else (None, None)
                decision = planner.next_step(resource, step, decision, SETTINGS, result, *waited)
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
            _patch_status_from(kind, namespace, name, phase, patch)
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
    diff (:class:`_DiffBase`). ``read_first``: ``body`` is older than a write of this process; read it again.

    When another writer moved the status meanwhile (the Job's own event, read with the new spec), the resource
    is read again and this is done again, here: were kopf to retry it instead, an edit back (suspend, then
    resume) would reach kopf as no change at all, and the Job would stay as the first edit left it. If it keeps
    moving, kopf retries the handler."""
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]

    def step(attempt: int) -> None:
        resource = dict(body) if attempt == 0 and not read_first else _get(kind, namespace, name)
        if resource is not None and (not if_apart or _apart(resource)):  # None: deleted meanwhile
            _suspend_as_read(kind, resource)

    if not _retried(step, f"{kind} {namespace}/{name}"):
        raise PhaseChanged(f"{kind} {namespace}/{name} kept changing while its Job was suspended or resumed")


def _suspend_as_read(kind: str, resource: dict[str, Any]) -> None:
    meta, status = resource["metadata"], dict(resource.get("status") or {})
    if status.get("phase") in TERMINAL_PHASES:
        return
    suspend = bool((resource.get("spec") or {}).get("suspend"))
    job_patch, decision = planner.suspension(suspend, status.get("jobName"))
    if job_patch is not None:
        client.BatchV1Api(_api()).patch_namespaced_job(
            status["jobName"], meta["namespace"], job_patch, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
        )
    generation = meta.get("generation")
    if (
        decision is None
        or status.get("phase") == decision.phase
        or (not suspend and status.get("phase") != Phase.SUSPENDED)
    ):
        # No Job yet (it is created as the field says), or the Job's own status got there first (and said so,
        # a resumed Job's pod even running): only the generation is now observed.
        _patch_status(kind, meta["namespace"], meta["name"], {"status": {"observedGeneration": generation}})
        return
    log.info("%s %s/%s: %s (%s)", kind, meta["namespace"], meta["name"], decision.phase, decision.reason)
    _patch_status_from(
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
    job = _read_job(resource["metadata"]["namespace"], status["jobName"])
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


def _running(status: dict[str, Any], **_: Any) -> bool:
    """Running with a Job whose pod may be running: not a later step that Kueue still holds (no pod to read)."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return status.get("phase") == Phase.RUNNING and bool(status.get("jobName")) and ready.get("reason") != "Queued"


def _progress(kind: str, namespace: str, name: str, status: dict[str, Any], memo: dict[str, Any]) -> None:
    """Copy the last progress record in the running pod's log into status.progress and status.progressDetail.

    The pods have no API access (no token), so they cannot write status themselves; their log, read through
    the API's ``pods/log``, is the channel (the README says why). The pod's name is remembered
    (``memo``, the poller's per resource) with its Job's, so a look costs one request, two when the pod changed."""
    job_name = status["jobName"]
    for attempt in range(2):
        # The pod read last time, if it belongs to the Job of this step (the merge after the shards, training
        # after sizing: a new Job, new pods).
        seen_job, pod_name = memo.get("pod") or (None, None)
        if attempt > 0 or seen_job != job_name:
            pod = planner.running_pod(job_name, _pods_of(namespace, job_name))
            if pod is None:
                return
            pod_name = pod["metadata"]["name"]
            memo["pod"] = (job_name, pod_name)
        try:
            raw = client.CoreV1Api(_api()).read_namespaced_pod_log(
                pod_name, namespace, tail_lines=PROGRESS_TAIL_LINES, _preload_content=False
            )
        except ApiException as exc:
            if exc.status not in (400, 404):
                raise
            memo.pop("pod", None)  # gone (a retried pod), or not started: find the running one
            continue
        patch = planner.progress_patch(kind, status, raw.data.decode(errors="replace"), now())
        if patch is not None:  # only while it runs: a look that lost the race to the end must not undo it
            _patch_status_from(kind, namespace, name, Phase.RUNNING, patch)
        return


PROGRESS_TAIL_LINES = 200  # a trainer logs a few lines between two records; vLLM at start-up many more


def _read_job(namespace: str, name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    try:
        raw = client.BatchV1Api(_api()).read_namespaced_job(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(raw.data)


CLEANUP_POLL_SECONDS = 2.0


def _clean_up(kind: str, body: kopf.Body, namespace: str, name: str) -> None:
    """deletionPolicy Delete: hold the resource (kopf's finalizer) until its output folder is gone."""
    status = body.get("status") or {}
    work = _read_job(namespace, status.get("jobName"))
    cleanup = _read_job(namespace, builders.cleanup_name(kind, name))
    step, message = planner.deletion(work, cleanup)
    log.info("%s %s/%s: deleting: %s", kind, namespace, name, message)
    if step == "stop":
        client.BatchV1Api(_api()).patch_namespaced_job(
            status["jobName"], namespace, {"spec": {"suspend": True}}, field_manager=FIELD_MANAGER,
            _content_type=MERGE_PATCH,
        )  # fmt: skip
    elif step == "clean":
        _create(builders.cleanup_job(kind, namespace, name, SETTINGS))
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


class _Poller:
    """Looks again at the resources the watch shows in two states, each on its own clock, on one thread of its
    own: a running resource's progress every ``KUBETUNE_PROGRESS_SECONDS`` (0: never), and a waiting FineTuneJob
    every ``KUBETUNE_WAIT_SECONDS`` (a safety net: the operator starts it when what it waits for finishes), each
    first that long after it entered the state.

    Not kopf's timers and retries: kopf holds a resource with a timer by a finalizer (two more writes per
    resource, and its deletion blocked while the operator is away), and while a create handler is being retried
    kopf has not recorded the spec it handled, so an edit (``spec.suspend``) would go unseen until the job
    stopped waiting."""

    TICK_SECONDS = 1.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (kind, namespace, name) -> (duty, when next, the status as the watch last showed it)
        self._tracked: dict[tuple[str, str, str], tuple[str, float, dict[str, Any]]] = {}
        self._memos: dict[tuple[str, str, str], dict[str, Any]] = {}  # per running resource, for _progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _interval(duty: str) -> float:
        return SETTINGS.progress_seconds if duty == "progress" else SETTINGS.wait_seconds

    def seen(self, kind: str, namespace: str, name: str, status: dict[str, Any] | None, deleted: bool) -> None:
        status = status or {}
        duty = None
        if not deleted and _running(status):
            duty = "progress"
        elif not deleted and kind == FINE_TUNE_JOB and status.get("phase") == Phase.WAITING:
            duty = "wait"
        key = (kind, namespace, name)
        with self._lock:
            if duty is None or self._interval(duty) <= 0:
                self._tracked.pop(key, None)
                return
            old = self._tracked.get(key)
            due = old[1] if old is not None and old[0] == duty else time.monotonic() + self._interval(duty)
            self._tracked[key] = (duty, due, _plain(status))
            if self._thread is None and not self._stop.is_set():
                self._start()

    def _start(self) -> None:
        """Started from a handler, with its context: kopf posts Events (a woken job's) through context variables
        that only its handlers have."""
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._loop,), name="poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self.TICK_SECONDS):
            self.poll_once()

    def poll_once(self) -> None:
        """One look at each resource whose time has come."""
        now_ = time.monotonic()
        with self._lock:
            due = [(key, duty, status) for key, (duty, at, status) in self._tracked.items() if at <= now_]
            for key, duty, status in due:
                self._tracked[key] = (duty, now_ + self._interval(duty), status)
            self._memos = {key: memo for key, memo in self._memos.items() if key in self._tracked}
        for (kind, namespace, name), duty, status in due:
            if self._stop.is_set():
                return
            try:
                if duty == "progress":
                    _progress(kind, namespace, name, status, self._memos.setdefault((kind, namespace, name), {}))
                else:
                    reconcile_fine_tune_job(_waiting_stub(namespace, name))
            except (kopf.TemporaryError, kopf.PermanentError):
                pass  # moved meanwhile, or cannot run: its status says so, and the watch tells this poller
            except ApiException as exc:
                if exc.status != 404:  # 404: deleted meanwhile
                    metrics.ERRORS.labels(kind, duty).inc()
                    log.warning("%s %s/%s: %s: %s", kind, namespace, name, duty, _api_message(exc))
            except Exception:  # one resource's trouble must not hold up the others
                metrics.ERRORS.labels(kind, duty).inc()
                log.exception("%s %s/%s: %s", kind, namespace, name, duty)


POLLER = _Poller()


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
        DIFF_BASES.forget(uid)
