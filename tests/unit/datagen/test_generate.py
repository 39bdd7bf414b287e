"""The JSON schemas the datagen sends compile in xgrammar, vLLM's structured-outputs backend (the version vLLM
pins): a schema it cannot compile fails every request of a build as invalid_json, with no other sign."""

from __future__ import annotations

import json

import pytest

from kubetune.datagen import generate
from kubetune.llm import judge

SCHEMAS = {
    "pairs": generate.pairs_schema(3),
    "extract": generate.pairs_schema(3, extract=True),
    "answer": generate.ANSWER_SCHEMA,
    "instruction": generate.INSTRUCTION_SCHEMA,
    "question": generate.QUESTION_SCHEMA,
    "judge": judge.schema(judge.criteria_for("a source")),
}


@pytest.fixture(scope="module")
def compiler(smollm2):
    xgr = pytest.importorskip("xgrammar")
    from transformers import AutoTokenizer

    return xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(smollm2)))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_schema_compiles_in_xgrammar(compiler, name):
    compiler.compile_json_schema(json.dumps(SCHEMAS[name]))


def test_a_back_translated_instruction_is_a_question_by_its_pattern():
    import re

    pattern = re.compile(generate.QUESTION_SCHEMA["properties"]["instruction"]["pattern"])
    assert pattern.match("What does LoRA train?")
    assert not pattern.match("The LoRA adapter provides improved performance.")
    assert not pattern.match("Building an instruction dataset")
