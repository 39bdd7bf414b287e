"""Every pod the chart creates passes Pod Security "restricted" and is hardened beyond it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.chart.conftest import VALUE_SETS, rendered
from tests.chart.render import by_kind
from tests.pod_security import restricted_violations

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]
        elif doc["kind"] == "CronJob":
            yield f"CronJob/{doc['metadata']['name']}", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif doc["kind"] == "Pod":
            yield f"Pod/{doc['metadata']['name']}", doc["spec"]


def test_restricted_check_catches_a_bad_pod() -> None:
    """The check above can fail."""
    spec = {
        "hostNetwork": True,
        "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    assert len(restricted_violations(spec)) >= 6


def test_every_pod_passes_pod_security_restricted(docs: list[dict[str, Any]]) -> None:
    specs = list(pod_specs(docs))
    assert specs, "no pod rendered"
    failures = [f"{where}: {msg}" for where, spec in specs for msg in restricted_violations(spec)]
    assert not failures, "\n".join(failures)


def test_every_pod_has_the_hardened_defaults(docs: list[dict[str, Any]], value_set: str) -> None:
    ids = (VALUE_SETS[value_set] or {}).get("securityContext") or {}
    for where, spec in pod_specs(docs):
        assert spec["securityContext"] == {
            "runAsNonRoot": True,
            "runAsUser": ids.get("runAsUser", 1000),
            "runAsGroup": ids.get("runAsGroup", 1000),
            "fsGroup": ids.get("fsGroup", 1000),
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        }, where
        assert spec.get("enableServiceLinks") is False, where
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in [*(spec.get("initContainers") or []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, f"{where}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{where}/{c['name']}"
            assert sc["capabilities"] == {"drop": ["ALL"]}, f"{where}/{c['name']}"
            tmp = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in tmp_volumes, f"{where}/{c['name']}: no emptyDir at /tmp"
            assert c["resources"].get("requests") and c["resources"].get("limits", {}).get("memory"), (
                f"{where}/{c['name']}: resources"
            )
            assert ":" in c["image"] and not c["image"].endswith(":latest"), c["image"]


def test_only_the_operator_mounts_an_api_token() -> None:
    for name in VALUE_SETS:
        for where, spec in pod_specs(rendered(name)):
            expected = where.endswith("-operator")
            assert spec.get("automountServiceAccountToken") is expected, f"{name}: {where}"


def test_the_workload_service_account_has_no_token_and_no_role() -> None:
    for name in VALUE_SETS:
        docs = rendered(name)
        workload_accounts = [
            sa
            for sa in by_kind(docs, "ServiceAccount")
            if sa["metadata"]["labels"]["app.kubernetes.io/component"] == "workload"
        ]
        for sa in workload_accounts:
            assert sa["automountServiceAccountToken"] is False, sa["metadata"]
        bound = {
            s["name"] for b in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding") for s in b["subjects"]
        }
        assert not bound & {sa["metadata"]["name"] for sa in workload_accounts}, name


def test_no_literal_credentials_in_env() -> None:
    """Credentials reach the pods through secretKeyRef only."""
    for name in ("everything", "bring-your-own", "mlflow-external-stores"):
        for _, spec in pod_specs(rendered(name)):
            for c in spec["containers"]:
                for entry in c.get("env") or []:
                    if any(word in entry["name"] for word in ("PASSWORD", "USERNAME", "TOKEN", "BACKEND_STORE_URI")):
                        assert "value" not in entry and "secretKeyRef" in entry["valueFrom"], entry
