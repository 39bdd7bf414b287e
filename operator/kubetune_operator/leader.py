"""One active operator among replicas: a coordination.k8s.io/v1 Lease, as client-go's leader election holds one.

``kubetune operator --leader-election`` takes the Lease before kopf starts (so a standby replica watches and
writes nothing), renews it every ``renew`` seconds, and stops the process when it cannot renew within the
Lease's duration (the Deployment starts it again, as a standby). A replica takes the Lease over only once it
has expired. Every write is a JSON patch whose ``test`` operations the API server checks first (holder and
renew time as read), so two replicas that read the same expired Lease cannot both take it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kubetune_operator import health

log = logging.getLogger("kubetune.operator.leader")

LEASE_NAME = "kubetune-operator"


def _now() -> datetime:
    return datetime.now(UTC)


def _format(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # MicroTime


def _parse(value: str | None) -> datetime | None:
    """A MicroTime (or Time) as the API writes it: 2026-01-01T00:00:00.123456Z."""
    if not value:
        return None
    return datetime.strptime(value[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def identity() -> str:
    """This replica: its pod name (the hostname in a pod) and process id."""
    return f"{socket.gethostname()}_{os.getpid()}"


def expired(spec: dict[str, Any], now: datetime) -> bool:
    """Whether a Lease's holder has missed renewing it for longer than its duration."""
    renewed = _parse(spec.get("renewTime")) or _parse(spec.get("acquireTime"))
    if not spec.get("holderIdentity") or renewed is None:
        return True
    return renewed + timedelta(seconds=int(spec.get("leaseDurationSeconds") or 0)) < now


class LeaderElection:
    """The Lease ``name`` in ``namespace``, held by ``holder`` for ``duration`` seconds at a time."""

    def __init__(self, namespace: str, holder: str, duration: int | None = None):
        # KUBETUNE_LEASE_SECONDS: how long a Lease lasts unrenewed (client-go's default: 15); renewed at a third.
        duration = duration or int(os.environ.get("KUBETUNE_LEASE_SECONDS", "15"))
        renew, retry = duration / 3, max(duration / 7, 0.5)
        self.namespace, self.holder = namespace, holder
        self.duration, self.renew_every, self.retry = duration, renew, retry
        self.api = client.CoordinationV1Api()
        self._stop = threading.Event()

    def _patch(self, operations: list[dict[str, Any]]) -> bool:
        """Apply a JSON patch; False when a ``test`` failed (someone else wrote the Lease meanwhile)."""
        try:
            self.api.patch_namespaced_lease(
                LEASE_NAME, self.namespace, operations, _content_type="application/json-patch+json"
            )
        except ApiException as exc:
            if exc.status in (409, 422):
                return False
            raise
        return True

    def try_acquire(self) -> bool:
        """Take the Lease if it is free or expired; True when this replica holds it now."""
        now = _now()
        spec = {"holderIdentity": self.holder, "leaseDurationSeconds": self.duration,
                "acquireTime": _format(now), "renewTime": _format(now), "leaseTransitions": 0}  # fmt: skip
        try:
            raw = self.api.read_namespaced_lease(LEASE_NAME, self.namespace, _preload_content=False)
        except ApiException as exc:
            if exc.status != 404:
                raise
            try:
                self.api.create_namespaced_lease(
                    self.namespace, {"metadata": {"name": LEASE_NAME, "namespace": self.namespace}, "spec": spec}
                )
            except ApiException as exc:
                if exc.status != 409:  # another replica created it first
                    raise
                return False
            return True
        current = json.loads(raw.data).get("spec") or {}
        if current.get("holderIdentity") != self.holder and not expired(current, now):
            health.READINESS.contact("standby")
            return False
        taken_over = current.get("holderIdentity") != self.holder
        spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + taken_over
        # Only if nobody wrote it since it was read: the holder and the renew time as read.
        tests = [{"op": "test", "path": f"/spec/{key}", "value": current[key]}
                 for key in ("holderIdentity", "renewTime") if key in current]  # fmt: skip
        taken = self._patch([*tests, {"op": "add", "path": "/spec", "value": {**current, **spec}}])
        health.READINESS.contact()
        return taken

    def acquire(self) -> None:
        """Block until this replica holds the Lease."""
        logged = False
        while not self.try_acquire():
            if not logged:
                log.info("standby: the Lease %s/%s is held by another replica", self.namespace, LEASE_NAME)
                logged = True
            time.sleep(self.retry)
        log.info("leading: holding the Lease %s/%s as %s", self.namespace, LEASE_NAME, self.holder)

    def renew(self) -> bool:
        """Renew the Lease if this replica still holds it."""
        return self._patch(
            [
                {"op": "test", "path": "/spec/holderIdentity", "value": self.holder},
                {"op": "add", "path": "/spec/renewTime", "value": _format(_now())},
            ]
        )

    def keep(self) -> threading.Thread:
        """Renew in a thread; stop the process (SIGTERM: kopf shuts down) once the Lease is lost or expired."""

        def run() -> None:
            renewed = time.monotonic()
            while not self._stop.wait(self.renew_every):
                try:
                    if self.renew():
                        renewed = time.monotonic()
                        health.READINESS.contact()
                        continue
                    log.error("lost the Lease %s/%s to another replica; stopping", self.namespace, LEASE_NAME)
                except Exception as exc:  # the API unreachable: keep trying until the Lease would have expired
                    log.warning("could not renew the Lease: %s", exc)
                    if time.monotonic() - renewed < self.duration:
                        continue
                    log.error("the Lease %s/%s expired unrenewed; stopping", self.namespace, LEASE_NAME)
                os.kill(os.getpid(), signal.SIGTERM)
                return

        thread = threading.Thread(target=run, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


def standby_probe(url: str | None):
    """Answer 200 at the liveness URL's port while this replica waits for the Lease (kopf serves it once leading)."""
    return health.serving(url, lambda: (200, "standby"))
