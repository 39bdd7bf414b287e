"""Cleaning and chunking of raw documents."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1.datasetbuild import ChunkingSpec, CleaningSpec, SourceSpec
from kubetune.datagen import documents


def test_clean_strips_markdown_urls_and_controls():
    raw = "# Title\n\nSome **bold** and `code` with a [link](https://x.org).\x07\n\n```py\nprint(1)\n```\n- item one"
    text = documents.clean(raw, CleaningSpec())
    assert text == "Title. Some bold and code with a link. item one"


def test_clean_keeps_markdown_when_asked():
    assert "**bold**" in documents.clean("**bold** text", CleaningSpec(strip_markdown=False))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("One. Two! Three? Four.", ["One.", "Two!", "Three?", "Four."], id="terminators"),
        pytest.param("Version 2.5 is out. It works.", ["Version 2.5 is out.", "It works."], id="decimal"),
        pytest.param('He said "stop." Then left.', ['He said "stop."', "Then left."], id="quote"),
    ],
)
def test_sentences(text, expected):
    assert documents.sentences(text) == expected


def test_chunks_respect_bounds_and_sentence_boundaries():
    sentence = "Fine-tuning adapts a pretrained model to a task with a small dataset. "
    text = sentence * 60  # ~4,200 characters
    spec = ChunkingSpec(min_chars=1000, max_chars=2000)
    chunks = documents.chunk_text(text, spec)
    assert len(chunks) >= 2
    assert all(len(c) <= spec.max_chars for c in chunks)
    assert all(len(c) >= spec.min_chars for c in chunks[:-1])
    assert all(c.endswith(".") for c in chunks)
    assert " ".join(chunks) == text.strip()


def test_overlong_sentence_is_cut_at_words():
    text = "word " * 100
    chunks = documents.chunk_text(text, ChunkingSpec(min_chars=50, max_chars=120))
    assert all(len(c) <= 120 for c in chunks)
    assert " ".join(chunks).split() == text.split()


def test_fingerprint_ignores_case_and_spacing():
    assert documents.fingerprint("Hello,  World") == documents.fingerprint("hello world")
    assert documents.fingerprint("a", "b") != documents.fingerprint("a b")


def test_find_files_filters_and_reports_missing(tmp_path):
    (tmp_path / "a.md").write_text("x")
    (tmp_path / "b.bin").write_bytes(b"\x00")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("y")
    found = documents.find_files(SourceSpec(paths=[str(tmp_path)]))
    assert [p.name for p in found] == ["a.md", "c.txt"]
    with pytest.raises(FileNotFoundError, match=r"spec\.source\.paths"):
        documents.find_files(SourceSpec(paths=[str(tmp_path / "nope")]))


def test_unreadable_files_are_counted_not_fatal(tmp_path):
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("fine")
    bad.write_bytes(b"\xff\xfe\xfa")
    docs, dropped = documents.read_documents([good, bad], SourceSpec(paths=[str(tmp_path)]))
    assert [d.text for d in docs] == ["fine"] and dropped == {"not_utf8": 1}
