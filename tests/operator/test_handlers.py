"""The handlers called in this process against the test API server, for what an operator process cannot be
made to show on demand: kopf calling a handler with a body older than the stored object."""

from __future__ import annotations

import asyncio
import copy

import pytest
from kubernetes import client

from kubetune.spec.constants import GROUP, VERSION
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

    from kubetune_operator import handlers
    from tests.operator.test_operator import DSB

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        status = client.CustomObjectsApi().patch_namespaced_custom_object_status

        def set_status(value: dict) -> None:
            status(GROUP, VERSION, "default", "datasetbuilds", "docs", {"status": value})

        await asyncio.to_thread(set_status, {"phase": "Pending", "jobName": "docs-datagen", "message": "pending"})
        reads = []
        get = handlers._get

        def the_pod_started_meanwhile(kind, namespace, name):
            found = get(kind, namespace, name)
            reads.append(name)
            if len(reads) == 1:  # a write from the Job's previous event lands after this read
                set_status({"phase": "Running", "message": "the pod is running"})
            return found

        monkeypatch.setattr(handlers, "_get", the_pod_started_meanwhile)
        posted = []  # kopf posts Events only inside a running operator
        monkeypatch.setattr(kopf, "info", lambda body, reason, message: posted.append(reason))
        memo = kopf.Memo()
        await asyncio.to_thread(handlers.job_status, type="MODIFIED", status=COMPLETE, memo=memo, dependents={},
                                **DOCS_JOB)  # fmt: skip
        now = (await cluster.get("DatasetBuild", "docs"))["status"]
        assert (now["phase"], now["message"]) == ("Succeeded", "done")
        assert reads == ["docs", "docs"]  # read, lost the race (PhaseChanged), read again and wrote
        assert posted == ["JobSucceeded"]

        await asyncio.to_thread(handlers.job_status, type="MODIFIED", status=COMPLETE, memo=memo, dependents={},
                                **DOCS_JOB)  # fmt: skip
        settling = {"conditions": COMPLETE["conditions"][:1], "uncountedTerminatedPods": {"succeeded": ["u1"]}}
        await asyncio.to_thread(handlers.job_status, type="MODIFIED", status=settling, memo=kopf.Memo(),
                                dependents={}, **DOCS_JOB)  # fmt: skip
        assert reads == ["docs", "docs"]  # neither the same status again nor the settling one read anything

    api(scenario)
