"""Ingest, clean and chunk raw documents. Pure text processing: no model, no I/O beyond reading files."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from kubetune.spec.datasetbuild import ChunkingSpec, CleaningSpec, SourceSpec


@dataclass(frozen=True)
class Document:
    source: str  # the file it came from
    text: str


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # sha256 of the normalised text: equal text, equal id
    source: str
    text: str


def find_files(source: SourceSpec) -> list[Path]:
    """The files named by ``source.paths``, folders expanded through ``source.include``, in a stable order."""
    found: list[Path] = []
    for raw in source.paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                p for p in sorted(path.rglob("*"))
                if p.is_file() and any(fnmatch.fnmatch(p.name, pat) for pat in source.include)
            )  # fmt: skip
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"spec.source.paths: {raw!r} is neither a file nor a folder")
    return found


def read_documents(files: list[Path]) -> tuple[list[Document], dict[str, int]]:
    """Decoded documents, and counts of the files that could not be read (dropped, not fatal)."""
    docs, dropped = [], {}
    for path in files:
        try:
            docs.append(Document(str(path), path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            dropped["not_utf8"] = dropped.get("not_utf8", 0) + 1
    return docs, dropped


_MD_PATTERNS = [
    (re.compile(r"```.*?```", re.S), " "),  # code fences: not prose to write questions about
    (re.compile(r"`([^`]*)`"), r"\1"),
    (re.compile(r"!\[[^\]]*\]\([^)]*\)"), " "),  # images
    (re.compile(r"\[([^\]]*)\]\([^)]*\)"), r"\1"),  # links keep their text
    (re.compile(r"^\s{0,3}#{1,6}\s*(.*?)\s*#*\s*$", re.M), r"\1."),  # headings end a sentence
    (re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+", re.M), ""),  # list markers
    (re.compile(r"(\*\*|__|\*|_)(\S(?:.*?\S)?)\1"), r"\2"),  # emphasis
    (re.compile(r"^\s*>\s?", re.M), ""),  # block quotes
]
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_URL = re.compile(r"https?://\S+")


def clean(text: str, spec: CleaningSpec) -> str:
    """Unicode-normalised text without markup, control characters, URLs or runs of white space."""
    text = unicodedata.normalize("NFKC", text)
    text = _CONTROL.sub("", text)
    if spec.strip_markdown:
        for pattern, repl in _MD_PATTERNS:
            text = pattern.sub(repl, text)
    text = _URL.sub("", text)
    text = re.sub(r"\.\.+", ".", text.replace(":.", ":"))
    return re.sub(r"\s+", " ", text).strip()


_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[A-Z0-9\"'(\[])")


def sentences(text: str) -> list[str]:
    """Sentences, split after ., ! or ? followed by a capital or digit (a heuristic, not a parser)."""
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def chunk_text(text: str, spec: ChunkingSpec) -> list[str]:
    """Chunks of min..max characters built from whole sentences.

    A sentence longer than ``max_chars`` is cut at word boundaries. The last chunk of a document may be
    shorter than ``min_chars``; it is merged into the previous one when the two fit in ``max_chars``.
    """
    pieces: list[str] = []
    for sentence in sentences(text):
        while len(sentence) > spec.max_chars:
            cut = sentence.rfind(" ", 0, spec.max_chars)
            cut = cut if cut > 0 else spec.max_chars
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        candidate = f"{current} {piece}".strip()
        if len(candidate) > spec.max_chars:
            chunks.append(current)
            current = piece
        else:
            current = candidate
        if len(current) >= spec.min_chars:
            chunks.append(current)
            current = ""
    if current:
        if chunks and len(chunks[-1]) + 1 + len(current) <= spec.max_chars:
            chunks[-1] = f"{chunks[-1]} {current}"
        else:
            chunks.append(current)
    return chunks


def normalise_for_hash(text: str) -> str:
    """Case- and white-space-insensitive form used for exact-duplicate detection."""
    return re.sub(r"\W+", " ", text.casefold()).strip()


def fingerprint(*texts: str) -> str:
    return hashlib.sha256("\x1f".join(normalise_for_hash(t) for t in texts).encode()).hexdigest()


def chunk_documents(docs: list[Document], spec: ChunkingSpec) -> list[Chunk]:
    return [Chunk(fingerprint(text), doc.source, text) for doc in docs for text in chunk_text(doc.text, spec)]
