"""The committed CRDs match the spec models, and the example resources pass their schemas."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from kubetune_operator.crds import render_all


def test_committed_crds_do_not_drift(root):
    for name, text in render_all().items():
        committed = root / "crds" / name
        assert committed.exists(), f"crds/{name} is missing: run `make crds`"
        assert committed.read_text() == text, f"crds/{name} drifted from the spec models: run `make crds`"


def _schema_nodes(node):
    yield node
    for sub in (node.get("properties") or {}).values():
        yield from _schema_nodes(sub)
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"])


def test_schemas_are_structural():
    for text in render_all().values():
        schema = yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for node in _schema_nodes(schema):
            assert "type" in node, node
            assert not {"anyOf", "oneOf", "$ref", "allOf"} & node.keys(), node


@pytest.mark.parametrize("example", ["quickstart.yaml"])
def test_examples_pass_the_crd_schemas(root, example):
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t) for t in render_all().values()}
    for doc in yaml.safe_load_all((root / "examples" / example).read_text()):
        schema = crds[doc["kind"]]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        jsonschema.validate(doc, _as_json_schema(schema))


def test_schema_rejects_a_bad_value():
    crds = {yaml.safe_load(t)["spec"]["names"]["kind"]: yaml.safe_load(t) for t in render_all().values()}
    schema = _as_json_schema(crds["FineTuneJob"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    bad = {"spec": {"baseModel": "m", "dataset": {"path": "d"}, "method": "lorra"}}
    with pytest.raises(jsonschema.ValidationError, match="lorra"):
        jsonschema.validate(bad, schema)


def _as_json_schema(node):
    """OpenAPI 3.0 (nullable, boolean exclusiveMinimum) back to JSON Schema for the jsonschema library."""
    if not isinstance(node, dict):
        return node
    out = {k: _as_json_schema(v) if k in ("items",) else v for k, v in node.items()}
    if "properties" in node:
        out["properties"] = {k: _as_json_schema(v) for k, v in node["properties"].items()}
    if out.pop("nullable", False):
        out["type"] = [out["type"], "null"]
    for bound in ("Minimum", "Maximum"):
        if out.get(f"exclusive{bound}") is True:
            out[f"exclusive{bound}"] = out.pop(bound.lower())
    return out
