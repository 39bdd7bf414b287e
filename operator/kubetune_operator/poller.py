"""The poller: one thread that looks again, on its own clocks, at the resources the watch shows running (their
progress, read from the pod's log into status) or waiting (a FineTuneJob whose dependency may have finished). The
reconcile of a waiting job is passed in, so this module knows nothing of the handlers."""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1.constants import FINE_TUNE_JOB
from kubetune.api.v1alpha1.status import Phase, now
from kubetune_operator import kube, metrics, planner
from kubetune_operator.constants import Settings

log = logging.getLogger("kubetune.operator")


def running(status: dict[str, Any], **_: Any) -> bool:
    """Running with a Job whose pod may be running: not a later step that Kueue still holds (no pod to read)."""
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    return status.get("phase") == Phase.RUNNING and bool(status.get("jobName")) and ready.get("reason") != "Queued"


def progress(kind: str, namespace: str, name: str, status: dict[str, Any], memo: dict[str, Any]) -> None:
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
            pod = planner.running_pod(job_name, kube.pods_of(namespace, job_name))
            if pod is None:
                return
            pod_name = pod["metadata"]["name"]
            memo["pod"] = (job_name, pod_name)
        try:
            text = kube.pod_log(namespace, pod_name, PROGRESS_TAIL_LINES)
        except ApiException as exc:
            if exc.status not in (400, 404):
                raise
            memo.pop("pod", None)  # gone (a retried pod), or not started: find the running one
            continue
        patch = planner.progress_patch(kind, status, text, now())
        if patch is not None:  # only while it runs: a look that lost the race to the end must not undo it
            kube.patch_status_from(kind, namespace, name, Phase.RUNNING, patch)
        return


PROGRESS_TAIL_LINES = 200  # a trainer logs a few lines between two records; vLLM at start-up many more


class Poller:
    """Looks again at the resources the watch shows in two states, each on its own clock, on one thread of its
    own: a running resource's progress every ``KUBETUNE_PROGRESS_SECONDS`` (0: never), and a waiting FineTuneJob
    every ``KUBETUNE_WAIT_SECONDS`` (a safety net: the operator starts it when what it waits for finishes), each
    first that long after it entered the state.

    Not kopf's timers and retries: kopf holds a resource with a timer by a finalizer (two more writes per
    resource, and its deletion blocked while the operator is away), and while a create handler is being retried
    kopf has not recorded the spec it handled, so an edit (``spec.suspend``) would go unseen until the job
    stopped waiting."""

    TICK_SECONDS = 1.0

    def __init__(self, settings: Settings, reconcile_waiting: Callable[[str, str], None]) -> None:
        """``reconcile_waiting(namespace, name)``: look again at a waiting FineTuneJob (the handlers' reconcile)."""
        self._settings, self._reconcile_waiting = settings, reconcile_waiting
        self._lock = threading.Lock()
        # (kind, namespace, name) -> (duty, when next, the status as the watch last showed it)
        self._tracked: dict[tuple[str, str, str], tuple[str, float, dict[str, Any]]] = {}
        self._memos: dict[tuple[str, str, str], dict[str, Any]] = {}  # per running resource, for _progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _interval(self, duty: str) -> float:
        return self._settings.progress_seconds if duty == "progress" else self._settings.wait_seconds

    def seen(self, kind: str, namespace: str, name: str, status: dict[str, Any] | None, deleted: bool) -> None:
        status = status or {}
        duty = None
        if not deleted and running(status):
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
            self._tracked[key] = (duty, due, kube.plain(status))
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
                    progress(kind, namespace, name, status, self._memos.setdefault((kind, namespace, name), {}))
                else:
                    self._reconcile_waiting(namespace, name)
            except (kopf.TemporaryError, kopf.PermanentError):
                pass  # moved meanwhile, or cannot run: its status says so, and the watch tells this poller
            except ApiException as exc:
                if exc.status != 404:  # 404: deleted meanwhile
                    metrics.ERRORS.labels(kind, duty).inc()
                    log.warning("%s %s/%s: %s: %s", kind, namespace, name, duty, kube.api_message(exc))
            except Exception:  # one resource's trouble must not hold up the others
                metrics.ERRORS.labels(kind, duty).inc()
                log.exception("%s %s/%s: %s", kind, namespace, name, duty)
