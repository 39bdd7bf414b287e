"""A FineTuneJob on two pods that train together (distributed.numNodes 2), through ``kubetune operator`` and the
test kubelet, which runs each pod's command as a process: the Indexed Job, the headless Service its pods find each
other by, torchrun's rendezvous at pod 0, and the restart of the whole group when one pod dies. And a FineTuneJob
of one pod, killed: the Job controller's replacement pod resumes from the checkpoint.

The pods are real processes in one PyTorch process group over gloo; what the test kubelet stands in for (the Job
controller, the kubelet, cluster DNS) is listed in tests/operator/cluster.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil

import pytest

from tests.operator.cluster import Cluster, kubelet_running
from tests.unit.trainer.test_trainer import dataset  # noqa: F401  (a fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="the test kubelet bind-mounts volumes, which needs root"),
]
STORAGE_ROOT = "/var/lib/kubetune"  # the operator's default, where the test kubelet mounts the storage folder
STEPS = 40


def _group_job(model) -> dict:
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "group"},
        "spec": {
            "baseModel": str(model),
            "dataset": {"path": f"{STORAGE_ROOT}/datasets/default/d"},
            "lora": {"r": 8, "loraAlpha": 16},
            # Two rows a rank, two ranks: three steps an epoch of the 12 train rows, evaluated at each epoch's end.
            "training": {
                "learningRate": 5e-3,
                "maxSteps": STEPS,
                "perDeviceTrainBatchSize": 2,
                "maxLength": 64,
                "saveSteps": 4,
            },
            "distributed": {"numNodes": 2, "strategy": "ddp"},
            "publish": {"mlflow": {"modelName": "group"}},
        },
    }


def _tail(kubelet, pod: str) -> str:
    log = kubelet.logs.get(pod)
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else "(no log)"


async def _until(holds, timeout: float, what) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not holds():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what() if callable(what) else what}")
        await asyncio.sleep(0.2)


def test_two_pods_train_as_one_group_and_a_killed_pod_restarts_the_whole_group(tmp_path, root, tiny_model, dataset):  # noqa: F811
    storage = tmp_path / "storage"
    shutil.copytree(dataset, storage / "datasets" / "default" / "d")
    # The base model on the shared volume, as in a cluster: the pods' emptyDir on /tmp hides the test's own folders.
    shutil.copytree(tiny_model, storage / "models" / "tiny")
    out = storage / "finetunes" / "default" / "group"

    async def main():
        # The pods' MLflow store is the operator's default, on the shared volume: not one an earlier test set.
        cluster = Cluster(tmp_path, operator_env={"MLFLOW_TRACKING_URI": ""})
        async with cluster, kubelet_running(cluster, cwd=root, storage=storage) as kubelet:
            await cluster.apply(_group_job(f"{STORAGE_ROOT}/models/tiny"))
            # Killed once the group has saved a whole checkpoint, long before its last step.
            saved = lambda: any(out.glob("checkpoints/checkpoint-*/trainer_state.json"))  # noqa: E731
            await _until(saved, 300, lambda: f"a checkpoint; pod 0's log:\n{_tail(kubelet, 'group-train-0')}")
            kubelet.kill("group-train-1")
            done = await cluster.wait_for("FineTuneJob", "group", {"Succeeded", "Failed"}, timeout=400)
            return cluster, kubelet, done, await cluster.jobs(), await cluster.events("group")

    cluster, kubelet, done, jobs, events = asyncio.run(asyncio.wait_for(main(), timeout=780))
    logs = {name: path.read_text(errors="replace") for name, path in kubelet.logs.items()}
    status = done["status"]
    assert status["phase"] == "Succeeded", (status, cluster.log()[-3000:], logs.get("group-train-restart-1-0"))

    # One Indexed Job of two pods a try, the first failed (pod 1 killed), the second a new Job of two new pods.
    assert sorted(j["metadata"]["name"] for j in jobs) == ["group-train", "group-train-restart-1"]
    assert sorted(kubelet.logs) == [
        "group-train-0",
        "group-train-1",
        "group-train-restart-1-0",
        "group-train-restart-1-1",
    ]
    assert (status["jobName"], status["restarts"]) == ("group-train-restart-1", 1)
    first = next(j for j in jobs if j["metadata"]["name"] == "group-train")
    assert {c["type"] for c in first["status"]["conditions"] if c["status"] == "True"} >= {"Failed"}
    restarted = next(e for e in events if e["reason"] == "GroupRestarted")
    assert re.fullmatch(
        r"the container exited with 137: pod group-train-1-[0-9a-f]{5} was killed: signal 9, exit code 137; "
        r"starting all 2 pods again from the last checkpoint \(restart 1 of at most 2\)",
        restarted["message"],
    ), restarted["message"]

    # The second group resumed from the last whole checkpoint and ended at the same step count.
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ranks"], metrics["strategy"], metrics["steps"]) == (2, "ddp", STEPS)
    assert metrics["resumed"].startswith("checkpoint-") and int(metrics["resumed"].split("-")[1]) < STEPS
    assert (
        f"resuming from {STORAGE_ROOT}/finetunes/default/group/checkpoints/{metrics['resumed']}"
        in logs["group-train-restart-1-0"]
    )
    # Rank 0 (pod 0) reported and published, once: version 1 of the model, in the status and in the store.
    assert (status["output"]["modelName"], status["output"]["modelVersion"]) == ("group", "1")
    assert str(json.loads((out / "registration.json").read_text())["version"]) == "1"
    from mlflow import MlflowClient

    versions = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}").search_model_versions("name='group'")
    assert [str(v.version) for v in versions] == ["1"]
    assert status["progress"].startswith(f"step {STEPS}/{STEPS}")


def test_a_killed_training_pod_is_replaced_and_the_new_pod_resumes_from_the_checkpoint(
    tmp_path,
    root,
    tiny_model,
    dataset,  # noqa: F811
):
    """One pod (no distributed): the Job's backoffLimit lets the Job controller replace a pod that dies, and the
    new pod's trainer resumes from the last whole checkpoint on the shared volume, to the same step count."""
    storage = tmp_path / "storage"
    shutil.copytree(dataset, storage / "datasets" / "default" / "d")
    shutil.copytree(tiny_model, storage / "models" / "tiny")
    out = storage / "finetunes" / "default" / "group"
    job = _group_job(f"{STORAGE_ROOT}/models/tiny")
    del job["spec"]["distributed"]

    async def main():
        cluster = Cluster(tmp_path, operator_env={"MLFLOW_TRACKING_URI": ""})
        async with cluster, kubelet_running(cluster, cwd=root, storage=storage) as kubelet:
            await cluster.apply(job)
            saved = lambda: any(out.glob("checkpoints/checkpoint-*/trainer_state.json"))  # noqa: E731
            await _until(saved, 300, lambda: f"a checkpoint; the pod's log:\n{_tail(kubelet, 'group-train')}")
            kubelet.kill("group-train")
            done = await cluster.wait_for("FineTuneJob", "group", {"Succeeded", "Failed"}, timeout=400)
            return cluster, kubelet, done, await cluster.jobs()

    cluster, kubelet, done, jobs = asyncio.run(asyncio.wait_for(main(), timeout=780))
    status = done["status"]
    assert status["phase"] == "Succeeded", (status, cluster.log()[-3000:], _tail(kubelet, "group-train"))
    # One Job, two pods: the killed one counted as failed, its replacement succeeded; no restart by the operator.
    assert [j["metadata"]["name"] for j in jobs] == ["group-train"]
    assert (jobs[0]["status"]["failed"], jobs[0]["status"]["succeeded"]) == (1, 1)
    assert kubelet.tries == {"group-train": 2} and status.get("restarts", 0) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    assert metrics["resumed"].startswith("checkpoint-") and int(metrics["resumed"].split("-")[1]) < STEPS
    assert f"resuming from {STORAGE_ROOT}/finetunes/default/group/checkpoints/{metrics['resumed']}" in (
        kubelet.logs["group-train"].read_text(errors="replace")
    )
    assert status["progress"].startswith(f"step {STEPS}/{STEPS}")
