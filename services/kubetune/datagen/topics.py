"""A map of what a dataset is about: its samples embedded, clustered, named and drawn in two dimensions.

Each kept sample (instruction and answer) is embedded with the curation's sentence-transformers model (the
vectors grounding already made are reused), clustered by k-means (scikit-learn, which sentence-transformers
brings; k = the square root of half the rows, 2 to 12, seeded), and each cluster is named by its three most
distinctive content words (class-based TF-IDF, as BERTopic names topics: a word's frequency in the cluster
against its frequency in all clusters). ``topics.png`` draws the samples in two dimensions (t-SNE; principal
components above 3,000 rows), coloured by cluster; ``manifest.json`` and the dataset card carry each cluster's
name, size and most central instruction, and two diversity figures:

- ``meanCosineDistance``: 1 - the mean cosine between two different samples (0: all alike; about 0.8 and up for
  samples on unrelated subjects with all-MiniLM-L6-v2);
- ``effectiveTopics``: exp of the entropy of the cluster sizes (k for clusters of equal size, 1 when one cluster
  holds nearly everything), so a set that repeats one subject shows it at a glance.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

from kubetune.datagen.grounding import terms
from kubetune.llm.embeddings import Embedder


def _k(n: int) -> int:
    return max(2, min(12, round(math.sqrt(n / 2))))


def _names(texts: list[str], labels: list[int], k: int, top: int = 3) -> list[str]:
    """Each cluster's ``top`` words by class-based TF-IDF (tf in the cluster x log(1 + mean words per cluster / the
    word's count over all clusters))."""
    counts = [Counter() for _ in range(k)]
    for text, label in zip(texts, labels, strict=True):
        counts[label].update(w for w in terms(text) if not w.replace(".", "").isdigit())
    total: Counter = sum(counts, Counter())
    mean_words = sum(total.values()) / k
    names = []
    for c in counts:
        size = sum(c.values()) or 1
        weight = {w: n / size * math.log(1 + mean_words / total[w]) for w, n in c.items()}
        names.append(", ".join(sorted(weight, key=lambda w: (-weight[w], w))[:top]))
    return names


_TSNE_ROWS = 3000  # t-SNE above this takes minutes on a CPU; the map falls back to principal components


def _plane(vectors: Any, seed: int) -> Any:
    """2-D coordinates: t-SNE (cosine, seeded), which keeps neighbours together, or PCA for large sets."""
    if len(vectors) > _TSNE_ROWS:
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(vectors)
    from sklearn.manifold import TSNE

    perplexity = min(30.0, (len(vectors) - 1) / 3)
    return TSNE(2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed).fit_transform(vectors)


def topic_map(samples: list[dict[str, str]], embedder: Embedder, seed: int) -> tuple[dict[str, Any], Any, list[int]]:
    """The manifest's ``topics`` entry for ``samples`` (instruction, answer), their 2-D coordinates and their
    cluster labels. Fewer than 4 samples: one cluster, nothing to separate."""
    import numpy as np

    texts = [f"{s['instruction']}\n{s['answer']}" for s in samples]
    vectors = embedder.encode(texts)
    n = len(texts)
    if n < 4:
        labels, k = [0] * n, 1
        coordinates = np.zeros((n, 2))
    else:
        from sklearn.cluster import KMeans

        k = _k(n)
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(vectors).tolist()
        coordinates = _plane(vectors, seed)
    names = _names(texts, labels, k)
    sizes = Counter(labels)
    similarity = vectors @ vectors.T
    mean_cosine = float((similarity.sum() - np.trace(similarity)) / (n * (n - 1))) if n > 1 else 1.0
    shares = [sizes[c] / n for c in range(k) if sizes[c]]
    members = {c: [i for i, label in enumerate(labels) if label == c] for c in range(k)}

    def central(c: int) -> int:  # the member closest to its cluster's mean: the example shown
        centre = vectors[members[c]].mean(axis=0)
        return members[c][int(np.argmax(vectors[members[c]] @ centre))]

    clusters = [
        {
            "cluster": c,  # the label on the map
            "name": names[c],
            "size": sizes[c],
            "example": samples[central(c)]["instruction"],
        }
        for c in sorted(range(k), key=lambda c: -sizes[c])
        if sizes[c]
    ]
    entry = {
        "samples": n,
        "clusters": clusters,
        "meanCosineDistance": round(1 - mean_cosine, 4),
        "effectiveTopics": round(math.exp(-sum(p * math.log(p) for p in shares)), 2) if n else 0.0,
        "method": f"k-means (k={k}) over {embedder.path} embeddings; names by class-based TF-IDF",
    }
    return entry, coordinates, labels


def draw(entry: dict[str, Any], coordinates: Any, labels: list[int], path: Path, title: str) -> Path:
    """The samples in two dimensions, one colour per cluster, each cluster's name at its centre."""
    from kubetune import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    palette = plt.get_cmap("tab20")
    by_label: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    names = {c["cluster"]: c["name"] for c in entry["clusters"]}
    for label, members in sorted(by_label.items()):
        xs, ys = coordinates[members, 0], coordinates[members, 1]
        name = names[label]
        ax.scatter(xs, ys, s=18, color=palette(label % 20), alpha=0.8, label=f"{name} ({len(members)})")
        ax.annotate(name, (float(xs.mean()), float(ys.mean())), fontsize=8, weight="bold", ha="center")
    ax.set_title(f"{title}: diversity {entry['meanCosineDistance']:.2f}, {entry['effectiveTopics']:.1f} topics")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, loc="best")
    return plots._save(plt, fig, path)
