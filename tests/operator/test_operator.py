"""The operator as users run it — ``kubetune operator`` in its own process — against the strict test API
server: children, waiting, status, Events, logs, namespaces, bad specs.

Jobs are moved by the test itself here, in the steps the Job controller writes (no processes run);
tests/e2e runs them for real.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import urllib.error
import urllib.request

import pytest

from tests.operator.cluster import ROOT, Cluster, kubelet_running

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
    def runner(scenario, **cluster_args):
        async def main():
            async with Cluster(tmp_path, **cluster_args) as cluster:
                await scenario(cluster)
                return cluster

        return asyncio.run(asyncio.wait_for(main(), timeout=120))

    return runner


async def _job_of(cluster: Cluster, name: str, timeout: float = 15) -> dict:
    for _ in range(int(timeout * 4)):
        found = [j for j in await cluster.jobs() if j["metadata"]["name"] == name]
        if found:
            return found[0]
        await asyncio.sleep(0.25)
    raise AssertionError(f"no Job {name}; operator log:\n{cluster.log()[-3000:]}")


async def _job_when(cluster: Cluster, name: str, holds, timeout: float = 10) -> dict:
    for _ in range(int(timeout * 4)):
        job = await _job_of(cluster, name)
        if holds(job):
            return job
        await asyncio.sleep(0.25)
    raise AssertionError(f"Job {name} never held; last {job}\n{cluster.log()[-3000:]}")


async def _event_reasons(cluster: Cluster, name: str, until: str) -> list[str]:
    for _ in range(60):
        events = await cluster.events(name)
        if until in {e["reason"] for e in events}:
            break
        await asyncio.sleep(0.25)
    return sorted(e["reason"] for e in events)


async def _status_when(
    cluster: Cluster, kind: str, name: str, holds, timeout: float = 15, namespace: str = "default"
) -> dict:
    """Poll until ``holds(status)`` is true; the status then."""
    status: dict = {}
    for _ in range(int(timeout * 4)):
        status = (await cluster.get(kind, name, namespace)).get("status") or {}
        if holds(status):
            return status
        await asyncio.sleep(0.25)
    raise AssertionError(f"{kind}/{name}: status never held; last {status}\n{cluster.log()[-3000:]}")


async def _metadata_when(cluster: Cluster, kind: str, name: str, holds, timeout: float = 15) -> dict:
    for _ in range(int(timeout * 4)):
        meta = (await cluster.get(kind, name))["metadata"]
        if holds(meta):
            return meta
        await asyncio.sleep(0.25)
    raise AssertionError(f"{kind}/{name}: metadata never held; last {meta}\n{cluster.log()[-3000:]}")


async def full_flow(cluster: Cluster) -> None:
    """GitOps order (the job first), a build that succeeds, a training Job that fails."""
    await cluster.apply(copy.deepcopy(FTJ))
    waiting = await cluster.wait_for("FineTuneJob", "tune", {"Waiting"}, timeout=30)
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
    # The server stored the defaults the services apply.
    assert build["spec"]["chunking"] == {"minChars": 1000, "maxChars": 2000}
    assert build["metadata"]["generation"] == 1

    await cluster.set_job_status(job, {"active": 1})
    await cluster.wait_for("DatasetBuild", "docs", {"Running"}, timeout=10)
    # Progress: the last record in the end of the running pod's log, read through pods/log.
    pod = await cluster.add_pod(job)
    log = cluster.workdir / "docs-pod.log"
    record = {"stage": "generate", "done": 3, "total": 9, "part": 2, "parts": 4}
    log.write_text(f"[4/9] generate ...\nkubetune-progress: {json.dumps(record)}\nINFO vLLM: 12 prompts\n")
    await cluster.start_pod(pod, log)
    running = await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("progress"))
    # Reading progress holds nothing: with the default deletionPolicy a running resource has no finalizer.
    assert not (await cluster.get("DatasetBuild", "docs"))["metadata"].get("finalizers")
    assert running["progress"] == "3/9 stages done; generate part 2/4"
    assert {k: v for k, v in running["progressDetail"].items() if k != "updated"} == record
    # What the pod made: its termination message, written by the service at the end.
    result = {"digest": "sha256:0f1e", "rows": {"train": 16, "test": 2}, "progress": {"stage": "done", "done": 9,
              "total": 9}}  # fmt: skip
    await cluster.end_pod(pod, 0, json.dumps(result))
    await cluster.finish_job(job, succeeded=True)
    done = await cluster.wait_for("DatasetBuild", "docs", {"Succeeded"}, timeout=10)
    assert done["status"]["output"] == {
        "path": "/var/lib/kubetune/datasets/default/docs",
        "digest": "sha256:0f1e",
        "rows": {"train": 16, "test": 2},
    }
    assert done["status"]["progress"] == "9/9 stages done"
    ready = next(c for c in done["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True"
    assert done["metadata"]["generation"] == 1  # status writes never bump it
    # One Event per phase change: created (Running), then succeeded; never back to Pending in between.
    assert await _event_reasons(cluster, "docs", until="JobSucceeded") == ["JobCreated", "JobSucceeded"]

    train = await _job_of(cluster, "tune-train", timeout=30)
    command = train["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--dataset") + 1] == "/var/lib/kubetune/datasets/default/docs"
    # Suspended while it runs, then resumed: the operator stops its Job, then starts it again.
    await cluster.set_job_status(train, {"active": 1})
    await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": True}})
    await cluster.wait_for("FineTuneJob", "tune", {"Suspended"}, timeout=10)
    await _job_when(cluster, "tune-train", lambda job: job["spec"].get("suspend") is True)
    await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": False}})
    await cluster.wait_for("FineTuneJob", "tune", {"Pending"}, timeout=10)
    await _job_when(cluster, "tune-train", lambda job: job["spec"].get("suspend") is False)
    await cluster.set_job_status(train, {"active": 1, "ready": 1})
    await cluster.wait_for("FineTuneJob", "tune", {"Running"}, timeout=10)
    # The pod says why it failed (the end of its log is its termination message); the Job only how often.
    pod = await cluster.add_pod(train)
    await cluster.end_pod(pod, 1, "loading the dataset\ntrainer failed: /data/d holds no train.parquet\n")
    await cluster.finish_job(train, succeeded=False, message="3 pods failed")
    failed = await cluster.wait_for("FineTuneJob", "tune", {"Failed"}, timeout=10)
    assert failed["status"]["message"] == "3 pods failed: trainer failed: /data/d holds no train.parquet"
    await _event_reasons(cluster, "tune", until="BackoffLimitExceeded")
    events = await cluster.events("tune")
    assert {e["type"] for e in events if e["reason"] == "BackoffLimitExceeded"} == {"Warning"}

    # Deletion: with the default policy (Retain) nothing holds the resource; with Delete, a finalizer holds it
    # until a clean-up Job has removed the output folder.
    assert not (await cluster.get("DatasetBuild", "docs"))["metadata"].get("finalizers")
    await cluster.patch("DatasetBuild", "docs", {"spec": {"deletionPolicy": "Delete"}})
    held = await _metadata_when(cluster, "DatasetBuild", "docs", lambda m: m.get("finalizers"))
    assert held["finalizers"] == ["kubetune.dev/finalizer"]
    await cluster.delete("DatasetBuild", "docs")
    cleanup = await _job_of(cluster, "docs-datagen-cleanup")
    assert (
        cleanup["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "/var/lib/kubetune/datasets/default/docs"
    )
    assert "ownerReferences" not in cleanup["metadata"] and cleanup["spec"]["ttlSecondsAfterFinished"] > 0
    assert (await cluster.get("DatasetBuild", "docs"))["metadata"]["deletionTimestamp"]  # still held
    await cluster.finish_job(cleanup, succeeded=True)
    await cluster.gone("DatasetBuild", "docs", timeout=15)
    assert "OutputDeleted" in {e["reason"] for e in await cluster.events("docs")}
    # A policy set to Delete and back to Retain: the finalizer comes, then goes; then the resource goes at once.
    await cluster.patch("FineTuneJob", "tune", {"spec": {"deletionPolicy": "Delete"}})
    await _metadata_when(cluster, "FineTuneJob", "tune", lambda m: m.get("finalizers") == ["kubetune.dev/finalizer"])
    await cluster.patch("FineTuneJob", "tune", {"spec": {"deletionPolicy": "Retain"}})
    await _metadata_when(cluster, "FineTuneJob", "tune", lambda m: not m.get("finalizers"))
    await cluster.delete("FineTuneJob", "tune")
    await cluster.gone("FineTuneJob", "tune", timeout=5)


async def group_flow(cluster: Cluster, namespace: str = "default") -> None:
    """A FineTuneJob on two pods: its ConfigMap, its headless Service and its Indexed Job, owned by it; the Job
    that fails (a pod of the group died) is followed by the whole group again, as a new Job."""
    tune = copy.deepcopy(FTJ)
    tune["metadata"].update(name="group", namespace=namespace)
    tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}
    tune["spec"]["distributed"] = {"numNodes": 2}
    await cluster.apply(tune)
    job = await _job_of(cluster, "group-train")
    assert (job["spec"]["completionMode"], job["spec"]["completions"], job["spec"]["backoffLimit"]) == ("Indexed", 2, 0)
    service = await cluster.service("group-train", namespace)
    owner = await cluster.get("FineTuneJob", "group", namespace)
    assert service["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
    assert service["spec"]["clusterIP"] == "None" and job["spec"]["template"]["spec"]["subdomain"] == "group-train"
    await _status_when(
        cluster, "FineTuneJob", "group", lambda s: s.get("jobName") == "group-train", namespace=namespace
    )
    await cluster.set_job_status(job, {"active": 2})
    await cluster.finish_job(job, succeeded=False, message="Job has reached the specified backoff limit")
    again = await _job_of(cluster, "group-train-restart-1")
    assert again["metadata"]["labels"]["kubetune.dev/attempt"] == "1"
    restarted = await _status_when(
        cluster, "FineTuneJob", "group", lambda s: s.get("restarts") == 1, namespace=namespace
    )
    assert (restarted["phase"], restarted["jobName"]) == ("Running", "group-train-restart-1")
    await cluster.finish_job(again, succeeded=True)
    await cluster.wait_for("FineTuneJob", "group", {"Succeeded"}, timeout=10, namespace=namespace)
    await cluster.delete("FineTuneJob", "group", namespace)
    await cluster.gone("FineTuneJob", "group", timeout=5, namespace=namespace)


def test_a_job_on_two_pods_is_a_group_restarted_whole(run_in_cluster):
    run_in_cluster(group_flow)


def test_kubetune_operator_cluster_wide(run_in_cluster):
    cluster = run_in_cluster(full_flow)
    assert cluster.operator.returncode == 0  # stopped by SIGTERM, cleanly
    log = cluster.log()
    # An admin reads one line per decision, with the resource's namespace/name.
    assert "FineTuneJob default/tune: Waiting (DatasetBuildNotFound)" in log
    assert "DatasetBuild default/docs: created Job docs-datagen" in log
    assert "DatasetBuild default/docs: Running -> Succeeded (JobSucceeded)" in log
    assert "FineTuneJob default/tune: Running -> Failed (BackoffLimitExceeded) 3 pods failed: trainer failed" in log


def test_kubetune_operator_namespaced_ignores_other_namespaces(run_in_cluster):
    async def watched_only(cluster: Cluster):
        for namespace in ("team", "default"):
            build = copy.deepcopy(DSB)
            build["metadata"]["namespace"] = namespace
            await cluster.apply(build)
        job = await _job_of(cluster, "docs-datagen")
        assert job["metadata"]["namespace"] == "team"
        await asyncio.sleep(2)
        assert [j["metadata"]["namespace"] for j in await cluster.jobs()] == ["team"]
        untouched = await cluster.get("DatasetBuild", "docs", namespace="default")
        assert "status" not in untouched and not untouched["metadata"].get("finalizers")

    cluster = run_in_cluster(watched_only, operator_args=["operator", "-n", "team"])
    assert "DatasetBuild team/docs: created Job docs-datagen" in cluster.log()


def test_a_spec_the_crd_let_through_becomes_a_condition_not_a_crash_loop(run_in_cluster):
    """An older CRD (no strict schema, no CEL) stores what this operator's models refuse."""

    async def scenario(cluster: Cluster):
        bad = copy.deepcopy(FTJ)
        bad["metadata"]["name"] = "bad"
        bad["spec"]["training"] = {"learningRat": 0.1}
        bad["spec"]["method"] = "[lorra]"
        await cluster.apply(bad)
        failed = await cluster.wait_for("FineTuneJob", "bad", {"Failed"}, timeout=30)
        valid = next(c for c in failed["status"]["conditions"] if c["type"] == "SpecValid")
        assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"
        assert "spec.training.learningRat" in valid["message"] and "did you mean 'learningRate'" in valid["message"]
        assert "spec.method" in valid["message"] and "'[lorra]'" in valid["message"]
        await _event_reasons(cluster, "bad", until="InvalidSpec")
        assert [e["type"] for e in await cluster.events("bad") if e["reason"] == "InvalidSpec"] == ["Warning"]
        await asyncio.sleep(1.5)
        assert not [j for j in await cluster.jobs() if j["metadata"]["name"].startswith("bad")]

    cluster = run_in_cluster(scenario, crd_admission=False)
    assert "FineTuneJob default/bad: Failed (InvalidSpec)" in cluster.log()


def test_a_job_the_server_refuses_fails_the_resource_with_the_server_message(run_in_cluster):
    """Pod defaults Kubernetes' schema refuses (a node selector value must be a string): the official client
    checks the Job against that schema before it sends it, as the server would after."""

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        failed = await cluster.wait_for("DatasetBuild", "docs", {"Failed"}, timeout=30)
        assert failed["status"]["message"].startswith("the API server refused Job docs-datagen: ")
        assert "nodeSelector" in failed["status"]["message"]
        assert await _event_reasons(cluster, "docs", until="JobRefused") == ["JobRefused"]
        assert [j["metadata"]["name"] for j in await cluster.jobs()] == []

    env = {"KUBETUNE_POD_DEFAULTS": json.dumps({"datagen": {"nodeSelector": {"gpu": True}}})}
    cluster = run_in_cluster(scenario, operator_env=env)
    assert "DatasetBuild default/docs: Failed (JobRefused)" in cluster.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="the test kubelet bind-mounts volumes, which needs root")
def test_a_failed_pod_says_why_in_the_resource_status(run_in_cluster, tmp_path, root):
    """The trainer really runs (the test kubelet) and fails on a missing dataset: the end of its log is the
    pod's termination message, and its last line reaches the FineTuneJob's status."""

    async def scenario(cluster: Cluster):
        async with kubelet_running(cluster, cwd=root, storage=tmp_path / "storage"):
            tune = copy.deepcopy(FTJ)
            tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/none"}
            del tune["spec"]["registry"]
            await cluster.apply(tune)
            failed = await cluster.wait_for("FineTuneJob", "tune", {"Failed"}, timeout=80)
        missing = "/var/lib/kubetune/datasets/default/none"
        assert (
            failed["status"]["message"]
            == f"the container exited with 1: trainer failed: {missing} holds no train.parquet"
        )

    run_in_cluster(scenario)


def test_a_sharded_build_runs_its_shards_then_one_merge(run_in_cluster):
    """generation.shards: an Indexed Job of one pod per shard, then, when it completes, the merge Job; the
    resource stays Running across the two and ends with the merge."""

    async def scenario(cluster: Cluster):
        sharded = copy.deepcopy(DSB)
        sharded["spec"]["generation"]["shards"] = 3
        await cluster.apply(sharded)
        shards = await _job_of(cluster, "docs-datagen-shards")
        assert {k: shards["spec"][k] for k in ("completionMode", "completions", "parallelism")} == {
            "completionMode": "Indexed",
            "completions": 3,
            "parallelism": 3,
        }
        # The Job controller's first word comes after the operator recorded the Job (as in a cluster: pods first).
        await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("jobName") == "docs-datagen-shards")
        await cluster.set_job_status(shards, {"active": 3})
        await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("message") == "3 shards generating")
        await cluster.finish_job(shards, succeeded=True)
        merging = await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("jobName") == "docs-datagen")
        assert merging["phase"] == "Running"
        assert merging["message"] == "the 3 shards are done; merging their parts and finishing the build"
        merge = await _job_of(cluster, "docs-datagen")
        build = await cluster.get("DatasetBuild", "docs")
        assert merge["metadata"]["ownerReferences"][0]["uid"] == build["metadata"]["uid"]
        assert "--shard" not in merge["spec"]["template"]["spec"]["containers"][0]["command"]
        # A late event of the shards' Job (done with) moves nothing.
        await cluster.set_job_status(shards, {"ready": 0})
        await cluster.finish_job(merge, succeeded=True)
        done = await cluster.wait_for("DatasetBuild", "docs", {"Succeeded"}, timeout=10)
        assert done["status"]["output"]["path"] == "/var/lib/kubetune/datasets/default/docs"
        reasons = await _event_reasons(cluster, "docs", until="JobSucceeded")
        assert reasons == ["JobCreated", "JobSucceeded", "ShardsSucceeded"]

    cluster = run_in_cluster(scenario)
    assert "DatasetBuild default/docs: Running -> Running (ShardsSucceeded)" in cluster.log()


@pytest.mark.skipif(os.geteuid() != 0, reason="the test kubelet bind-mounts volumes, which needs root")
def test_gpus_auto_sizes_the_training_pod_with_the_memory_planner(run_in_cluster, tmp_path, root, smollm2):
    """``resources.gpus: auto``: the sizing Job really runs the trainer's planner on the model's config.json (the
    test kubelet); its answer becomes the training Job's GPU request."""

    async def scenario(cluster: Cluster):
        async with kubelet_running(cluster, cwd=root, storage=tmp_path / "storage"):
            tune = copy.deepcopy(FTJ)
            tune["spec"]["baseModel"] = "models/SmolLM2-135M-Instruct"
            tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/none"}
            tune["spec"]["resources"] = {"gpus": "auto", "gpuType": "T4-16GB"}
            del tune["spec"]["registry"]
            await cluster.apply(tune)
            sizing = await _job_of(cluster, "tune-train-sizing", timeout=30)
            assert "resources" not in sizing["spec"]["template"]["spec"]["containers"][0]
            train = await _job_of(cluster, "tune-train", timeout=80)
            limits = train["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
            assert limits == {"nvidia.com/gpu": "1"}
            # The training pod runs (and fails, as the test asked: there is no dataset).
            failed = await cluster.wait_for("FineTuneJob", "tune", {"Failed"}, timeout=80)
            assert failed["status"]["message"].endswith("holds no train.parquet")
            reasons = await _event_reasons(cluster, "tune", until="BackoffLimitExceeded")
            assert reasons == ["BackoffLimitExceeded", "JobCreated", "Sized"]

    cluster = run_in_cluster(scenario)
    assert "FineTuneJob default/tune: Running -> Running (Sized) fits one T4-16GB (" in cluster.log()
    assert "training on 1 GPU(s)" in cluster.log()


def test_a_job_with_a_queue_waits_suspended_for_kueue(run_in_cluster):
    """spec.queueName: the Job is created suspended with Kueue's label, the resource stays Pending (Queued)
    while the Job controller says Suspended, and runs once Kueue has unsuspended the Job."""

    async def scenario(cluster: Cluster):
        tune = copy.deepcopy(FTJ)
        tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}
        tune["spec"]["queueName"] = "team-a"
        await cluster.apply(tune)
        job = await _job_of(cluster, "tune-train")
        assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        queued = await cluster.wait_for("FineTuneJob", "tune", {"Pending"}, timeout=30)
        assert queued["status"]["message"] == "waiting for Kueue to admit the Job from queue team-a"
        suspended = {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}
        await cluster.set_job_status(job, {"conditions": [suspended]})
        await asyncio.sleep(1)
        still = await cluster.get("FineTuneJob", "tune")
        ready = next(c for c in still["status"]["conditions"] if c["type"] == "Ready")
        assert (still["status"]["phase"], ready["reason"]) == ("Pending", "Queued")
        resumed = {**suspended, "status": "False", "reason": "JobResumed", "message": "Job resumed"}
        await cluster.set_job_status(job, {"conditions": [resumed], "active": 1})
        await cluster.wait_for("FineTuneJob", "tune", {"Running"}, timeout=10)
        assert await _event_reasons(cluster, "tune", until="JobRunning") == ["JobRunning", "Queued"]

    run_in_cluster(scenario)


def test_a_queued_sharded_build_queues_its_merge_too_and_stays_running(run_in_cluster):
    """queueName with shards: Kueue holds each step's Job. When the shards are done the merge Job is created
    suspended, recorded as the resource's Job, and the resource stays Running (Queued) until Kueue admits it."""

    async def scenario(cluster: Cluster):
        sharded = copy.deepcopy(DSB)
        sharded["spec"]["generation"]["shards"] = 2
        sharded["spec"]["queueName"] = "team-a"
        await cluster.apply(sharded)
        shards = await _job_of(cluster, "docs-datagen-shards")
        await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("jobName") == "docs-datagen-shards")
        await cluster.set_job_status(shards, {"active": 2})
        await cluster.wait_for("DatasetBuild", "docs", {"Running"}, timeout=10)
        await cluster.finish_job(shards, succeeded=True)
        queued = await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("jobName") == "docs-datagen")
        ready = next(c for c in queued["conditions"] if c["type"] == "Ready")
        assert (queued["phase"], ready["reason"]) == ("Running", "Queued")
        merge = await _job_of(cluster, "docs-datagen")
        assert merge["spec"]["suspend"] is True
        assert merge["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
        await cluster.set_job_status(merge, {"active": 1})
        await _status_when(cluster, "DatasetBuild", "docs", lambda s: s.get("message") == "the pod is running")
        await cluster.finish_job(merge, succeeded=True)
        await cluster.wait_for("DatasetBuild", "docs", {"Succeeded"}, timeout=10)

    run_in_cluster(scenario)


KUBECTL = ROOT / ".cache" / "tools" / "bin" / "kubectl"


@pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl is installed by `make setup` (charts/fetch-helm.sh)")
def test_kubectl_get_shows_phase_progress_and_the_registered_version(run_in_cluster):
    """What a person sees with `kubectl get` (the real kubectl) while a FineTuneJob trains, and after."""
    job_spec = copy.deepcopy(FTJ)
    job_spec["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}

    async def kubectl_get(cluster: Cluster, *args: str) -> list[list[str]]:
        proc = await asyncio.create_subprocess_exec(
            str(KUBECTL), "--kubeconfig", str(cluster.workdir / "kubeconfig-admin"), "get", "finetunejobs", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        return [line.split("  ") for line in out.decode().splitlines()]

    def columns(rows: list[list[str]]) -> list[list[str]]:
        return [[cell.strip() for cell in row if cell.strip()] for row in rows]

    async def scenario(cluster: Cluster) -> None:
        await cluster.apply(job_spec)
        job = await _job_of(cluster, "tune-train")
        await cluster.set_job_status(job, {"active": 1})
        pod = await cluster.add_pod(job)
        log = cluster.workdir / "tune-pod.log"
        record = {"step": 6, "maxSteps": 12, "loss": 1.93, "tokensPerSecond": 410.2, "etaSeconds": 80, "phase": "train"}
        log.write_text("{'loss': 1.93}\nkubetune-progress: " + json.dumps(record) + "\n")
        await cluster.start_pod(pod, log)
        await _status_when(cluster, "FineTuneJob", "tune", lambda s: s.get("progress"))
        header, row = columns(await kubectl_get(cluster))
        assert header == ["NAME", "PHASE", "PROGRESS", "VERSION", "AGE"]
        assert row[:3] == ["tune", "Running", "step 6/12 (50%), loss 1.93, 410 tokens/s, ETA 1m20s"]
        assert row[3].endswith("s")  # an age, and no version yet

        result = {"digest": "sha256:ab", "evalLoss": 1.5, "modelName": "docs-lora", "modelVersion": "3",
                  "progress": {**record, "step": 12, "etaSeconds": 0, "phase": "done"}}  # fmt: skip
        await cluster.end_pod(pod, 0, json.dumps(result))
        await cluster.finish_job(job, succeeded=True)
        await cluster.wait_for("FineTuneJob", "tune", {"Succeeded"}, timeout=10)
        header, row = columns(await kubectl_get(cluster, "-o", "wide"))
        assert header == ["NAME", "PHASE", "PROGRESS", "MODEL", "VERSION", "EVAL-LOSS", "RESTARTS", "AGE"]
        assert row[:6] == ["tune", "Succeeded", "step 12/12 (100%), done, loss 1.93, 410 tokens/s", "docs-lora", "3",
                           "1.5"]  # fmt: skip

    run_in_cluster(scenario)


def test_suspend_stops_the_job_and_resume_starts_it_again(run_in_cluster):
    """spec.suspend, the one field that may change: the Job is suspended and unsuspended, the status says so
    and observes the new generation; any other edit is refused by the API server."""
    job_spec = copy.deepcopy(FTJ)
    job_spec["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}

    async def scenario(cluster: Cluster) -> None:
        await cluster.apply(job_spec)
        job = await _job_of(cluster, "tune-train")
        assert "suspend" not in job["spec"]
        await cluster.set_job_status(job, {"active": 1})
        await cluster.wait_for("FineTuneJob", "tune", {"Running"}, timeout=10)

        await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": True}})
        status = await _status_when(cluster, "FineTuneJob", "tune", lambda s: s.get("phase") == "Suspended")
        assert status["observedGeneration"] == 2
        # The phase may come from a Job event handled first (it reads spec.suspend); the Job's patch follows.
        for _ in range(40):
            if (await _job_of(cluster, "tune-train"))["spec"].get("suspend"):
                break
            await asyncio.sleep(0.25)
        assert (await _job_of(cluster, "tune-train"))["spec"]["suspend"] is True
        # The Job controller stops the pod and says so; a status read late (still active) changes nothing.
        suspended = {"type": "Suspended", "status": "True", "reason": "JobSuspended"}
        await cluster.set_job_status(job, {"active": 0, "conditions": [suspended]})
        await asyncio.sleep(1.5)
        assert (await cluster.get("FineTuneJob", "tune"))["status"]["phase"] == "Suspended"

        with pytest.raises(Exception, match="spec is immutable once created, except suspend"):
            await cluster.patch("FineTuneJob", "tune", {"spec": {"training": {"learningRate": 0.001}}})

        await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": False}})
        status = await _status_when(cluster, "FineTuneJob", "tune", lambda s: s.get("observedGeneration") == 3)
        assert (status["phase"], status["conditions"][-1]["reason"]) == ("Pending", "Resumed")
        assert (await _job_of(cluster, "tune-train"))["spec"]["suspend"] is False
        resumed = {**suspended, "status": "False", "reason": "JobResumed"}
        await cluster.set_job_status(job, {"active": 1, "conditions": [resumed]})
        await cluster.wait_for("FineTuneJob", "tune", {"Running"}, timeout=10)
        await cluster.finish_job(job, succeeded=True)
        await cluster.wait_for("FineTuneJob", "tune", {"Succeeded"}, timeout=10)
        reasons = await _event_reasons(cluster, "tune", until="JobSucceeded")
        assert reasons == sorted(["JobCreated", "Suspended", "Resumed", "JobRunning", "JobSucceeded"]), reasons

    run_in_cluster(scenario)


def test_a_suspend_edit_made_while_no_operator_ran_is_carried_out_at_its_start(run_in_cluster):
    """The operator keeps the spec it last handled in memory, not on the resource: one that starts afresh sees
    every resource as new. A Job it made before, left running, and a spec.suspend edit made while it was stopped:
    at its start it suspends the Job (and creates nothing again); resumed the same way, it starts it again."""
    job_spec = copy.deepcopy(FTJ)
    job_spec["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}

    async def restart(cluster: Cluster) -> None:
        await cluster.stop_operator()
        cluster.operator = await cluster.start_replica("operator", ["operator"])

    async def scenario(cluster: Cluster) -> None:
        await cluster.apply(job_spec)
        job = await _job_of(cluster, "tune-train")
        await cluster.set_job_status(job, {"active": 1})
        await cluster.wait_for("FineTuneJob", "tune", {"Running"}, timeout=10)
        assert not [k for k in (await cluster.get("FineTuneJob", "tune"))["metadata"].get("annotations") or {}
                    if k.startswith("kubetune.dev/")]  # fmt: skip

        await cluster.stop_operator()
        await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": True}})
        cluster.operator = await cluster.start_replica("operator", ["operator"])
        status = await _status_when(cluster, "FineTuneJob", "tune", lambda s: s.get("phase") == "Suspended")
        assert status["observedGeneration"] == 2
        await _job_when(cluster, "tune-train", lambda j: j["spec"].get("suspend") is True)

        await restart(cluster)  # nothing changed meanwhile: it reads the resource and its Job, and writes nothing
        seen = len(cluster.api.audit)
        await _job_when(cluster, "tune-train", lambda _: any(
            r.verb == "get" and r.resource == "jobs" for r in cluster.api.audit[seen:]))  # fmt: skip
        await asyncio.sleep(1)
        assert [r for r in cluster.api.audit[seen:] if r.verb in ("patch", "create") and r.resource != "leases"] == []
        await cluster.stop_operator()
        await cluster.patch("FineTuneJob", "tune", {"spec": {"suspend": False}})
        cluster.operator = await cluster.start_replica("operator", ["operator"])
        status = await _status_when(cluster, "FineTuneJob", "tune", lambda s: s.get("observedGeneration") == 3)
        # Pending (resumed), or Running: the Job's last status (a pod active) read first, with the new spec.
        assert status["phase"] in ("Pending", "Running")
        await _job_when(cluster, "tune-train", lambda j: j["spec"].get("suspend") is False)
        creates = [r for r in cluster.api.audit if r.verb == "create" and r.resource in ("jobs", "configmaps")]
        assert len(creates) == 2, creates  # the ConfigMap and the Job, once

    run_in_cluster(scenario)


def test_two_replicas_one_leader(tmp_path):
    """Two `kubetune operator --leader-election` replicas at once: only the Lease's holder touches resources,
    the standby answers its liveness probe meanwhile, and takes over once the leader dies (SIGKILL: no release)."""
    from tests.operator.cluster import free_port

    first, second = free_port(), free_port()
    ready = {port: free_port() for port in (first, second)}

    def args(port: int) -> list[str]:
        return ["operator", "--leader-election", "--leader-election-namespace", "kubetune",
                f"--liveness=http://127.0.0.1:{port}/healthz",
                f"--readiness=http://127.0.0.1:{ready[port]}/readyz"]  # fmt: skip

    async def readiness(port: int) -> tuple[int, str]:
        def get() -> tuple[int, str]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ready[port]}/readyz", timeout=5) as response:
                    return response.status, response.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        return await asyncio.to_thread(get)

    async def lease(cluster: Cluster) -> dict:
        from kubernetes import client

        raw = await asyncio.to_thread(
            client.CoordinationV1Api().read_namespaced_lease, "kubetune-operator", "kubetune", _preload_content=False
        )
        return json.loads(raw.data)["spec"]

    async def wait_for_holder(cluster: Cluster, process, timeout: float) -> dict:
        for _ in range(int(timeout * 4)):
            with contextlib.suppress(Exception):
                spec = await lease(cluster)
                if spec["holderIdentity"].endswith(f"_{process.pid}"):
                    return spec
            await asyncio.sleep(0.25)
        raise AssertionError(f"pid {process.pid} never held the Lease\n{cluster.log()[-2000:]}")

    def touched_resources(cluster: Cluster, user: str) -> list:
        return [r for r in cluster.api.audit if r.user == user and r.resource not in ("leases",)
                and not r.resource.startswith("/")]  # fmt: skip

    async def main():
        async with Cluster(
            tmp_path, operator_args=args(first), operator_env={"KUBETUNE_LEASE_SECONDS": "4"}
        ) as cluster:
            held = await wait_for_holder(cluster, cluster.operator, timeout=20)
            standby = await cluster.start_replica("operator-2", args(second))
            await cluster.apply(copy.deepcopy(DSB))
            await _job_of(cluster, "docs-datagen")
            await asyncio.sleep(2)  # the standby has had time to act, were it to
            assert touched_resources(cluster, "operator-2") == []
            assert (await lease(cluster))["holderIdentity"] == held["holderIdentity"]
            probe = await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{second}/healthz", timeout=5)
            assert probe.status == 200
            # Both ready: the leader acts, the standby reaches the API server and can take over.
            assert await readiness(first) == (200, "leading")
            assert await readiness(second) == (200, "standby")

            cluster.operator.kill()  # no chance to hand over: the Lease must expire
            await cluster.operator.wait()
            taken = await wait_for_holder(cluster, standby, timeout=30)
            assert taken["leaseTransitions"] == 1
            await cluster.apply({**copy.deepcopy(DSB), "metadata": {"name": "docs-2"}})
            await _job_of(cluster, "docs-2-datagen")
            # Each Job created by the replica leading then: docs-datagen by the first, docs-2-datagen by the second.
            creators = [r.user for r in cluster.api.audit if r.verb == "create" and r.resource == "jobs"]
            assert creators == ["operator", "operator-2"]
            assert await readiness(second) == (200, "leading")

    asyncio.run(asyncio.wait_for(main(), timeout=90))


def test_a_failed_build_fails_with_its_cause_and_so_does_the_job_waiting_for_it(run_in_cluster):
    """A Job that reached its backoff limit, in the two writes the Job controller makes (FailureTarget with the
    pod uncounted, then Failed with the count): the DatasetBuild fails with the pod's own cause in its message
    and Ready condition and a Warning Event; the FineTuneJob waiting for it fails too (DependencyFailed),
    carrying that cause, instead of waiting for ever."""

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        await cluster.apply(copy.deepcopy(FTJ))
        await cluster.wait_for("FineTuneJob", "tune", {"Waiting"}, timeout=30)
        job = await _job_of(cluster, "docs-datagen")
        await cluster.set_job_status(job, {"active": 1, "ready": 1})
        await cluster.wait_for("DatasetBuild", "docs", {"Running"}, timeout=10)
        pod = await cluster.add_pod(job)
        await cluster.end_pod(pod, 1, "reading corpus\ndatagen failed: no documents under /data/corpus\n")
        await cluster.finish_job(job, succeeded=False)

        failed = await cluster.wait_for("DatasetBuild", "docs", {"Failed"}, timeout=15)
        cause = "Job has reached the specified backoff limit: datagen failed: no documents under /data/corpus"
        assert failed["status"]["message"] == cause
        ready = next(c for c in failed["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"], ready["message"]) == ("False", "BackoffLimitExceeded", cause)
        await _event_reasons(cluster, "docs", until="BackoffLimitExceeded")
        warnings = {e["reason"] for e in await cluster.events("docs") if e["type"] == "Warning"}
        assert warnings == {"BackoffLimitExceeded"}

        dependent = await cluster.wait_for("FineTuneJob", "tune", {"Failed"}, timeout=15)
        assert dependent["status"]["message"] == f"DatasetBuild docs failed: {cause}"
        ready = next(c for c in dependent["status"]["conditions"] if c["type"] == "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "DependencyFailed")
        assert await _event_reasons(cluster, "tune", until="DependencyFailed") == ["DependencyFailed"]
        assert [e["type"] for e in await cluster.events("tune")] == ["Warning"]
        assert [j["metadata"]["name"] for j in await cluster.jobs()] == ["docs-datagen"]  # no training Job

    cluster = run_in_cluster(scenario)
    assert "failed with an exception" not in cluster.log()  # every write taken: no handler gave up


def _ready(status: dict) -> str | None:
    return next((c["reason"] for c in status.get("conditions") or [] if c["type"] == "Ready"), None)


def test_a_job_whose_build_is_deleted_while_it_waits_says_so(run_in_cluster):
    """A FineTuneJob waits for a running DatasetBuild, which is then deleted: its status says the build was
    deleted (woken by the DatasetBuild's DELETED event, not at the poller's next look, which is minutes away
    here), and keeps saying it until the build is applied again."""

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        await cluster.apply(copy.deepcopy(FTJ))
        await _job_of(cluster, "docs-datagen")
        waiting = await _status_when(cluster, "FineTuneJob", "tune", lambda s: _ready(s) == "WaitingForDataset")
        assert waiting["message"].startswith("waiting for DatasetBuild docs (phase ")
        await cluster.delete("DatasetBuild", "docs")
        gone = await _status_when(cluster, "FineTuneJob", "tune", lambda s: _ready(s) == "DatasetBuildDeleted")
        assert gone["phase"] == "Waiting"
        assert gone["message"] == "DatasetBuild docs was deleted; waiting for it to be applied again"

    run_in_cluster(scenario, operator_env={"KUBETUNE_WAIT_SECONDS": "600"})
