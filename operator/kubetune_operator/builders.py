"""Pure builders: the command a stage runs, where it writes, and the Kubernetes objects that run it.

The local runner and the operator both call :func:`service_command`, so a stage runs the same way as a
local process and in a pod; only the paths differ.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from kubetune.spec.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune.spec.resources import Resource
from kubetune_operator.constants import (
    COMPONENT,
    COMPONENT_OF,
    MANAGED_BY,
    OWNER_LABEL,
    SPEC_FILE,
    SPEC_MOUNT,
    Settings,
)

_MODULE = {DATASET_BUILD: "kubetune.datagen", FINE_TUNE_JOB: "kubetune.trainer"}


def output_path(root: str, kind: str, namespace: str, name: str) -> str:
    """Where a resource's output lives under a storage root: datasets/NS/NAME or finetunes/NS/NAME."""
    folder = "datasets" if kind == DATASET_BUILD else "finetunes"
    return str(PurePosixPath(root) / folder / namespace / name)


def service_command(
    python: str, kind: str, name: str, spec_file: str, output: str, dataset: str | None = None
) -> list[str]:
    """The command line of the service entrypoint that does a resource's work."""
    command = [python, "-m", _MODULE[kind], "--spec", spec_file, "--output", output, "--name", name]
    if kind == FINE_TUNE_JOB:
        if dataset is None:
            raise ValueError("a FineTuneJob's command needs the dataset folder")
        command += ["--dataset", dataset]
    return command


def child_name(resource: Resource) -> str:
    """Name of the ConfigMap and Job of a resource (kinds get distinct suffixes; names stay <= 63)."""
    suffix = "datagen" if resource.kind == DATASET_BUILD else "train"
    return f"{resource.metadata.name[: 63 - len(suffix) - 1]}-{suffix}"


def labels(resource: Resource) -> dict[str, str]:
    return {
        MANAGED_BY: "kubetune",
        COMPONENT: COMPONENT_OF[resource.kind],
        OWNER_LABEL[resource.kind]: resource.metadata.name,
    }


def config_map(resource: Resource) -> dict[str, Any]:
    """The ConfigMap holding the resolved spec the pod reads."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child_name(resource),
            "namespace": resource.metadata.namespace,
            "labels": labels(resource),
        },
        "data": {SPEC_FILE: json.dumps(resource.spec.to_wire(), indent=2, sort_keys=True)},
    }


def job(resource: Resource, settings: Settings, dataset: str | None = None) -> dict[str, Any]:
    """The batch/v1 Job that runs the resource's service entrypoint on the shared volume."""
    kind, name, ns = resource.kind, resource.metadata.name, resource.metadata.namespace
    output = output_path(settings.storage_root, kind, ns, name)
    command = service_command(settings.python, kind, name, f"{SPEC_MOUNT}/{SPEC_FILE}", output, dataset)
    container: dict[str, Any] = {
        "name": COMPONENT_OF[kind],
        "image": settings.datagen_image if kind == DATASET_BUILD else settings.trainer_image,
        "command": command,
        "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
            {"name": "storage", "mountPath": settings.storage_root},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if kind == FINE_TUNE_JOB:
        container["env"].append({"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_uri()})
        res = resource.spec.resources
        requests = {k: v for k, v in (("cpu", res.cpu), ("memory", res.memory)) if v}
        limits = {"nvidia.com/gpu": str(res.gpus)} if res.gpus else {}
        if requests or limits:
            container["resources"] = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": child_name(resource), "namespace": ns, "labels": labels(resource)},
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "template": {
                "metadata": {"labels": labels(resource)},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "volumes": [
                        {"name": "spec", "configMap": {"name": child_name(resource)}},
                        {"name": "storage", "persistentVolumeClaim": {"claimName": settings.storage_claim}},
                    ],
                },
            },
        },
    }
