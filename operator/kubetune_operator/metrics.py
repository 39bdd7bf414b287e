"""Prometheus metrics of the operator, served by ``kubetune operator --metrics=HOST:PORT`` at ``/metrics``.

- ``kubetune_reconciles_total{kind, reason}``: decisions written to a resource's status (JobCreated,
  Waiting..., JobSucceeded, Suspended, ...);
- ``kubetune_reconcile_errors_total{kind, handler}``: handler runs that raised (an API error, a bug), not the
  expected retries of a resource that waits;
- ``kubetune_resources{kind, phase}``: resources per phase, as this replica last saw them;
- ``kubetune_phase_duration_seconds{kind, phase}``: how long resources stayed in a phase (observed when they
  leave it; a phase entered before this replica started counts from when it first saw it).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kopf
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()

RECONCILES = Counter(
    "kubetune_reconciles", "Decisions written to a resource's status.", ["kind", "reason"], registry=REGISTRY
)
ERRORS = Counter(
    "kubetune_reconcile_errors", "Handler runs that raised (not a waiting resource's retry).", ["kind", "handler"],
    registry=REGISTRY,
)  # fmt: skip
PHASE_SECONDS = Histogram(
    "kubetune_phase_duration_seconds",
    "Seconds resources stayed in a phase.",
    ["kind", "phase"],
    buckets=(1, 10, 60, 300, 900, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600, float("inf")),
    registry=REGISTRY,
)


class Phases(Collector):
    """The phase of every resource this replica has seen, and since when (monotonic clock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], tuple[str, float]] = {}

    def observe(self, kind: str, namespace: str, name: str, phase: str | None, deleted: bool = False) -> None:
        key, now = (kind, namespace, name), time.monotonic()
        with self._lock:
            before = self._seen.get(key)
            if before is not None and (deleted or before[0] != phase):
                PHASE_SECONDS.labels(kind, before[0]).observe(now - before[1])
            if deleted:
                self._seen.pop(key, None)
            elif before is None or before[0] != phase:
                self._seen[key] = (phase or "Pending", now)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("kubetune_resources", "Resources per phase.", labels=["kind", "phase"])
        counts: dict[tuple[str, str], int] = {}
        with self._lock:
            for (kind, _, _), (phase, _) in self._seen.items():
                counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        yield family


PHASES = Phases()
REGISTRY.register(PHASES)


def counted(kind: str, handler: str) -> Callable:
    """Count a handler's unexpected failures in ``kubetune_reconcile_errors_total``."""

    def decorate(fn: Callable) -> Callable:
        @contextlib.contextmanager
        def counting() -> Iterator[None]:
            try:
                yield
            except (kopf.TemporaryError, kopf.PermanentError):
                raise  # a resource waiting, or a spec that cannot run: in status and Events, not an error here
            except Exception:
                ERRORS.labels(kind, handler).inc()
                raise

        if inspect.iscoroutinefunction(fn):  # kopf runs a coroutine handler on its event loop, not in a thread

            @functools.wraps(fn)
            async def awaiting(*args: Any, **kwargs: Any) -> Any:
                with counting():
                    return await fn(*args, **kwargs)

            return awaiting

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with counting():
                return fn(*args, **kwargs)

        return wrapper

    return decorate


def serve(address: str) -> None:
    """Serve /metrics at HOST:PORT (e.g. 0.0.0.0:9090) from a thread."""
    host, _, port = address.rpartition(":")
    start_http_server(int(port), addr=host or "0.0.0.0", registry=REGISTRY)
