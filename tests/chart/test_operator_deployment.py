"""The operator Deployment: one replica, its command line, its settings (env) and KUBETUNE_POD_DEFAULTS."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, rendered
from tests.chart.render import by_kind, env_of, one, render

SETTINGS = [
    "KUBETUNE_STORAGE_ROOT",
    "KUBETUNE_STORAGE_CLAIM",
    "KUBETUNE_DATAGEN_IMAGE",
    "KUBETUNE_TRAINER_IMAGE",
    "KUBETUNE_PYTHON",
    "KUBETUNE_WAIT_SECONDS",
    "KUBETUNE_PROGRESS_SECONDS",
    "KUBETUNE_BACKOFF_LIMIT",
    "KUBETUNE_POD_DEFAULTS",
]


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", "kubetune-operator")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def pod_defaults(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(env_of(operator_container(docs))["KUBETUNE_POD_DEFAULTS"]["value"])


def test_one_active_replica_by_leader_election_or_by_recreate() -> None:
    spec = one(rendered("defaults"), "Deployment", "kubetune-operator")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "RollingUpdate"}  # the standby waits for the Lease
    assert "--leader-election" in spec["template"]["spec"]["containers"][0]["args"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    two = one(render({"operator": {"replicas": 2}}), "Deployment", "kubetune-operator")["spec"]
    assert two["replicas"] == 2
    # Without leader election: one replica, never two at once (replaced, not rolled).
    alone = one(render({"operator": {"leaderElection": False, "replicas": 3}}), "Deployment", "kubetune-operator")
    assert alone["spec"]["replicas"] == 1 and alone["spec"]["strategy"] == {"type": "Recreate"}
    assert "--leader-election" not in alone["spec"]["template"]["spec"]["containers"][0]["args"]


def test_command_line_and_liveness_probe() -> None:
    c = operator_container(rendered("defaults"))
    assert c["command"] == ["kubetune", "operator"]
    assert c["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--readiness=http://0.0.0.0:8081/readyz",
        "--log-format=plain",
        "--leader-election",
        "--metrics=0.0.0.0:9090",
    ]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    annotations = one(rendered("defaults"), "Deployment", "kubetune-operator")["spec"]["template"]["metadata"]
    assert annotations["annotations"]["prometheus.io/port"] == "9090"
    pod_namespace = next(e for e in c["env"] if e["name"] == "POD_NAMESPACE")
    assert pod_namespace["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "ready"}
    assert {"name": "ready", "containerPort": 8081, "protocol": "TCP"} in c["ports"]


def test_watch_namespaces_become_namespace_flags() -> None:
    c = operator_container(rendered("everything"))
    assert c["args"] == [
        "--liveness=http://0.0.0.0:8080/healthz",
        "--readiness=http://0.0.0.0:8081/readyz",
        "--log-format=json",
        "--leader-election",
        "--metrics=0.0.0.0:9090",
        "--verbose",
        "--debug",
        "--namespace=team-a",
        "--namespace=team-b",
    ]


def test_default_settings_match_the_operator_defaults() -> None:
    env = {name: entry.get("value") for name, entry in env_of(operator_container(rendered("defaults"))).items()}
    assert set(SETTINGS) <= env.keys()
    assert env["KUBETUNE_STORAGE_ROOT"] == "/var/lib/kubetune"
    assert env["KUBETUNE_STORAGE_CLAIM"] == "kubetune-storage"
    assert env["KUBETUNE_DATAGEN_IMAGE"] == "ghcr.io/kubetune/datagen:0.1.0"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "ghcr.io/kubetune/trainer:0.1.0"
    assert env["KUBETUNE_PYTHON"] == "python"
    assert env["KUBETUNE_WAIT_SECONDS"] == "60"
    assert env["KUBETUNE_PROGRESS_SECONDS"] == "30"
    assert env["KUBETUNE_BACKOFF_LIMIT"] == "2"
    assert "MLFLOW_TRACKING_URI" not in env  # the operator's default: sqlite on the volume
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & env.keys()


def test_settings_follow_the_values() -> None:
    env = {name: entry.get("value") for name, entry in env_of(operator_container(rendered("everything"))).items()}
    assert env["KUBETUNE_DATAGEN_IMAGE"] == "registry.example.com/kubetune/datagen:0.1.0-cuda12"
    assert env["KUBETUNE_TRAINER_IMAGE"] == "registry.example.com/kubetune/trainer:0.1.0-cuda12"
    assert env["KUBETUNE_WAIT_SECONDS"] == "2.5"
    assert env["KUBETUNE_BACKOFF_LIMIT"] == "4"
    assert env["KUBETUNE_EXTRA"] == "1"
    docs = render({"storage": {"mountPath": "/data", "claimName": "shared"}, "workloads": {"python": "python3"}})
    env = {name: entry.get("value") for name, entry in env_of(operator_container(docs)).items()}
    assert (env["KUBETUNE_STORAGE_ROOT"], env["KUBETUNE_STORAGE_CLAIM"], env["KUBETUNE_PYTHON"]) == (
        "/data",
        "shared",
        "python3",
    )


def test_tracking_uri_is_the_in_cluster_server_when_enabled() -> None:
    docs = rendered("everything")
    service = one(docs, "Service", "kubetune-mlflow")
    env = env_of(operator_container(docs))
    port = service["spec"]["ports"][0]["port"]
    assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://kubetune-mlflow.{NAMESPACE}.svc:{port}"


def test_tracking_uri_and_credentials_of_an_external_server() -> None:
    env = env_of(operator_container(rendered("bring-your-own")))
    assert env["MLFLOW_TRACKING_URI"]["value"] == "https://mlflow.example.com"
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & env.keys()  # the operator never uses them
    trainer_env = {e["name"]: e for e in pod_defaults(rendered("bring-your-own"))["trainer"]["env"]}
    for name, key in (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")):
        assert trainer_env[name] == {
            "name": name,
            "valueFrom": {"secretKeyRef": {"name": "mlflow-credentials", "key": key}},
        }


def test_pod_defaults_shape_and_defaults() -> None:
    defaults = pod_defaults(rendered("defaults"))
    assert defaults == {
        "imagePullSecrets": [],
        "serviceAccountName": "kubetune-workload",
        "datagen": {"nodeSelector": {}, "tolerations": [], "resources": {}},
        "trainer": {"nodeSelector": {}, "tolerations": [], "resources": {}, "env": []},
    }


@pytest.mark.parametrize("value_set", ["everything", "gpu", "bring-your-own"])
def test_pod_defaults_carry_the_values(value_set: str) -> None:
    from tests.chart.conftest import VALUE_SETS

    values = VALUE_SETS[value_set]
    defaults = pod_defaults(rendered(value_set))
    assert set(defaults) == {"imagePullSecrets", "serviceAccountName", "datagen", "trainer"}
    assert defaults["imagePullSecrets"] == values.get("imagePullSecrets", [])
    for kind in ("datagen", "trainer"):
        given = values.get("workloads", {}).get(kind, {})
        assert set(defaults[kind]) == {"nodeSelector", "tolerations", "resources"} | (
            {"env"} if kind == "trainer" else set()
        )
        for key in ("nodeSelector", "tolerations", "resources"):
            assert defaults[kind][key] == given.get(key, [] if key == "tolerations" else {})
    workload_accounts = {sa["metadata"]["name"] for sa in by_kind(rendered(value_set), "ServiceAccount")}
    if values.get("workloads", {}).get("serviceAccount", {}).get("create", True):
        assert defaults["serviceAccountName"] in workload_accounts
    else:
        assert defaults["serviceAccountName"] == values["workloads"]["serviceAccount"]["name"]


def test_gpu_pod_defaults() -> None:
    trainer = pod_defaults(rendered("gpu"))["trainer"]
    assert trainer["nodeSelector"]["nvidia.com/gpu.present"] == "true"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in trainer["tolerations"]
    assert trainer["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_image_pull_secrets_on_every_pod() -> None:
    for deployment in by_kind(rendered("everything"), "Deployment"):
        assert deployment["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "registry-credentials"}]
