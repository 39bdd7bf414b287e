"""Writing files that other processes read while they change."""

from __future__ import annotations

import uuid
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` whole with ``text``: a reader sees the old file or the new one, never half of one.

    The temporary file's name is unique to this call, not to the process: the pods of a sharded build each run
    as PID 1 and write beside each other on one shared volume."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
