"""The topic map on real rows of the labelled bench (bench/quality) with the real all-MiniLM-L6-v2: rows about
different libraries fall in different clusters named by their own words, and the diversity figures tell a varied
set from a repetitive one."""

from __future__ import annotations

from kubetune.datagen import topics
from kubetune.llm import embeddings


def _rows(labelled: list[dict], *packages: str) -> list[dict]:
    return [r for r in labelled if r["kind"] == "good" and r["source_id"].split("-")[0] in packages]


def test_rows_about_two_libraries_are_two_topics_named_by_their_words(labelled, minilm, tmp_path):
    rows = _rows(labelled, "loguru", "sqlalchemy")
    assert len(rows) >= 6, "the bench has good rows about both"
    entry, coordinates, labels = topics.topic_map(rows, embeddings.embedder(str(minilm)), seed=0)
    assert entry["samples"] == len(rows) == len(labels) == len(coordinates)
    assert sum(c["size"] for c in entry["clusters"]) == len(rows)
    by_package = {}
    for row, label in zip(rows, labels, strict=True):
        by_package.setdefault(row["source_id"].split("-")[0], set()).add(label)
    assert not (by_package["loguru"] & by_package["sqlalchemy"]), "no cluster mixes the two libraries"
    names = " ".join(c["name"] for c in entry["clusters"])
    assert "loguru" in names and ("sqlalchemy" in names or "sql" in names), names
    assert 1.0 <= entry["effectiveTopics"] <= len(entry["clusters"])
    assert topics.draw(entry, coordinates, labels, tmp_path / "topics.png", "t").read_bytes()[:4] == b"\x89PNG"


def test_a_repetitive_set_is_less_diverse_than_a_varied_one(labelled, minilm):
    embedder = embeddings.embedder(str(minilm))
    varied = [r for r in labelled if r["kind"] == "good"][:40]
    one = _rows(labelled, "loguru")
    repetitive = (one * 10)[:40]
    diverse, _, _ = topics.topic_map(varied, embedder, seed=0)
    narrow, _, _ = topics.topic_map(repetitive, embedder, seed=0)
    assert diverse["meanCosineDistance"] > narrow["meanCosineDistance"] + 0.2
    assert diverse["effectiveTopics"] > narrow["effectiveTopics"]
