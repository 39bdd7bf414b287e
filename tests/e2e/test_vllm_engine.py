"""kubetune's offline vLLM engine on CPU with one batch larger than vLLM's per-step token budget.

vLLM 0.32 splits a prompt over two steps when a batch's prompts exceed ``max_num_batched_tokens`` (4,096
here) and then rewinds that request's random generator, which a CPU ``torch.Generator`` cannot do; every
request of kubetune has a seed, so the engine died. ``VllmEngine`` turns chunked prefill off on CPU; this
test sends the quickstart's chunks twice over (about 8,000 prompt tokens, 24 seeded requests) in one call.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_a_batch_over_the_token_budget_completes(root: Path, smollm2: Path):
    from transformers import AutoTokenizer

    from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
    from kubetune.datagen import documents, generate, pipeline
    from kubetune.llm.engine import VllmEngine

    wire = next(yaml.safe_load_all((root / "examples" / "quickstart.yaml").read_text()))["spec"]
    wire["source"]["paths"] = [str(root / "examples" / "data")]
    wire["generation"] |= {"model": str(smollm2), "maxTokens": 16}
    spec = DatasetBuildSpec.model_validate(wire)
    chunks = [documents.Chunk(**c) for c in pipeline.prepare(pipeline.Build(spec, None, lambda _: None, None))]
    twice = chunks + [replace(c, chunk_id=c.chunk_id + "-again") for c in chunks]
    requests = generate.sample_requests(twice, spec)
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    rendered = [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]
    prompt_tokens = sum(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert prompt_tokens > 4096, "the batch must not fit one step"

    engine = VllmEngine(spec.generation)
    completions = engine.complete(requests)
    assert len(completions) == len(requests) == 2 * len(chunks)
    assert all(c.tokens == 16 and c.finish_reason == "length" for c in completions)
    again = engine.complete(requests[:3])
    assert [c.text for c in again] == [c.text for c in completions[:3]], "a request's seed fixes its answer"
