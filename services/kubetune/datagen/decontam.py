"""Decontamination: drop texts that share a word n-gram with an evaluation set.

Eval files are JSONL or Parquet. Every string of a row is an eval text (or only those of the named fields),
strings nested in lists and dicts included (a ``messages`` column: each message's content; roles are not
text). Texts are split into casefolded ``\\w+`` words, so case and punctuation do not matter, and each run of
``ngram`` words is kept as a stable 64-bit hash: memory grows with the eval n-grams, not with the dataset.

A text shorter than ``ngram`` words is one n-gram of all its words. A short eval text thus matches only a text
of exactly the same words, and a short sample only such an eval text.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.datasetbuild import DecontaminationSpec

_WORD = re.compile(r"\w+")
_MASK = (1 << 64) - 1
_BASE = 0x100000001B3  # odd: multiplication is a bijection mod 2**64
_FORMATS = (".jsonl", ".parquet")
_FIELD = "spec.curation.decontamination.evalSets"


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold())


def _strings(value: Any) -> Iterator[str]:
    """The strings in a value, depth first; a dict's ``role`` (a chat message's) is skipped."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key != "role":
                yield from _strings(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _strings(item)


def _rows(path: Path, fields: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of a JSONL or Parquet file, restricted to ``fields`` when some are named."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=fields or None):
            yield from batch.to_pylist()
        return
    with path.open(encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                row = None
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is not a JSON object")
            yield {k: row[k] for k in fields if k in row} if fields else row


class EvalIndex:
    """The hashed word n-grams of the evaluation texts."""

    def __init__(self, ngram: int):
        self.ngram = ngram
        self.n_texts = 0
        self._grams: set[int] = set()
        self._word_hashes: dict[str, int] = {}

    @property
    def n_ngrams(self) -> int:
        return len(self._grams)

    @classmethod
    def load(cls, spec: DecontaminationSpec) -> EvalIndex | None:
        """The index of every eval set; ``None`` when there is none (the stage is off)."""
        if not spec.eval_sets:
            return None
        index = cls(spec.ngram)
        for eval_set in spec.eval_sets:
            for row in _rows(Path(eval_set.path), eval_set.fields):
                for text in _strings(row):
                    index.add(text)
        return index

    def add(self, text: str) -> None:
        """Index one eval text."""
        self.n_texts += 1
        self._grams.update(self._hashes(_words(text)))

    def contaminated(self, text: str) -> bool:
        """Whether ``text`` shares a word n-gram with an eval text (see the module's note on short texts)."""
        return any(h in self._grams for h in self._hashes(_words(text)))

    def _word_hash(self, word: str) -> int:
        h = self._word_hashes.get(word)
        if h is None:
            h = self._word_hashes[word] = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest()) | 1
        return h

    def _hashes(self, words: list[str]) -> Iterator[int]:
        """A polynomial rolling hash (mod 2**64) of each run of ``ngram`` words; a shorter text: one hash of all
        its words, marked so that it never equals a full n-gram's."""
        n = len(words)
        if n == 0:
            return
        if n < self.ngram:
            joined = "\x1f".join(words).encode()
            yield int.from_bytes(hashlib.blake2b(joined, digest_size=8, person=b"short").digest())
            return
        hashes = [self._word_hash(w) for w in words]
        top = pow(_BASE, self.ngram - 1, 1 << 64)
        h = 0
        for w in hashes[: self.ngram]:
            h = (h * _BASE + w) & _MASK
        yield h
        for i in range(self.ngram, n):
            h = ((h - hashes[i - self.ngram] * top) * _BASE + hashes[i]) & _MASK
            yield h


def _fields_of(path: Path) -> list[str]:
    """A Parquet file's columns, or the keys of a JSONL file's rows (every row is parsed: a bad line is an
    error here, before the build, rather than in the middle of it)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    seen: dict[str, None] = {}
    for row in _rows(path, []):
        seen.update(dict.fromkeys(row))
    return list(seen)


def check_eval_sets(spec: DecontaminationSpec) -> list[str]:
    """Errors, each naming its field, for eval sets that cannot be read: a missing file, another format, a file
    that does not parse, a named field that no row has."""
    errors = []
    for i, eval_set in enumerate(spec.eval_sets):
        path = Path(eval_set.path)
        if not path.exists():
            errors.append(f"{_FIELD}[{i}].path: no such file {path}")
            continue
        if not path.is_file() or path.suffix.lower() not in _FORMATS:
            errors.append(f"{_FIELD}[{i}].path: {path} is not JSONL or Parquet")
            continue
        try:
            fields = _fields_of(path)
        except UnicodeDecodeError:
            errors.append(f"{_FIELD}[{i}].path: {path} is not UTF-8")
            continue
        except Exception as e:  # JSON, Arrow and I/O errors alike: the file cannot be read
            errors.append(f"{_FIELD}[{i}].path: {path} cannot be read ({e})")
            continue
        listed = ", ".join(fields)
        errors.extend(
            f'{_FIELD}[{i}].fields: "{name}" is not a field of {path} (its fields: {listed})'
            for name in eval_set.fields
            if name not in fields
        )
    return errors
