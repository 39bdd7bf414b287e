"""The LLM layer both services use: engines (vLLM offline, an OpenAI-compatible endpoint), retries, the judge.

- :mod:`kubetune.llm.chat`: a chat request under a JSON schema, its completion, the ``ChatEngine`` protocol,
  and what is done on top of any engine (per-request seeds, retries of malformed answers, reading the JSON).
- :mod:`kubetune.llm.engine`: vLLM's offline batching, and ``open_engine``, which opens the backend a spec
  names; :mod:`kubetune.llm.endpoint`: the OpenAI-compatible endpoint backend.
- :mod:`kubetune.llm.judge`: a score from 1 to 5, with a reason, for an answer to an instruction on a rubric.

The datagen pipeline writes and judges samples with it; the trainer can judge a base and a tuned model's
answers with the same judge. It sits below both services and above the spec models (the import-linter
contracts in pyproject.toml). Only :mod:`kubetune.llm.engine` imports vLLM and torch, inside its functions:
the judge, :mod:`~kubetune.llm.chat` and the endpoint backend never reach it, so they work without either.
"""
