"""The base every spec model shares: camelCase on the wire, snake_case in Python, strict types, unknown fields
rejected, and cross-field rules written once for both the API server (CEL) and Python.

Kubernetes resources spell fields in camelCase (``learningRate``); TRL and PEFT spell the same options in
snake_case (``learning_rate``). The models use TRL's names in Python and Kubernetes' spelling in YAML, so
a field maps one-to-one onto the library option it feeds.

Types are strict as an API server's schema is: ``numTrainEpochs: "3"`` is refused, not coerced. A rule
that spans fields (``minChars <= maxChars``) is a :class:`CelRule`: the generated CRD carries its CEL
expression as ``x-kubernetes-validations``, so ``kubectl apply`` and GitOps are refused at once, and the
model checks the same predicate with the same message, so ``kubetune validate`` says what the server says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel


@dataclass(frozen=True)
class CelRule:
    """A rule the API server evaluates (CEL, ``self`` is the object) and Python checks (``holds``)."""

    rule: str
    message: str
    holds: Callable[[Any], bool]

    def to_wire(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


def _cel_rules_in_schema(schema: dict[str, Any], model: type[BaseModel]) -> None:
    rules = getattr(model, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_wire() for r in rules]


class SpecModel(BaseModel):
    """A part of a resource's spec or status."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
        strict=True,
        json_schema_extra=_cel_rules_in_schema,
    )

    # Cross-field rules: in the CRD as CEL, checked here with the same message.
    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> SpecModel:
        for rule in self.cel_rules:
            if not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict:
        """The camelCase JSON form a resource carries, defaults included."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def drop_nulls(value: Any) -> Any:
    """``value`` without the mapping keys whose value is null, at any depth.

    An API server prunes a null it cannot store and then applies the field's default, so
    ``temperature: null`` means "the default temperature". Every nullable field of the models defaults to
    None (a test checks it), so dropping nulls gives the same result for those too.
    """
    if isinstance(value, dict):
        return {k: drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_nulls(v) for v in value]
    return value
