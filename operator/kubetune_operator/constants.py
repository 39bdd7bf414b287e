"""Names the control plane puts on what it creates, and its settings (read once from the environment)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB, GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"  # value: kubetune; what the operator owns
COMPONENT = "app.kubernetes.io/component"  # datagen | trainer
# Which resource a child belongs to: kubetune.dev/datasetbuild=NAME or kubetune.dev/finetunejob=NAME.
OWNER_LABEL = {DATASET_BUILD: f"{GROUP}/datasetbuild", FINE_TUNE_JOB: f"{GROUP}/finetunejob"}
COMPONENT_OF = {DATASET_BUILD: "datagen", FINE_TUNE_JOB: "trainer"}
# Which step of a resource's work a Job does, when it takes more than one Job: "shards" (a DatasetBuild's Indexed
# Job of generation.shards pods, before the merge), "sizing" (a FineTuneJob's GPU count planned, for gpus: auto).
# The last Job, the resource's ordinary one, has no step label.
STEP_LABEL = f"{GROUP}/step"
SHARDS_STEP = "shards"
SIZING_STEP = "sizing"
# A FineTuneJob on several pods (distributed.numNodes > 1) runs as one Indexed Job per attempt: the first is
# attempt 0; each restart of the whole group, from the last checkpoint, is a new Job with the next number.
ATTEMPT_LABEL = f"{GROUP}/attempt"
# The Kueue LocalQueue a Job waits in (a resource's spec.queueName); Kueue admits such a Job by unsuspending it.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

SPEC_MOUNT = "/etc/kubetune"  # where the ConfigMap with spec.json is mounted in every pod
SPEC_FILE = "spec.json"

FIELD_MANAGER = "kubetune-operator"

# Every pod the operator creates runs as this non-root user (the images' USER) with a read-only root
# filesystem; /tmp is its writable scratch space (an emptyDir), and caches are pointed there.
POD_USER = 1000
SCRATCH = "/tmp"
SCRATCH_ENV = {
    "HOME": SCRATCH,
    "XDG_CACHE_HOME": f"{SCRATCH}/.cache",
    "HF_HOME": f"{SCRATCH}/huggingface",
    "MPLCONFIGDIR": f"{SCRATCH}/matplotlib",
    "HF_HUB_OFFLINE": "1",  # weights come from the volume or the image, never from a hub at run time
}
# The services report to the operator through the kubelet (kubetune.pod_report): progress records as log lines,
# the result as the container's termination message, written to this file.
TERMINATION_LOG = "/dev/termination-log"
REPORT_ENV = {"KUBETUNE_PROGRESS_LOG": "1", "KUBETUNE_TERMINATION_LOG": TERMINATION_LOG}
# Where Secrets a spec names are mounted in its pod (read-only): SECRETS_MOUNT/oci/NAME for publish.oci.
SECRETS_MOUNT = "/var/run/secrets/kubetune"
# The resource a pod works for, as JSON {"kind", "namespace", "name", "uid"} (kubetune.registry.lineage reads it).
RESOURCE_ENV = "KUBETUNE_RESOURCE"
POD_DEFAULT_KEYS = {"imagePullSecrets", "serviceAccountName", "datagen", "trainer"}
POD_KIND_KEYS = {"nodeSelector", "tolerations", "resources", "env"}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _pod_defaults() -> dict[str, Any]:
    """KUBETUNE_POD_DEFAULTS, checked: a bad value stops the operator at start-up with a clear message."""
    raw = _env("KUBETUNE_POD_DEFAULTS", "{}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"KUBETUNE_POD_DEFAULTS is not JSON: {exc}") from None
    if not isinstance(value, dict) or set(value) - POD_DEFAULT_KEYS:
        raise ValueError(f"KUBETUNE_POD_DEFAULTS: a JSON object with keys among {sorted(POD_DEFAULT_KEYS)}")
    for kind in ("datagen", "trainer"):
        if not isinstance(value.get(kind, {}), dict) or set(value.get(kind, {})) - POD_KIND_KEYS:
            raise ValueError(f"KUBETUNE_POD_DEFAULTS.{kind}: a JSON object with keys among {sorted(POD_KIND_KEYS)}")
    return value


@dataclass(frozen=True)
class Settings:
    """Operator settings; each from the environment variable named in its comment."""

    # KUBETUNE_STORAGE_ROOT: where the shared volume is mounted in pods; datasets and adapters live there.
    storage_root: str = field(default_factory=lambda: _env("KUBETUNE_STORAGE_ROOT", "/var/lib/kubetune"))
    # KUBETUNE_STORAGE_CLAIM: the PersistentVolumeClaim mounted at storage_root.
    storage_claim: str = field(default_factory=lambda: _env("KUBETUNE_STORAGE_CLAIM", "kubetune-storage"))
    # KUBETUNE_DATAGEN_IMAGE / KUBETUNE_TRAINER_IMAGE: the images the Jobs run.
    datagen_image: str = field(default_factory=lambda: _env("KUBETUNE_DATAGEN_IMAGE", "ghcr.io/kubetune/datagen:0.1.0"))
    trainer_image: str = field(default_factory=lambda: _env("KUBETUNE_TRAINER_IMAGE", "ghcr.io/kubetune/trainer:0.1.0"))
    # KUBETUNE_PYTHON: the interpreter the container command starts.
    python: str = field(default_factory=lambda: _env("KUBETUNE_PYTHON", "python"))
    # MLFLOW_TRACKING_URI: passed to training pods; default a sqlite store on the shared volume.
    tracking_uri: str = field(default_factory=lambda: _env("MLFLOW_TRACKING_URI", ""))
    # KUBETUNE_WAIT_SECONDS: how often a waiting FineTuneJob looks again at what it waits for; a safety net, as
    # the operator starts it when that resource finishes (handlers._wake).
    wait_seconds: float = field(default_factory=lambda: float(_env("KUBETUNE_WAIT_SECONDS", "60")))
    # KUBETUNE_PROGRESS_SECONDS: how often the operator reads a running pod's progress from its log (one request
    # per running resource each time; 0: never).
    progress_seconds: float = field(default_factory=lambda: float(_env("KUBETUNE_PROGRESS_SECONDS", "30")))
    # KUBETUNE_WORKERS: threads running the (synchronous, API-bound) handlers.
    workers: int = field(default_factory=lambda: int(_env("KUBETUNE_WORKERS", "16")))
    # KUBETUNE_BACKOFF_LIMIT: pod retries of a Job before it fails (a retried trainer resumes).
    backoff_limit: int = field(default_factory=lambda: int(_env("KUBETUNE_BACKOFF_LIMIT", "2")))
    # KUBETUNE_POD_DEFAULTS: JSON applied to the pods of every Job: {"imagePullSecrets": [{"name": ...}],
    # "serviceAccountName": ..., "datagen"|"trainer": {"nodeSelector", "tolerations", "resources", "env"}}; a
    # resource's own values (spec.resources, spec.nodeSelector, ...) win over the defaults (builders.job says how).
    # The Helm chart renders it from its values.
    pod_defaults: dict[str, Any] = field(default_factory=_pod_defaults)

    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.storage_root}/mlflow.db"
