"""Fixtures of the chart tests: the named value sets and their rendered manifests (rendered once each)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.render import render, values_file

NAMESPACE = "kubetune"


def value_sets() -> dict[str, dict[str, Any] | None]:
    """The named value sets every rendered-manifest test runs over."""
    return {
        "defaults": None,
        "everything": values_file("everything"),
        "gpu": values_file("gpu"),
        "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
        "mlflow-external-stores": {
            "storage": {"create": False},
            "mlflow": {
                "enabled": True,
                "backendStore": {"existingSecret": "mlflow-db", "uriKey": "url"},
                "artifactsDestination": "s3://models/mlflow",
            },
        },
        "bring-your-own": {
            "rbac": {"create": False},
            "operator": {"serviceAccount": {"create": False, "name": "platform-operator"}},
            "workloads": {"serviceAccount": {"create": False, "name": "default"}},
            "storage": {
                "create": True,
                "storageClassName": "-",
                "keepOnUninstall": False,
                "accessModes": ["ReadWriteOnce"],
            },
            "mlflow": {"trackingUri": "https://mlflow.example.com", "credentialsSecret": "mlflow-credentials"},
        },
    }


VALUE_SETS = value_sets()
_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    """The manifests (CRDs included) of a named value set; rendered on first use."""
    if name not in _rendered:
        _rendered[name] = render(VALUE_SETS[name], NAMESPACE, include_crds=True)
    return _rendered[name]


@pytest.fixture(params=sorted(VALUE_SETS))
def value_set(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def docs(value_set: str) -> list[dict[str, Any]]:
    return rendered(value_set)
