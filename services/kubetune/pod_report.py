"""How a service tells whoever watches it how far it is and what it made.

Locally the watcher is ``kubetune run``, which reads ``OUTPUT/progress.json``. In a cluster the operator
cannot read the pods' volume, so the pod builder turns on two more channels, both the kubelet's own:

- ``$KUBETUNE_PROGRESS_LOG=1``: each progress record is also printed as one line of the log,
  ``kubetune-progress: {json}``; the operator reads the end of the running pod's log (``pods/log``).
- ``$KUBETUNE_TERMINATION_LOG=PATH``: the result (a :class:`~kubetune.api.v1alpha1.result.PodResult`: dataset
  digest; adapter digest, registered model and version; last progress record) is written there as JSON, the
  container's ``terminationMessagePath``; the
  kubelet copies it into the pod's status, where the operator reads it when the Job completes. A failed
  service writes none, so the kubelet falls back to the end of the log (``FallbackToLogsOnError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.result import PodResult
from kubetune.files import write_atomic

PROGRESS_PREFIX = "kubetune-progress: "

_last: dict[str, Any] | None = None


def write(output: Path, progress: dict[str, Any]) -> None:
    """Record ``progress``: progress.json in ``output`` (replaced whole: a reader never sees half a file), and a
    log line when ``$KUBETUNE_PROGRESS_LOG`` is set."""
    global _last
    _last = progress
    write_atomic(output / "progress.json", json.dumps(progress))
    if os.environ.get("KUBETUNE_PROGRESS_LOG"):
        print(PROGRESS_PREFIX + json.dumps(progress, separators=(",", ":")), flush=True)


def last_record(log: str) -> dict[str, Any] | None:
    """The last progress record in a piece of log (lines of other output, or cut short, are skipped)."""
    for line in reversed(log.splitlines()):
        start = line.find(PROGRESS_PREFIX)
        if start < 0:
            continue
        try:
            record = json.loads(line[start + len(PROGRESS_PREFIX) :])
        except ValueError:
            continue
        if isinstance(record, dict):
            return record
    return None


def fail(reason: str, summary: PodResult) -> None:
    """A service that fails after doing part of its work (published to one target, not another): ``reason`` on
    stderr as its last line, and, as the termination message, ``summary`` with the reason as its ``error``, so
    the operator can show both what was done and why the rest failed."""
    import sys

    print(reason, file=sys.stderr, flush=True)
    path = os.environ.get("KUBETUNE_TERMINATION_LOG")
    if path:
        Path(path).write_text(summary.model_copy(update={"error": reason}).message())


def finish(result: dict[str, Any], summary: PodResult) -> None:
    """Print the service's ``result`` as its last log line; write ``summary`` (with the last progress record) as
    the termination message when ``$KUBETUNE_TERMINATION_LOG`` names the file."""
    print(json.dumps(result), flush=True)
    path = os.environ.get("KUBETUNE_TERMINATION_LOG")
    if not path:
        return
    if _last is not None:
        summary = summary.model_copy(update={"progress": _last})
    Path(path).write_text(summary.message())
