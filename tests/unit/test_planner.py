"""Planners and builders: pure functions, no API server."""

from __future__ import annotations

import json

import pytest

from kubetune.spec import load_resources
from kubetune.spec.status import Phase
from kubetune_operator import builders, planner
from kubetune_operator.constants import Settings

SETTINGS = Settings(
    storage_root="/data", storage_claim="claim", python="python", tracking_uri="", wait_seconds=5, backoff_limit=1
)
DSB, FTJ = load_resources("""
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {name: docs, namespace: team}
spec:
  source: {paths: [corpus]}
  generation: {model: /models/m}
---
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune, namespace: team}
spec:
  baseModel: /models/m
  dataset: {datasetBuildRef: {name: docs}}
  resources: {gpus: 2, memory: 16Gi}
  registry: {modelName: docs-lora}
""")


def test_dataset_build_gets_a_config_map_and_a_job():
    decision = planner.plan(DSB, SETTINGS)
    cm, job = decision.children
    assert decision.phase == Phase.RUNNING
    assert json.loads(cm["data"]["spec.json"]) == DSB.spec.to_wire()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "python",
        "-m",
        "kubetune.datagen",
        "--spec",
        "/etc/kubetune/spec.json",
        "--output",
        "/data/datasets/team/docs",
        "--name",
        "docs",
    ]
    assert job["metadata"]["labels"]["kubetune.dev/datasetbuild"] == "docs"
    assert job["metadata"]["namespace"] == "team" and job["spec"]["backoffLimit"] == 1
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == cm["metadata"]["name"]
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "claim"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


@pytest.mark.parametrize(
    ("dependency", "phase", "reason", "retry"),
    [
        pytest.param(None, Phase.WAITING, "DatasetBuildNotFound", True, id="absent"),
        pytest.param({"status": {"phase": "Running"}}, Phase.WAITING, "WaitingForDataset", True, id="running"),
        pytest.param({"status": {"phase": "Failed"}}, Phase.FAILED, "DatasetBuildFailed", False, id="failed"),
        pytest.param(
            {"status": {"phase": "Succeeded", "output": {"path": "/data/datasets/team/docs"}}},
            Phase.RUNNING,
            "JobCreated",
            False,
            id="succeeded",
        ),
    ],
)
def test_fine_tune_job_waits_for_its_dataset(dependency, phase, reason, retry):
    decision = planner.plan(FTJ, SETTINGS, dependency)
    assert (decision.phase, decision.reason) == (phase, reason)
    assert (decision.retry_after == SETTINGS.wait_seconds) is retry
    assert decision.permanent is (phase == Phase.FAILED)
    if phase == Phase.RUNNING:
        container = decision.children[1]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][-2:] == ["--dataset", "/data/datasets/team/docs"]
        assert container["resources"] == {"requests": {"memory": "16Gi"}, "limits": {"nvidia.com/gpu": "2"}}
        assert {"name": "MLFLOW_TRACKING_URI", "value": "sqlite:////data/mlflow.db"} in container["env"]


@pytest.mark.parametrize(
    ("job_status", "phase"),
    [
        pytest.param({}, Phase.PENDING, id="new"),
        pytest.param({"active": 1}, Phase.RUNNING, id="active"),
        pytest.param({"succeeded": 1}, Phase.SUCCEEDED, id="succeeded"),
        pytest.param(
            {"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
            Phase.FAILED,
            id="failed",
        ),
        pytest.param({"failed": 1, "active": 1}, Phase.RUNNING, id="retrying"),
    ],
)
def test_job_outcome(job_status, phase):
    decision = planner.job_outcome("DatasetBuild", "team", "docs", job_status, SETTINGS)
    assert decision.phase == phase
    if phase == Phase.SUCCEEDED:
        assert decision.output == {"path": "/data/datasets/team/docs"}


def test_status_patch_keeps_transition_times_and_sets_conditions():
    running = planner.status_patch(planner.Decision(Phase.RUNNING, "JobCreated", "go"), None, 3)["status"]
    assert running["phase"] == "Running" and running["observedGeneration"] == 3 and running["startTime"]
    conditions = {c["type"]: c for c in running["conditions"]}
    assert conditions["SpecValid"]["status"] == "True" and conditions["Ready"]["status"] == "False"
    done = planner.status_patch(planner.Decision(Phase.SUCCEEDED, "JobSucceeded", "done"), running, 3)["status"]
    after = {c["type"]: c for c in done["conditions"]}
    assert after["Ready"]["status"] == "True" and done["completionTime"]
    assert after["SpecValid"]["lastTransitionTime"] == conditions["SpecValid"]["lastTransitionTime"]
    assert "startTime" not in done  # kept from before, not rewritten


def test_invalid_spec_is_permanent_and_names_the_field():
    from kubetune.spec import SpecError, parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec("FineTuneJob", {"baseModel": "m", "dataset": {"path": "d"}, "training": {"learningRate": -1}})
    decision = planner.invalid_spec(info.value.errors)
    assert decision.permanent and decision.phase == Phase.FAILED
    assert "spec.training.learningRate" in decision.message and "-1" in decision.message
    status = planner.status_patch(decision, None, 1)["status"]
    valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"


def test_child_names_fit_kubernetes_limits():
    long = DSB.model_copy(update={"metadata": DSB.metadata.model_copy(update={"name": "a" * 63})})
    assert len(builders.child_name(long)) <= 63
