"""Dataset generation: raw documents -> chunks -> LLM-written pairs -> curated, formatted, split dataset.

Run as ``python -m kubetune.datagen --spec SPEC.json --output DIR``; the same entrypoint runs in a
Kubernetes pod (spec mounted from a ConfigMap) and as a local process under ``kubetune run``.
"""
