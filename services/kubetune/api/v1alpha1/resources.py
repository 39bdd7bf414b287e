"""Whole resources (apiVersion, kind, metadata, spec, status), read from YAML and validated.

Validation never stops at the first problem: every error of every document is collected, each with the
field path, the bad value and what would be valid, so ``kubetune validate`` and the operator's status
conditions can say all that is wrong at once.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kubetune.api.v1alpha1.base import CelRule, SpecModel, drop_nulls
from kubetune.api.v1alpha1.constants import API_VERSION, DATASET_BUILD, FINE_TUNE_JOB
from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.api.v1alpha1.scheduling import DNS_LABEL
from kubetune.api.v1alpha1.status import ResourceStatus

# A resource's name becomes a label value and the stem of its Jobs' names, so it must be a DNS label (an API
# server would otherwise accept any DNS subdomain, dots and 253 characters included). The CRD carries the rule.
NAME_RULE = CelRule(
    f"size(self.metadata.name) <= 63 && self.metadata.name.matches('{DNS_LABEL}')",
    "metadata.name must be a DNS label: at most 63 characters, lowercase letters, digits and '-', "
    "starting and ending with a letter or digit",
    lambda name: len(name) <= 63 and re.fullmatch(DNS_LABEL, name) is not None,
)


class ObjectMeta(SpecModel):
    """The parts of Kubernetes' ObjectMeta kubetune reads; the API server's own fields pass through."""

    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str = Field("default", pattern=DNS_LABEL, max_length=63)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, name: str) -> str:
        if not NAME_RULE.holds(name):
            raise ValueError(NAME_RULE.message)
        return name


class DatasetBuild(SpecModel):
    api_version: Literal["kubetune.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["DatasetBuild"] = DATASET_BUILD
    metadata: ObjectMeta
    spec: DatasetBuildSpec
    status: ResourceStatus | None = None


class FineTuneJob(SpecModel):
    api_version: Literal["kubetune.dev/v1alpha1"] = Field(API_VERSION, alias="apiVersion")
    kind: Literal["FineTuneJob"] = FINE_TUNE_JOB
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: ResourceStatus | None = None


Resource = DatasetBuild | FineTuneJob
RESOURCE_MODELS: dict[str, type[DatasetBuild] | type[FineTuneJob]] = {
    DATASET_BUILD: DatasetBuild,
    FINE_TUNE_JOB: FineTuneJob,
}
SPEC_MODELS: dict[str, type[SpecModel]] = {DATASET_BUILD: DatasetBuildSpec, FINE_TUNE_JOB: FineTuneJobSpec}


@dataclass(frozen=True)
class FieldError:
    """One thing wrong with one field of one resource."""

    path: str  # dotted, camelCase, as in the YAML: spec.training.learningRate
    message: str  # what is wrong and what would be valid
    value: Any = None
    source: str = ""  # which document: "FILE#INDEX kind/name"

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        shown = "" if self.value is None else f" (got {self.value!r})"
        return f"{where}{self.path}: {self.message}{shown}"


class SpecError(ValueError):
    """A resource (or several) failed validation; ``errors`` lists every problem."""

    def __init__(self, errors: list[FieldError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as ``X | None`` or ``list[X]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found = _submodel(arg)
            if found is not None:
                return found
    return None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model that holds the field at ``loc`` (the error's location without its last part)."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return None
        if isinstance(part, int):
            continue
        field = next(
            (f for name, f in current.model_fields.items() if part in (name, f.alias)),
            None,
        )
        if field is None:
            return None
        current = _submodel(field.annotation)
    return current


def field_path(parts) -> str:
    """A location as the YAML spells it: ``spec.source.paths[0]``."""
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in parts).replace(".[", "[")


def _explain(err: dict, model: type[BaseModel]) -> FieldError:
    loc = tuple(err["loc"])
    path = field_path(loc)
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(model, loc[:-1])
        valid = sorted(f.alias or n for n, f in parent.model_fields.items()) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        return FieldError(path, f"unknown field; {hint}valid fields here: {', '.join(valid)}")
    if kind == "missing":
        return FieldError(path, "required field is missing")
    message = err["msg"].removeprefix("Value error, ")
    if isinstance(value, dict | list):
        value = None  # the nested errors name the culprit
    return FieldError(path, message, value)


def validation_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[FieldError]:
    """Readable errors from a pydantic ValidationError, paths prefixed (e.g. with 'spec')."""
    out = []
    for err in exc.errors():
        fe = _explain(err, model)
        if prefix:
            fe = FieldError(f"{prefix}.{fe.path}" if fe.path else prefix, fe.message, fe.value)
        out.append(fe)
    return out


def parse_resource(doc: Any, source: str = "") -> Resource:
    """One resource from a decoded YAML/JSON document, or a SpecError naming every bad field."""
    if not isinstance(doc, dict):
        raise SpecError(
            [FieldError("", "a resource must be a mapping with apiVersion, kind, metadata, spec", source=source)]
        )
    kind = doc.get("kind")
    if kind not in RESOURCE_MODELS:
        raise SpecError([FieldError("kind", f"must be one of {', '.join(RESOURCE_MODELS)}", kind, source)])
    model = RESOURCE_MODELS[kind]
    if isinstance(doc.get("spec"), dict):
        doc = {**doc, "spec": drop_nulls(doc["spec"])}
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        name = (doc.get("metadata") or {}).get("name", "?") if isinstance(doc.get("metadata"), dict) else "?"
        where = f"{source} {kind}/{name}".strip()
        raise SpecError(
            [FieldError(e.path, e.message, e.value, where) for e in validation_errors(exc, model)]
        ) from None


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 (and kubectl) do: ``2e-4`` is a float, not a string."""


_Yaml12Loader.yaml_implicit_resolvers = {k: list(v) for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_resources(text: str, source: str = "") -> list[Resource]:
    """Every resource of a multi-document YAML; a SpecError lists the problems of all documents."""
    try:
        docs = [d for d in yaml.load_all(text, Loader=_Yaml12Loader) if d is not None]
    except yaml.YAMLError as exc:
        raise SpecError([FieldError("", f"not valid YAML: {exc}", source=source)]) from None
    resources, errors = [], []
    for index, doc in enumerate(docs):
        try:
            resources.append(parse_resource(doc, f"{source}#{index}" if source else f"#{index}"))
        except SpecError as exc:
            errors.extend(exc.errors)
    seen: dict[tuple[str, str, str], int] = {}
    for res in resources:
        key = (res.kind, res.metadata.namespace, res.metadata.name)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] == 2:
            errors.append(
                FieldError(
                    "metadata.name", "appears twice in the same file", res.metadata.name, f"{source} {res.kind}".strip()
                )
            )
    if errors:
        raise SpecError(errors)
    return resources


def parse_spec(kind: str, spec: Any) -> DatasetBuildSpec | FineTuneJobSpec:
    """A spec alone (as the operator sees it), errors prefixed with 'spec'."""
    model = SPEC_MODELS[kind]
    try:
        return model.model_validate(drop_nulls(spec) if spec is not None else {})
    except ValidationError as exc:
        raise SpecError(validation_errors(exc, model, prefix="spec")) from None
