"""kubetune: turn raw text into instruction datasets and fine-tune LLMs on them.

This distribution holds what runs in pods (and as local processes under ``kubetune run``):
the spec models shared by everything (:mod:`kubetune.api.v1alpha1`), dataset generation
(:mod:`kubetune.datagen`), training (:mod:`kubetune.trainer`) and publishing (:mod:`kubetune.registry`).
The control plane lives in ``kubetune_operator`` and is never imported from here.
"""

__version__ = "0.1.0"
