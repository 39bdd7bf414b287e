"""The base every spec model shares: camelCase on the wire, snake_case in Python, unknown fields rejected.

Kubernetes resources spell fields in camelCase (``learningRate``); TRL and PEFT spell the same options in
snake_case (``learning_rate``). The models use TRL's names in Python and Kubernetes' spelling in YAML, so
a field maps one-to-one onto the library option it feeds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class SpecModel(BaseModel):
    """A part of a resource's spec or status."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )

    def to_wire(self) -> dict:
        """The camelCase JSON form a resource carries, defaults included."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
