"""Lineage: what a published model was made from, in one schema shared by every registry backend."""

from __future__ import annotations

import hashlib
from pathlib import Path

# MLflow tag keys (and, later, OCI annotation keys) for each lineage field.
TAG_PREFIX = "kubetune.dev/"


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and content: equal folders, equal digest."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def tags(lineage: dict[str, str]) -> dict[str, str]:
    """Lineage as registry tags: ``{"base-model": X}`` -> ``{"kubetune.dev/base-model": X}``."""
    return {TAG_PREFIX + key: str(value) for key, value in lineage.items() if value is not None}
