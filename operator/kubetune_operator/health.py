"""The operator's probes beside kopf's liveness: readiness, and liveness while a standby waits for the Lease.

Readiness (``kubetune operator --readiness=URL``) says whether this replica does its part now: a replica that
leads (or runs without leader election) once kopf has started and, when elected, renewed the Lease within its
duration; a standby while it reads the Lease (it can take over). With leader election, a replica that has not
reached the API server within the Lease's duration is not ready; without it (one replica), ready means started,
and nothing more is checked. A standby is ready on purpose: a Deployment rolling out waits for new pods to be
ready, and a new pod can only lead once an old one has gone.
"""

from __future__ import annotations

import contextlib
import http.server
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Readiness:
    """What this replica is doing, and when it last heard from the API server (monotonic seconds)."""

    role: str = "starting"  # starting | standby | leading | running (no leader election)
    elected: bool = False
    lease_seconds: float = 15.0
    last_contact: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def contact(self, role: str | None = None) -> None:
        """The API server answered (the Lease read or renewed, kopf started); ``role`` as of now."""
        with self.lock:
            self.last_contact = time.monotonic()
            if role is not None:
                self.role = role

    def answer(self, now: float | None = None) -> tuple[int, str]:
        """The HTTP status and body of a readiness request."""
        now = time.monotonic() if now is None else now
        with self.lock:
            role, last = self.role, self.last_contact
        if role == "starting" or last is None:
            return 503, "starting"
        if self.elected and now - last > self.lease_seconds:
            return 503, f"{role}: no answer from the API server for {now - last:.0f} s"
        return 200, role


READINESS = Readiness()


@contextlib.contextmanager
def serving(url: str | None, answer: Callable[[], tuple[int, str]]) -> Iterator[None]:
    """Answer GET at ``url``'s host and port (any path) with ``answer()`` from a thread, while in the block."""
    if not url:
        yield
        return
    parsed = urllib.parse.urlsplit(url)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code, body = answer()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((parsed.hostname or "0.0.0.0", parsed.port or 80), Handler)
    thread = threading.Thread(target=server.serve_forever, name="probe", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
