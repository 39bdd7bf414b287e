"""Instruction rows as a source (source.kind: instructions): columns, Alpaca, ShareGPT and chat messages, from
JSONL, Parquet and a datasets folder; a row that holds no sample is counted under its reason."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1.datasetbuild import SourceSpec
from kubetune.datagen import instructions

SOURCE = SourceSpec(paths=["x"], kind="instructions")
PASSAGE = "LoRA trains two small matrices per layer and keeps the base model frozen."


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        pytest.param({"id": 7, "instruction": "What does LoRA train?", "answer": "Two matrices.", "source": PASSAGE},
                     {"instruction": "What does LoRA train?", "answer": "Two matrices.", "context": PASSAGE,
                      "id": "7"}, id="columns"),
        pytest.param({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
                     {"instruction": "Translate to French.\n\nGood morning", "answer": "Bonjour"}, id="alpaca"),
        pytest.param({"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"},
                                        {"from": "gpt", "value": "Hello."}]},
                     {"instruction": "Hi?", "answer": "Hello."}, id="sharegpt"),
        pytest.param({"messages": [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "Because."}]},
                     {"instruction": "Why?", "answer": "Because."}, id="messages"),
        pytest.param({"answer": "Two matrices."}, "no_instruction", id="no-instruction"),
        pytest.param({"instruction": "What does LoRA train?", "answer": "  "}, "no_answer", id="blank-answer"),
        pytest.param({"messages": [{"role": "user", "content": "Why?"}]}, "no_answer", id="no-assistant-turn"),
        pytest.param(["not", "a", "row"], "invalid_row", id="not-an-object"),
    ],
)  # fmt: skip
def test_a_row_becomes_a_sample_or_a_reason(row, expected):
    found = instructions.to_sample("f.jsonl#1", row, SOURCE)
    if isinstance(expected, str):
        assert found == expected
    else:
        assert {k: v for k, v in found.items() if k in expected} == expected
        # Rows of one passage are grouped by it for the split; a row without one is a group of its own.
        assert found["source"] == (found["chunk_id"]) and found["origin"] == "curated"
        assert found["source"].startswith("text:") == ("context" in expected)


def test_jsonl_parquet_and_a_datasets_folder_read_alike(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset

    rows = [
        {"id": str(i), "instruction": f"Question {i}?", "answer": f"Answer {i}.", "source": PASSAGE} for i in range(3)
    ]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "c"))
    for path, invalid in ((tmp_path / "a.jsonl", 1), (tmp_path / "b.parquet", 0), (tmp_path / "c", 0)):
        samples, dropped = instructions.read_samples([path], SOURCE)
        assert [s["id"] for s in samples] == ["0", "1", "2"], path
        assert dropped == ({"invalid_row": invalid} if invalid else {})
