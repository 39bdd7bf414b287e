"""The datagen stages on a tiny corpus: parsing, curation counts, formatting, split and the manifest.

The LLM is replaced here by a scripted writer that returns fixed answers: these tests are about what the
pipeline does with good, broken and duplicate answers, which a real model would not produce on demand.
The real vLLM engine is exercised in tests/e2e (SmolLM2) and in test_vllm_writer.py.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from kubetune.datagen import formatting, generate, pipeline
from kubetune.spec.datasetbuild import CurationSpec, DatasetBuildSpec


def answer(*pairs: tuple[str, str]) -> str:
    return json.dumps({"pairs": [{"instruction": i, "answer": a} for i, a in pairs]})


class ScriptedWriter:
    """Answers the n-th conversation with the n-th scripted completion, recording what it was asked."""

    def __init__(self, completions: list[generate.Completion]):
        self.completions = completions
        self.asked: list = []

    def complete(self, conversations, schema):
        self.asked.extend(conversations)
        assert schema == generate.pairs_schema(2)
        return [self.completions[i % len(self.completions)] for i in range(len(conversations))]


@pytest.mark.parametrize(
    ("completion", "kept", "reason"),
    [
        pytest.param(
            generate.Completion(answer(("What is LoRA used for?", "Training small adapters.")), "stop", 9),
            1,
            None,
            id="valid",
        ),
        pytest.param(
            generate.Completion('{"pairs": [{"instruction": "Wh', "length", 9), 0, "truncated_answer", id="truncated"
        ),
        pytest.param(generate.Completion("not json", "stop", 2), 0, "invalid_json", id="not-json"),
        pytest.param(generate.Completion('{"items": []}', "stop", 2), 0, "wrong_shape", id="wrong-shape"),
        pytest.param(
            generate.Completion(answer(("Why?", "Because the text says so.")), "stop", 5),
            0,
            "instruction_too_short",
            id="short-instruction",
        ),
        pytest.param(
            generate.Completion(answer(("What is QLoRA?", "4-bit.")), "stop", 5),
            0,
            "answer_too_short",
            id="short-answer",
        ),
    ],
)
def test_parse_pairs_counts_what_it_drops(completion, kept, reason):
    dropped: dict[str, int] = {}
    pairs = generate.parse_pairs(completion, "c1", CurationSpec(), dropped)
    assert len(pairs) == kept
    assert dropped == ({reason: 1} if reason else {})


def test_split_is_seeded_and_holds_out_at_least_one():
    rows = [{"i": i} for i in range(20)]
    train, test = formatting.split(rows, 0.1, seed=42)
    assert len(test) == 2 and len(train) == 18
    assert formatting.split(rows, 0.1, seed=42) == (train, test)
    assert formatting.split(rows, 0.1, seed=7) != (train, test)
    assert len(formatting.split(rows[:3], 0.1, seed=42)[1]) == 1


def test_pipeline_on_a_tiny_corpus(tmp_path, tiny_model):
    corpus = tmp_path / "docs"
    corpus.mkdir()
    body = "Low-rank adapters train few parameters. They keep the base model frozen. " * 20
    (corpus / "a.md").write_text("# LoRA\n\n" + body)
    (corpus / "b.md").write_text("# LoRA\n\n" + body)  # a duplicate document
    (corpus / "c.txt").write_text("too short")
    spec = DatasetBuildSpec.model_validate(
        {
            "source": {"paths": [str(corpus)]},
            "cleaning": {"minDocumentChars": 100},
            "chunking": {"minChars": 300, "maxChars": 600},
            "generation": {"model": str(tiny_model), "pairsPerChunk": 2},
            "format": {"systemPrompt": "You are terse."},
            "split": {"testSize": 0.25, "seed": 1},
        }
    )
    frozen = ("Is the base model frozen?", "Yes, the base model stays frozen.")
    good = [
        generate.Completion(
            answer(("What does an adapter do, case 0?", "It trains few parameters, case 0."), frozen), "stop", 30
        ),
        generate.Completion(
            answer(("What does an adapter do, case 1?", "It trains few parameters, case 1."), frozen), "stop", 30
        ),
        generate.Completion(
            answer(("Is the base model frozen?", "It is kept frozen while the adapter trains.")), "stop", 20
        ),
    ]
    writer = ScriptedWriter([*good, generate.Completion('{"pairs": [', "length", 512)])
    manifest = pipeline.build(spec, tmp_path / "out", name="tiny", writer_factory=lambda _: writer, log=lambda _: None)

    stages = {s["name"]: s for s in manifest["stages"]}
    assert [s["name"] for s in manifest["stages"]] == pipeline.STAGES
    assert stages["ingest"]["output"] == 3
    assert stages["clean"]["dropped"] == {"too_short": 1}
    n_chunks = stages["chunk"]["output"]
    assert n_chunks == 8, "two equal documents of four chunks each"
    assert stages["dedup_chunks"]["dropped"] == {"exact_duplicate": 4}
    assert len(writer.asked) == 4 == stages["generate"]["input"]
    assert writer.asked[0][0]["role"] == "system" and "2 instruction-answer pairs" in writer.asked[0][0]["content"]
    assert stages["generate"]["dropped"] == {"truncated_answer": 1}
    assert stages["generate"]["output"] == 5
    assert stages["dedup_pairs"]["dropped"] == {"exact_duplicate": 1, "repeated_instruction": 1}
    assert stages["dedup_pairs"]["output"] == 3

    train = pq.read_table(tmp_path / "out" / "train.parquet").to_pylist()
    test = pq.read_table(tmp_path / "out" / "test.parquet").to_pylist()
    assert len(train) + len(test) == stages["dedup_pairs"]["output"] and len(test) >= 1
    row = train[0]
    assert row["messages"][0] == {"role": "system", "content": "You are terse."}
    assert row["prompt"].endswith("<|im_start|>assistant\n")
    assert row["completion"] == row["answer"] + "<|im_end|>\n"
    files = manifest["files"]
    assert files["train.parquet"]["rows"] == len(train)
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["digest"] == manifest["digest"] and on_disk["digest"].startswith("sha256:")
    assert (tmp_path / "out" / "funnel.png").read_bytes()[:4] == b"\x89PNG"


def test_empty_result_fails_with_the_funnel_written(tmp_path, tiny_model):
    (tmp_path / "a.txt").write_text("Adapters are small. " * 30)
    spec = DatasetBuildSpec.model_validate(
        {
            "source": {"paths": [str(tmp_path / "a.txt")]},
            "generation": {"model": str(tiny_model), "pairsPerChunk": 2},
        }
    )
    writer = ScriptedWriter([generate.Completion("garbage", "stop", 1)])
    with pytest.raises(pipeline.EmptyDatasetError, match="no pairs survived"):
        pipeline.build(spec, tmp_path / "out", writer_factory=lambda _: writer, log=lambda _: None)
    funnel = json.loads((tmp_path / "out" / "manifest.json").read_text())["stages"]
    assert funnel[-1]["name"] == "split" and any(s["dropped"].get("invalid_json") for s in funnel)
