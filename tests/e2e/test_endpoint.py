"""EndpointEngine against a real ``vllm serve`` of SmolLM2-135M-Instruct (CPU): structured outputs, seeds, auth.

Failure modes a real server won't produce on demand (429, 503, timeouts) are in tests/unit/llm/test_endpoint.py.
"""

from __future__ import annotations

import json

import jsonschema
import pytest

from kubetune.api.v1alpha1.datasetbuild import GenerationSpec
from kubetune.llm.chat import Request, is_json
from kubetune.llm.endpoint import EndpointEngine, EndpointError

pytestmark = pytest.mark.slow

# Bounded strings and items: a 135M model's answers close well within max_tokens.
PAIRS_SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "minItems": 1,
            "maxItems": 2,
            "items": {
                "type": "object",
                "properties": {
                    "instruction": {"type": "string", "minLength": 1, "maxLength": 60},
                    "answer": {"type": "string", "minLength": 1, "maxLength": 80},
                },
                "required": ["instruction", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
TOPICS = ["photosynthesis", "the moon", "rivers", "volcanoes"]


def gen_spec(server, **endpoint_fields) -> GenerationSpec:
    endpoint = {"url": server.base_url, "model": server.model, "concurrency": 4, "maxRetries": 1}
    return GenerationSpec.model_validate(
        {
            "model": "models/SmolLM2-135M-Instruct",
            "backend": "endpoint",
            "temperature": 0.7,
            "maxTokens": 160,
            "endpoint": endpoint | endpoint_fields,
        }
    )


def with_env_key(server, monkeypatch, key: str | None = None) -> GenerationSpec:
    monkeypatch.setenv("KUBETUNE_E2E_KEY", server.api_key if key is None else key)
    return gen_spec(server, apiKeyEnv="KUBETUNE_E2E_KEY")


def ask(topic: str, seed: int, max_tokens: int | None = None) -> Request:
    messages = [
        {"role": "system", "content": "Reply with JSON only."},
        {"role": "user", "content": f"Write two short questions and answers about {topic}."},
    ]
    return Request(messages, PAIRS_SCHEMA, seed, max_tokens=max_tokens)


def test_json_schema_answers_are_valid_json_of_the_schema(vllm_server, monkeypatch):
    engine = EndpointEngine(with_env_key(vllm_server, monkeypatch))
    completions = engine.complete([ask(topic, seed) for seed, topic in enumerate(TOPICS)])

    assert len(completions) == len(TOPICS)
    for completion in completions:
        assert completion.finish_reason == "stop", completion
        assert 0 < completion.tokens <= 160
        jsonschema.validate(json.loads(completion.text), PAIRS_SCHEMA)
    assert engine.retries == 0


def test_the_same_seed_gives_the_same_text(vllm_server, monkeypatch):
    engine = EndpointEngine(with_env_key(vllm_server, monkeypatch))
    first = engine.complete([ask("bread", seed, max_tokens=64) for seed in (7, 8, 9)])
    again = engine.complete([ask("bread", 7, max_tokens=64)])

    assert again[0].text == first[0].text
    assert len({c.text for c in first}) > 1  # other seeds, other samples (at temperature 0.7)


def test_a_cut_answer_says_length(vllm_server, monkeypatch):
    (completion,) = EndpointEngine(with_env_key(vllm_server, monkeypatch)).complete([ask("bees", 1, max_tokens=8)])

    assert completion.finish_reason == "length" and completion.tokens == 8
    assert not is_json(completion)


def test_a_wrong_key_is_a_401_naming_the_key_settings(vllm_server, monkeypatch):
    wrong = "wrong-" + vllm_server.api_key[::-1]
    engine = EndpointEngine(with_env_key(vllm_server, monkeypatch, key=wrong))

    with pytest.raises(EndpointError) as caught:
        engine.complete([ask("rivers", 1)])
    message = str(caught.value)
    assert "401" in message and "apiKeyEnv" in message and "apiKeyFile" in message
    assert wrong not in message and vllm_server.api_key not in message
    assert engine.retries == 0


def test_no_key_is_a_401_too(vllm_server):
    with pytest.raises(EndpointError, match=r"401.*no API key was sent"):
        EndpointEngine(gen_spec(vllm_server)).complete([ask("rivers", 1)])


def test_the_key_from_a_file_works(vllm_server, tmp_path):
    (tmp_path / "api-key").write_text(vllm_server.api_key + "\n")  # as a mounted Secret
    engine = EndpointEngine(gen_spec(vllm_server, apiKeyFile=str(tmp_path / "api-key")))

    (completion,) = engine.complete([ask("the moon", 3, max_tokens=16)])
    assert completion.tokens > 0 and completion.text


def test_an_unknown_model_is_a_404_naming_it(vllm_server, monkeypatch):
    engine = EndpointEngine(with_env_key(vllm_server, monkeypatch), model="no-such-model")

    with pytest.raises(EndpointError, match=r"404.*no-such-model.*does not exist"):
        engine.complete([ask("rivers", 1)])
