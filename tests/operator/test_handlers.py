"""The handlers called in this process against the test API server, for what an operator process cannot be
made to show on demand: kopf calling a handler with a body older than the stored object."""

from __future__ import annotations

import asyncio
import copy

import pytest
from kubernetes import client

from kubetune.api.v1alpha1.constants import GROUP, VERSION
from tests.operator.cluster import Cluster
from tests.operator.test_operator import FTJ


def test_a_retry_with_a_stale_body_neither_creates_again_nor_moves_the_phase_back(api):
    """kopf retries a Waiting FineTuneJob with the body it saw last; meanwhile the job may have been woken, its
    Job created, even finished. At scale that body is seconds old: the retry must read the resource again."""
    from kubetune_operator import handlers

    async def scenario(cluster: Cluster):
        tune = copy.deepcopy(FTJ)
        tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}
        created = await cluster.apply(tune)
        stored = {"phase": "Succeeded", "jobName": "tune-train", "message": "done"}
        await asyncio.to_thread(
            client.CustomObjectsApi().patch_namespaced_custom_object_status,
            GROUP, VERSION, "default", "finetunejobs", "tune", {"status": stored},
        )  # fmt: skip
        stale = {**created, "status": {"phase": "Waiting", "message": "waiting for DatasetBuild docs"}}
        await asyncio.to_thread(handlers.reconcile_fine_tune_job, stale)
        assert await cluster.jobs() == []  # no second Job (here: none at all)
        now = (await cluster.get("FineTuneJob", "tune"))["status"]
        assert (now["phase"], now["jobName"]) == ("Succeeded", "tune-train")

    api(scenario)


def test_of_two_reconciles_at_once_only_one_writes_the_status(api, monkeypatch):
    """A wake-up and kopf's retry plan the same waiting job at once: both create (the second answered 409), and
    only the first to write moves the phase; the second is told (PhaseChanged, a retry) and writes nothing."""
    import kopf

    from kubetune_operator import handlers

    async def scenario(cluster: Cluster):
        tune = copy.deepcopy(FTJ)
        tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}
        await cluster.apply(tune)
        status = client.CustomObjectsApi().patch_namespaced_custom_object_status

        def set_status(value: dict) -> None:
            status(GROUP, VERSION, "default", "finetunejobs", "tune", {"status": value})

        await asyncio.to_thread(set_status, {"phase": "Waiting", "message": "waiting"})
        create_children = handlers._create_children

        def the_other_one_wrote_first(body, decision):  # between this reconcile's read and its write
            set_status({"phase": "Running", "jobName": "tune-train", "message": "the other reconcile"})
            return create_children(body, decision)

        monkeypatch.setattr(handlers, "_create_children", the_other_one_wrote_first)
        stale = {**tune, "metadata": {"name": "tune", "namespace": "default"}, "status": {"phase": "Waiting"}}
        with pytest.raises(kopf.TemporaryError, match="left phase Waiting meanwhile"):
            await asyncio.to_thread(handlers.reconcile_fine_tune_job, stale)
        now = (await cluster.get("FineTuneJob", "tune"))["status"]
        assert (now["phase"], now["message"]) == ("Running", "the other reconcile")

    api(scenario)


COMPLETE = {
    "succeeded": 1,
    "conditions": [
        {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"},
        {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
    ],
}
DOCS_JOB = {"labels": {"app.kubernetes.io/managed-by": "kubetune", "kubetune.dev/datasetbuild": "docs"},
            "namespace": "default", "name": "docs-datagen"}  # fmt: skip


def test_a_job_event_that_loses_a_race_for_the_status_is_carried_by_the_handler_itself(api, monkeypatch):
    """Job events go to an event handler, which kopf does not retry: when another writer moves the owner between
    the handler's read and its write, the handler reads again and writes then; a later event with the same Job
    status (only the Job's metadata changed) costs no request, and the controller's decided-but-unwritten end
    (SuccessCriteriaMet before Complete) none either."""
    import kopf

    from kubetune_operator import handlers, kube
    from tests.operator.test_operator import DSB

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        status = client.CustomObjectsApi().patch_namespaced_custom_object_status

        def set_status(value: dict) -> None:
            status(GROUP, VERSION, "default", "datasetbuilds", "docs", {"status": value})

        await asyncio.to_thread(set_status, {"phase": "Pending", "jobName": "docs-datagen", "message": "pending"})
        reads = []
        get = kube.get

        def the_pod_started_meanwhile(kind, namespace, name):
            found = get(kind, namespace, name)
            reads.append(name)
            if len(reads) == 1:  # a write from the Job's previous event lands after this read
                set_status({"phase": "Running", "message": "the pod is running"})
            return found

        monkeypatch.setattr(kube, "get", the_pod_started_meanwhile)
        posted = []  # kopf posts Events only inside a running operator
        monkeypatch.setattr(kopf, "info", lambda body, reason, message: posted.append(reason))
        memo = kopf.Memo()
        await handlers.job_status(type="MODIFIED", status=COMPLETE, memo=memo, dependents={},
                                **DOCS_JOB)  # fmt: skip
        now = (await cluster.get("DatasetBuild", "docs"))["status"]
        assert (now["phase"], now["message"]) == ("Succeeded", "done")
        # Read, lost the race (the 422 of a failed test, told from a refused write by a read), read again, wrote.
        assert reads == ["docs", "docs", "docs"]
        assert posted == ["JobSucceeded"]

        await handlers.job_status(type="MODIFIED", status=COMPLETE, memo=memo, dependents={},
                                **DOCS_JOB)  # fmt: skip
        settling = {"conditions": COMPLETE["conditions"][:1], "uncountedTerminatedPods": {"succeeded": ["u1"]}}
        await handlers.job_status(type="MODIFIED", status=settling, memo=kopf.Memo(),
                                dependents={}, **DOCS_JOB)  # fmt: skip
        assert len(reads) == 3  # neither the same status again nor the settling one read anything

    api(scenario)


async def _job_made_and_status_write_lost(cluster: Cluster, build: dict, monkeypatch) -> dict:
    """Reconcile ``build`` with its status write failing (a 500, or the operator stopping there): the Job is
    made and never recorded. Returns that Job."""
    from kubernetes.client.exceptions import ApiException

    from kubetune_operator import handlers, kube

    write = kube.patch_status_from

    def unwell(*args):
        raise ApiException(status=500, reason="etcdserver: request timed out")

    monkeypatch.setattr(kube, "patch_status_from", unwell)
    with pytest.raises(ApiException):
        await asyncio.to_thread(handlers.reconcile_dataset_build, build, dependents={})
    monkeypatch.setattr(kube, "patch_status_from", write)
    (job,) = await cluster.jobs()
    return job


def test_a_reconcile_retried_after_its_status_write_failed_carries_the_status_of_the_job_it_made(api, monkeypatch):
    """The create handler made the Job, then its status write failed (a 500): the Job's events found no record
    of it and changed nothing. kopf's retry plans the same Job (409: it exists) and must then carry the status
    the Job reached meanwhile, here its end; otherwise the resource would stay Running for good."""
    import kopf

    from kubetune_operator import handlers
    from tests.operator.test_operator import DSB

    async def scenario(cluster: Cluster):
        build = await cluster.apply(copy.deepcopy(DSB))
        posted = []
        monkeypatch.setattr(kopf, "info", lambda body, reason, message: posted.append(reason))
        job = await _job_made_and_status_write_lost(cluster, build, monkeypatch)
        await cluster.finish_job(job, succeeded=True)
        await asyncio.to_thread(handlers.reconcile_dataset_build, build, dependents={})
        now = (await cluster.get("DatasetBuild", "docs"))["status"]
        assert (now["phase"], now["jobName"]) == ("Succeeded", "docs-datagen")
        assert posted == ["JobCreated", "JobSucceeded"]
        assert len(await cluster.jobs()) == 1

    api(scenario)


def test_a_resume_read_after_the_job_said_it_runs_again_keeps_running(api, monkeypatch):
    """spec.suspend set back to false, handled after the Job's own event already moved the resource to Running:
    the Job is unsuspended and the new generation observed, but the phase does not go back to Pending."""
    import kopf

    from kubetune_operator import handlers
    from tests.operator.test_operator import DSB

    async def scenario(cluster: Cluster):
        build = await cluster.apply({**copy.deepcopy(DSB), "spec": {**DSB["spec"], "suspend": True}})
        monkeypatch.setattr(kopf, "info", lambda body, reason, message: None)
        await asyncio.to_thread(handlers.reconcile_dataset_build, build, dependents={})
        (job,) = await cluster.jobs()
        assert job["spec"]["suspend"] is True
        await cluster.patch("DatasetBuild", "docs", {"spec": {"suspend": False}})
        status = client.CustomObjectsApi().patch_namespaced_custom_object_status
        running = {"phase": "Running", "message": "the pod is running"}
        await asyncio.to_thread(status, GROUP, VERSION, "default", "datasetbuilds", "docs", {"status": running})
        await asyncio.to_thread(handlers.dataset_build_suspend, body=await cluster.get("DatasetBuild", "docs"))
        (job,) = await cluster.jobs()
        assert job["spec"]["suspend"] is False
        now = await cluster.get("DatasetBuild", "docs")
        assert (now["status"]["phase"], now["status"]["observedGeneration"]) == ("Running", 2)

    api(scenario)


def test_the_diff_base_is_kept_in_memory_and_built_for_the_custom_resources_only():
    """kopf builds a diff base on every event of everything watched; only the custom resources have change
    handlers (creation, spec.suspend), so a Job's is empty, and a resource's is kopf's own (spec, not status).
    It is kept in this process, per uid, until the resource is deleted: nothing is written to the resource."""
    import kopf

    from kubetune_operator.storage import MemoryDiffBase

    storage = MemoryDiffBase()
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "uid": "j1", "labels": {"a": "b"}},
           "spec": {"template": {}}, "status": {"active": 1}}  # fmt: skip
    assert storage.build(body=kopf.Body(job)) == {}
    tune = {**copy.deepcopy(FTJ), "status": {"phase": "Running"}}
    tune["metadata"]["uid"] = "t1"
    essence = storage.build(body=kopf.Body(tune))
    assert essence == kopf.AnnotationsDiffBaseStorage(prefix=GROUP).build(body=kopf.Body(tune))
    assert essence["spec"] == FTJ["spec"] and "status" not in essence

    body, patch = kopf.Body(tune), kopf.Patch()
    assert storage.fetch(body=body) is None  # never handled: kopf's creation (or, at a start, resume) cause
    storage.store(body=body, patch=patch, essence=essence)
    assert not patch  # nothing written to the resource
    assert storage.fetch(body=body) == essence
    storage.forget("t1")
    assert storage.fetch(body=body) is None


def test_a_job_made_before_a_suspend_edit_and_never_recorded_is_suspended_as_the_spec_now_says(api, monkeypatch):
    """An operator made the Job and stopped before recording it in status; spec.suspend was then set. The next
    operator plans again from the edited spec, finds the Job made (409) and suspends it: the status says
    Suspended and so does the Job, not a running Job under a Suspended status."""
    import kopf

    from kubetune_operator import handlers
    from tests.operator.test_operator import DSB

    async def scenario(cluster: Cluster):
        build = await cluster.apply(copy.deepcopy(DSB))
        monkeypatch.setattr(kopf, "info", lambda body, reason, message: None)
        job = await _job_made_and_status_write_lost(cluster, build, monkeypatch)
        assert not job["spec"].get("suspend")
        edited = await cluster.patch("DatasetBuild", "docs", {"spec": {"suspend": True}})
        await asyncio.to_thread(handlers.reconcile_dataset_build, edited, dependents={})
        (job,) = await cluster.jobs()
        assert job["spec"]["suspend"] is True
        now = (await cluster.get("DatasetBuild", "docs"))["status"]
        assert (now["phase"], now["jobName"], now["observedGeneration"]) == ("Suspended", "docs-datagen", 2)

    api(scenario)


def test_a_late_event_of_a_group_attempt_already_restarted_moves_nothing(api):
    """The Job of a group's first attempt says again that it failed after the group was started again as
    restart-1: the event is done with (its attempt is behind status.restarts), neither a wait for the Job to be
    recorded nor a second restart."""
    from kubetune_operator import handlers

    async def scenario(cluster: Cluster):
        tune = copy.deepcopy(FTJ)
        tune["spec"]["dataset"] = {"path": "/var/lib/kubetune/datasets/default/docs"}
        tune["spec"]["distributed"] = {"numNodes": 2}
        await cluster.apply(tune)
        stored = {"phase": "Running", "jobName": "tune-train-restart-1", "restarts": 1, "message": "restarted"}
        await asyncio.to_thread(
            client.CustomObjectsApi().patch_namespaced_custom_object_status,
            GROUP, VERSION, "default", "finetunejobs", "tune", {"status": stored},
        )  # fmt: skip
        labels = {"kubetune.dev/finetunejob": "tune", "kubetune.dev/attempt": "0"}
        failed = {"failed": 2, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]}
        await asyncio.to_thread(handlers._carry_job_status, labels, "default", "tune-train", failed, {})
        assert await cluster.jobs() == []  # no restart-2
        assert {k: v for k, v in (await cluster.get("FineTuneJob", "tune"))["status"].items() if k != "conditions"} == (
            stored
        )
        # The next attempt's Job, not recorded yet, is waited for (the reconcile that made it records it next).
        labels["kubetune.dev/attempt"] = "2"
        with pytest.raises(handlers.kube.PhaseChanged, match="has not recorded its Job tune-train-restart-2"):
            await asyncio.to_thread(handlers._carry_job_status, labels, "default", "tune-train-restart-2", failed, {})

    api(scenario)
