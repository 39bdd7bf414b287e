"""The operator's RBAC: a ClusterRole, or a Role in each watched namespace, with the same least-privilege rules."""

from __future__ import annotations

from tests.chart.conftest import NAMESPACE, rendered
from tests.chart.render import by_kind, operator_rules, render


def test_cluster_wide_mode_has_a_cluster_role_and_no_role() -> None:
    docs = rendered("defaults")
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == ["kubetune-operator"]
    # The one Role: the leader election's, in the release namespace.
    assert [(r["metadata"]["name"], r["metadata"]["namespace"]) for r in by_kind(docs, "Role")] == [
        ("kubetune-leader-election", NAMESPACE)
    ]
    assert [b["roleRef"]["name"] for b in by_kind(docs, "RoleBinding")] == ["kubetune-leader-election"]
    (binding,) = by_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "kubetune-operator",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": NAMESPACE}]


def test_namespaced_mode_has_a_role_in_each_namespace_and_no_cluster_role() -> None:
    docs = rendered("namespaced")
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    roles = {
        r["metadata"]["namespace"]: r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-operator")
    }
    bindings = {
        b["metadata"]["namespace"]: b
        for b in by_kind(docs, "RoleBinding")
        if b["metadata"]["name"].endswith("-operator")
    }
    assert roles.keys() == bindings.keys() == {"team-a", "team-b"}
    for ns, binding in bindings.items():
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["roleRef"]["name"] == roles[ns]["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune-operator", "namespace": NAMESPACE}]


def test_both_modes_render_the_same_rules() -> None:
    assert operator_rules(rendered("namespaced")) == operator_rules(rendered("defaults"))


def test_rules_are_least_privilege() -> None:
    rules = operator_rules(rendered("defaults"))
    keys = [(tuple(r["apiGroups"]), tuple(r["resources"])) for r in rules]
    assert len(keys) == len(set(keys)), "one rule per (API group, resources)"
    for rule in rules:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
        assert not {"secrets", "pods/exec", "serviceaccounts/token"} & set(rule["resources"]), rule
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule

    def verbs(group: str, resource: str) -> set[str]:
        return {v for r in rules if group in r["apiGroups"] and resource in r["resources"] for v in r["verbs"]}

    assert {"list", "watch", "patch", "get"} <= verbs("kubetune.dev", "datasetbuilds")
    assert {"list", "watch", "patch"} <= verbs("kubetune.dev", "finetunejobs")
    assert "patch" in verbs("kubetune.dev", "datasetbuilds/status")
    assert "patch" in verbs("kubetune.dev", "finetunejobs/status")
    assert "create" in verbs("", "configmaps")
    assert {"create", "get", "list", "watch", "patch"} <= verbs("batch", "jobs")
    assert "create" in verbs("", "events")
    assert verbs("", "pods/log") == {"get"}
    assert verbs("", "secrets") == set()


def test_no_rbac_objects_when_rbac_create_is_false() -> None:
    docs = rendered("bring-your-own")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    deployment = by_kind(docs, "Deployment")[0]
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "platform-operator"
    assert by_kind(docs, "ServiceAccount") == []


def test_operator_rules_reads_the_role_for_any_namespace_argument() -> None:
    rules = operator_rules(render({"operator": {"watchNamespaces": ["ml"]}}, namespace="ops"))
    assert rules == operator_rules(rendered("defaults"))


def test_leader_election_role_grants_the_lease_only() -> None:
    (role,) = [r for r in by_kind(rendered("defaults"), "Role") if r["metadata"]["name"] == "kubetune-leader-election"]
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create", "get", "patch"]}
    ]
    assert not [r for r in by_kind(render({"operator": {"leaderElection": False}}), "Role")]
