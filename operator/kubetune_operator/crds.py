"""CustomResourceDefinitions generated from the spec models (``make crds`` writes them to crds/).

Kubernetes wants a structural OpenAPI v3 schema: every node typed, no $ref, nullable instead of
``anyOf [X, null]``, and OpenAPI 3.0's boolean ``exclusiveMinimum``. This module turns pydantic's JSON
Schema into that form; a test fails when the committed files drift from what it generates.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from kubetune.spec.constants import GROUP, NAMES, VERSION
from kubetune.spec.resources import NAME_RULE, SPEC_MODELS
from kubetune.spec.status import ResourceStatus

_KEEP = {
    "type", "properties", "items", "required", "description", "default", "enum", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern", "minItems", "maxItems",
    "additionalProperties", "nullable", "format", "x-kubernetes-validations",
}  # fmt: skip


class _WithFactoryDefaults(GenerateJsonSchema):
    """JSON Schema whose defaults include those made by a ``default_factory`` (``cleaning: {...}``), so the
    API server stores the values the services will actually use."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return factory()
        return schema.get("default", NoDefault)

    def encode_default(self, dft: Any) -> Any:
        if hasattr(dft, "to_wire"):
            return dft.to_wire()
        return super().encode_default(dft)


def _structural(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """One JSON Schema node in Kubernetes' structural form."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"not structural: a field may have one type, got {options}")
        node = {**_structural(options[0], defs), **{k: v for k, v in node.items()}, "nullable": True}
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[bound.replace("exclusiveM", "m")] = node[bound]
            node[bound] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key not in _KEEP:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key == "items":
            out[key] = _structural(value, defs)
        elif key == "additionalProperties":
            if isinstance(value, dict):
                out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("default") is None:
        out.pop("default", None)
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural schema of one pydantic model, as the CRD's camelCase wire form."""
    schema = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    return _structural(schema, schema.get("$defs", {}))


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind``."""
    plural, singular, short_names = NAMES[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": short_names,
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": SPEC_MODELS[kind].__doc__,
                            "x-kubernetes-validations": [NAME_RULE.to_wire()],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(SPEC_MODELS[kind]),
                                "status": openapi_schema(ResourceStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    return {
        f"{NAMES[kind][0]}.{GROUP}.yaml": yaml.safe_dump(crd(kind), sort_keys=False, width=110) for kind in SPEC_MODELS
    }


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(sys.argv[1:])
