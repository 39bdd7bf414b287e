"""Decontamination against evaluation sets: word n-gram overlap, field selection, formats, input checks."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.api.v1alpha1.datasetbuild import DecontaminationSpec, EvalSetSpec
from kubetune.datagen.decontam import EvalIndex, check_eval_sets

QUESTION = (
    "Which gas do green plants absorb from the atmosphere during photosynthesis in order to build sugars "
    "and release oxygen?"
)
ANSWER = "Plants take in carbon dioxide through small pores in their leaves called stomata and fix it."
THIRTEEN = "green plants absorb from the atmosphere during photosynthesis in order to build sugars"  # 13 words
TWELVE = "plants absorb from the atmosphere during photosynthesis in order to build sugars"  # 12 words


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def spec(*eval_sets: tuple[object, list[str]], ngram: int = 13) -> DecontaminationSpec:
    return DecontaminationSpec(
        eval_sets=[EvalSetSpec(path=str(p), fields=fields) for p, fields in eval_sets], ngram=ngram
    )


@pytest.fixture
def eval_jsonl(tmp_path):
    return write_jsonl(
        tmp_path / "eval.jsonl", [{"id": 7, "question": QUESTION, "answer": ANSWER, "choices": ["CO2", "O2"]}]
    )


def test_no_eval_sets_no_index():
    assert EvalIndex.load(DecontaminationSpec()) is None


def test_a_thirteen_word_span_contaminates_twelve_do_not(eval_jsonl):
    index = EvalIndex.load(spec((eval_jsonl, [])))
    assert len(THIRTEEN.split()) == 13 and len(TWELVE.split()) == 12
    assert index.contaminated(f"Here is a question for you: {THIRTEEN}. Think about it.")
    assert not index.contaminated(f"Here is a question for you: {TWELVE}. Think about it.")
    assert not index.contaminated(f"Green {TWELVE.replace('atmosphere', 'air')}")
    assert index.contaminated(
        "They say PLANTS take in carbon dioxide through small pores in their leaves called stomata!"
    )


def test_case_and_punctuation_do_not_matter(eval_jsonl):
    index = EvalIndex.load(spec((eval_jsonl, [])))
    shouted = "GREEN plants -- absorb, from the ATMOSPHERE (during) photosynthesis; in order to: build... Sugars"
    assert index.contaminated(shouted)


def test_counts_and_short_texts(eval_jsonl):
    index = EvalIndex.load(spec((eval_jsonl, [])))
    # question (19 words: 7 n-grams), answer (16 words: 4), and the two choices (short: one each).
    assert index.n_texts == 4
    assert index.n_ngrams == 7 + 4 + 2
    assert index.contaminated("co2") and index.contaminated("  CO2. ")
    assert not index.contaminated("The CO2 level rose."), "a short eval text matches only the same words"
    assert not index.contaminated("")


def test_named_fields_restrict_what_is_read(eval_jsonl):
    index = EvalIndex.load(spec((eval_jsonl, ["question"])))
    assert index.n_texts == 1
    assert index.contaminated(THIRTEEN)
    assert not index.contaminated(ANSWER)


def test_parquet_with_nested_messages(tmp_path):
    path = tmp_path / "chat.parquet"
    messages = [
        {"role": "system", "content": "You are a careful assistant who answers science questions."},
        {"role": "user", "content": QUESTION},
    ]
    pq.write_table(pa.table({"messages": [messages], "label": [1], "note": ["unrelated words only"]}), path)
    index = EvalIndex.load(spec((path, ["messages"])))
    assert index.n_texts == 2, "the two contents; roles are not text"
    assert index.contaminated(THIRTEEN)
    assert not index.contaminated("unrelated words only")
    everything = EvalIndex.load(spec((path, [])))
    assert everything.n_texts == 3 and everything.contaminated("Unrelated words only.")


def test_several_sets_and_a_smaller_ngram(tmp_path, eval_jsonl):
    other = write_jsonl(tmp_path / "other.jsonl", [{"text": "the quick brown fox jumps"}])
    index = EvalIndex.load(spec((eval_jsonl, ["question"]), (other, []), ngram=3))
    assert index.contaminated("I saw a BROWN fox jump") is False
    assert index.contaminated("a quick brown fox") is True


def test_check_eval_sets(tmp_path, eval_jsonl):
    pq.write_table(pa.table({"a": ["x"], "b": ["y"]}), tmp_path / "e.parquet")
    (tmp_path / "e.csv").write_text("a,b\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"a": 1}\n\n[1, 2]\n')
    (tmp_path / "broken.parquet").write_bytes(b"nope")
    field = "spec.curation.decontamination.evalSets"
    assert check_eval_sets(spec((eval_jsonl, ["question"]), (tmp_path / "e.parquet", ["a", "b"]))) == []
    assert check_eval_sets(DecontaminationSpec()) == []
    errors = check_eval_sets(
        spec(
            (tmp_path / "x.jsonl", []),
            (tmp_path / "e.csv", []),
            (tmp_path / "e.parquet", ["question", "a"]),
            (eval_jsonl, ["prompt"]),
            (bad, []),
            (tmp_path / "broken.parquet", []),
            (tmp_path, []),
        )
    )
    assert errors[:5] == [
        f"{field}[0].path: no such file {tmp_path / 'x.jsonl'}",
        f"{field}[1].path: {tmp_path / 'e.csv'} is not JSONL or Parquet",
        f'{field}[2].fields: "question" is not a field of {tmp_path / "e.parquet"} (its fields: a, b)',
        f'{field}[3].fields: "prompt" is not a field of {eval_jsonl} (its fields: id, question, answer, choices)',
        f"{field}[4].path: {bad} cannot be read ({bad} line 3 is not a JSON object)",
    ]
    assert errors[5].startswith(f"{field}[5].path: {tmp_path / 'broken.parquet'} cannot be read (")
    assert errors[6:] == [f"{field}[6].path: {tmp_path} is not JSONL or Parquet"]
