"""The storage claims, the workload ServiceAccounts per namespace, and the optional MLflow server."""

from __future__ import annotations

from tests.chart.conftest import NAMESPACE, rendered
from tests.chart.render import by_kind, env_of, one, render


def claims(docs):
    return {(c["metadata"]["namespace"], c["metadata"]["name"]): c for c in by_kind(docs, "PersistentVolumeClaim")}


def test_default_claim() -> None:
    (claim,) = claims(rendered("defaults")).values()
    assert claim["metadata"]["name"] == "kubetune-storage"
    assert claim["metadata"]["namespace"] == NAMESPACE
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "100Gi"
    assert "storageClassName" not in claim["spec"]  # the cluster's default class


def test_a_claim_and_a_workload_account_in_every_namespace_where_jobs_run() -> None:
    docs = rendered("everything")
    # team-a and team-b are watched; the MLflow server keeps its sqlite store on the release namespace's claim.
    assert set(claims(docs)) == {(ns, "kubetune-storage") for ns in ("team-a", "team-b", NAMESPACE)}
    for claim in claims(docs).values():
        assert claim["spec"]["storageClassName"] == "nfs-client"
    accounts = {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in by_kind(docs, "ServiceAccount")}
    assert accounts == {
        (NAMESPACE, "kubetune-operator"),
        ("team-a", "kubetune-workload"),
        ("team-b", "kubetune-workload"),
    }
    docs = render({"workloads": {"namespaces": ["ml", NAMESPACE]}})  # the release namespace once
    assert set(claims(docs)) == {(ns, "kubetune-storage") for ns in (NAMESPACE, "ml")}


def test_no_claim_when_storage_create_is_false() -> None:
    assert claims(render({"storage": {"create": False}})) == {}


def test_storage_class_dash_means_no_class() -> None:
    (claim,) = claims(rendered("bring-your-own")).values()
    assert claim["spec"]["storageClassName"] == ""
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "annotations" not in claim["metadata"]


def test_mlflow_is_off_by_default() -> None:
    names = [d["metadata"]["name"] for d in rendered("defaults")]
    assert not [n for n in names if "mlflow" in n]


def test_mlflow_server_on_the_storage_volume() -> None:
    docs = rendered("everything")
    deployment = one(docs, "Deployment", "kubetune-mlflow")
    service = one(docs, "Service", "kubetune-mlflow")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    (c,) = pod["spec"]["containers"]
    assert c["command"] == ["mlflow", "server"]
    assert "--backend-store-uri=sqlite:////var/lib/kubetune/mlflow.db" in c["args"]
    assert "--artifacts-destination=/var/lib/kubetune/mlartifacts" in c["args"]
    assert {"name": "storage", "mountPath": "/var/lib/kubetune"} in c["volumeMounts"]
    assert {"name": "storage", "persistentVolumeClaim": {"claimName": "kubetune-storage"}} in pod["spec"]["volumes"]
    hosts = env_of(c)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")
    assert {"kubetune-mlflow", f"kubetune-mlflow.{NAMESPACE}.svc:*", "localhost:*", "mlflow.example.com"} <= set(hosts)
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}


def test_mlflow_server_with_external_stores_mounts_no_volume() -> None:
    docs = rendered("mlflow-external-stores")
    pod = one(docs, "Deployment", "kubetune-mlflow")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert not [a for a in c["args"] if a.startswith("--backend-store-uri")]
    assert env_of(c)["MLFLOW_BACKEND_STORE_URI"]["valueFrom"] == {"secretKeyRef": {"name": "mlflow-db", "key": "url"}}
    assert "--artifacts-destination=s3://models/mlflow" in c["args"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert claims(docs) == {}
