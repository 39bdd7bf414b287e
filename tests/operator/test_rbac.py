"""Least privilege, measured: the operator runs with the chart's settings and only the chart's RBAC rules
(the test API server refuses anything else with 403), through a whole create -> wait -> succeed -> fail
flow; every request it makes is allowed, and every rule the chart grants is used.
"""

from __future__ import annotations

import asyncio
import copy
import urllib.request

from tests.chart.conftest import NAMESPACE
from tests.chart.render import render
from tests.operator.cluster import Cluster, chart_operator, metrics_url
from tests.operator.test_operator import DSB, _job_of, full_flow, group_flow

# Granted though no request uses it: kopf.adopt sets blockOwnerDeletion on the children, which clusters with
# the OwnerReferencesPermissionEnforcement admission plugin allow only to who may update the owner's finalizers.
GRANTED_FOR_ADMISSION = {
    ("update", "kubetune.dev", "datasetbuilds/finalizers"),
    ("update", "kubetune.dev", "finetunejobs/finalizers"),
}


def _granted(rules) -> set[tuple[str, str, str]]:
    return {
        (verb, group, resource)
        for r in rules
        for verb in r["verbs"]
        for group in r["apiGroups"]
        for resource in r["resources"]
    }


def _used(records) -> set[tuple[str, str, str]]:
    return {
        (r.verb, r.group, f"{r.resource}/{r.subresource}" if r.subresource else r.resource)
        for r in records
        if not r.resource.startswith("/")
    }


def test_cluster_wide_operator_uses_exactly_the_chart_cluster_role(tmp_path):
    settings, liveness = chart_operator()
    settings["operator_env"]["KUBETUNE_LEASE_SECONDS"] = "3"  # renewed every second: the flow uses every verb

    async def main():
        async with Cluster(tmp_path, **settings) as cluster:
            await full_flow(cluster)
            await group_flow(cluster)
            with urllib.request.urlopen(liveness, timeout=5) as probe:  # the Deployment's liveness probe
                assert probe.status == 200
            with urllib.request.urlopen(metrics_url(settings), timeout=5) as scrape:  # what Prometheus reads
                cluster.metrics = scrape.read().decode()
            return cluster

    cluster = asyncio.run(asyncio.wait_for(main(), timeout=90))
    assert cluster.api.denied == [], cluster.log()[-3000:]
    assert settings["operator_grants"]  # the chart rendered a ClusterRole
    # ... and the leader election's Role in the release namespace, the only namespaced grant.
    assert {g.namespace for g in settings["operator_grants"] if "leases" not in g.rule["resources"]} == {None}
    used = _used(cluster.operator_requests())
    rules = _granted([g.rule for g in settings["operator_grants"]])
    assert used <= rules
    assert rules - used == GRANTED_FOR_ADMISSION, (
        f"granted but never used: {sorted(rules - used - GRANTED_FOR_ADMISSION)}"
    )
    assert "Not enough permissions" not in cluster.log()
    # The flow's decisions, counted; a DatasetBuild that succeeded and a FineTuneJob that failed, then deleted.
    samples = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
               for line in cluster.metrics.splitlines() if line and not line.startswith("#")}  # fmt: skip
    assert samples['kubetune_reconciles_total{kind="DatasetBuild",reason="JobSucceeded"}'] == 1
    assert samples['kubetune_reconciles_total{kind="FineTuneJob",reason="BackoffLimitExceeded"}'] == 1
    assert samples['kubetune_reconciles_total{kind="FineTuneJob",reason="DatasetBuildNotFound"}'] >= 1
    assert not [k for k in samples if k.startswith("kubetune_resources{")]  # both deleted by the end
    assert samples['kubetune_phase_duration_seconds_count{kind="DatasetBuild",phase="Succeeded"}'] == 1
    assert not [k for k, v in samples.items() if k.startswith("kubetune_reconcile_errors_total") and v > 0]


def test_namespaced_operator_works_with_roles_in_its_namespaces_only(tmp_path):
    settings, _ = chart_operator({"operator": {"watchNamespaces": ["team"]}})
    assert {g.namespace for g in settings["operator_grants"] if "leases" not in g.rule["resources"]} == {"team"}
    assert not [d for d in render({"operator": {"watchNamespaces": ["team"]}}) if d["kind"] == "ClusterRole"]

    async def scenario(cluster: Cluster):
        build = copy.deepcopy(DSB)
        build["metadata"]["namespace"] = "team"
        await cluster.apply(build)
        job = await _job_of(cluster, "docs-datagen")
        await cluster.finish_job(job, succeeded=True)
        await cluster.wait_for("DatasetBuild", "docs", {"Succeeded"}, timeout=15, namespace="team")
        await group_flow(cluster, namespace="team")

    async def main():
        async with Cluster(tmp_path, **settings) as cluster:
            await scenario(cluster)
            return cluster

    cluster = asyncio.run(asyncio.wait_for(main(), timeout=60))
    assert cluster.api.denied == [], cluster.log()[-3000:]
    touched = {r.namespace for r in cluster.operator_requests() if not r.resource.startswith("/")}
    assert touched == {"team", NAMESPACE}  # NAMESPACE: the release's, for the Lease only
    assert {r.resource for r in cluster.operator_requests() if r.namespace == NAMESPACE} == {"leases"}
