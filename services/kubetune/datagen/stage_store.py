"""Where a DatasetBuild keeps each stage's output, so a killed build resumes and shards share the work.

``OUTPUT/stages/`` holds, per finished stage, its items (JSONL) and a marker with its funnel record, written
last and atomically: a stage whose marker is there is never run again. The LLM stages are cut into parts of
``generation.batchSize`` inputs, each written with its own marker as it finishes, so a build killed during
generation loses at most the part in flight. Shard ``I`` of ``N`` computes the parts ``i % N == I`` only; a
later run (the merge, or a restart) finds them done. ``spec.json`` pins the folder to one spec: a build of
another spec into it is refused rather than mixed with stale parts.
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

    def load(self, name: str) -> tuple[list[dict], dict] | None:
        """A finished stage's items and funnel record, or None."""
        if self.root is None or not (marker := self.root / f"{name}.done.json").exists():
            return None
        return _read_jsonl(self.root / f"{name}.jsonl"), json.loads(marker.read_text())

    def save(self, name: str, items: list[dict], record: dict) -> None:
        if self.root is None:
            return
        _write_jsonl(self.root / f"{name}.jsonl", items)
        write_atomic(self.root / f"{name}.done.json", json.dumps(record))

    def load_part(self, name: str, index: int) -> tuple[list[dict], dict] | None:
        if self.root is None or not (marker := self.root / name / f"part-{index:05d}.done.json").exists():
            return None
        return _read_jsonl(self.root / name / f"part-{index:05d}.jsonl"), json.loads(marker.read_text())

    def save_part(self, name: str, index: int, items: list[dict], record: dict) -> None:
        if self.root is None:
            return
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        _write_jsonl(folder / f"part-{index:05d}.jsonl", items)
        write_atomic(folder / f"part-{index:05d}.done.json", json.dumps(record))
