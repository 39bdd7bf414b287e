"""The DatasetBuild spec: raw documents in, a curated, chat-formatted, split instruction or preference dataset out.

Every stage can be tuned or switched off here, and each has defaults that work: a spec naming only
``source`` and ``generation.model`` builds an instruction dataset with exact and near deduplication and the
heuristic quality filters on. The judge, decontamination and augmentation run when the spec asks for them.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from kubetune.api.v1alpha1.base import CelRule, SpecModel
from kubetune.api.v1alpha1.scheduling import DNS_SUBDOMAIN, SchedulingSpec

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class SourceSpec(SpecModel):
    """Where the raw documents are: text, markdown, HTML, PDF, JSONL, Parquet or a ``datasets`` folder."""

    paths: list[str] = Field(
        min_length=1,
        description="Files or folders of raw documents. Relative paths resolve against the working directory. "
        "A folder holding a dataset saved with datasets' save_to_disk is read as one.",
    )
    include: list[str] = Field(
        default_factory=lambda: ["*.txt", "*.md", "*.html", "*.htm", "*.pdf", "*.jsonl", "*.parquet"],
        description="Glob patterns a file in a folder must match to be read.",
    )
    text_field: str = Field(
        "text", min_length=1, description="The field holding a document's text in JSONL, Parquet and datasets rows."
    )
    kind: Literal["documents", "instructions"] = Field(
        "documents",
        description="documents: raw text, from which the LLM writes samples. instructions: rows that are samples "
        "already (JSONL, Parquet or a datasets folder: an Alpaca- or ShareGPT-style set), curated without "
        "generation; a row's source text, where it has one, is what grounding checks it against.",
    )
    instruction_field: str = Field("instruction", min_length=1, description="instructions: the instruction's field.")
    input_field: str = Field(
        "input", min_length=1, description="instructions: an Alpaca-style input, appended to the instruction."
    )
    answer_field: str = Field(
        "answer", min_length=1, description="instructions: the answer's field (Alpaca's output is read when absent)."
    )
    source_field: str = Field(
        "source", min_length=1, description="instructions: the field holding the text the answer should be grounded in."
    )
    id_field: str = Field("id", min_length=1, description="instructions: a row id kept on the row through curation.")


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


class NearDedupSpec(SpecModel):
    """MinHash with LSH over word shingles. Two texts whose shingle sets have Jaccard similarity s share at least
    one band with probability 1 - (1 - s^rows)^bands; every such candidate is then checked on its estimated
    similarity against ``threshold``, so a duplicate is decided by the estimate, not by a band collision. The
    defaults (112 permutations, as datatrove's, in 28 bands of 4 rows: a pair at J 0.6 is a candidate with
    probability 0.98) make the threshold decide; measured against datatrove in bench/dedup."""

    enabled: bool = Field(True, description="Near-duplicate removal on documents, chunks and samples; false: off.")
    shingle_size: int = Field(5, ge=1, le=32, description="Words per shingle.")
    bands: int = Field(28, ge=1, le=1024, description="LSH bands; bands x rows MinHash permutations are computed.")
    rows: int = Field(4, ge=1, le=64, description="Rows (hashes) per band.")
    threshold: float = Field(
        0.65, gt=0.0, le=1.0, description="Estimated Jaccard similarity at or above which two texts are duplicates."
    )
    seed: int = Field(1, description="Seed of the MinHash permutations: the same seed, the same duplicates found.")


class DedupSpec(SpecModel):
    """Duplicate removal on documents and chunks before generation (no LLM time on a copy), and on samples."""

    exact: bool = Field(True, description="Drop texts whose case- and space-normalised form repeats.")
    near: NearDedupSpec = Field(default_factory=NearDedupSpec)


class EndpointSpec(SpecModel):
    """An OpenAI-compatible server (``/v1/chat/completions``): vLLM's own ``vllm serve``, or any other.

    The API key is read from an environment variable or a file (a mounted Secret), never from the spec."""

    url: str = Field(pattern=r"^https?://", description="Base URL, e.g. http://vllm:8000/v1.")
    model: str | None = Field(None, description="The served model's name. Default: generation.model.")
    api_key_env: str | None = Field(None, pattern=ENV_NAME, description="Environment variable holding the API key.")
    api_key_file: str | None = Field(None, description="File holding the API key (a mounted Secret).")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once.")
    max_retries: int = Field(5, ge=0, le=100, description="Retries of a request refused with 429 or 5xx.")
    timeout_seconds: float = Field(600.0, gt=0.0, description="Per-request timeout.")

    cel_rules: ClassVar = (
        CelRule(
            "!(has(self.apiKeyEnv) && has(self.apiKeyFile))",
            "set at most one of apiKeyEnv or apiKeyFile",
            lambda s: s.api_key_env is None or s.api_key_file is None,
        ),
    )


class GenerationSpec(SpecModel):
    """How the LLM writes samples from each chunk."""

    model: str = Field(description="Path of a Hugging Face model folder served by vLLM (its tokenizer formats too).")
    backend: Literal["vllm", "endpoint"] = Field(
        "vllm", description="vllm: offline batching in the build's own process; endpoint: an OpenAI-compatible server."
    )
    endpoint: EndpointSpec | None = Field(None, description="The server, when backend is endpoint.")
    method: Literal["pairs", "backtranslation"] = Field(
        "pairs",
        description="pairs: the LLM writes instruction-answer pairs about each chunk. backtranslation: instruction "
        "back-translation (Li et al. 2023): spans of the chunk, whole sentences, are the answers and the LLM writes "
        "only the instruction each answers, so every answer is the source's own text, grounded even with a weak "
        "generator; the curation (grounding's off_topic, the judge) drops the instructions that miss. With type "
        "preference (method judged), the span is a candidate answer beside the model's own: sound by construction, "
        "so every pair has one to choose.",
    )
    pairs_per_chunk: int = Field(3, ge=1, le=20, description="Samples asked for per chunk (backtranslation: spans).")
    temperature: float = Field(
        0.7,
        ge=0.0,
        le=2.0,
        description="Sampling temperature (vLLM SamplingParams.temperature): 0 is greedy; 0.7 gives varied "
        "instructions across a chunk's samples while keeping the JSON well formed.",
    )
    top_p: float = Field(
        0.95,
        gt=0.0,
        le=1.0,
        description="Nucleus sampling (SamplingParams.top_p): tokens are drawn from the smallest set whose "
        "probabilities add up to this; 1 turns it off.",
    )
    repetition_penalty: float = Field(1.1, gt=0.0, le=2.0, description="Above 1 discourages repeating tokens.")
    max_tokens: int = Field(768, ge=16, description="Token budget per answer; JSON cut short is dropped.")
    max_model_len: int = Field(4096, ge=256, description="vLLM's context length (prompt + output).")
    gpu_memory_utilization: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="vLLM's memory share; on CPU the share of host RAM. Default: 0.9 on GPU, 0.3 on CPU.",
    )
    tensor_parallel_size: int = Field(
        1,
        ge=1,
        le=64,
        description="GPUs one vLLM engine spans (tensor parallelism). In a cluster the pod asks for this many GPUs "
        "unless resources.gpus says otherwise.",
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="vLLM's weight and activation dtype on a GPU. auto: the model's own (bfloat16 where the model "
        "says float32 and the GPU has it, as vLLM decides). On a CPU vLLM runs float32 whatever this says (measured "
        "faster there, bench/README.md).",
    )
    shards: int = Field(
        1,
        ge=1,
        le=64,
        description="In a cluster, pods that share the LLM stages' parts, each with its own engine (an Indexed Job "
        "of this many pods), before one pod merges them and runs the rest of the build. The samples do not depend "
        "on the count (a request's seed comes from what it asks, not from which pod asks it), up to the numerics "
        "of batching. kubetune run builds in one process whatever this says.",
    )
    malformed_retries: int = Field(
        1, ge=0, le=10, description="An answer that is not valid JSON of the schema is asked again this many times."
    )
    batch_size: int = Field(
        64, ge=1, description="Prompts per generation part; each part is written as it finishes (resume unit)."
    )
    seed: int = Field(
        42,
        description="Sampling seed: each request's own seed is derived from it and from what the request asks, so "
        "a build run again (or in shards) writes the same samples.",
    )
    system_prompt: str | None = Field(None, description="Overrides the built-in sample-writer prompt.")

    cel_rules: ClassVar = (
        CelRule(
            "self.backend != 'endpoint' || has(self.endpoint)",
            "backend endpoint needs generation.endpoint (url, model)",
            lambda s: s.backend != "endpoint" or s.endpoint is not None,
        ),
    )


class EvalSetSpec(SpecModel):
    """An evaluation file (JSONL or Parquet) whose text must not leak into the dataset."""

    path: str = Field(
        min_length=1, description="A JSONL or Parquet file; relative to the working directory (the pod's: /data)."
    )
    fields: list[str] = Field(default_factory=list, description="String fields to read. Default: every string field.")


class DecontaminationSpec(SpecModel):
    """Drop every chunk and sample sharing a word n-gram with an evaluation text."""

    eval_sets: list[EvalSetSpec] = Field(default_factory=list, description="Evaluation files; none: stage off.")
    ngram: int = Field(13, ge=3, le=64, description="Words per n-gram.")


class QualitySpec(SpecModel):
    """Heuristic filters on each sample; each failed check is a drop reason in the funnel."""

    enabled: bool = Field(True, description="The heuristic filters below; false: none of them runs.")
    min_instruction_chars: int = Field(
        10, ge=1, description="Shorter instructions are dropped (instruction_too_short)."
    )
    min_answer_chars: int = Field(20, ge=1, description="Shorter answers are dropped (answer_too_short).")
    max_answer_chars: int = Field(
        4000, ge=1, description="Longer answers are dropped (answer_too_long): usually a generation that ran on."
    )
    max_repeated_ngram_ratio: float = Field(
        0.3, ge=0.0, le=1.0, description="Share of an answer's word 3-grams that may be repeats."
    )
    max_non_alpha_ratio: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="Share of an answer's non-space characters that may be neither letters nor digits.",
    )
    drop_refusals: bool = Field(True, description='Drop refusals and "as an AI" answers.')
    drop_context_references: bool = Field(
        True, description='Drop answers that mention "the text", "the context", "the passage" (the prompt forbids it).'
    )
    drop_restated_instructions: bool = Field(
        True,
        description="Drop answers that only repeat the instruction (restates_instruction), and instructions that are a "
        "run of the answer's own words (copies_answer).",
    )
    drop_gibberish: bool = Field(
        True,
        description="Drop word salad, broken markup and identifier soup in the instruction or the answer (reason "
        "gibberish): another script spliced into prose, chat-template tokens, a word thrice in a row, markup over a "
        "tenth of the text, or under 60 % of tokens that read as words.",
    )
    drop_truncated: bool = Field(
        True, description="Drop answers that stop mid-sentence (reason truncated): no final punctuation."
    )
    drop_non_requests: bool = Field(
        True,
        description="Drop instructions that ask for nothing (reason not_a_request): no question mark, and no clause "
        "opens with an imperative, a question word or 'please' (a statement, a bare heading). English word list: set "
        "false for other languages.",
    )

    cel_rules: ClassVar = (
        CelRule(
            "self.minAnswerChars <= self.maxAnswerChars",
            "minAnswerChars must not exceed maxAnswerChars",
            lambda s: s.min_answer_chars <= s.max_answer_chars,
        ),
    )


DEFAULT_RUBRIC = "On each criterion, 5 = excellent, 3 = acceptable, 1 = wrong or unusable."


class CriterionScores(SpecModel):
    """A floor per criterion of the judge (kubetune.llm.judge); an unset one is judge.minScore."""

    faithfulness: int | None = Field(
        None, ge=1, le=5, description="Every claim stated in, or following from, the source; below: low_faithfulness."
    )
    helpfulness: int | None = Field(
        None, ge=1, le=5, description="Answers the instruction fully, which stands on its own; below: low_helpfulness."
    )
    style: int | None = Field(None, ge=1, le=5, description="Clear and well written; below: low_style.")


class JudgeSpec(SpecModel):
    """An LLM scores each sample 1-5 on three criteria under a JSON schema: faithfulness to the source it reads
    (the chunk, or an instruction row's source), helpfulness and style. Each score is kept as a column
    (judge_faithfulness, judge_helpfulness, judge_style; judge_score is the lowest)."""

    enabled: bool = Field(False, description="Score every sample with the judge; off by default (an LLM call each).")
    model: str | None = Field(None, description="Another model to judge with. Default: the generation engine.")
    rubric: str = Field(
        DEFAULT_RUBRIC,
        min_length=1,
        description="What 1, 3 and 5 mean, and any guidance of your own; sent verbatim before the criteria.",
    )
    min_score: int = Field(
        3, ge=1, le=5, description="A sample scored below this on any criterion is dropped (low_<criterion>)."
    )
    min_scores: CriterionScores = Field(
        default_factory=CriterionScores, description="A floor per criterion, instead of minScore."
    )
    max_tokens: int = Field(
        256, ge=16, description="Token budget of one verdict (JSON); one cut short is asked again (malformedRetries)."
    )


class GroundingSpec(SpecModel):
    """Each sample checked against its source text (the chunk it was written from, or an instruction row's
    source): the share of the answer's content words the source holds, and, with curation.embeddingModel, the
    embedding similarity of the answer and of the instruction to the closest passage of the source. The scores
    are kept on the row; the defaults are set from the labelled bench (bench/quality)."""

    enabled: bool = Field(True, description="Check every sample that has a source; false: off.")
    min_support: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Share of the answer's content words (names, numbers, terms) the source must hold; below it: "
        "ungrounded.",
    )
    min_answer_similarity: float = Field(
        0.25, ge=-1.0, le=1.0, description="Cosine of the answer with its source below which it is ungrounded."
    )
    min_instruction_similarity: float = Field(
        0.2, ge=-1.0, le=1.0, description="Cosine of the instruction with its source below which it is off_topic."
    )
    drop_unsupported_numbers: bool = Field(
        True,
        description="Drop a sample whose answer states a figure (a version, count, percentage or date above 10) "
        "that its source does not hold (unsupported_number; the figures kept on the row as unsupported_numbers).",
    )
    min_answer_log_prob: float = Field(
        -3.1,
        le=0.0,
        description="With curation.scoringModel: the mean log-probability per answer token, given its source and "
        "instruction, below which a sample is low_likelihood (fluent nonsense, and some answers that contradict the "
        "source). -3.1 is set for SmolLM2-135M-Instruct on bench/quality (all 5 fluent word salads the other "
        "checks kept, 4 of 48 contradictions, 1 of 122 good rows dropped); another model needs its own floor "
        "(bench/quality/run.py --scoring-model).",
    )
    drop_unknown_terms: bool = Field(
        True,
        description="Drop a sample whose instruction names something (a word with two capitals or more: QLoRA, "
        "FastAPI; general acronyms such as GPU or JSON aside) that its source never mentions (unknown_term; the "
        "names kept on the row as unknown_terms).",
    )


class SemanticDedupSpec(SpecModel):
    """SemDeDup-style: of two samples whose instructions and answers embed close, the better grounded is kept and
    the other dropped (semantic_duplicate); needs curation.embeddingModel."""

    enabled: bool = Field(True, description="On when curation.embeddingModel is set; false: off.")
    threshold: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="Mean of the instructions' and the answers' cosines at or above which two samples are one "
        "(0.8: 39 of 42 paraphrased duplicates caught on bench/quality).",
    )


class CurationSpec(SpecModel):
    """What is done to the samples after generation (and to chunks before it)."""

    embedding_model: str | None = Field(
        None,
        description="A sentence-transformers model folder (make setup builds models/all-MiniLM-L6-v2) for the "
        "grounding's similarities and semantic dedup. None: grounding checks lexical support alone, and semantic "
        "dedup is off.",
    )
    scoring_model: str | None = Field(
        None,
        description="A causal LM folder (e.g. models/SmolLM2-135M-Instruct) with which the grounding scores how "
        "likely each answer is given its source and instruction (answer_logprob on the row; below "
        "grounding.minAnswerLogProb: low_likelihood). Preference data from documents is ranked after grounding, so "
        "its answers are not scored. None: off.",
    )
    decontamination: DecontaminationSpec = Field(default_factory=DecontaminationSpec)
    quality: QualitySpec = Field(default_factory=QualitySpec)
    grounding: GroundingSpec = Field(default_factory=GroundingSpec)
    semantic_dedup: SemanticDedupSpec = Field(default_factory=SemanticDedupSpec)
    judge: JudgeSpec = Field(default_factory=JudgeSpec)


class EvolInstructSpec(SpecModel):
    """Evol-Instruct: a share of the instructions rewritten deeper or broader, answered again from the same chunk."""

    share: float = Field(0.0, ge=0.0, le=1.0, description="Share of samples evolved; 0 switches the stage off.")
    operations: list[Literal["deepen", "concretize", "reasoning", "broaden"]] = Field(
        default_factory=lambda: ["deepen", "concretize", "reasoning", "broaden"],
        min_length=1,
        description="The rewrites drawn from (Evol-Instruct's in-depth ones, and broaden for in-breadth): deepen "
        "adds constraints, concretize replaces general concepts with specific ones, reasoning asks for steps.",
    )
    seed: int = Field(42, description="Seed of which samples evolve and with which operation.")


class AugmentationSpec(SpecModel):
    """Samples added after curation, each checked by the same filters."""

    evol_instruct: EvolInstructSpec = Field(default_factory=EvolInstructSpec)


class PreferenceSpec(SpecModel):
    """How chosen and rejected answers are made when ``type`` is preference."""

    method: Literal["extract", "judged"] = Field(
        "extract",
        description="extract: chosen is a verbatim extract of the chunk, rejected the model's own answer; "
        "judged: several answers per instruction, the judge's best is chosen, its worst rejected.",
    )
    min_chosen_chars: int = Field(100, ge=1, description="extract: shorter extracts are dropped.")
    temperatures: list[float] = Field(
        default_factory=lambda: [0.2, 1.0],
        min_length=2,
        max_length=8,
        description="judged: one answer per temperature.",
    )


class FormatSpec(SpecModel):
    """Chat-template formatting."""

    tokenizer: str | None = Field(
        None, description="Tokenizer whose chat template formats the samples. Default: the generation model."
    )
    system_prompt: str | None = Field(None, description="A system message put before every conversation.")


class SplitSpec(SpecModel):
    """The train/test split: seeded, grouped by source document so no document straddles the two."""

    test_size: float = Field(0.1, ge=0.0, lt=1.0, description="Share of samples held out for evaluation.")
    seed: int = Field(42, description="Seed of which documents go to the test split.")


class CardSpec(SpecModel):
    """The dataset card (README.md) written next to the data."""

    license: str = Field("other", min_length=1, description="An SPDX id or 'other'.")
    description: str | None = Field(None, description="A paragraph for the card. Default: one made from the spec.")
    language: list[str] = Field(
        default_factory=lambda: ["en"], description="ISO 639-1 codes of the data's languages, as the card's metadata."
    )


class OciTargetSpec(SpecModel):
    """An OCI registry an output is pushed to: as an ORAS artifact (one layer per file; an adapter's lineage.json,
    or a dataset's manifest.json, as its config), or an adapter as an image KAITO mounts. Credentials come from a
    file, never from the spec."""

    repository: str = Field(
        pattern=r"^[A-Za-z0-9.-]+(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)+$",
        max_length=255,
        description="host[:port]/path, e.g. registry.example.com/team/adapters.",
    )
    tag: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$",
        description="Default: adapter- (or dataset-) and the first 16 hex digits of the output's digest (new "
        "content, a new tag; the same content is never pushed twice).",
    )
    plain_http: bool = Field(False, description="Talk HTTP, not HTTPS (a registry on loopback or a test network).")
    layout: Literal["artifact", "kaito"] = Field(
        "artifact",
        description="artifact: an ORAS artifact, one layer per file (oras pull gives the folder back). kaito: an "
        "adapter as a KAITO Workspace's inference.adapters[].source.image takes it: an OCI image of one tar+gzip "
        "layer holding the adapter's files under /data (adapter_config.json, adapter_model.safetensors, ...) and "
        "the lineage at /kubetune/lineage.json; its default tag ends in -kaito. Adapters only.",
    )
    credentials_file: str | None = Field(
        None,
        description="A file holding the credentials: a Docker config (a kubernetes.io/dockerconfigjson Secret's "
        ".dockerconfigjson, mounted) or one line username:password. Default: none (an open registry).",
    )
    credentials_secret: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN,
        max_length=253,
        description="In a cluster: a Secret in the job's namespace that the kubelet mounts into the training pod "
        "(the operator never reads it): its .dockerconfigjson key (type kubernetes.io/dockerconfigjson), or its "
        "username and password keys.",
    )

    cel_rules: ClassVar = (
        CelRule(
            "!(has(self.credentialsFile) && has(self.credentialsSecret))",
            "set at most one of credentialsFile or credentialsSecret",
            lambda s: s.credentials_file is None or s.credentials_secret is None,
        ),
    )


class DatasetPublishSpec(SpecModel):
    """Where the dataset is published once written."""

    oci: list[OciTargetSpec] = Field(
        default_factory=list,
        max_length=8,
        description="OCI registries the dataset is pushed to (the splits, manifest.json as the artifact's config "
        "and a layer, the card and the funnel chart).",
    )

    cel_rules: ClassVar = (
        CelRule(
            "self.oci.all(t, !has(t.layout) || t.layout == 'artifact')",
            "layout kaito is an adapter image: a dataset is pushed as an artifact",
            lambda s: all(t.layout == "artifact" for t in s.oci),
        ),
    )


class DatasetBuildSpec(SchedulingSpec):
    """Raw documents -> cleaned, deduplicated chunks -> LLM-written samples -> curated, formatted, split dataset."""

    type: Literal["instruction", "preference"] = Field(
        "instruction",
        description="instruction: instruction/answer rows for SFT; preference: prompt/chosen/rejected for DPO.",
    )
    source: SourceSpec
    cleaning: CleaningSpec = Field(default_factory=CleaningSpec)
    chunking: ChunkingSpec = Field(default_factory=ChunkingSpec)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    generation: GenerationSpec
    curation: CurationSpec = Field(default_factory=CurationSpec)
    augmentation: AugmentationSpec = Field(default_factory=AugmentationSpec)
    preference: PreferenceSpec = Field(default_factory=PreferenceSpec)
    format: FormatSpec = Field(default_factory=FormatSpec)
    split: SplitSpec = Field(default_factory=SplitSpec)
    card: CardSpec = Field(default_factory=CardSpec)
    publish: DatasetPublishSpec = Field(default_factory=DatasetPublishSpec)

    def content_wire(self) -> dict:
        """What the dataset's content is made from: :meth:`result_wire` without ``publish`` (where a dataset goes
        changes none of its stages, so a build whose targets were edited resumes from its kept stages)."""
        return {k: v for k, v in self.result_wire().items() if k != "publish"}

    cel_rules: ClassVar = (
        *SchedulingSpec.cel_rules,
        CelRule(
            "!has(self.source.kind) || self.source.kind != 'instructions' || (self.type == 'instruction' && "
            "self.augmentation.evolInstruct.share == 0.0)",
            "source.kind instructions curates instruction rows as they are: type instruction, and no "
            "augmentation.evolInstruct (it needs the documents' chunks)",
            lambda s: (
                s.source.kind != "instructions" or (s.type == "instruction" and s.augmentation.evol_instruct.share == 0)
            ),
        ),
        CelRule(
            "self.type == 'instruction' || self.generation.method != 'backtranslation' || "
            "self.preference.method == 'judged'",
            "generation.method backtranslation writes instruction rows (type instruction), or preference rows by the "
            "judged method (the source's span one of the candidate answers)",
            lambda s: (
                s.type == "instruction" or s.generation.method != "backtranslation" or s.preference.method == "judged"
            ),
        ),
        CelRule(
            "self.type != 'preference' || self.preference.method != 'judged' || self.curation.judge.enabled",
            "preference.method judged needs curation.judge.enabled: true (the judge ranks the answers)",
            lambda s: s.type != "preference" or s.preference.method != "judged" or s.curation.judge.enabled,
        ),
        CelRule(
            "type(self.resources.gpus) == string || self.resources.gpus == 0 || "
            "self.resources.gpus >= self.generation.tensorParallelSize",
            "resources.gpus must be at least generation.tensorParallelSize (one engine spans that many GPUs), or 0 "
            "or auto for as many as it spans",
            lambda s: (
                s.resources.gpu_count() in (0, None) or s.resources.gpu_count() >= s.generation.tensor_parallel_size
            ),
        ),
    )
