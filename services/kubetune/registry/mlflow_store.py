"""The MLflow model registry backend: a run holding the artifacts, a model version pointing at them.

Embedded, the tracking URI is a ``sqlite:///`` file (needs sqlalchemy and alembic); in a cluster, an
MLflow server. Publishing is idempotent: a version whose adapter digest is already registered under the
name is returned instead of a new one, so a retried pod does not register twice.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.finetunejob import MlflowTargetSpec
from kubetune.registry.lineage import TAG_PREFIX, tags
from kubetune.registry.publishers import Output, Publication, Publisher, PublishError


def _artifact_root(tracking_uri: str) -> str | None:
    """For a sqlite store, artifacts live beside the database file rather than in the current directory."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


def _dataset_input(lineage: dict[str, Any]):
    """The dataset the run trained on, as an MLflow dataset input: its build's name, its folder, and its digest
    (the first 32 hex digits: MLflow keeps 36 characters; the whole one is in the lineage)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    dataset = lineage["dataset"]
    build = lineage["resources"].get("datasetBuild") or {}
    uri = Path(dataset["uri"]).resolve().as_uri()
    name = build.get("name") or Path(dataset["uri"]).name
    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two registrations of one class
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(uri)
    return MetaDataset(source, name=name, digest=dataset["digest"].removeprefix("sha256:")[:32])


def publish(
    *,
    tracking_uri: str,
    model_name: str,
    artifact_dir: Path,
    lineage: dict[str, Any],
    params: dict[str, Any],
    metrics: dict[str, Any],
    files: list[Path] = (),
) -> dict[str, str]:
    """Register ``artifact_dir`` as a version of ``model_name``, its run holding the adapter, ``lineage.json``,
    the parameters, the loss per step, ``files`` (metrics.json, loss.png) and the dataset as its input; returns
    name, version, run id and source. ``lineage`` is :func:`kubetune.registry.lineage.record`'s, its adapter
    digest ``artifact_dir``'s."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    digest = lineage["adapter"]["digest"]

    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(model_name, description="Fine-tuned by kubetune.")
    for existing in client.search_model_versions(f"name = '{model_name}'"):
        if existing.tags.get(TAG_PREFIX + "adapter-digest") == digest:
            return {
                "name": model_name,
                "version": str(existing.version),
                "runId": existing.run_id,
                "source": existing.source,
                "created": "false",
            }

    experiment_name = f"kubetune/{model_name}"
    experiment = client.get_experiment_by_name(experiment_name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(experiment_name, artifact_location=_artifact_root(tracking_uri))
    )
    with mlflow.start_run(experiment_id=experiment_id, tags=tags(lineage)) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
        for point in metrics.get("losses", []):
            mlflow.log_metric("loss", point["loss"], step=int(point["step"]))
        for point in metrics.get("eval_losses", []):
            if point.get("eval_loss") is not None:
                mlflow.log_metric("eval_loss_curve", point["eval_loss"], step=int(point["step"]))
        for key in ("train_loss", "eval_loss", "initial_eval_loss", "runtime_seconds", "tokens_per_second"):
            if metrics.get(key) is not None:
                mlflow.log_metric(key, float(metrics[key]))
        mlflow.log_input(_dataset_input(lineage), context="training")
        mlflow.log_artifacts(str(artifact_dir), artifact_path="adapter")
        mlflow.log_text(json.dumps(lineage, indent=2), "lineage.json")
        for path in files:
            if path.exists():
                mlflow.log_artifact(str(path))
        source = f"{run.info.artifact_uri}/adapter"
    version = client.create_model_version(model_name, source=source, run_id=run.info.run_id, tags=tags(lineage))
    return {
        "name": model_name,
        "version": str(version.version),
        "runId": run.info.run_id,
        "source": source,
        "created": "true",
    }


class MlflowPublisher(Publisher):
    """A run holding the adapter and its lineage, and a version of the registered model pointing at it
    (:mod:`kubetune.registry.mlflow_store`)."""

    target = "mlflow"
    kinds = frozenset({"adapter"})
    done = "registered as"

    def __init__(self, spec: MlflowTargetSpec, field_path: str):
        self.spec, self.field_path = spec, field_path

    def tracking_uri(self) -> str:
        uri = self.spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise PublishError(f"{self.field_path}.trackingUri is unset and so is $MLFLOW_TRACKING_URI")
        return uri

    def check(self) -> None:
        self.tracking_uri()

    def publish(self, output: Output) -> Publication:
        uri = self.tracking_uri()
        try:
            version = publish(
                tracking_uri=uri,
                model_name=self.spec.model_name,
                artifact_dir=output.folder,
                lineage=output.lineage or {},
                params=output.params,
                metrics=output.metrics,
                files=output.files,
            )
        except Exception as exc:  # MLflow's own errors, its HTTP client's, the store's: the target failed
            raise PublishError(f"mlflow {uri}: {' '.join(str(exc).split())[:300]}") from exc
        reference = f"models:/{version['name']}/{version['version']}"
        return Publication(self.target, reference, output.digest, details={"registered": version})
