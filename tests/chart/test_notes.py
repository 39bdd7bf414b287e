"""The release notes tell the user what to apply next."""

from __future__ import annotations

from typing import Any

from tests.chart.render import CHART, RELEASE, helm


def notes(values: dict[str, Any] | None = None, namespace: str = "kubetune") -> str:
    out = helm("install", RELEASE, str(CHART), "--namespace", namespace, "--dry-run=client", values=values).stdout
    assert "NOTES:" in out, out[-2000:]
    return out.split("NOTES:", 1)[1]


def test_next_steps_by_default() -> None:
    text = notes()
    assert "kubectl apply -n kubetune -f examples/cluster/quickstart.yaml" in text
    assert "kubectl get -n kubetune datasetbuilds,finetunejobs" in text
    assert 'PersistentVolumeClaim "kubetune-storage"' in text
    assert "must exist in the image" in text and "/var/lib/kubetune" in text
    assert "helm uninstall does not remove them" in " ".join(text.split())


def test_storage_claim_must_exist_when_not_created() -> None:
    text = notes({"storage": {"create": False}, "operator": {"watchNamespaces": ["ml"]}})
    assert 'create a claim named "kubetune-storage" yourself' in text
    assert "kubectl apply -n ml -f examples/cluster/quickstart.yaml" in text


def test_mlflow_server_url_in_the_notes() -> None:
    text = notes({"mlflow": {"enabled": True}})
    assert "http://kubetune-mlflow.kubetune.svc:5000" in text
    assert "port-forward service/kubetune-mlflow 5000:5000" in text
