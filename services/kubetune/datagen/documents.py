"""Ingest, clean and chunk raw documents. Pure text processing: no model, no I/O beyond reading files.

Inputs: text and markdown files (one document each), HTML (one document, turned into text with the stdlib
parser), PDF (one document, its text layer read with pypdf), JSONL (one document per line), Parquet (one per row)
and folders written by ``datasets``' ``save_to_disk`` (one per row of every split). Nothing read is fatal: an input
that gives no document is counted under a reason (``not_utf8``, ``empty``, ``invalid_json``, ``missing_text_field``,
``not_a_string``, ``no_text_layer``, ``encrypted``, ``unreadable``) for the funnel.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.datasetbuild import ChunkingSpec, CleaningSpec, SourceSpec
from kubetune.datagen.inputs import find_files, is_datasets_folder

__all__ = ["Chunk", "Document", "find_files", "is_datasets_folder"]


@dataclass(frozen=True)
class Document:
    source: str  # the file it came from; ``path#line`` (JSONL), ``path#row`` (Parquet), ``folder/split#row``
    text: str


@dataclass(frozen=True)
class Chunk:
    chunk_id: str  # sha256 of the normalised text: equal text, equal id
    source: str
    text: str


# --- reading ------------------------------------------------------------------------------------------------


def _count(dropped: dict[str, int], reason: str, n: int = 1) -> None:
    if n:
        dropped[reason] = dropped.get(reason, 0) + n


def _take(value: Any, source: str, docs: list[Document], dropped: dict[str, int]) -> None:
    """One row's text field: a document, or a drop reason. ``None`` (a null cell) counts as a missing field."""
    if value is None:
        _count(dropped, "missing_text_field")
    elif not isinstance(value, str):
        _count(dropped, "not_a_string")
    elif not value.strip():
        _count(dropped, "empty")
    else:
        docs.append(Document(source, value))


def _read_text(path: Path, docs: list[Document], dropped: dict[str, int], html: bool) -> None:
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return _count(dropped, "not_utf8")
    if html:
        text = html_to_text(text)
    if text.strip():
        docs.append(Document(str(path), text))
    else:
        _count(dropped, "empty")


def _read_pdf(path: Path, docs: list[Document], dropped: dict[str, int]) -> None:
    """A PDF's text layer, page by page (pypdf), as one document. A scanned PDF has none (``no_text_layer``: it
    needs OCR, which kubetune does not do); one that needs a password counts as ``encrypted``."""
    from pypdf import PdfReader

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        return _count(dropped, "encrypted")
    text = "\n\n".join((page.extract_text() or "").strip() for page in reader.pages)
    if text.strip():
        docs.append(Document(str(path), text))
    else:
        _count(dropped, "no_text_layer")


def _read_jsonl(path: Path, field: str, docs: list[Document], dropped: dict[str, int]) -> None:
    with path.open("rb") as f:
        for number, raw in enumerate(f, start=1):
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                _count(dropped, "not_utf8")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                _count(dropped, "invalid_json")
            elif field not in row:
                _count(dropped, "missing_text_field")
            elif row[field] is None:
                _count(dropped, "not_a_string")  # an explicit null: the field is there
            else:
                _take(row[field], f"{path}#{number}", docs, dropped)


def _arrow_column(batches: Iterable[Any], field: str) -> Iterator[Any]:
    """The values of one column over record batches, as Python objects."""
    for batch in batches:
        yield from batch.column(field).to_pylist()


def _take_column(values: Iterable[Any], prefix: str, docs: list[Document], dropped: dict[str, int]) -> None:
    for row, value in enumerate(values):
        _take(value, f"{prefix}#{row}", docs, dropped)


def _read_parquet(path: Path, field: str, docs: list[Document], dropped: dict[str, int]) -> None:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if field not in parquet.schema_arrow.names:
        return _count(dropped, "missing_text_field", parquet.metadata.num_rows)
    _take_column(_arrow_column(parquet.iter_batches(batch_size=4096, columns=[field]), field), str(path), docs, dropped)


def _datasets_splits(folder: Path) -> list[tuple[str, Path]]:
    """``(source prefix, split folder)`` of a ``datasets`` folder: every split of a DatasetDict, or itself."""
    dict_file = folder / "dataset_dict.json"
    if dict_file.is_file():
        splits = json.loads(dict_file.read_text(encoding="utf-8"))["splits"]
        return [(f"{folder}/{split}", folder / split) for split in splits]
    return [(str(folder), folder)]


def _arrow_files(split: Path) -> list[Path]:
    state = json.loads((split / "state.json").read_text(encoding="utf-8"))
    return [split / f["filename"] for f in state["_data_files"]]


def _read_datasets(folder: Path, field: str, docs: list[Document], dropped: dict[str, int]) -> None:
    """Every split of a ``save_to_disk`` folder, read from its Arrow files with pyarrow (the format
    ``datasets`` writes; the datagen image has pyarrow, not ``datasets``)."""
    import pyarrow as pa

    for prefix, split in _datasets_splits(folder):
        values: list[Any] = []
        for arrow_file in _arrow_files(split):
            with pa.memory_map(str(arrow_file)) as source:
                reader = pa.ipc.open_stream(source)
                if field not in reader.schema.names:
                    _count(dropped, "missing_text_field", sum(b.num_rows for b in reader))
                    continue
                values.extend(_arrow_column(reader, field))
        _take_column(values, prefix, docs, dropped)


def read_documents(files: list[Path], source: SourceSpec) -> tuple[list[Document], dict[str, int]]:
    """Decoded documents, and per reason the inputs (files, lines, rows) that gave none (dropped, not fatal).

    A JSONL line or a row is one document; ``source.text_field`` holds its text. Blank JSONL lines are skipped
    without a count. A Parquet file, PDF or ``datasets`` folder that fails to open counts once as ``unreadable``."""
    docs: list[Document] = []
    dropped: dict[str, int] = {}
    field = source.text_field
    for path in files:
        suffix = path.suffix.lower()
        try:
            if path.is_dir():
                _read_datasets(path, field, docs, dropped)
            elif suffix == ".jsonl":
                _read_jsonl(path, field, docs, dropped)
            elif suffix == ".parquet":
                _read_parquet(path, field, docs, dropped)
            elif suffix == ".pdf":
                _read_pdf(path, docs, dropped)
            else:
                _read_text(path, docs, dropped, html=suffix in (".html", ".htm"))
        except OSError:
            _count(dropped, "unreadable")
        except Exception:  # pyarrow's, datasets' and pypdf's own errors: a corrupt or foreign file
            if not (path.is_dir() or suffix in (".parquet", ".pdf")):
                raise
            _count(dropped, "unreadable")
    return docs, dropped


# --- HTML ---------------------------------------------------------------------------------------------------

# fmt: off
_HTML_SKIP = frozenset({
    "script", "style", "noscript", "template", "svg", "nav", "header", "footer", "aside",
    "title", "iframe", "object", "canvas", "select", "button",
})
_HTML_HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})
_HTML_BLOCKS = _HTML_HEADINGS | frozenset({
    "p", "div", "br", "hr", "li", "ul", "ol", "dl", "dt", "dd", "tr", "table", "thead", "tbody", "tfoot", "caption",
    "section", "article", "main", "blockquote", "pre", "figure", "figcaption", "address", "details", "summary",
    "form", "fieldset", "legend", "body", "html",
})
# fmt: on
_HTML_CELLS = frozenset({"td", "th"})
_SENTENCE_PUNCT = ".!?:;"


class _HTMLText(HTMLParser):
    """Visible prose of an HTML page: paragraphs split at block elements, headings ending a sentence."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._parts: list[str] = []
        self._skip = 0  # depth inside elements whose content is not prose

    def flush(self, heading: bool = False) -> None:
        text = re.sub(r"\s+", " ", "".join(self._parts)).strip()
        self._parts = []
        if text:
            if heading and text[-1] not in _SENTENCE_PUNCT:
                text += "."
            self.paragraphs.append(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_SKIP:
            self._skip += 1
        elif not self._skip:
            if tag in _HTML_BLOCKS:
                self.flush()
            elif tag in _HTML_CELLS:
                self._parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_SKIP:
            self._skip = max(0, self._skip - 1)
        elif not self._skip:
            if tag in _HTML_BLOCKS:
                self.flush(heading=tag in _HTML_HEADINGS)
            elif tag in _HTML_CELLS:
                self._parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in _HTML_SKIP:  # <svg/>, <br/>: nothing inside to skip
            self.handle_starttag(tag, attrs)

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._parts.append(data)


def html_to_text(html: str) -> str:
    """Prose of an HTML page, one paragraph a line. Scripts, styles, navigation, headers, footers, asides and
    comments are dropped and entities decoded; a heading gets a full stop, as markdown headings do in ``clean``."""
    parser = _HTMLText()
    parser.feed(html)
    parser.close()
    parser.flush()
    return "\n".join(parser.paragraphs)


# --- checks before a build ----------------------------------------------------------------------------------


def _fields(path: Path) -> list[str] | None:
    """The fields of a JSONL file's first object, a Parquet schema or a ``datasets`` folder's first split;
    ``None`` when there is none to read."""
    if path.is_dir():
        import pyarrow as pa

        _, split = _datasets_splits(path)[0]
        with pa.memory_map(str(_arrow_files(split)[0])) as source:
            return list(pa.ipc.open_stream(source).schema.names)
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with path.open("rb") as f:
        for raw in f:
            if raw.strip():
                try:
                    row = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
                except ValueError:
                    return None
                return list(row) if isinstance(row, dict) else None
    return None


def check_source(source: SourceSpec) -> list[str]:
    """Errors, each naming its field, for inputs that make a build impossible: a path that does not exist, a
    text field absent from the first readable JSONL, Parquet or ``datasets`` input (only that one is opened)."""
    errors = [
        f"spec.source.paths[{i}]: {raw!r} is neither a file nor a folder"
        for i, raw in enumerate(source.paths)
        if not (Path(raw).is_file() or Path(raw).is_dir())
    ]
    for path in find_files(source, strict=False):
        if not (path.is_dir() or path.suffix.lower() in (".jsonl", ".parquet")):
            continue
        try:
            fields = _fields(path)
        except Exception:  # unreadable: read_documents counts it; try the next one
            continue
        if fields is None:
            continue
        if source.kind == "instructions":
            conversation = {"conversations", "messages"} & set(fields)
            if not conversation and source.instruction_field not in fields:
                errors.append(
                    f"spec.source.instructionField: {source.instruction_field!r} is not a field of {path} (its "
                    f"fields: {', '.join(fields)}; conversations or messages are read as ShareGPT-style turns)"
                )
        elif source.text_field not in fields:
            listed = ", ".join(fields)
            errors.append(
                f"spec.source.textField: {source.text_field!r} is not a field of {path} (its fields: {listed})"
            )
        break
    return errors


# --- cleaning and chunking ----------------------------------------------------------------------------------

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
