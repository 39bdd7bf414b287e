"""Names the control plane puts on what it creates, and its settings (read once from the environment)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kubetune.spec.constants import DATASET_BUILD, FINE_TUNE_JOB, GROUP

MANAGED_BY = "app.kubernetes.io/managed-by"  # value: kubetune; what the operator owns
COMPONENT = "app.kubernetes.io/component"  # datagen | trainer
# Which resource a child belongs to: kubetune.dev/datasetbuild=NAME or kubetune.dev/finetunejob=NAME.
OWNER_LABEL = {DATASET_BUILD: f"{GROUP}/datasetbuild", FINE_TUNE_JOB: f"{GROUP}/finetunejob"}
COMPONENT_OF = {DATASET_BUILD: "datagen", FINE_TUNE_JOB: "trainer"}

SPEC_MOUNT = "/etc/kubetune"  # where the ConfigMap with spec.json is mounted in every pod
SPEC_FILE = "spec.json"

FIELD_MANAGER = "kubetune-operator"


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


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
    # KUBETUNE_WAIT_SECONDS: how often a FineTuneJob looks again at the DatasetBuild it waits for.
    wait_seconds: float = field(default_factory=lambda: float(_env("KUBETUNE_WAIT_SECONDS", "10")))
    # KUBETUNE_BACKOFF_LIMIT: pod retries of a Job before it fails (a retried trainer resumes).
    backoff_limit: int = field(default_factory=lambda: int(_env("KUBETUNE_BACKOFF_LIMIT", "2")))

    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.storage_root}/mlflow.db"
