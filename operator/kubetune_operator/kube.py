"""The operator's access to the Kubernetes API: one pooled client with timeouts, and the requests the handlers
and the poller make through it: reads, creates that tolerate an existing child, status writes (plain, and guarded
by the phase they read), retries of what kopf cannot retry, and blocking calls from kopf's coroutines.

Every patch names its Content-Type, as kube-apiserver decodes a patch by it (tests/operator/apiserver.py imitates
that): the Python client would send any custom-object patch, a JSON patch list included, as a merge patch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import kopf
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1.constants import GROUP, NAMES, VERSION
from kubetune_operator.constants import FIELD_MANAGER

PLURAL = {kind: names[0] for kind, names in NAMES.items()}
log = logging.getLogger("kubetune.operator")


def connect(workers: int, executor: concurrent.futures.Executor | None) -> None:
    """Configure the client once, at start-up, from the in-cluster service account or the kubeconfig, with a
    connection for each of kopf's ``workers`` threads; ``executor``: kopf's pool for blocking work."""
    global API, EXECUTOR
    EXECUTOR = executor
    try:
        config.load_incluster_config()
    except config.ConfigException:
        # The client reads $KUBECONFIG once, at import; read it again here so a later setting counts.
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = workers + 2  # every handler thread, the poller, a spare
    API = TimedApiClient(configuration)


REQUEST_TIMEOUT = (10, 60)  # seconds to connect, to read


class TimedApiClient(client.ApiClient):
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


def api() -> client.ApiClient:
    return API or client.ApiClient()


# kopf's pool of threads for synchronous handlers, set at start-up; the async handlers (those that mostly decide
# there is nothing to do, from what the watch shows) hand it their blocking work. None: asyncio's default pool.
EXECUTOR: concurrent.futures.Executor | None = None
T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
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


# Every patch names its type: the Python client sends application/merge-patch+json for any custom-object patch
# (a JSON patch list included, which kube-apiserver refuses with 400) and guesses for built-in kinds.
MERGE_PATCH, JSON_PATCH = "application/merge-patch+json", "application/json-patch+json"


def patch_status(kind: str, namespace: str, name: str, patch: dict[str, Any]) -> None:
    client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL[kind], name, patch, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
    )


class PhaseChanged(kopf.TemporaryError):
    """The phase changed between reading it and writing the next one: look again."""


def patch_status_from(kind: str, namespace: str, name: str, phase: str | None, patch: dict[str, Any]) -> None:
    """Write ``patch`` only if the phase is still ``phase`` (None: no status yet), atomically: a JSON patch whose
    ``test`` operation the API server checks before it applies the rest. Two handlers that read the same phase
    (a Job's status event and a spec.suspend change) cannot both move it; the loser is retried."""
    if phase is None:  # nothing to test against (the create handler writes a phase first, so this is rare)
        patch_status(kind, namespace, name, patch)
        return
    operations = [{"op": "test", "path": "/status/phase", "value": phase}]
    operations += [{"op": "add", "path": f"/status/{key}", "value": value} for key, value in patch["status"].items()]
    try:
        client.CustomObjectsApi(api()).patch_namespaced_custom_object_status(
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
        if exc.status == 422 and ((get(kind, namespace, name) or {}).get("status") or {}).get("phase") != phase:
            raise PhaseChanged(f"{kind} {namespace}/{name} left phase {phase} meanwhile", delay=0.5) from None
        raise


def patch_job(namespace: str, name: str, patch: dict[str, Any]) -> None:
    """A merge patch of a Job (its ``spec.suspend``)."""
    client.BatchV1Api(api()).patch_namespaced_job(
        name, namespace, patch, field_manager=FIELD_MANAGER, _content_type=MERGE_PATCH
    )


def create(child: dict[str, Any]) -> bool:
    """Create a child unless it exists (a resumed operator plans the same children again): whether it did."""
    ns = child["metadata"]["namespace"]
    # The client checks the child against the kind's model; the answer, which nothing needs, is read (so that its
    # connection goes back to the pool) but not parsed into the client's models. Strict field validation: a field
    # the cluster's version does not know is refused (the resource fails, saying which), not silently dropped.
    options = {"field_manager": FIELD_MANAGER, "field_validation": "Strict", "_preload_content": False}
    try:
        if child["kind"] == "ConfigMap":
            answer = client.CoreV1Api(api()).create_namespaced_config_map(ns, child, **options)
        elif child["kind"] == "Service":
            answer = client.CoreV1Api(api()).create_namespaced_service(ns, child, **options)
        elif child["kind"] == "Job":
            answer = client.BatchV1Api(api()).create_namespaced_job(ns, child, **options)
        else:
            raise ValueError(f"no creator for {child['kind']}")
        answer.read()
    except ApiException as exc:
        if exc.status != 409:
            raise
        return False
    return True


def pods_of(namespace: str, job_name: str) -> list[dict[str, Any]]:
    """The pods the Job controller made for a Job (it labels them job-name=NAME)."""
    raw = client.CoreV1Api(api()).list_namespaced_pod(
        namespace, label_selector=f"job-name={job_name}", _preload_content=False
    )
    return json.loads(raw.data).get("items") or []


def pod_log(namespace: str, pod: str, tail_lines: int) -> str:
    """The last ``tail_lines`` lines of a pod's log (``pods/log``)."""
    raw = client.CoreV1Api(api()).read_namespaced_pod_log(pod, namespace, tail_lines=tail_lines, _preload_content=False)
    return raw.data.decode(errors="replace")


def api_message(exc: Exception) -> str:
    """The message of the Status object an API error carries, else the error itself, on one line."""
    try:
        return json.loads(exc.body)["message"]
    except (AttributeError, TypeError, ValueError, KeyError):
        return " ".join(str(getattr(exc, "reason", None) or exc).split())


def get(kind: str, namespace: str, name: str | None) -> dict[str, Any] | None:
    """The resource ``kind`` ``name`` as stored now, or None when no name is given or it does not exist (yet)."""
    if not name:
        return None
    try:
        return client.CustomObjectsApi(api()).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL[kind], name
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None


def read_job(namespace: str, name: str | None) -> dict[str, Any] | None:
    if not name:
        return None
    try:
        raw = client.BatchV1Api(api()).read_namespaced_job(name, namespace, _preload_content=False)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return json.loads(raw.data)


RETRY_ATTEMPTS = 6  # with the sleeps between them, about 15 s


def retried(step: Callable[[int], None], what: str) -> bool:
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


def plain(view: Any) -> dict[str, Any]:
    """A deep copy of one of kopf's body views (status, spec) as plain data, to keep past the handler."""
    return json.loads(json.dumps(dict(view or {})))
