"""helm lint, and every manifest of every named value set valid for Kubernetes (kubernetes-validate --strict)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.chart.conftest import NAMESPACE, VALUE_SETS, rendered
from tests.chart.render import CHART, RELEASE, by_kind, helm

# The newest Kubernetes the validator bundles, and the oldest the chart supports (Chart.yaml kubeVersion).
KUBE_VERSIONS = ["latest", "1.27.0"]
STANDARD_LABELS = {
    "app.kubernetes.io/name": "kubetune",
    "app.kubernetes.io/instance": RELEASE,
    "app.kubernetes.io/version": "0.1.0",
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "kubetune-0.1.0",
}


@pytest.mark.parametrize("values_file", [None, "ci/everything-values.yaml", "ci/gpu-values.yaml"])
def test_helm_lint_strict(values_file: str | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if values_file:
        args += ["-f", str(CHART / values_file)]
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout


def validation_errors(doc: dict[str, Any], version: str) -> str | None:
    """What kubernetes-validate --strict finds wrong with a manifest, or None."""
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate is not installed (pip install kubernetes-validate)"
    )
    if version == "latest":
        version = kubernetes_validate.latest_version()
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']}/{doc['metadata'].get('name')}: {exc.message} at {'.'.join(map(str, exc.path))}"
    return None


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_is_valid_kubernetes(docs: list[dict[str, Any]], version: str) -> None:
    errors = [e for e in (validation_errors(doc, version) for doc in docs) if e]
    assert not errors, "\n".join(errors)


def test_the_validator_refuses_an_unknown_field() -> None:
    """The strict validation above can fail: an unknown container field is an error."""
    deployment = copy.deepcopy(by_kind(rendered("defaults"), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validation_errors(deployment, KUBE_VERSIONS[0]) is not None


def test_every_object_has_the_standard_labels(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue  # crds/ are copied verbatim from the project's crds/
        labels = doc["metadata"].get("labels", {})
        assert STANDARD_LABELS.items() <= labels.items(), f"{doc['kind']}/{doc['metadata']['name']}: {labels}"
        assert labels.get("app.kubernetes.io/component"), doc["metadata"]["name"]


def test_namespaced_objects_name_their_namespace(docs: list[dict[str, Any]], value_set: str) -> None:
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
    watched = set(((VALUE_SETS[value_set] or {}).get("operator") or {}).get("watchNamespaces") or [])
    for doc in docs:
        if doc["kind"] in cluster_scoped:
            assert "namespace" not in doc["metadata"]
        else:
            assert doc["metadata"].get("namespace") in {NAMESPACE} | watched, doc["metadata"]


def test_the_crds_are_rendered_with_include_crds() -> None:
    names = {doc["metadata"]["name"] for doc in by_kind(rendered("defaults"), "CustomResourceDefinition")}
    assert names == {"datasetbuilds.kubetune.dev", "finetunejobs.kubetune.dev"}


def test_no_metrics_service_by_default() -> None:
    services = by_kind(rendered("defaults"), "Service")
    assert services == [], [s["metadata"]["name"] for s in services]
