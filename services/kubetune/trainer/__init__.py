"""Supervised fine-tuning with TRL: full, LoRA or QLoRA, then publishing the result with its lineage.

Run as ``python -m kubetune.trainer --spec SPEC.json --dataset DIR --output DIR``; the same entrypoint
runs in a training pod and as a local process under ``kubetune run``.
"""
