"""The dataset card: a README.md in the Hugging Face style (YAML metadata, then what, how, funnel, columns)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec

COLUMN_DOCS = {
    "messages": "the conversation (system, user, assistant), for trainers that apply the chat template",
    "prompt": "the conversation up to the assistant's turn (rendered text for SFT; messages for preference rows)",
    "completion": "the assistant's turn, rendered by the chat template",
    "chosen": "the preferred assistant turn",
    "rejected": "the dispreferred assistant turn",
    "instruction": "the user's request, plain text",
    "answer": "the assistant's answer, plain text",
    "source": "the document the sample was written from (file, or file#row)",
    "chunk_id": "sha256 of the normalised chunk of that document the LLM read",
    "origin": "generated, or evolved:OPERATION for Evol-Instruct rewrites",
    "support_score": "share of the answer's content words its source holds (grounding)",
    "answer_similarity_score": "cosine of the answer with the closest passage of its source (grounding)",
    "instruction_similarity_score": "cosine of the instruction with the closest passage of its source (grounding)",
    "answer_logprob": "mean log-probability per answer token given its source and instruction (grounding, "
    "curation.scoringModel)",
    "judge_score": "the LLM judge's lowest score of its criteria, 1-5",
    "judge_faithfulness": "the judge's score, 1-5, of the answer's faithfulness to its source",
    "judge_helpfulness": "the judge's score, 1-5, of how fully the answer answers a self-contained instruction",
    "judge_style": "the judge's score, 1-5, of the answer's clarity and writing",
    "judge_reason": "the judge's one-sentence reason",
    "chosen_score": "the judge's score of the chosen answer",
    "rejected_score": "the judge's score of the rejected answer",
    "rejected_flaw": "why the curation would drop the rejected answer (gibberish, ungrounded, ...), where it would",
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _topics(topics: dict[str, Any] | None) -> list[str]:
    """The topic map's clusters and diversity (kubetune.datagen.topics), where the build embedded its samples."""
    if not topics:
        return []
    lines = [
        "",
        "## Topics",
        "",
        f"The {topics['samples']} samples in {len(topics['clusters'])} clusters ({topics['method']}; `topics.png` "
        f"maps them). Diversity: mean cosine distance {topics['meanCosineDistance']:.2f} between two samples, "
        f"{topics['effectiveTopics']:.1f} effective topics (exp of the entropy of the cluster sizes).",
        "",
        "| topic | samples | example instruction |",
        "|---|---:|---|",
    ]
    lines += [f"| {c['name']} | {c['size']} | {c['example'].replace('|', '/')} |" for c in topics["clusters"]]
    return lines


def render(manifest: dict[str, Any], spec: DatasetBuildSpec) -> str:
    rows = sum(f["rows"] for f in manifest["files"].values())
    meta = {
        "license": spec.card.license,
        "language": spec.card.language,
        "pretty_name": manifest["name"],
        "size_categories": [_size_category(rows)],
        "task_categories": ["text-generation"],
        "tags": ["synthetic", "kubetune", "dpo" if spec.type == "preference" else "sft"],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": n.split(".")[0], "path": n} for n in sorted(manifest["files"])],
            }
        ],
    }
    what = (
        "prompt/chosen/rejected preference rows (TRL's conversational format) for DPO"
        if spec.type == "preference"
        else "instruction/answer conversations for supervised fine-tuning"
    )
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).strip(),
        "---",
        "",
        f"# {manifest['name']}",
        "",
        spec.card.description or f"A synthetic dataset of {what}, written by an LLM from source documents.",
        "",
        "## How it was built",
        "",
        f"- Type: {spec.type}" + (f" ({spec.preference.method} method)" if spec.type == "preference" else ""),
        f"- Generator: `{spec.generation.model}` ({spec.generation.backend}),"
        f" temperature {spec.generation.temperature}, {spec.generation.pairs_per_chunk} samples asked per chunk,"
        f" seed {spec.generation.seed}",
        f"- Chat template: `{manifest['tokenizer']}`",
        f"- Tokens written by the LLM: {manifest['generatedTokens']:,}",
        f"- Digest: `{manifest['digest']}` (sha256 over the split files' sha256)",
        "",
        "## Funnel",
        "",
        "What each stage kept, and why it dropped the rest (`funnel.png` draws it):",
        "",
        "| stage | in | out | dropped |",
        "|---|---:|---:|---|",
    ]
    for s in manifest["stages"]:
        dropped = ", ".join(
            f"{n} {why}" for why, n in sorted(s.get("dropped", {}).items(), key=lambda x: (-x[1], x[0])) if n
        )
        lines.append(f"| {s['name']} | {s['input']} | {s['output']} | {dropped} |")
    lines += _topics(manifest.get("topics"))
    lines += ["", "## Splits", "", "| split | rows |", "|---|---:|"]
    lines += [f"| {n.split('.')[0]} | {f['rows']} |" for n, f in sorted(manifest["files"].items())]
    lines += [
        "",
        "The split is seeded and grouped by source document: no document has samples on both sides.",
        "",
        "## Columns",
        "",
    ]
    lines += [f"- `{c}`: {COLUMN_DOCS.get(c, '')}".rstrip(": ") for c in manifest["columns"]]
    lines += [
        "",
        "## Licence",
        "",
        f"{spec.card.license}. Samples derive from the source documents; their terms apply.",
        "",
    ]
    return "\n".join(lines)


def write(manifest: dict[str, Any], spec: DatasetBuildSpec, path: Path) -> Path:
    path.write_text(render(manifest, spec), encoding="utf-8")
    return path
