"""Publishing: the lineage record, the gate, and a real MLflow model registry (a sqlite store in a temporary
folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from kubetune.api.v1alpha1.finetunejob import GateSpec
from kubetune.registry import gate
from kubetune.registry.lineage import RESOURCE_ENV, SCHEMA, record, tags, this_resource, tree_digest
from kubetune.registry.mlflow_store import publish

SPEC = {"baseModel": "models/base", "method": "lora", "objective": "sft", "dataset": {"path": "data"}}
METRICS = {
    "losses": [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}],
    "eval_losses": [{"step": 0, "eval_loss": 2.4}, {"step": 2, "eval_loss": 1.9}],
    "train_loss": 1.75,
    "eval_loss": 1.9,
    "initial_eval_loss": 2.4,
    "steps": 2,
}


def _folders(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights-1")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    build = {"kind": "DatasetBuild", "namespace": "team", "name": "docs", "uid": "b-1"}
    (dataset / "manifest.json").write_text(json.dumps({"digest": "sha256:" + "ab" * 32, "resource": build}))
    return adapter, dataset


def test_the_lineage_record_names_what_the_model_was_made_from(tmp_path, monkeypatch):
    adapter, dataset = _folders(tmp_path)
    identity = {"kind": "FineTuneJob", "namespace": "team", "name": "tune", "uid": "f-1"}
    monkeypatch.setenv(RESOURCE_ENV, json.dumps(identity))  # as the operator sets it in the pod
    lineage = record(
        spec=SPEC,
        resource=this_resource("FineTuneJob", "ignored"),
        dataset_dir=dataset,
        adapter_dir=adapter,
        metrics=METRICS,
        started_from={"kind": "FineTuneJob", "name": "sft", "version": "3"},
    )
    assert lineage["schema"] == SCHEMA and lineage["spec"] == SPEC
    assert lineage["baseModel"] == {"id": "models/base", "digest": None}  # not a folder here: no digest
    assert lineage["dataset"] == {"uri": str(dataset), "digest": "sha256:" + "ab" * 32}
    assert lineage["adapter"]["digest"] == tree_digest(adapter)
    assert lineage["resources"]["fineTuneJob"] == identity
    assert lineage["resources"]["datasetBuild"]["uid"] == "b-1"
    assert lineage["metrics"]["evalLoss"] == 1.9 and lineage["metrics"]["baseEvalLoss"] == 2.4
    assert {"kubetune", "torch", "transformers", "peft", "trl", "vllm"} <= lineage["libraries"].keys()
    assert lineage["libraries"]["kubetune"]  # installed here: a version
    flat = tags(lineage)
    assert flat["kubetune.dev/finetunejob-uid"] == "f-1" and flat["kubetune.dev/started-from-version"] == "3"
    assert "kubetune.dev/base-model-digest" not in flat  # None is left out, not written as "None"


def test_without_the_operator_the_resource_is_its_kind_and_name(monkeypatch):
    monkeypatch.delenv(RESOURCE_ENV, raising=False)
    assert this_resource("FineTuneJob", "tune") == {"kind": "FineTuneJob", "namespace": None, "name": "tune",
                                                    "uid": None}  # fmt: skip


GATE_CASES = {
    "no-gate": (None, METRICS, []),
    "below-the-threshold": ({"maxEvalLoss": 2.0}, METRICS, []),
    "above-the-threshold": (
        {"maxEvalLoss": 1.8},
        METRICS,
        ["publish.gate.maxEvalLoss: eval loss 1.9 is not below 1.8"],
    ),
    "no-test-split": (
        {"maxEvalLoss": 1.8},
        {**METRICS, "eval_loss": None},
        ["publish.gate.maxEvalLoss: no eval loss (the dataset has no test split to score)"],
    ),
    "beats-the-base": ({"mustBeatBase": True}, METRICS, []),
    "worse-than-the-base": (
        {"mustBeatBase": True},
        {**METRICS, "eval_loss": 2.5},
        ["publish.gate.mustBeatBase: eval loss 2.5 is not below the base model's 2.4"],
    ),
    "judge-no-better-than-the-base": (
        {"mustBeatBase": True, "minJudgeScore": 3},
        {**METRICS, "judge": {"tuned_score": 2.5, "base_score": 3.0}},
        [
            "publish.gate.minJudgeScore: judge score 2.5 is below 3",
            "publish.gate.mustBeatBase: judge score 2.5 is not above the base model's 3",
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(GATE_CASES))
def test_gate(case):
    fields, metrics, expected = GATE_CASES[case]
    spec = None if fields is None else GateSpec.model_validate(fields)
    assert gate.failures(spec, metrics) == expected


def test_publish_registers_lineage_and_is_idempotent(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    adapter, dataset = _folders(tmp_path)
    (tmp_path / "metrics.json").write_text(json.dumps(METRICS))
    (tmp_path / "loss.png").write_bytes(b"\x89PNG")

    def once():
        lineage = record(
            spec=SPEC,
            resource={"kind": "FineTuneJob", "namespace": "team", "name": "tune", "uid": "f-1"},
            dataset_dir=dataset,
            adapter_dir=adapter,
            metrics=METRICS,
        )
        return publish(
            tracking_uri=uri,
            model_name="demo",
            artifact_dir=adapter,
            lineage=lineage,
            params={"lr": 1e-4},
            metrics=METRICS,
            files=[tmp_path / "metrics.json", tmp_path / "loss.png", tmp_path / "absent.txt"],
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
    version_tags = versions["2"].tags
    assert version_tags["kubetune.dev/dataset-digest"] == "sha256:" + "ab" * 32
    assert version_tags["kubetune.dev/adapter-digest"] == tree_digest(adapter)
    assert version_tags["kubetune.dev/finetunejob-uid"] == "f-1"
    run = client.get_run(versions["2"].run_id)
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [2.0, 1.5]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "eval_loss_curve")] == [2.4, 1.9]
    assert run.data.metrics["initial_eval_loss"] == 2.4
    (used,) = run.inputs.dataset_inputs  # the dataset, as MLflow's dataset input of the run
    assert (used.dataset.name, used.dataset.digest) == ("docs", "ab" * 16)
    assert json.loads(used.dataset.source) == {"uri": dataset.resolve().as_uri()}
    assert [t.value for t in used.tags] == ["training"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert artifacts == {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"lineage.json", "metrics.json", "loss.png", "adapter"} == top
    (tmp_path / "downloaded").mkdir()
    logged_path = client.download_artifacts(run.info.run_id, "lineage.json", str(tmp_path / "downloaded"))
    logged = json.loads(Path(logged_path).read_text())
    assert logged["schema"] == SCHEMA and logged["adapter"]["digest"] == tree_digest(adapter)
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working directory
