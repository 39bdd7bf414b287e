"""Where a DatasetBuild keeps each stage's output, so a killed build resumes and shards share the work.

``OUTPUT/stages/`` holds, per finished stage, its items (JSONL) and a marker with its funnel record, written
last and atomically: a stage whose marker is there is never run again. The LLM stages are cut into parts of
``generation.batchSize`` inputs, each written with its own marker as it finishes, so a build killed during
generation loses at most the part in flight. Shard ``I`` of ``N`` computes the parts ``i % N == I`` only; a
later run (the merge, or a restart) finds them done. ``spec.json`` pins the folder to one spec: a build of
another spec into it is refused rather than mixed with stale parts.

Each marker also records the digest of the stage's (or the part's) input: a stage is replayed only for the same
input, so a changed document reruns the stages its change reaches and no others (as content-addressed build tools
do). The first stage's input names each file with the sha256 of its bytes (:func:`file_digest`), so an edited
document, a file added to a folder or an empty corpus filled later is seen as a new input, not an old result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubetune.files import write_atomic


class StaleOutputError(RuntimeError):
    """The output folder holds the stages of a different spec."""


def _write_jsonl(path: Path, items: Iterable[dict]) -> None:
    write_atomic(path, "".join(json.dumps(item, ensure_ascii=False, sort_keys=True) + "\n" for item in items))


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def input_digest(items: list[dict], *more: str) -> str:
    """sha256 of ``items`` as canonical JSON, and of ``more`` (what else a stage reads: an evaluation set's
    digest)."""
    h = hashlib.sha256()
    for item in items:
        h.update(json.dumps(item, ensure_ascii=False, sort_keys=True).encode())
        h.update(b"\n")
    for extra in more:
        h.update(extra.encode())
    return h.hexdigest()


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, in order): a datasets folder."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode() + b"\0")
        with f.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class StageStore:
    """Stage outputs under ``root``; with ``root=None`` (``kubetune plan``) nothing is kept or read."""

    def __init__(self, root: Path | None, spec_wire: dict[str, Any]):
        self.root = root
        if root is None:
            return
        root.mkdir(parents=True, exist_ok=True)
        pinned = root / "spec.json"
        wire = json.dumps(spec_wire, sort_keys=True)
        if pinned.exists() and pinned.read_text() != wire:
            raise StaleOutputError(
                f"{root.parent} holds a build of another spec (its stages are in {root}); "
                "write to a new output folder or delete that one"
            )
        if not pinned.exists():
            write_atomic(pinned, wire)
        self.spec_digest = hashlib.sha256(wire.encode()).hexdigest()

    def _load(self, marker: Path, digest: str | None) -> tuple[list[dict], dict] | None:
        if self.root is None or not marker.exists():
            return None
        record = json.loads(marker.read_text())
        if record.pop("inputDigest", None) != digest:
            return None  # made from another input: done again
        return _read_jsonl(marker.with_name(marker.name.replace(".done.json", ".jsonl"))), record

    def _save(self, marker: Path, items: list[dict], record: dict, digest: str | None) -> None:
        if self.root is None:
            return
        marker.parent.mkdir(exist_ok=True)
        _write_jsonl(marker.with_name(marker.name.replace(".done.json", ".jsonl")), items)
        write_atomic(marker, json.dumps({**record, "inputDigest": digest}))

    def load(self, name: str, digest: str | None = None) -> tuple[list[dict], dict] | None:
        """A finished stage's items and funnel record, or None (not done, or done from another input)."""
        return self._load(self.root / f"{name}.done.json", digest) if self.root else None

    def save(self, name: str, items: list[dict], record: dict, digest: str | None = None) -> None:
        if self.root is not None:
            self._save(self.root / f"{name}.done.json", items, record, digest)

    def load_part(self, name: str, index: int, digest: str | None = None) -> tuple[list[dict], dict] | None:
        return self._load(self.root / name / f"part-{index:05d}.done.json", digest) if self.root else None

    def save_part(self, name: str, index: int, items: list[dict], record: dict, digest: str | None = None) -> None:
        if self.root is not None:
            self._save(self.root / name / f"part-{index:05d}.done.json", items, record, digest)
