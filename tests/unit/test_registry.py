"""Publishing to a real MLflow model registry (a sqlite store in a temporary folder)."""

from __future__ import annotations

from mlflow import MlflowClient

from kubetune.registry import publish
from kubetune.registry.lineage import tree_digest


def test_publish_registers_lineage_and_is_idempotent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    lineage = {"base-model": "models/base", "dataset-digest": "sha256:abc", "method": "lora"}
    metrics = {"losses": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}], "train_loss": 1.75}

    def once():
        return publish(
            tracking_uri=uri,
            model_name="demo",
            artifact_dir=adapter,
            lineage=lineage,
            params={"lr": 1e-4},
            metrics=metrics,
        )

    first = once()
    assert (first["version"], first["created"]) == ("1", "true")
    again = once()
    assert (again["version"], again["created"]) == ("1", "false")

    (adapter / "adapter_model.safetensors").write_bytes(b"weights-2")
    second = once()
    assert second["version"] == "2"

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    versions = {str(v.version): v for v in client.search_model_versions("name = 'demo'")}
    assert set(versions) == {"1", "2"}
    tags = versions["2"].tags
    assert tags["kubetune.dev/dataset-digest"] == "sha256:abc"
    assert tags["kubetune.dev/adapter-digest"] == tree_digest(adapter)
    run = client.get_run(versions["2"].run_id)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert artifacts == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working directory
