"""The DatasetBuild spec: raw documents in, a curated, chat-formatted, split instruction dataset out."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kubetune.spec.base import CelRule, SpecModel


class SourceSpec(SpecModel):
    """Where the raw documents are."""

    paths: list[str] = Field(
        min_length=1,
        description="Files or folders of raw text. Relative paths resolve against the working directory.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*.txt", "*.md"],
        description="Glob patterns a file in a folder must match to be read.",
    )


class CleaningSpec(SpecModel):
    """Normalisation applied to each document before chunking."""

    min_document_chars: int = Field(200, ge=0, description="Documents shorter than this after cleaning are dropped.")
    strip_markdown: bool = Field(True, description="Remove markdown markup (headings, emphasis, links, code fences).")


class ChunkingSpec(SpecModel):
    """Split documents into chunks on sentence boundaries."""

    min_chars: int = Field(1000, ge=1, description="A chunk grows until it has at least this many characters.")
    max_chars: int = Field(2000, ge=1, description="A chunk never exceeds this (a longer sentence is cut).")

    cel_rules: ClassVar = (
        CelRule(
            "self.minChars <= self.maxChars", "minChars must not exceed maxChars", lambda s: s.min_chars <= s.max_chars
        ),
    )


class GenerationSpec(SpecModel):
    """How the LLM writes instruction-answer pairs from each chunk."""

    model: str = Field(description="Path of a Hugging Face model folder served by vLLM.")
    backend: Literal["vllm"] = Field("vllm", description="The engine: vLLM offline batching.")
    pairs_per_chunk: int = Field(3, ge=1, le=20, description="Instruction-answer pairs asked for per chunk.")
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.1, gt=0.0, le=2.0, description="Above 1 discourages repeating tokens.")
    max_tokens: int = Field(768, ge=16, description="Token budget per answer; JSON cut short is dropped.")
    max_model_len: int = Field(4096, ge=256, description="vLLM's context length (prompt + output).")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="vLLM's memory share; on CPU the share of host RAM. Default: 0.9 on GPU, 0.3 on CPU.",
    )
    seed: int = 42
    system_prompt: str | None = Field(None, description="Overrides the built-in instruction-writer prompt.")


class CurationSpec(SpecModel):
    """Filters applied to the generated pairs."""

    exact_dedup: bool = Field(True, description="Drop pairs whose normalised instruction and answer repeat.")
    min_instruction_chars: int = Field(10, ge=1)
    min_answer_chars: int = Field(20, ge=1)


class FormatSpec(SpecModel):
    """Chat-template formatting."""

    tokenizer: str | None = Field(
        None, description="Tokenizer whose chat template formats the pairs. Default: the generation model."
    )
    system_prompt: str | None = Field(None, description="A system message put before every conversation.")


class SplitSpec(SpecModel):
    """The train/test split."""

    test_size: float = Field(0.1, ge=0.0, lt=1.0, description="Share of pairs held out for evaluation.")
    seed: int = 42


class DatasetBuildSpec(SpecModel):
    """Raw documents -> cleaned chunks -> LLM-written pairs -> curated, formatted, split dataset."""

    source: SourceSpec
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec)
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    generation: GenerationSpec
    curation: CurationSpec = Field(default_factory=CurationSpec)
    format: FormatSpec = Field(default_factory=FormatSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
