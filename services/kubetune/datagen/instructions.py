"""Instruction rows as a DatasetBuild's source (``source.kind: instructions``): an existing set curated without
generation, as NeMo Curator and distilabel curate Alpaca- or ShareGPT-style data.

Rows come from JSONL, Parquet or a ``datasets`` folder. A row is read as

- columns: ``instructionField`` and ``answerField`` (Alpaca's ``output`` when the answer field is absent), with an
  Alpaca ``input`` appended to the instruction, and ``sourceField``, the text the answer should be grounded in;
- or a conversation: ``conversations`` (ShareGPT: ``from``/``value``) or ``messages`` (``role``/``content``),
  whose first user turn and the assistant turn after it are the sample.

A row that is neither is counted and dropped (``no_instruction``, ``no_answer``), never guessed. Each sample
keeps its source text as ``context`` (grounding reads it), its row id when the row has one, and is grouped for the
train/test split by that source text, so that rows written from one passage stay on one side.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.datasetbuild import SourceSpec
from kubetune.datagen import documents

_USER, _ASSISTANT = {"human", "user"}, {"gpt", "assistant", "model"}
MIN_SOURCE_WORDS = 12  # a source field shorter than this is a label (where the row came from), not a text


def _rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(reference, row) of every row of a JSONL, Parquet or ``datasets`` input; a line that is not JSON is a row
    of None."""
    if path.is_dir():
        import pyarrow as pa

        for prefix, split in documents._datasets_splits(path):
            for arrow_file in documents._arrow_files(split):
                with pa.memory_map(str(arrow_file)) as source:
                    for number, row in enumerate(pa.ipc.open_stream(source).read_all().to_pylist()):
                        yield f"{prefix}#{number}", row
    elif path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        for number, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}#{number}", row
    else:
        with path.open(encoding="utf-8-sig") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield f"{path}#{number}", json.loads(line)
                    except ValueError:
                        yield f"{path}#{number}", None


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _conversation(row: dict[str, Any]) -> tuple[str | None, str | None]:
    turns = row.get("conversations") or row.get("messages") or []
    instruction = answer = None
    for turn in turns if isinstance(turns, list) else []:
        if not isinstance(turn, dict):
            continue
        who = str(turn.get("from") or turn.get("role") or "").lower()
        said = _text(turn.get("value") if "value" in turn else turn.get("content"))
        if instruction is None and who in _USER:
            instruction = said
        elif instruction is not None and who in _ASSISTANT:
            answer = said
            break
    return instruction, answer


def to_sample(ref: str, row: Any, source: SourceSpec) -> dict[str, Any] | str:
    """The sample a row holds, or the reason it holds none."""
    if not isinstance(row, dict):
        return "invalid_row"
    if "conversations" in row or "messages" in row:
        instruction, answer = _conversation(row)
    else:
        asked = instruction = _text(row.get(source.instruction_field))
        extra = _text(row.get(source.input_field))
        if instruction and extra:
            instruction = f"{instruction}\n\n{extra}"
        answer = _text(row.get(source.answer_field, row.get("output")))
    if "conversations" in row or "messages" in row:
        asked = instruction
    if instruction is None:
        return "no_instruction"
    if answer is None:
        return "no_answer"
    context = _text(row.get(source.source_field))
    if context is not None and len(context.split()) < MIN_SOURCE_WORDS:
        context = None  # a provenance label ("airoboros2.2"), not a text to ground in
    group = "text:" + documents.fingerprint(context)[:16] if context else ref
    sample = {"instruction": instruction, "answer": answer, "source": group, "chunk_id": group, "origin": "curated"}
    if context:
        sample["context"] = context
    if asked != instruction:  # the quality checks read the instruction as asked, without the appended input
        sample["asked"] = asked
    if row.get(source.id_field) is not None:
        sample["id"] = str(row[source.id_field])
    return sample


def read_samples(files: list[Path], source: SourceSpec) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The samples of every input file, and the count of rows dropped by reason."""
    samples, dropped = [], {}
    for path in files:
        for ref, row in _rows(path):
            found = to_sample(ref, row, source)
            if isinstance(found, str):
                dropped[found] = dropped.get(found, 0) + 1
            else:
                samples.append(found)
    return samples, dropped
