"""Sentence embeddings from a local sentence-transformers model folder (all-MiniLM-L6-v2 by default, which
``make setup`` builds into ``models/``; never a hub download). The curation's grounding, semantic dedup and topic
map use it, and the trainer's evaluation scores answers against references with it."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


@functools.cache
def _model(path: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder, never a hub
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cpu" if not _cuda() else "cuda")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


class Embedder:
    """A sentence-transformers model loaded from a local folder, its embeddings L2-normalised (a dot product is
    the cosine). Each distinct text is encoded once: a chunk's windows serve all of its samples, and the grounding
    and the semantic dedup of one build share the samples' vectors (:func:`embedder`)."""

    def __init__(self, path: str):
        if not (Path(path) / "modules.json").exists():
            raise FileNotFoundError(
                f"{path} is not a sentence-transformers model folder (no modules.json); make setup builds "
                "models/all-MiniLM-L6-v2"
            )
        self.path = path
        self._vectors: dict[str, Any] = {}

    def encode(self, texts: Sequence[str]) -> Any:
        import numpy as np

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        new = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if new:
            vectors = _model(self.path).encode(new, batch_size=64, normalize_embeddings=True)
            self._vectors.update(zip(new, vectors, strict=True))
        return np.stack([self._vectors[t] for t in texts])


@functools.cache
def embedder(path: str) -> Embedder:
    """The one Embedder of ``path`` in this process, its encoded texts kept."""
    return Embedder(path)
