"""The engines a spec's ``generation.backend`` names: ``vllm``, vLLM's offline batching in this process
(:class:`VllmEngine`), or ``endpoint``, an OpenAI-compatible server (:mod:`kubetune.llm.endpoint`);
:func:`open_engine` opens the one a spec names. What they answer is :mod:`kubetune.llm.chat`.

The only module that imports vLLM and torch (inside the functions that need them): the judge and the
endpoint backend do not import it, so they work where neither is installed (the trainer's image).
"""

from __future__ import annotations

import os

from kubetune.api.v1alpha1.datasetbuild import GenerationSpec
from kubetune.llm.chat import ChatEngine, Completion, Request


class VllmEngine:
    """vLLM offline batching (``LLM.chat``) with structured outputs; the CPU build works the same way."""

    def __init__(self, spec: GenerationSpec, model: str | None = None):
        import torch
        from vllm import LLM

        self.spec = spec
        on_gpu = torch.cuda.is_available()
        options: dict = {"tensor_parallel_size": spec.tensor_parallel_size, "dtype": spec.dtype} if on_gpu else {}
        if not on_gpu:
            # Measured on 2 cores (bench/README.md): float32 without graph compilation decodes faster than
            # bfloat16 compiled, and starts in under a minute instead of three.
            # Chunked prefill off: vLLM 0.32 rewinds a seeded request's generator when it splits its prompt over
            # two steps, which a CPU torch.Generator cannot do (every request here has a seed), and the engine
            # dies ("CPU Generator does not use offset"; bench/generation/repro_chunked_prefill.py).
            options = {"dtype": "float32", "enforce_eager": True, "enable_chunked_prefill": False}
            if (os.cpu_count() or 1) <= 4:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # one core of two is too many to idle
        self.llm = LLM(
            model=model or spec.model,
            max_model_len=spec.max_model_len,
            seed=spec.seed,
            gpu_memory_utilization=spec.gpu_memory_utilization or (0.9 if on_gpu else 0.3),
            **options,
        )

    def complete(self, requests: list[Request]) -> list[Completion]:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        if not requests:
            return []
        params = [
            SamplingParams(
                temperature=self.spec.temperature if r.temperature is None else r.temperature,
                top_p=self.spec.top_p,
                max_tokens=r.max_tokens or self.spec.max_tokens,
                repetition_penalty=self.spec.repetition_penalty,
                seed=r.seed,
                structured_outputs=StructuredOutputsParams(json=r.schema),
            )
            for r in requests
        ]
        outputs = self.llm.chat([r.messages for r in requests], params, use_tqdm=False)
        return [
            Completion(o.outputs[0].text, o.outputs[0].finish_reason or "stop", len(o.outputs[0].token_ids))
            for o in outputs
        ]


def open_engine(spec: GenerationSpec, model: str | None = None) -> ChatEngine:
    """The engine the spec names; ``model`` overrides the model (a judge on another model)."""
    if spec.backend == "endpoint":
        from kubetune.llm.endpoint import EndpointEngine

        assert spec.endpoint is not None  # the spec's CEL rule
        return EndpointEngine(spec, model=model)
    return VllmEngine(spec, model=model)
