"""values.yaml, values.schema.json and the template checks: bad values are refused, naming the key."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART, ROOT, RenderError, render

# Named bad value sets -> a fragment helm's error must contain (the key at fault).
SCHEMA_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "metrics-enabled": ({"metrics": {"enabled": True}}, "metrics.enabled: the operator has no metrics endpoint yet"),
    "image-tag-a-number": ({"operator": {"image": {"tag": 1.0}}}, "/operator/image/tag"),
    "negative-cpu": (
        {"workloads": {"trainer": {"resources": {"limits": {"cpu": "-2"}}}}},
        "/workloads/trainer/resources/limits/cpu",
    ),
    "negative-memory-number": (
        {"operator": {"resources": {"requests": {"memory": -5}}}},
        "/operator/resources/requests/memory",
    ),
    "unknown-key": ({"operator": {"replica": 2}}, "'replica' not allowed"),
    "unknown-top-level-key": ({"mlfow": {"enabled": True}}, "'mlfow' not allowed"),
    "unknown-resources-key": ({"mlflow": {"resources": {"limit": {"cpu": 1}}}}, "'limit' not allowed"),
    "root-user": ({"securityContext": {"runAsUser": 0}}, "/securityContext/runAsUser"),
    "log-format": ({"operator": {"logFormat": "xml"}}, "/operator/logFormat"),
    "namespace-name": ({"operator": {"watchNamespaces": ["Team_A"]}}, "/operator/watchNamespaces/0"),
    "unquoted-node-selector": (
        {"workloads": {"trainer": {"nodeSelector": {"nvidia.com/gpu.present": True}}}},
        "/workloads/trainer/nodeSelector/nvidia.com~1gpu.present",
    ),
    "toleration-operator": (
        {"workloads": {"datagen": {"tolerations": [{"key": "a", "operator": "Is"}]}}},
        "/workloads/datagen/tolerations/0/operator",
    ),
    "storage-size": ({"storage": {"size": "lots"}}, "/storage/size"),
    "password-in-tracking-uri": (
        {"mlflow": {"trackingUri": "https://me:secret@mlflow.example.com"}},
        "/mlflow/trackingUri",
    ),
    "negative-backoff": ({"workloads": {"backoffLimit": -1}}, "/workloads/backoffLimit"),
    "pull-secret-shape": ({"imagePullSecrets": ["registry"]}, "/imagePullSecrets/0"),
}

# Combinations the schema cannot express, refused by `fail` in the templates.
TEMPLATE_REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "mlflow-enabled-and-external": (
        {"mlflow": {"enabled": True, "trackingUri": "https://mlflow.example.com"}},
        "mlflow.trackingUri",
    ),
    "backend-uri-and-secret": (
        {"mlflow": {"enabled": True, "backendStore": {"uri": "postgresql://db/mlflow", "existingSecret": "db"}}},
        "mlflow.backendStore",
    ),
    "workload-namespace-not-watched": (
        {"operator": {"watchNamespaces": ["a"]}, "workloads": {"namespaces": ["b"]}},
        'workloads.namespaces: "b" is not in operator.watchNamespaces',
    ),
    "operator-account-unnamed": ({"operator": {"serviceAccount": {"create": False}}}, "operator.serviceAccount.name"),
    "workload-account-unnamed": ({"workloads": {"serviceAccount": {"create": False}}}, "workloads.serviceAccount.name"),
    "gpu-request-without-limit": (
        {"workloads": {"trainer": {"resources": {"requests": {"nvidia.com/gpu": 1}}}}},
        "workloads.trainer.resources: extended resource nvidia.com/gpu",
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_REFUSALS))
def test_schema_refuses(name: str) -> None:
    values, message = SCHEMA_REFUSALS[name]
    with pytest.raises(RenderError) as refused:
        render(values)
    assert "don't meet the specifications of the schema" in str(refused.value)
    assert message in str(refused.value), str(refused.value)


@pytest.mark.parametrize("name", sorted(TEMPLATE_REFUSALS))
def test_templates_refuse(name: str) -> None:
    values, message = TEMPLATE_REFUSALS[name]
    with pytest.raises(RenderError) as refused:
        render(values)
    assert message in str(refused.value), str(refused.value)


def test_good_values_near_the_refused_ones_render() -> None:
    """The refusals above are about the bad value, not the key: good values of the same keys render."""
    render(
        {
            "operator": {"image": {"tag": "1.0"}, "logFormat": "json", "watchNamespaces": ["team-a"]},
            "workloads": {
                "namespaces": ["team-a"],
                "backoffLimit": 0,
                "trainer": {
                    "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 1}},
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "a", "operator": "Exists"}],
                },
            },
            "storage": {"size": "1.5Ti"},
            "mlflow": {"trackingUri": "https://mlflow.example.com"},
            "metrics": {"enabled": False},
            "imagePullSecrets": [{"name": "registry"}],
        }
    )


def test_chart_crds_are_the_project_crds() -> None:
    ours = sorted(p.name for p in (CHART / "crds").iterdir())
    project = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    assert ours == project, "charts/kubetune/crds/ must hold exactly the files of crds/"
    for name in project:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/kubetune/crds/{name} differs from crds/{name}: cp crds/*.yaml charts/kubetune/crds/"
        )


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert (chart["apiVersion"], chart["name"], chart["version"], chart["appVersion"]) == (
        "v2",
        "kubetune",
        "0.1.0",
        "0.1.0",
    )


# --- values.yaml documents every key, and README.md lists every key -----------------------------------------


def schema() -> dict[str, Any]:
    return json.loads((CHART / "values.schema.json").read_text())


def resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node or ("allOf" in node and len(node["allOf"]) == 1):
        ref = node["$ref"] if "$ref" in node else node["allOf"][0]["$ref"]
        node = root["definitions"][ref.rsplit("/", 1)[-1]]
    return node


def comment_above(lines: list[str], number: int) -> str:
    """The comment block right above line NUMBER (1-based), its lines joined by newlines; "" if none."""
    block: list[str] = []
    i = number - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        block.insert(0, lines[i].strip())
        i -= 1
    return "\n".join(block)


def documented_keys() -> list[tuple[str, int]]:
    """Each key of values.yaml to document, with its line number.

    That is every key the schema names, except what lies inside a value documented as a whole (a key
    whose comment starts with "# --", as helm-docs reads them) or inside a free-form map.
    """
    root = schema()
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str, dict[str, Any] | None]] = []  # (indent, path, schema of its children or None)
    keys = []
    for number, line in enumerate(lines, 1):
        match = re.match(r"^(\s*)([A-Za-z][\w./-]*):", line)
        if not match:
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][2] if stack else root
        node = resolve(parent, root).get("properties", {}).get(key) if parent is not None else None
        path = f"{stack[-1][1]}.{key}" if stack else key
        if node is not None:
            keys.append((path, number))
        whole = comment_above(lines, number).startswith("# --")
        stack.append((indent, path, None if whole else node))
    return keys


def test_the_key_walk_finds_keys() -> None:
    keys = dict(documented_keys())
    assert {"operator.image.tag", "workloads.trainer.resources", "metrics.enabled", "storage.size"} <= keys.keys()
    assert "operator.resources.requests" not in keys  # inside a free-form value


def test_every_value_has_a_comment() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    missing = [f"{path} (line {n})" for path, n in documented_keys() if not lines[n - 2].strip().startswith("#")]
    assert not missing, "keys without a comment line above them: " + ", ".join(missing)


def test_every_schema_property_has_a_default_in_values_yaml() -> None:
    root = schema()
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, path: str) -> list[str]:
        node = resolve(node, root)
        missing = []
        for key, child in node.get("properties", {}).items():
            if key == "global":
                continue
            if not value:
                continue  # an empty free-form default ({} or []): nothing inside to document
            if not isinstance(value, dict) or key not in value:
                missing.append(f"{path}{key}")
            else:
                missing += walk(child, value[key], f"{path}{key}.")
        return missing

    assert walk(root, defaults, "") == []


def documented_values() -> list[str]:
    """The keys documented as a whole (comment "# --"): the rows of README.md's values table."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    return [path for path, n in documented_keys() if comment_above(lines, n).startswith("# --")]


def test_every_key_is_a_value_or_a_section() -> None:
    """A key without "# --" is a section: an object of fixed keys, each documented in turn."""
    root = schema()
    values = set(documented_values())
    for path, n in documented_keys():
        if path in values:
            continue
        node = root
        for part in path.split("."):
            node = resolve(resolve(node, root)["properties"][part], root)
        assert node.get("additionalProperties") is False and node.get("properties"), f"{path} (line {n}) needs '# --'"


def test_readme_lists_every_value() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [p for p in documented_values() if f"| `{p}` |" not in readme]
    assert not missing, "README.md's values table lacks: " + ", ".join(missing)


def test_default_values_pass_the_schema_in_python() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft7Validator.check_schema(schema())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema()).validate(defaults)
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        jsonschema.Draft7Validator(schema()).validate(merged(defaults, yaml.safe_load(path.read_text())))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema()).validate(merged(defaults, {"metrics": {"enabled": True}}))


def merged(base: Any, overlay: Any) -> Any:
    """Values as helm merges them: maps key by key, anything else replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in overlay.items()}}
    return overlay


def test_fetch_helm_script_is_executable() -> None:
    script = Path(ROOT / "charts" / "fetch-helm.sh")
    assert script.stat().st_mode & 0o111
    assert script.read_text().startswith("#!/usr/bin/env bash")
