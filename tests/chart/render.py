"""Render the Helm chart in charts/kubetune with the helm binary, for tests.

helm is found at $KUBETUNE_HELM, else at .cache/tools/bin/helm (where `charts/fetch-helm.sh` installs it);
without it every function here skips the calling test with the reason.

    from tests.chart.render import operator_rules, render

    docs = render({"operator": {"watchNamespaces": ["a", "b"]}})
    rules = operator_rules(docs)
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
FETCH_HELM = ROOT / "charts" / "fetch-helm.sh"
DEFAULT_HELM = ROOT / ".cache" / "tools" / "bin" / "helm"
RELEASE = "kubetune"


class RenderError(Exception):
    """helm refused the chart or the values; the message is helm's stderr."""


def helm_binary() -> Path | None:
    """The helm binary to use, or None when there is none."""
    configured = os.environ.get("KUBETUNE_HELM")
    path = Path(configured) if configured else DEFAULT_HELM
    return path if path.is_file() and os.access(path, os.X_OK) else None


def require_helm() -> Path:
    """The helm binary; skips the calling test when it is absent."""
    helm = helm_binary()
    if helm is None:
        configured = os.environ.get("KUBETUNE_HELM")
        where = f"$KUBETUNE_HELM={configured}" if configured else str(DEFAULT_HELM.relative_to(ROOT))
        install = f"{FETCH_HELM.relative_to(ROOT)} {DEFAULT_HELM.parent.relative_to(ROOT)}"
        reason = f"helm not found at {where}; install it with `{install}`"
        if os.environ.get("CI"):
            pytest.fail(reason)  # CI installs it (make setup): a skip there would hide the chart and RBAC checks
        pytest.skip(reason)
    return helm


def helm(*args: str, values: dict[str, Any] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `helm ARGS... [-f VALUES]`; with check, raise RenderError (helm's stderr) when it fails."""
    binary = require_helm()
    with tempfile.TemporaryDirectory(prefix="kubetune-chart-") as tmp:
        command = [str(binary), *args]
        if values is not None:
            values_file = Path(tmp) / "values.json"  # JSON is YAML: helm reads it with -f
            values_file.write_text(json.dumps(values))
            command += ["-f", str(values_file)]
        # A private HOME and cache: helm never reads the user's repositories or plugins.
        env = {
            **os.environ,
            "HELM_CACHE_HOME": f"{tmp}/cache",
            "HELM_CONFIG_HOME": f"{tmp}/config",
            "HELM_DATA_HOME": f"{tmp}/data",
        }
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    if check and result.returncode != 0:
        raise RenderError(result.stderr.strip() or result.stdout.strip())
    return result


def render(
    values: dict[str, Any] | None = None,
    namespace: str = "kubetune",
    *,
    include_crds: bool = False,
    kube_version: str | None = None,
) -> list[dict[str, Any]]:
    """The manifests `helm template` renders for these values (as dicts, in helm's order).

    Raises RenderError with helm's message when the schema or a template refuses the values.
    """
    args = ["template", RELEASE, str(CHART), "--namespace", namespace]
    if include_crds:
        args.append("--include-crds")
    if kube_version:
        args += ["--kube-version", kube_version]
    out = helm(*args, values=values).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def operator_rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules of the operator's ClusterRole, or of its Roles (identical in every watched namespace)."""
    roles = [
        doc
        for doc in docs
        if doc["kind"] in ("ClusterRole", "Role")
        and doc["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "operator"
    ]
    if not roles:
        raise LookupError("no ClusterRole or Role of the operator among the rendered manifests")
    rules = roles[0].get("rules") or []
    for role in roles[1:]:
        if (role.get("rules") or []) != rules:
            raise AssertionError(f"{role['kind']}/{role['metadata']['name']} has other rules than the first")
    return rules


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"] == name]
    if len(found) != 1:
        raise LookupError(f"{len(found)} {kind}/{name} rendered; expected one")
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A container's env entries by name."""
    return {entry["name"]: entry for entry in container.get("env") or []}


def values_file(name: str) -> dict[str, Any]:
    """A named value set from the chart's ci/ folder (ci/NAME-values.yaml)."""
    return yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
