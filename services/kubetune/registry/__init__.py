"""Publishing: an adapter (or full model) registered as a model version, with its lineage."""

from kubetune.registry.mlflow_store import publish

__all__ = ["publish"]
