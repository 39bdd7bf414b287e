"""The DatasetBuild pipeline: each stage counts what came in, what went out and why the rest was dropped.

Stages, in order (those the spec switches off are skipped and left out of the funnel):

    ingest -> clean -> dedup_documents -> chunk -> dedup_chunks -> decontaminate_chunks      (no LLM yet)
    -> generate -> evolve                                                                    (LLM)
    -> quality -> grounding -> decontaminate -> dedup_samples -> semantic_dedup -> judge | rank   (curation)
    -> format -> split -> write

A source of instruction rows (``source.kind: instructions``) starts at ``read_samples`` and runs the curation
on them as they are. Every sample a curation stage drops is written, with its stage and reason, to
``dropped.jsonl`` (those of the LLM stages, judge and rank, are counted in the funnel).

Deduplication and decontamination run on documents and chunks before generation, so no LLM time is spent
on a copy or on evaluation text, and again on the samples (Evol-Instruct's rewrites included) after it.
The counts form the funnel that ``manifest.json`` records, the CLI prints and the operator copies into
status; ``progress.json`` tells an observer which stage and part is running. Every stage's output is kept
(:mod:`kubetune.datagen.stage_store`), so a killed build resumes where it stopped, and ``--shard I/N`` splits the
LLM stages across processes.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune import pod_report
from kubetune.api.v1alpha1.constants import DATASET_BUILD
from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
from kubetune.api.v1alpha1.status import now
from kubetune.datagen import card, documents, formatting, generate, quality
from kubetune.datagen.stage_store import StageStore, file_digest, input_digest
from kubetune.llm import judge
from kubetune.llm.chat import ChatEngine, Completion, Request, complete_with_retries, count, request_seed
from kubetune.llm.engine import open_engine
from kubetune.registry.lineage import this_resource


@dataclass
class StageReport:
    name: str
    input: int
    output: int
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    tokens: int = 0  # tokens the LLM wrote in this stage


class EmptyDatasetError(RuntimeError):
    """Nothing survived curation; the message names the stage that kept nothing and why, the manifest's funnel
    has every count."""

    @classmethod
    def of(cls, stages: list[StageReport], manifest: Path) -> EmptyDatasetError:
        return cls(
            f"no samples survived curation: {emptied_by(stages)}; the funnel: {funnel_line(stages)} (all in {manifest})"
        )


def _reasons(report: StageReport) -> str:
    counts = sorted(((n, r) for r, n in report.dropped.items() if n), reverse=True)
    return ", ".join(f"{r} {n}" for n, r in counts)


def emptied_by(stages: list[StageReport]) -> str:
    """The cause of an empty dataset in words: the first stage that kept nothing, what it was given and why it
    dropped each."""
    first = next((s for s in stages if s.output == 0), None)
    if first is None:
        return "the split kept no training row"
    if first.name == "ingest" and first.input == 0:
        return (
            "spec.source.paths holds no file kubetune reads (.txt, .md, .html, .jsonl, .parquet or a datasets folder)"
        )
    if first.name == "ingest":
        why = _reasons(first)
        return f"none of the {first.input} input files held a readable document" + (f" ({why})" if why else "")
    if first.input == 0:
        return f"{first.name} was given nothing"
    why = _reasons(first)
    return f"{first.name} dropped all {first.input} of its items" + (f" ({why})" if why else "")


def funnel_line(stages: list[StageReport]) -> str:
    """The funnel on one line, up to the stage that kept nothing: "ingest 6 → 6, clean 6 → 5 (too_short 1)"."""
    parts = []
    for s in stages:
        why = _reasons(s)
        parts.append(f"{s.name} {s.input} → {s.output}" + (f" ({why})" if why else ""))
        if s.output == 0:
            break
    return ", ".join(parts)


class InputError(ValueError):
    """The spec names inputs that cannot be used (a missing eval set, a text field not in the data)."""


def planned_stages(spec: DatasetBuildSpec) -> list[str]:
    """The stages this spec runs, in order."""
    near, exact = spec.dedup.near.enabled, spec.dedup.exact
    decontaminate = bool(spec.curation.decontamination.eval_sets)
    judged = spec.type == "preference" and spec.preference.method == "judged"
    embeddings = spec.curation.embedding_model is not None
    if spec.source.kind == "instructions":  # curated as they are: no documents, no generation
        order = ["read_samples", "quality", "grounding", "decontaminate", "dedup_samples", "semantic_dedup"]
        order += ["judge", "format", "split", "write"]
        wanted = {
            "quality": spec.curation.quality.enabled,
            "grounding": spec.curation.grounding.enabled,
            "decontaminate": bool(spec.curation.decontamination.eval_sets),
            "semantic_dedup": spec.curation.semantic_dedup.enabled and embeddings,
            "judge": spec.curation.judge.enabled,
        }
        return [s for s in order if wanted.get(s, True)]
    wanted = {
        "grounding": spec.curation.grounding.enabled,
        "semantic_dedup": spec.curation.semantic_dedup.enabled and embeddings,
        "dedup_documents": near or exact,
        "dedup_chunks": near or exact,
        "decontaminate_chunks": decontaminate,
        "evolve": spec.augmentation.evol_instruct.share > 0,
        "quality": spec.curation.quality.enabled,
        "decontaminate": decontaminate,
        "judge": spec.curation.judge.enabled and not judged,
        "rank": judged,
    }
    order = ["ingest", "clean", "dedup_documents", "chunk", "dedup_chunks", "decontaminate_chunks", "generate"]
    order += ["evolve", "quality", "grounding", "decontaminate", "dedup_samples", "semantic_dedup", "judge", "rank"]
    order += ["format", "split", "write"]
    return [s for s in order if wanted.get(s, True)]


def check_inputs(spec: DatasetBuildSpec) -> None:
    """Refuse, before any stage runs, inputs that would make the build fail later; each error names its field."""
    from kubetune.datagen import decontam

    errors = documents.check_source(spec.source) + decontam.check_eval_sets(spec.curation.decontamination)
    model = spec.curation.embedding_model
    if model is not None and not (Path(model) / "modules.json").is_file():
        errors.append(
            f"spec.curation.embeddingModel: {model!r} is not a sentence-transformers model folder (no modules.json; "
            "make setup builds models/all-MiniLM-L6-v2)"
        )
    scorer = spec.curation.scoring_model
    if scorer is not None and not (Path(scorer) / "config.json").is_file():
        errors.append(
            f"spec.curation.scoringModel: {scorer!r} holds no config.json: name a causal LM's folder (make setup "
            "builds models/SmolLM2-135M-Instruct)"
        )
    if errors:
        raise InputError("; ".join(errors))


class Funnel:
    """Stage reports, written to ``progress.json`` as they finish so an observer can follow along."""

    def __init__(self, output: Path | None, stages: list[str], log: Callable[[str], None]):
        self.output, self.planned, self.log, self.stages = output, stages, log, []
        self._started = time.perf_counter()

    def start(self, name: str) -> None:
        self._started = time.perf_counter()
        self.progress(name)
        self.log(f"[{self.planned.index(name) + 1}/{len(self.planned)}] {name} ...")

    def progress(self, stage: str, **extra: Any) -> None:
        if self.output is not None:
            progress = {"stage": stage, "done": len(self.stages), "total": len(self.planned), **extra}
            pod_report.write(self.output, progress)

    def done(self, report: StageReport, resumed: bool = False) -> StageReport:
        if not resumed:
            report.seconds = round(time.perf_counter() - self._started, 3)
        self.stages.append(report)
        dropped = {k: v for k, v in report.dropped.items() if v}
        extra = f" dropped {dropped}" if dropped else ""
        note = " (kept from an earlier run)" if resumed else f" ({report.seconds:.1f}s)"
        self.log(f"      {report.name}: {report.input} in, {report.output} out{extra}{note}")
        return report


class ShardDone(Exception):
    """This shard has done its parts of the LLM stages whose inputs are complete; the merge run goes on."""


class Build:
    """One run of the pipeline over ``spec``: the stages, what they keep, and the engines they share."""

    def __init__(
        self,
        spec: DatasetBuildSpec,
        output: Path | None,
        log: Callable[[str], None],
        engine_factory: Callable[..., ChatEngine],
        shard: tuple[int, int] | None = None,
    ):
        self.spec, self.output, self.log, self.shard = spec, output, log, shard
        self.store = StageStore(output / "stages" if output else None, spec.content_wire())
        self.funnel = Funnel(output, planned_stages(spec), log)
        self._engine_factory = engine_factory
        self._engines: dict[str | None, ChatEngine] = {}
        self.retries = 0
        self.discarded_tokens = 0  # written by the LLM, then thrown away for a retry (this run only)
        self.drops: list[dict] = []  # the samples the curation stages dropped, with stage and reason
        self._stage_drops: list[dict] = []

    def eval_index(self):
        """The evaluation sets' n-grams, loaded once for chunks and samples."""
        if not hasattr(self, "_eval_index"):
            from kubetune.datagen.decontam import EvalIndex

            self._eval_index = EvalIndex.load(self.spec.curation.decontamination)
        return self._eval_index

    def eval_digest(self) -> str:
        """The evaluation sets' content, which the decontamination stages read besides their input."""
        sets = self.spec.curation.decontamination.eval_sets
        return input_digest(
            [{"path": e.path, "sha256": file_digest(Path(e.path))} for e in sets if Path(e.path).exists()]
        )

    # -- engines ---------------------------------------------------------------------------------------

    def engine(self, model: str | None = None) -> ChatEngine:
        """The generation engine, or (``model``) another one for the judge; opened on first use only."""
        key = None if model in (None, self.spec.generation.model) else model
        if key not in self._engines:
            self.log(
                f"      starting the {self.spec.generation.backend} engine for {key or self.spec.generation.model}"
            )
            self._engines[key] = self._engine_factory(self.spec.generation, model=key)
        return self._engines[key]

    def ask(self, requests: list[Request], model: str | None = None) -> list[Completion]:
        completions, report = complete_with_retries(
            self.engine(model), requests, self.spec.generation.malformed_retries
        )
        self.retries += report.retried
        self.discarded_tokens += report.discarded_tokens
        return completions

    # -- stages ----------------------------------------------------------------------------------------

    def stage(
        self, name: str, items: list[dict], run: Callable[[list[dict]], tuple[list[dict], dict]], *reads: str
    ) -> list[dict]:
        """A whole-list stage: kept once done, replayed from the store for the same input (``items``, and the
        digests of what else it ``reads``), done again for another."""
        if name not in self.funnel.planned:
            return items
        digest = input_digest(items, *reads)
        if (cached := self.store.load(name, digest)) is not None:
            out, record = cached
            self.funnel.done(StageReport(**record), resumed=True)
            self.drops += (self.store.load(f"{name}-dropped", digest) or ([], {}))[0]
            return out
        self.funnel.start(name)
        self._stage_drops = []
        out, dropped = run(items)
        report = self.funnel.done(StageReport(name, len(items), len(out), dropped))
        self.store.save(f"{name}-dropped", self._stage_drops, {}, digest)
        self.store.save(name, out, asdict(report), digest)
        self.drops += self._stage_drops
        return out

    def dropped(self, stage: str, sample: dict, reason: str, counts: dict[str, int] | None = None, **more: Any) -> None:
        """Record a sample a curation stage dropped, for dropped.jsonl (``more``: e.g. what it duplicates), and count
        it under its reason in ``counts``, the stage's funnel entry, when given."""
        if counts is not None:
            count(counts, reason)
        kept = {k: sample[k] for k in ("id", "instruction", "answer", "chosen", "source") if k in sample}
        self._stage_drops.append({"stage": stage, "reason": reason, **kept, **more})

    def parted(
        self, name: str, items: list[dict], work: Callable[[list[dict], int], tuple[list[dict], dict, int]]
    ) -> list[dict]:
        """An LLM stage in parts of ``batchSize`` items, each kept as it finishes; ``work(items, first_index)``
        returns the part's output, drop counts and tokens written."""
        if name not in self.funnel.planned:
            return items
        digest = input_digest(items)
        if (cached := self.store.load(name, digest)) is not None:
            out, record = cached
            self.funnel.done(StageReport(**record), resumed=True)
            return out
        self.funnel.start(name)
        size = self.spec.generation.batch_size
        n_parts = math.ceil(len(items) / size)
        out, dropped, tokens, missing, reused = [], {}, 0, 0, 0
        for index in range(n_parts):
            part = items[index * size : (index + 1) * size]
            part_digest = input_digest(part)
            if (kept := self.store.load_part(name, index, part_digest)) is not None:
                reused += 1
            elif self.shard and index % self.shard[1] != self.shard[0]:
                missing += 1
                continue
            else:
                self.funnel.progress(name, part=index + 1, parts=n_parts)
                self.log(f"      {name}: part {index + 1}/{n_parts} ({len(part)} items)")
                rows, part_dropped, part_tokens = work(part, index * size)
                kept = (rows, {"input": len(part), "dropped": part_dropped, "tokens": part_tokens})
                self.store.save_part(name, index, *kept, part_digest)
            rows, record = kept
            out.extend(rows)
            tokens += record["tokens"]
            for reason, n in record["dropped"].items():
                count(dropped, reason, n)
        if reused:
            self.log(f"      {name}: {reused} of {n_parts} parts kept from an earlier run")
        if missing:
            self.log(f"      {name}: shard {self.shard[0]}/{self.shard[1]} done; {missing} parts are other shards'")
            raise ShardDone(name)
        report = self.funnel.done(StageReport(name, len(items), len(out), dropped, tokens=tokens))
        self.store.save(name, out, asdict(report), digest)
        return out


# -- the stages, as functions of a Build ----------------------------------------------------------------


def _dedup(
    items: list[dict],
    key: Callable[[dict], str],
    text: Callable[[dict], str],
    b: Build,
    record: Callable[[dict, str], None] = lambda item, reason: None,
) -> tuple[list, dict]:
    """Exact (normalised) duplicates, then near duplicates (MinHash LSH), first occurrence kept; ``record`` is told
    of each item dropped, with its reason."""
    dropped: dict[str, int] = {}
    if b.spec.dedup.exact:
        seen: set[str] = set()
        kept = []
        for item in items:
            if (k := key(item)) not in seen:
                seen.add(k)
                kept.append(item)
            else:
                record(item, "exact_duplicate")
        dropped["exact_duplicate"] = len(items) - len(kept)
        items = kept
    if b.spec.dedup.near.enabled:
        from kubetune.datagen.minhash import find_near_duplicates

        matches = find_near_duplicates([text(i) for i in items], b.spec.dedup.near)
        kept = []
        for item, match in zip(items, matches, strict=True):
            if match is None:
                kept.append(item)
            else:
                record(item, "near_duplicate")
        dropped["near_duplicate"] = len(items) - len(kept)
        items = kept
    return items, dropped


def _sample_text(sample: dict) -> str:
    return f"{sample['instruction']}\n{_answer(sample)}"


def prepare(b: Build) -> list[dict]:
    """The stages before any LLM: documents in, unique, clean, uncontaminated chunks out."""
    spec = b.spec

    def ingest(files: list[dict]) -> tuple[list[dict], dict]:
        docs, unreadable = documents.read_documents([Path(f["path"]) for f in files], spec.source)
        return [asdict(d) for d in docs], unreadable

    def clean(docs: list[dict]) -> tuple[list[dict], dict]:
        # The text as read stays on the row for near-duplicate detection: a small edit that unbalances a code
        # fence or an emphasis mark changes what markdown stripping keeps far more than the edit itself (a 2 %
        # word edit of a README fell from shingle Jaccard 0.84 to 0.10 once cleaned), while the words of the text
        # as read change by the edit alone.
        cleaned = [{**d, "text": documents.clean(d["text"], spec.cleaning), "read": d["text"]} for d in docs]
        kept = [d for d in cleaned if len(d["text"]) >= spec.cleaning.min_document_chars]
        return kept, {"too_short": len(cleaned) - len(kept)}

    def chunk(docs: list[dict]) -> tuple[list[dict], dict]:
        read = [documents.Document(d["source"], d["text"]) for d in docs]
        chunks = documents.chunk_documents(read, spec.chunking)
        return [asdict(c) for c in chunks], {}

    # One input per file; a JSONL, Parquet or datasets input gives a document per row.
    docs = b.stage("ingest", _inputs(spec), ingest)
    docs = b.stage("clean", docs, clean)
    docs = b.stage("dedup_documents", docs, lambda d: _dedup(d, lambda x: documents.fingerprint(x["text"]), _read, b))
    chunks = b.stage("chunk", docs, chunk)
    chunks = b.stage("dedup_chunks", chunks, lambda c: _dedup(c, lambda x: x["chunk_id"], _text, b))
    return b.stage("decontaminate_chunks", chunks, lambda c: _decontaminate(c, _text, b), b.eval_digest())


def _inputs(spec: DatasetBuildSpec) -> list[dict]:
    """The first stage's input: each file (or datasets folder) with the sha256 of its content."""
    return [{"path": str(f), "sha256": file_digest(f)} for f in documents.find_files(spec.source)]


def _read_samples(b: Build, files: list[dict]) -> tuple[list[dict], dict]:
    from kubetune.datagen import instructions

    return instructions.read_samples([Path(f["path"]) for f in files], b.spec.source)


def _text(item: dict) -> str:
    return item["text"]


def _read(doc: dict) -> str:
    """A document's text as read, before cleaning: what its near duplicates are found on."""
    return doc.get("read", doc["text"])


def _decontaminate(
    items: list[dict], text: Callable[[dict], str], b: Build, stage: str | None = None
) -> tuple[list[dict], dict]:
    """Items sharing an n-gram with an evaluation text dropped; with ``stage`` (samples), each recorded."""
    index = b.eval_index()
    kept = []
    for item in items:
        if index is None or not index.contaminated(text(item)):
            kept.append(item)
        elif stage is not None:
            b.dropped(stage, item, "contaminated")
    return kept, {"contaminated": len(items) - len(kept)}


def _generate(b: Build, chunks: list[dict], first: int) -> tuple[list[dict], dict, int]:
    chunk_objs = [documents.Chunk(**c) for c in chunks]
    if b.spec.generation.method == "backtranslation":
        return _backtranslate(b, chunk_objs)
    completions = b.ask(generate.sample_requests(chunk_objs, b.spec))
    dropped: dict[str, int] = {}
    rows = [
        row
        for chunk, completion in zip(chunk_objs, completions, strict=True)
        for row in generate.parse_samples(completion, chunk, b.spec, dropped)
    ]
    return rows, dropped, sum(c.tokens for c in completions)


def _backtranslate(b: Build, chunks: list[documents.Chunk]) -> tuple[list[dict], dict, int]:
    """Instruction back-translation: spans of each chunk are the answers; the LLM writes only the instructions."""
    asked = generate.backtranslation_requests(chunks, b.spec)
    completions = b.ask([request for _, _, request in asked])
    dropped: dict[str, int] = {}
    rows = []
    for (chunk, span, _), completion in zip(asked, completions, strict=True):
        instruction = generate.read_field(completion, "instruction", dropped)
        if instruction is not None:
            rows.append({"instruction": instruction, "answer": span, "source": chunk.source,
                         "chunk_id": chunk.chunk_id, "origin": "backtranslated"})  # fmt: skip
    return rows, dropped, sum(c.tokens for c in completions)


def _evolve(b: Build, chunk_text: dict[str, str], samples: list[dict]) -> list[dict]:
    """Evol-Instruct: a seeded share of the samples rewritten deeper or broader and answered again from the
    same chunk; the new samples join the originals (and go through quality, decontamination and dedup)."""
    evol = b.spec.augmentation.evol_instruct
    chosen = generate.evolve_plan(samples, evol.share, list(evol.operations), evol.seed)
    todo = [{**samples[i], "operation": op} for i, op in chosen]

    def work(part: list[dict], first: int) -> tuple[list[dict], dict, int]:
        dropped: dict[str, int] = {}
        seeds = [request_seed(b.spec.generation.seed, "evolve", s["chunk_id"], s["instruction"]) for s in part]
        rewrites = b.ask(
            [generate.evolve_request(s["instruction"], s["operation"], x) for s, x in zip(part, seeds, strict=True)]
        )
        evolved = []
        for sample, seed, completion in zip(part, seeds, rewrites, strict=True):
            instruction = generate.read_field(completion, "instruction", dropped)
            if instruction is not None:
                evolved.append((sample, instruction, seed))
        answers = b.ask([generate.answer_request(chunk_text[s["chunk_id"]], i, seed) for s, i, seed in evolved])
        rows = []
        for (sample, instruction, _), completion in zip(evolved, answers, strict=True):
            answer = generate.read_field(completion, "answer", dropped)
            if answer is not None:
                rows.append(
                    {
                        **{k: sample[k] for k in ("source", "chunk_id")},
                        "instruction": instruction,
                        "answer": answer,
                        "origin": f"evolved:{sample['operation']}",
                    }
                )
        return rows, dropped, sum(c.tokens for c in [*rewrites, *answers])

    new = b.parted("evolve", todo, work) if "evolve" in b.funnel.planned else []
    if b.funnel.stages and b.funnel.stages[-1].name == "evolve":
        # The funnel counts what the stage added: the samples in, the samples and their rewrites out.
        report = b.funnel.stages[-1]
        report.input, report.output = len(samples), len(samples) + len(new)
    return samples + new


def _quality(b: Build, chunk_text: dict[str, str], samples: list[dict]) -> tuple[list[dict], dict]:
    dropped: dict[str, int] = {}
    kept = []
    for s in samples:
        # An instruction row's own instruction, before an Alpaca input was appended ("Summarize the following
        # paragraph." leans on the input it carries, which the reader sees).
        source = _source(s, chunk_text)
        reason = quality.drop_reason(s.get("asked", s["instruction"]), _answer(s), b.spec.curation.quality, source)
        if (
            reason is None
            and "rejected" in s
            and documents.fingerprint(s["rejected"]) == documents.fingerprint(s["chosen"])
        ):
            reason = "chosen_equals_rejected"
        if reason:
            b.dropped("quality", s, reason, dropped)
        else:
            kept.append(s)
    return kept, dropped


def _ground(b: Build, chunk_text: dict[str, str], samples: list[dict]) -> tuple[list[dict], dict]:
    """Each sample against its source (kubetune.datagen.grounding): the scores kept on the row, ungrounded,
    unsupported_number, unknown_term and off_topic dropped. A sample without a source (an instruction row that has
    none) is kept as it is."""
    from kubetune.datagen import grounding
    from kubetune.llm import embeddings

    spec = b.spec.curation.grounding
    sourced = [(s, _source(s, chunk_text)) for s in samples]
    with_source = [(s, text) for s, text in sourced if text]
    similarities: list[tuple[float, float] | None] = [None] * len(with_source)
    if b.spec.curation.embedding_model is not None and with_source:
        embedder = embeddings.embedder(b.spec.curation.embedding_model)
        rows = [{"instruction": s["instruction"], "answer": _answer(s)} for s, _ in with_source]
        similarities = grounding.similarity_scores(embedder, rows, [text for _, text in with_source])
    dropped: dict[str, int] = {"ungrounded": 0, "unsupported_number": 0, "unknown_term": 0, "off_topic": 0}
    kept, scored = [], iter(similarities)
    for sample, text in sourced:
        if not text:
            kept.append(sample)
            continue
        row = {**sample, "support_score": round(grounding.lexical_support(_answer(sample), text), 4)}
        if figures := grounding.unsupported_numbers(_answer(sample), text):
            row["unsupported_numbers"] = figures
        if names := grounding.unknown_terms(sample["instruction"], text):
            row["unknown_terms"] = names
        similarity = next(scored)
        if similarity is not None:
            row["answer_similarity_score"], row["instruction_similarity_score"] = (round(x, 4) for x in similarity)
        reason = None
        unranked = b.spec.type == "preference" and "chosen" not in sample  # its answers come later, from rank
        if not unranked and (
            row["support_score"] < spec.min_support
            or row.get("answer_similarity_score", 1.0) < spec.min_answer_similarity
        ):
            reason = "ungrounded"
        elif not unranked and spec.drop_unsupported_numbers and row.get("unsupported_numbers"):
            reason = "unsupported_number"
        elif spec.drop_unknown_terms and row.get("unknown_terms"):
            reason = "unknown_term"
        elif row.get("instruction_similarity_score", 1.0) < spec.min_instruction_similarity:
            reason = "off_topic"
        if reason:
            b.dropped("grounding", row, reason, dropped)
        else:
            kept.append(row)
    if b.spec.curation.scoring_model is not None:
        kept = _likely(b, chunk_text, kept, dropped)
    return kept, dropped


def _likely(b: Build, chunk_text: dict[str, str], samples: list[dict], dropped: dict[str, int]) -> list[dict]:
    """The samples the other grounding checks kept, scored by curation.scoringModel (kubetune.llm.likelihood): the
    answer's mean log-probability given its source and instruction kept on the row as answer_logprob; below
    grounding.minAnswerLogProb, low_likelihood. A sample without a source, or not ranked yet, is not scored."""
    from kubetune.llm import likelihood

    unranked = b.spec.type == "preference"  # its answers come later, from rank (those that have one: "chosen")
    scored = [i for i, s in enumerate(samples) if _source(s, chunk_text) and not (unranked and "chosen" not in s)]
    items = [(_source(samples[i], chunk_text), samples[i]["instruction"], _answer(samples[i])) for i in scored]
    scores = dict(zip(scored, likelihood.answer_logprobs(b.spec.curation.scoring_model, items), strict=True))
    dropped["low_likelihood"] = 0
    kept = []
    for i, sample in enumerate(samples):
        if i in scores:
            sample = {**sample, "answer_logprob": round(scores[i], 4)}
            if sample["answer_logprob"] < b.spec.curation.grounding.min_answer_log_prob:
                b.dropped("grounding", sample, "low_likelihood", dropped)
                continue
        kept.append(sample)
    return kept


def _answer(sample: dict) -> str:
    """The answer a sample teaches: a preference row's chosen one (once ranked), else its answer."""
    return sample.get("chosen", sample["answer"])


def _semantic_dedup(b: Build, samples: list[dict]) -> tuple[list[dict], dict]:
    from kubetune.datagen import grounding
    from kubetune.llm import embeddings

    embedder = embeddings.embedder(b.spec.curation.embedding_model)
    rows = [{"instruction": s["instruction"], "answer": _answer(s)} for s in samples]
    grounded = [s.get("support_score", 0.0) + s.get("answer_similarity_score", 0.0) for s in samples]
    matches = grounding.semantic_duplicates(embedder, rows, b.spec.curation.semantic_dedup.threshold, grounded)
    kept = []
    for sample, match in zip(samples, matches, strict=True):
        if match is None:
            kept.append(sample)
        else:
            twin = samples[match]
            b.dropped("semantic_dedup", sample, "semantic_duplicate", duplicate_of=twin.get("id", twin["instruction"]))
    return kept, {"semantic_duplicate": len(samples) - len(kept)}


def _dedup_samples(b: Build, samples: list[dict]) -> tuple[list[dict], dict]:
    kept, dropped = _dedup(
        samples,
        lambda s: documents.fingerprint(s["instruction"], _answer(s)),
        _sample_text,
        b,
        lambda s, reason: b.dropped("dedup_samples", s, reason),
    )
    # Two answers to the same question teach nothing new and leak across the split.
    seen: set[str] = set()
    unique = []
    for s in kept:
        if (k := documents.fingerprint(s["instruction"])) not in seen:
            seen.add(k)
            unique.append(s)
        else:
            b.dropped("dedup_samples", s, "repeated_instruction")
    dropped["repeated_instruction"] = len(kept) - len(unique)
    return unique, dropped


def _judge(b: Build, chunk_text: dict[str, str], samples: list[dict]) -> list[dict]:
    """Each sample scored by the judge against its source, per criterion; one below its floor dropped
    (``low_<criterion>``, the first in kubetune.llm.judge.CRITERIA's order)."""
    spec, seed = b.spec.curation.judge, b.spec.generation.seed
    floors = {name: getattr(spec.min_scores, name) or spec.min_score for name in judge.CRITERIA}

    def work(part: list[dict], first: int) -> tuple[list[dict], dict, int]:
        dropped: dict[str, int] = {}
        sources = [_source(s, chunk_text) or None for s in part]
        requests = [
            judge.request(s["instruction"], _answer(s), spec.rubric, source=x, max_tokens=spec.max_tokens, seed=seed)
            for s, x in zip(part, sources, strict=True)
        ]
        completions = b.ask(requests, model=spec.model)
        rows = []
        for sample, source, completion in zip(part, sources, completions, strict=True):
            verdict = judge.read(completion, dropped, judge.criteria_for(source))
            if verdict is None:
                continue
            low = next((name for name, score in verdict.scores.items() if score < floors[name]), None)
            if low is not None:
                count(dropped, f"low_{low}")
                continue
            scores = {f"judge_{name}": score for name, score in verdict.scores.items()}
            rows.append({**sample, "judge_score": verdict.score, **scores, "judge_reason": verdict.reason})
        return rows, dropped, sum(c.tokens for c in completions)

    return b.parted("judge", samples, work)


def _source(sample: dict, chunk_text: dict[str, str]) -> str:
    """The text a sample was written from: an instruction row's source, or its chunk ("" where none is known)."""
    return sample.get("context") or chunk_text.get(sample.get("chunk_id", ""), "")


def _flaw(b: Build, instruction: str, answer: str, source: str) -> str | None:
    """What the curation would drop a candidate answer for (the quality heuristics, then the lexical grounding
    checks against its chunk, as far as they are on), or None for a sound one."""
    from kubetune.datagen import grounding

    checks = b.spec.curation
    if checks.quality.enabled and (reason := quality.drop_reason(instruction, answer, checks.quality, source)):
        return reason
    if checks.grounding.enabled and source:
        if grounding.lexical_support(answer, source) < checks.grounding.min_support:
            return "ungrounded"
        if checks.grounding.drop_unsupported_numbers and grounding.unsupported_numbers(answer, source):
            return "unsupported_number"
    return None


def _rank(b: Build, chunk_text: dict[str, str], samples: list[dict]) -> list[dict]:
    """The judged preference method: one answer per temperature, each checked as the curation checks a sample
    (quality heuristics, grounding in the chunk) and scored by the judge against the chunk (its lowest criterion).
    A sound answer ranks above any flawed one, whatever the judge says; among equals, the judge's score decides.
    The best is chosen and the worst rejected. Dropped: no sound answer to choose (``no_sound_answer``: word salad
    or an answer its chunk does not support is never chosen), and a tie (two sound answers the judge scores
    alike), which says nothing. A back-translated sample's span (the chunk's own sentences) is a candidate too,
    first among equals: with it, every pair has a sound answer to choose, whatever the generator writes."""
    temperatures = b.spec.preference.temperatures
    spec = b.spec.curation.judge

    def work(part: list[dict], first: int) -> tuple[list[dict], dict, int]:
        dropped: dict[str, int] = {}
        seed = b.spec.generation.seed
        asks = [
            generate.answer_request(
                chunk_text[s["chunk_id"]], s["instruction"], request_seed(seed, "rank", s["instruction"], str(t)), t
            )
            for s in part
            for t in temperatures
        ]
        answers = b.ask(asks)
        candidates: list[list[str | None]] = []
        for k in range(len(part)):
            group = answers[k * len(temperatures) : (k + 1) * len(temperatures)]
            span = [part[k]["answer"]] if part[k].get("origin") == "backtranslated" else []
            candidates.append([*span, *(generate.read_field(c, "answer", dropped) for c in group)])
        scored = [(i, a) for i, group in enumerate(candidates) for a in group if a is not None]
        sources = [chunk_text[s["chunk_id"]] for s in part]
        verdicts = b.ask(
            [
                judge.request(
                    part[i]["instruction"], a, spec.rubric, source=sources[i], max_tokens=spec.max_tokens, seed=seed
                )
                for i, a in scored
            ],
            model=spec.model,
        )
        scores: list[list[tuple[bool, int, str, str | None]]] = [[] for _ in part]
        for (i, a), completion in zip(scored, verdicts, strict=True):
            if (verdict := judge.read(completion, dropped, judge.criteria_for(sources[i]))) is not None:
                flaw = _flaw(b, part[i]["instruction"], a, sources[i])
                scores[i].append((flaw is None, verdict.score, a, flaw))
        rows = []
        for sample, ranked in zip(part, scores, strict=True):
            if len(ranked) < 2:
                count(dropped, "too_few_candidates")
                continue
            ranked.sort(key=lambda x: (not x[0], -x[1]))  # stable: among equals, the span, then the lower temperature
            (sound, best, chosen, _), (sound_worst, worst, rejected, flaw) = ranked[0], ranked[-1]
            if not sound:
                count(dropped, "no_sound_answer")
            elif sound_worst and best == worst:
                count(dropped, "tie")
            elif best < spec.min_score:
                count(dropped, "low_score")
            elif documents.fingerprint(chosen) == documents.fingerprint(rejected):
                count(dropped, "chosen_equals_rejected")
            else:
                row = {**sample, "chosen": chosen, "rejected": rejected, "chosen_score": best, "rejected_score": worst}
                rows.append({**row, "rejected_flaw": flaw} if flaw else row)
        return rows, dropped, sum(c.tokens for c in [*answers, *verdicts])

    return b.parted("rank", samples, work)


def _topics(b: Build, samples: list[dict], path: Path, name: str) -> dict[str, Any]:
    """The topic map of the kept samples (kubetune.datagen.topics): the manifest's entry, and topics.png."""
    from kubetune.datagen import topics
    from kubetune.llm import embeddings

    rows = [{"instruction": s["instruction"], "answer": _answer(s)} for s in samples]
    entry, coordinates, labels = topics.topic_map(rows, embeddings.embedder(b.spec.curation.embedding_model),
                                                  b.spec.split.seed)  # fmt: skip
    topics.draw(entry, coordinates, labels, path, f"DatasetBuild {name}")
    return entry


def _write_parquet(rows: list[dict], path: Path, columns: list[str]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Keys sorted at every level, as the stage store keeps rows: a build that replays its last stages from the
    # store writes the same columns in the same order, so the same bytes and digest, as one that ran them. Every
    # row gets every column of the dataset (a score only some rows have is null on the others): pyarrow takes a
    # table's columns from its first row.
    rows = [{column: row.get(column) for column in columns} for row in rows]
    rows = json.loads(json.dumps(rows, sort_keys=True, ensure_ascii=False))
    pq.write_table(pa.Table.from_pylist(rows), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(files: dict[str, dict]) -> str:
    return (
        "sha256:"
        + hashlib.sha256("".join(f"{n}:{f['sha256']}\n" for n, f in sorted(files.items())).encode()).hexdigest()
    )


def build(
    spec: DatasetBuildSpec,
    output: Path,
    name: str = "dataset",
    engine_factory: Callable[..., ChatEngine] = open_engine,
    log: Callable[[str], None] = print,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """Run every stage and write train.parquet, test.parquet, manifest.json and README.md to ``output``.

    With ``shard=(i, n)``, compute only this shard's parts of the LLM stages and return None; a run without
    a shard (the merge) then finds them done and finishes the build.
    """
    from transformers import AutoTokenizer

    check_inputs(spec)
    output.mkdir(parents=True, exist_ok=True)
    b = Build(spec, output, log, engine_factory, shard)
    try:
        if spec.source.kind == "instructions":
            samples = b.stage("read_samples", _inputs(spec), lambda f: _read_samples(b, f))
            chunk_text: dict[str, str] = {}
        else:
            chunks = prepare(b)
            chunk_text = {c["chunk_id"]: c["text"] for c in chunks}
            samples = b.parted("generate", chunks, lambda part, first: _generate(b, part, first))
            samples = _evolve(b, chunk_text, samples)
    except ShardDone:
        return None
    samples = b.stage("quality", samples, lambda s: _quality(b, chunk_text, s))
    samples = b.stage("grounding", samples, lambda s: _ground(b, chunk_text, s))
    samples = b.stage(
        "decontaminate",
        samples,
        lambda s: _decontaminate(s, lambda x: f"{_sample_text(x)}\n{x.get('rejected', '')}", b, "decontaminate"),
        b.eval_digest(),
    )
    samples = b.stage("dedup_samples", samples, lambda s: _dedup_samples(b, s))
    samples = b.stage("semantic_dedup", samples, lambda s: _semantic_dedup(b, s))
    try:
        samples = _judge(b, chunk_text, samples)
        samples = _rank(b, chunk_text, samples)
    except ShardDone:
        return None
    if shard:
        log(f"shard {shard[0]}/{shard[1]}: its parts are done; the merge run writes the dataset")
        return None

    tokenizer_path = spec.format.tokenizer or spec.generation.model

    def format_(items: list[dict]) -> tuple[list[dict], dict]:
        if spec.type == "preference":
            return [formatting.to_preference_record(s, spec.format.system_prompt) for s in items], {}
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        return [formatting.to_record(s, tokenizer, spec.format.system_prompt) for s in items], {}

    rows = b.stage("format", samples, format_)
    b.funnel.start("split")
    train, test = formatting.split(rows, spec.split.test_size, spec.split.seed)
    b.funnel.done(StageReport("split", len(rows), len(train) + len(test)))

    b.funnel.start("write")
    manifest: dict[str, Any] = {
        "kind": "DatasetManifest",
        "name": name,
        # The DatasetBuild (kind, namespace, name, uid as the operator set them): a model's lineage names it.
        "resource": this_resource(DATASET_BUILD, name),
        "type": spec.type,
        "createdAt": now(),
        "spec": spec.to_wire(),
        "tokenizer": tokenizer_path,
        "generatedTokens": sum(s.tokens for s in b.funnel.stages),
        "retries": b.retries,  # malformed answers asked again (in this run; a resumed run counts its own)
        "discardedTokens": b.discarded_tokens,
        # Requests an endpoint refused for a while (429, 5xx, timeouts) and answered on a retry.
        "transportRetries": sum(getattr(e, "retries", 0) for e in b._engines.values()),
        "stages": [],
        "files": {},
    }
    with (output / "dropped.jsonl").open("w") as f:
        f.writelines(json.dumps(d, ensure_ascii=False) + "\n" for d in b.drops)
    manifest["droppedRows"] = len(b.drops)
    if not train:
        manifest["stages"] = [asdict(s) for s in b.funnel.stages]
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
        raise EmptyDatasetError.of(b.funnel.stages, output / "manifest.json")
    columns = sorted({key for row in [*train, *test] for key in row})
    for split_name, split_rows in (("train", train), ("test", test)):
        if split_rows:
            digest = _write_parquet(split_rows, output / f"{split_name}.parquet", columns)
            manifest["files"][f"{split_name}.parquet"] = {"sha256": digest, "rows": len(split_rows)}
    manifest["digest"] = _digest(manifest["files"])
    manifest["columns"] = columns  # as the parquet files hold them
    b.funnel.done(StageReport("write", len(train) + len(test), len(train) + len(test)))
    manifest["stages"] = [asdict(s) for s in b.funnel.stages]
    if spec.curation.embedding_model is not None:
        manifest["topics"] = _topics(b, samples, output / "topics.png", name)
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    card.write(manifest, spec, output / "README.md")
    from kubetune import plots

    plots.funnel(manifest["stages"], output / "funnel.png", f"DatasetBuild {name}: items kept per stage")
    pod_report.write(output, {"stage": "done", "done": len(b.funnel.stages), "total": len(b.funnel.planned)})
    return manifest


@dataclass
class BuildPlan:
    """What a build will do before any LLM runs: the funnel so far, the requests and the tokens they take."""

    stages: list[dict]
    prompts: int
    prompt_tokens: int
    max_output_tokens: int
    later_requests: dict[str, int]  # per LLM stage after generation, an estimate from pairsPerChunk

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan(spec: DatasetBuildSpec, log: Callable[[str], None] = lambda _: None) -> BuildPlan:
    """Run the stages before generation in memory (nothing written) and size the generation."""
    from transformers import AutoTokenizer

    check_inputs(spec)
    b = Build(spec, None, log, engine_factory=open_engine)
    if spec.source.kind == "instructions":  # nothing to generate: the rows read, then the curation
        files = [{"path": str(f)} for f in documents.find_files(spec.source)]
        samples = b.stage("read_samples", files, lambda f: _read_samples(b, f))
        later = {"judge": len(samples)} if spec.curation.judge.enabled else {}
        return BuildPlan([asdict(s) for s in b.funnel.stages], 0, 0, 0, later)
    chunks = prepare(b)
    chunk_objs = [documents.Chunk(**c) for c in chunks]
    if spec.generation.method == "backtranslation":
        requests = [request for _, _, request in generate.backtranslation_requests(chunk_objs, spec)]
    else:
        requests = generate.sample_requests(chunk_objs, spec)
    tokenizer = AutoTokenizer.from_pretrained(spec.format.tokenizer or spec.generation.model)
    rendered = [tokenizer.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in requests]
    prompt_tokens = (
        sum(len(ids) for ids in tokenizer(rendered, add_special_tokens=False)["input_ids"]) if rendered else 0
    )
    per_request = 1 if spec.generation.method == "backtranslation" else spec.generation.pairs_per_chunk
    samples = len(requests) * per_request
    later: dict[str, int] = {}
    if "evolve" in b.funnel.planned:
        later["evolve"] = 2 * round(samples * spec.augmentation.evol_instruct.share)
        samples += later["evolve"] // 2
    if "judge" in b.funnel.planned:
        later["judge"] = samples
    if "rank" in b.funnel.planned:
        # An answer and a verdict per temperature; a back-translated span is judged too.
        spans = spec.generation.method == "backtranslation"
        later["rank"] = samples * (2 * len(spec.preference.temperatures) + spans)
    return BuildPlan(
        [asdict(s) for s in b.funnel.stages],
        len(requests),
        prompt_tokens,
        len(requests) * spec.generation.max_tokens,
        later,
    )
