"""The DatasetBuild pipeline: each stage counts what came in, what went out and why the rest was dropped.

The counts form the funnel that ``manifest.json`` records, the CLI prints and the operator copies into
status; ``progress.json`` tells an observer which stage is running.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune import plots
from kubetune.datagen import documents, formatting, generate
from kubetune.spec.datasetbuild import DatasetBuildSpec
from kubetune.spec.status import now

STAGES = ["ingest", "clean", "chunk", "dedup_chunks", "generate", "dedup_pairs", "format", "split", "write"]


@dataclass
class StageReport:
    name: str
    input: int
    output: int
    dropped: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


class EmptyDatasetError(RuntimeError):
    """Nothing survived curation; the manifest's funnel says where the samples went."""


class Funnel:
    """Stage reports, written to ``progress.json`` as they finish so an observer can follow along."""

    def __init__(self, output: Path, log: Callable[[str], None]):
        self.output, self.log, self.stages = output, log, []
        self._started = time.perf_counter()

    def start(self, name: str) -> None:
        self._started = time.perf_counter()
        self._write_progress(name)
        self.log(f"[{len(self.stages) + 1}/{len(STAGES)}] {name} ...")

    def done(self, name: str, n_in: int, n_out: int, dropped: dict[str, int] | None = None) -> None:
        report = StageReport(name, n_in, n_out, dict(dropped or {}), round(time.perf_counter() - self._started, 3))
        self.stages.append(report)
        extra = f" dropped {report.dropped}" if report.dropped else ""
        self.log(f"      {name}: {n_in} in, {n_out} out{extra} ({report.seconds:.1f}s)")

    def _write_progress(self, running: str) -> None:
        progress = {"stage": running, "done": len(self.stages), "total": len(STAGES)}
        (self.output / "progress.json").write_text(json.dumps(progress))


def _exact_dedup(items: list, key: Callable[[Any], str]) -> tuple[list, int]:
    seen, kept = set(), []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            kept.append(item)
    return kept, len(items) - len(kept)


def _write_parquet(rows: list[dict], path: Path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    spec: DatasetBuildSpec,
    output: Path,
    name: str = "dataset",
    writer_factory: Callable[[Any], generate.PairWriter] = generate.VllmPairWriter,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every stage and write train.parquet, test.parquet and manifest.json to ``output``."""
    from transformers import AutoTokenizer

    output.mkdir(parents=True, exist_ok=True)
    funnel = Funnel(output, log)

    funnel.start("ingest")
    files = documents.find_files(spec.source)
    docs, unreadable = documents.read_documents(files)
    funnel.done("ingest", len(files), len(docs), unreadable)

    funnel.start("clean")
    cleaned = [documents.Document(d.source, documents.clean(d.text, spec.cleaning)) for d in docs]
    kept_docs = [d for d in cleaned if len(d.text) >= spec.cleaning.min_document_chars]
    funnel.done("clean", len(docs), len(kept_docs), {"too_short": len(cleaned) - len(kept_docs)})

    funnel.start("chunk")
    chunks = documents.chunk_documents(kept_docs, spec.chunking)
    funnel.done("chunk", len(kept_docs), len(chunks))

    funnel.start("dedup_chunks")
    unique_chunks, dup_chunks = _exact_dedup(chunks, lambda c: c.chunk_id)
    funnel.done("dedup_chunks", len(chunks), len(unique_chunks), {"exact_duplicate": dup_chunks})

    funnel.start("generate")
    schema = generate.pairs_schema(spec.generation.pairs_per_chunk)
    writer = writer_factory(spec.generation)
    completions = writer.complete([generate.conversation(c.text, spec.generation) for c in unique_chunks], schema)
    rejected: dict[str, int] = {}
    pairs = [
        pair
        for chunk, completion in zip(unique_chunks, completions, strict=True)
        for pair in generate.parse_pairs(completion, chunk.chunk_id, spec.curation, rejected)
    ]
    funnel.done("generate", len(unique_chunks), len(pairs), rejected)
    generated_tokens = sum(c.tokens for c in completions)

    funnel.start("dedup_pairs")
    generated = len(pairs)
    dropped_dups: dict[str, int] = {}
    if spec.curation.exact_dedup:
        pairs, dropped_dups["exact_duplicate"] = _exact_dedup(
            pairs, lambda p: documents.fingerprint(p.instruction, p.answer)
        )
        # Two answers to the same question teach nothing new and leak across the split.
        pairs, dropped_dups["repeated_instruction"] = _exact_dedup(
            pairs, lambda p: documents.fingerprint(p.instruction)
        )
    funnel.done("dedup_pairs", generated, len(pairs), dropped_dups)

    funnel.start("format")
    tokenizer_path = spec.format.tokenizer or spec.generation.model
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    rows = [formatting.to_record(p, tokenizer, spec.format.system_prompt) for p in pairs]
    funnel.done("format", len(pairs), len(rows))

    funnel.start("split")
    train, test = formatting.split(rows, spec.split.test_size, spec.split.seed)
    funnel.done("split", len(rows), len(train) + len(test))

    funnel.start("write")
    manifest: dict[str, Any] = {
        "kind": "DatasetManifest",
        "name": name,
        "createdAt": now(),
        "spec": spec.to_wire(),
        "tokenizer": tokenizer_path,
        "generatedTokens": generated_tokens,
        "stages": [],
        "files": {},
    }
    if not train:
        manifest["stages"] = [asdict(s) for s in funnel.stages]
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
        raise EmptyDatasetError(f"no pairs survived curation; the funnel is in {output / 'manifest.json'}")
    for split_name, split_rows in (("train", train), ("test", test)):
        if split_rows:
            digest = _write_parquet(split_rows, output / f"{split_name}.parquet")
            manifest["files"][f"{split_name}.parquet"] = {"sha256": digest, "rows": len(split_rows)}
    manifest["digest"] = (
        "sha256:"
        + hashlib.sha256(
            "".join(f"{n}:{f['sha256']}\n" for n, f in sorted(manifest["files"].items())).encode()
        ).hexdigest()
    )
    funnel.done("write", len(train) + len(test), len(train) + len(test))
    manifest["stages"] = [asdict(s) for s in funnel.stages]
    (output / "manifest.json").write_text(json.dumps(manifest, indent=2))
    plots.funnel(manifest["stages"], output / "funnel.png", f"DatasetBuild {name}: items kept per stage")
    (output / "progress.json").write_text(json.dumps({"stage": "done", "done": len(STAGES), "total": len(STAGES)}))
    return manifest
