"""Publishing: lineage, the gate, and the backends (MLflow, OCI registries); import the module needed."""
