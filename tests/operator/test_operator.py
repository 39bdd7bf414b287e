"""The kopf operator against kmock's in-memory Kubernetes API: children, waiting, status, bad specs.

Jobs are moved by the test itself here (no processes run); tests/e2e runs them for real.
"""

from __future__ import annotations

import asyncio
import copy
import json

import pytest

from tests.operator.cluster import Cluster

DSB = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "DatasetBuild",
    "metadata": {"name": "docs"},
    "spec": {"source": {"paths": ["corpus"]}, "generation": {"model": "/models/m"}},
}
FTJ = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tune"},
    "spec": {
        "baseModel": "/models/m",
        "dataset": {"datasetBuildRef": {"name": "docs"}},
        "registry": {"modelName": "docs-lora"},
    },
}


@pytest.fixture()
def run_in_cluster(tmp_path):
    def runner(scenario):
        async def main():
            async with Cluster(tmp_path) as cluster:
                await scenario(cluster)

        asyncio.run(asyncio.wait_for(main(), timeout=60))

    return runner


async def _job_of(cluster: Cluster, name: str, timeout: float = 10) -> dict:
    for _ in range(int(timeout * 4)):
        found = [j for j in await cluster.jobs() if j["metadata"]["name"] == name]
        if found:
            return found[0]
        await asyncio.sleep(0.25)
    raise AssertionError(f"no Job {name}")


def test_fine_tune_job_waits_for_its_dataset_build_then_runs(run_in_cluster):
    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(FTJ))  # GitOps: the job may arrive first
        waiting = await cluster.wait_for("FineTuneJob", "tune", {"Waiting"}, timeout=15)
        assert waiting["status"]["message"] == "waiting for DatasetBuild docs to exist"

        await cluster.apply(copy.deepcopy(DSB))
        job = await _job_of(cluster, "docs-datagen")
        build = await cluster.get("DatasetBuild", "docs")
        assert job["metadata"]["ownerReferences"][0]["uid"] == build["metadata"]["uid"]
        assert job["metadata"]["labels"]["kubetune.dev/datasetbuild"] == "docs"
        cm = await cluster.config_map("docs-datagen", "default")
        assert json.loads(cm["data"]["spec.json"])["generation"]["model"] == "/models/m"
        assert cm["metadata"]["ownerReferences"][0]["name"] == "docs"
        assert build["status"]["jobName"] == "docs-datagen"

        await cluster.set_job_status(job, {"active": 1})
        await cluster.wait_for("DatasetBuild", "docs", {"Running"}, timeout=10)
        await cluster.set_job_status(job, {"active": 0, "succeeded": 1})
        done = await cluster.wait_for("DatasetBuild", "docs", {"Succeeded"}, timeout=10)
        assert done["status"]["output"]["path"] == "/var/lib/kubetune/datasets/default/docs"
        ready = next(c for c in done["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
        # One Event per phase change: created (Running), then succeeded.
        for _ in range(40):
            reasons = await cluster.event_reasons("docs")
            if "JobSucceeded" in reasons:
                break
            await asyncio.sleep(0.25)
        assert reasons == {"JobCreated", "JobSucceeded"}

        train = await _job_of(cluster, "tune-train", timeout=30)
        command = train["spec"]["template"]["spec"]["containers"][0]["command"]
        assert command[command.index("--dataset") + 1] == "/var/lib/kubetune/datasets/default/docs"
        await cluster.set_job_status(
            train,
            {
                "active": 0,
                "failed": 3,
                "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "3 pods failed"}
                ],
            },
        )
        failed = await cluster.wait_for("FineTuneJob", "tune", {"Failed"}, timeout=10)
        assert failed["status"]["message"] == "3 pods failed"

    run_in_cluster(scenario)


def test_a_bad_spec_becomes_a_condition_not_a_crash_loop(run_in_cluster):
    async def scenario(cluster: Cluster):
        bad = copy.deepcopy(FTJ)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["training"] = {"learningRat": 0.1}
        bad["spec"]["method"] = "lorra"
        await cluster.apply(bad)
        failed = await cluster.wait_for("FineTuneJob", "bad", {"Failed"}, timeout=15)
        valid = next(c for c in failed["status"]["conditions"] if c["type"] == "SpecValid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert "spec.training.learningRat" in valid["message"] and "did you mean 'learningRate'" in valid["message"]
        assert "spec.method" in valid["message"]
        await asyncio.sleep(1.5)
        assert not [j for j in await cluster.jobs() if j["metadata"]["name"].startswith("bad")]

    run_in_cluster(scenario)
