"""CustomResourceDefinitions generated from the spec models (``make crds`` writes them to crds/).

Kubernetes wants a structural OpenAPI v3 schema: every node typed, no $ref, ``X`` for ``anyOf [X, null]``,
and OpenAPI 3.0's boolean ``exclusiveMinimum``. Defaults (those of default factories too) go into the
schema, so the API server stores what the services will run, and cross-field rules go in as CEL. This
module turns pydantic's JSON Schema into that form, and writes the field reference (REFERENCE.md) beside
the CRDs; a test fails when the committed files drift from what it generates.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic.json_schema import GenerateJsonSchema, NoDefault
from pydantic_core import core_schema

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB, GROUP, NAMES, VERSION
from kubetune.api.v1alpha1.resources import NAME_RULE, SPEC_MODELS
from kubetune.api.v1alpha1.scheduling import SchedulingSpec
from kubetune.api.v1alpha1.status import ResourceStatus

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
    if "anyOf" in node and sorted(o.get("type", "") for o in node["anyOf"]) == ["integer", "string"]:
        return _int_or_string(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"not structural: a field may have one type, got {options}")
        # Not ``nullable``: the server then prunes a null and the field reads as absent (also to CEL's has()),
        # which is what None means in every model (each such field defaults to None; a test checks it).
        node = {**_structural(options[0], defs), **{k: v for k, v in node.items()}}
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


def _int_or_string(node: dict[str, Any]) -> dict[str, Any]:
    """A number or a word (``gpus: 2`` or ``gpus: auto``): Kubernetes' int-or-string, whose structural form
    allows no bounds or enum in its two branches, so they are one CEL rule on the value."""
    number = next(o for o in node["anyOf"] if o["type"] == "integer")
    word = next(o for o in node["anyOf"] if o["type"] == "string")
    words = word.get("enum") or [word["const"]]
    bounds = [f"self {op} {number[key]}" for key, op in (("minimum", ">="), ("maximum", "<=")) if key in number]
    rule = f"type(self) == int ? {' && '.join(bounds) or 'true'} : self in {json.dumps(words)}"
    span = f" from {number['minimum']} to {number['maximum']}" if len(bounds) == 2 else ""
    message = f"a number{span}, or {' or '.join(words)}"
    out: dict[str, Any] = {
        "x-kubernetes-int-or-string": True,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-validations": [{"rule": rule, "message": message}],
    }
    out.update({k: node[k] for k in ("description", "default") if node.get(k) is not None})
    return out


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural schema of one pydantic model, as the CRD's camelCase wire form."""
    schema = model.model_json_schema(by_alias=True, mode="validation", schema_generator=_WithFactoryDefaults)
    return _structural(schema, schema.get("$defs", {}))


# The operator acts on a spec once: an edit would be silently ignored while generation moved on, so the API
# server refuses it (a transition rule: checked on updates only) and says what to do instead. ``suspend`` and
# ``deletionPolicy`` are the exceptions: the operator acts on every change of them.
MUTABLE = SchedulingSpec.RUN_CONTROL
IMMUTABLE_MESSAGE = (
    "spec is immutable once created, except suspend and deletionPolicy: delete the resource and apply it again, or "
    "apply it under a new name"
)


def immutable_spec(properties: dict[str, Any]) -> dict[str, str]:
    """The transition rule that refuses a change to any field but :data:`MUTABLE`: each field is present in
    both or neither, and equal where present (CEL's ``==`` on objects and lists is deep)."""
    terms = [
        f"(has(self.{name}) ? has(oldSelf.{name}) && self.{name} == oldSelf.{name} : !has(oldSelf.{name}))"
        for name in sorted(properties)
        if name not in MUTABLE
    ]
    return {"rule": " && ".join(terms), "message": IMMUTABLE_MESSAGE}


def _column(name: str, path: str, kind: str = "string", priority: int = 0) -> dict[str, Any]:
    return {"name": name, "type": kind, "jsonPath": path, **({"priority": priority} if priority else {})}


# What `kubectl get` shows (priority 1: only with -o wide).
PRINTER_COLUMNS = {
    DATASET_BUILD: [
        _column("Phase", ".status.phase"),
        _column("Progress", ".status.progress"),
        _column("Digest", ".status.output.digest", priority=1),
        _column("Age", ".metadata.creationTimestamp", "date"),
    ],
    FINE_TUNE_JOB: [
        _column("Phase", ".status.phase"),
        _column("Progress", ".status.progress"),
        _column("Model", ".status.output.modelName", priority=1),
        _column("Version", ".status.output.modelVersion"),
        _column("Eval-Loss", ".status.output.evalLoss", "number", priority=1),
        _column("Restarts", ".status.restarts", "integer", priority=1),
        _column("Age", ".metadata.creationTimestamp", "date"),
    ],
}


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of ``kind``."""
    plural, singular, short_names = NAMES[kind]
    spec = openapi_schema(SPEC_MODELS[kind])
    spec["x-kubernetes-validations"] = [*spec.get("x-kubernetes-validations", []), immutable_spec(spec["properties"])]
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
                    "additionalPrinterColumns": PRINTER_COLUMNS[kind],
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
                                "spec": spec,
                                "status": openapi_schema(ResourceStatus),
                            },
                        }
                    },
                }
            ],
        },
    }


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    if "enum" in node:
        parts.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
    for key, sign in (("minimum", ">"), ("maximum", "<")):
        if key in node:
            strict = node.get(f"exclusive{key.capitalize()}") is True
            parts.append(f"{sign}{'' if strict else '='} {node[key]}")
    for key, word in (("minItems", "items"), ("minLength", "characters")):
        if key in node:
            parts.append(f"at least {node[key]} {word}")
    if "maxLength" in node:
        parts.append(f"at most {node['maxLength']} characters")
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    parts += [rule["message"] for rule in node.get("x-kubernetes-validations") or []]
    if node.get("type") == "array":
        parts += [f"each: {rule['message']}" for rule in node["items"].get("x-kubernetes-validations") or []]
    return "; ".join(parts)


def _rows(node: dict[str, Any], path: str, required: bool) -> list[str]:
    kind = "integer or string" if node.get("x-kubernetes-int-or-string") else node.get("type", "")
    if kind == "array":
        kind = f"list of {node['items'].get('type')}"
    default = "" if "default" not in node or kind == "object" else f"`{json.dumps(node['default'])}`"
    if required:
        default = "required"
    text = " ".join((node.get("description") or "").split())
    rules = _constraints(node)
    rows = [f"| `{path}` | {kind} | {default} | {text}{' — ' if text and rules else ''}{rules} |"]
    for name, sub in (node.get("properties") or {}).items():
        rows += _rows(sub, f"{path}.{name}", name in node.get("required", []))
    if node.get("type") == "array" and "properties" in node["items"]:
        for name, sub in node["items"]["properties"].items():
            rows += _rows(sub, f"{path}[].{name}", name in node["items"].get("required", []))
    return rows


def reference() -> str:
    """The configuration reference: every field of both resources, its type, default and meaning."""
    out = [
        "# Resource reference",
        "",
        "Generated from the spec models with the CRDs (`make crds`); a test fails when it drifts. Field names are",
        "TRL's and PEFT's, camelCased. A default shown is stored by the API server; a field with neither a default",
        "nor `required` is optional and unset unless given (its description says what applies then).",
    ]
    for kind in SPEC_MODELS:
        schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        out += ["", f"## {kind} (`{GROUP}/{VERSION}`)", "", " ".join(schema["description"].split()), ""]
        out += ["| field | type | default | meaning and valid values |", "| --- | --- | --- | --- |"]
        out += _rows(schema["properties"]["spec"], "spec", True)[1:]
    return "\n".join(out) + "\n"


def render_all() -> dict[str, str]:
    """File name -> text for every CRD (YAML), and the reference generated with them."""
    files = {
        f"{NAMES[kind][0]}.{GROUP}.yaml": yaml.safe_dump(crd(kind), sort_keys=False, width=110) for kind in SPEC_MODELS
    }
    files["REFERENCE.md"] = reference()
    return files


def main(argv: list[str]) -> None:
    out = Path(argv[0] if argv else "crds")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")


if __name__ == "__main__":
    main(sys.argv[1:])
