"""An existing instruction set curated by ``kubetune run`` (source.kind: instructions), as a user curates an
Alpaca-style set: real rows of the labelled bench (bench/quality), every CPU curation stage on, the real
all-MiniLM-L6-v2 model, and SmolLM2-135M-Instruct scoring each answer's likelihood given its source; each kind of
bad row is dropped for its reason and named in dropped.jsonl, and the good rows reach the splits with their
grounding scores."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from kubetune.datagen import grounding

pytestmark = pytest.mark.slow

KUBETUNE = Path(sys.executable).parent / "kubetune"
EXPECTED = {  # kind -> the reason it is dropped for (the rows chosen below are each caught)
    "word_salad": "gibberish",
    "truncated": "truncated",
    "refusal": "refusal",
    "context_reference": "mentions_context",
    "wrong_source": "ungrounded",
    "paraphrase_duplicate": "semantic_duplicate",
    "contradiction": "unsupported_number",
}
# Two back-translated instructions SmolLM2-135M wrote for a span of the quickstart's docs/qlora.md (the answer is
# the span, verbatim): a statement that asks nothing, and a question about names the span never mentions.
QLORA_SPAN = (
    "The LoRA adapters stay in 16-bit precision and receive the gradients, while the base weights are dequantised "
    "on the fly during the forward and backward passes. QLoRA also uses double quantisation, which quantises the "
    "quantisation constants themselves, and paged optimizers that move optimizer state to CPU memory when the GPU "
    "runs short."
)
# Fluent nonsense no heuristic sees ("Data is the river that flows through the window of the building block"):
# dropped for its low likelihood given its source under SmolLM2-135M-Instruct (curation.scoringModel).
FLUENT_WORD_SALAD = ("q0097", "q0130", "q0154")
GENERATED = {
    "not_a_request": "The LoRa Adapter provides improved performance by utilizing advanced data compression "
    "techniques, such as delta encoding.",
    "unknown_term": "How does QLOA avoid FFXI optimization?",
}


def test_kubetune_run_curates_instruction_rows_and_says_why_each_was_dropped(tmp_path, root, smollm2, minilm, labelled):
    by_id = {r["id"]: r for r in labelled}
    chosen = [r for r in labelled if r["kind"] == "good"][:12]
    for kind in EXPECTED:
        rows = [r for r in labelled if r["kind"] == kind]
        if kind == "word_salad":  # the identifier soup and spliced scripts a small generator emits
            rows = [r for r in rows if any(c in r["answer"] for c in "[]")]
        if kind == "contradiction":  # those that change a figure of the source ("30 million" for its "300M")
            rows = [r for r in rows if grounding.unsupported_numbers(r["answer"], r["source"])]
        chosen += rows[:3]
    chosen += [by_id[i] for i in FLUENT_WORD_SALAD]
    # A paraphrase's original is in the set too (it comes first), so there is something to duplicate.
    chosen += [by_id[r["duplicate_of"]] for r in chosen if r["kind"] == "paraphrase_duplicate"]
    chosen.sort(key=lambda r: r["id"])
    chosen += [
        {"id": f"smollm2-{reason}", "kind": reason, "instruction": instruction, "answer": QLORA_SPAN,
         "source": QLORA_SPAN}
        for reason, instruction in GENERATED.items()
    ]  # fmt: skip
    by_id.update((r["id"], r) for r in chosen)
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps({k: r[k] for k in ("id", "instruction", "answer", "source")}) + "\n"
                              for r in chosen))  # fmt: skip
    spec = tmp_path / "curate.yaml"
    spec.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: DatasetBuild\nmetadata: {name: curated-rows}\nspec:\n"
        f"  source: {{paths: [{source}], kind: instructions}}\n"
        f"  generation: {{model: {smollm2}}}\n"
        f"  curation: {{embeddingModel: {minilm}, scoringModel: {smollm2}}}\n"
        "  split: {testSize: 0.2, seed: 1}\n"
    )
    proc = subprocess.run([str(KUBETUNE), "run", "-f", str(spec), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, cwd=root)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "read_samples" in proc.stdout and "semantic_dedup" in proc.stdout  # the funnel, as printed

    output = tmp_path / "work" / "datasets" / "default" / "curated-rows"
    dropped = [json.loads(line) for line in (output / "dropped.jsonl").read_text().splitlines()]
    reasons = collections.defaultdict(set)
    for d in dropped:
        reasons[by_id[d["id"]]["kind"]].add(d["reason"])
    for kind, reason in EXPECTED.items():
        assert reason in reasons[kind], (kind, reasons[kind])
    for reason in GENERATED:
        assert reasons[reason] == {reason}
    assert {d["id"]: d["reason"] for d in dropped if d["id"] in FLUENT_WORD_SALAD} == dict.fromkeys(
        FLUENT_WORD_SALAD, "low_likelihood"
    )
    twins = [d for d in dropped if d["reason"] == "semantic_duplicate"]
    assert all(d["duplicate_of"] in by_id for d in twins)  # which kept row each duplicates
    kept = [r for split in ("train", "test") for r in pq.read_table(output / f"{split}.parquet").to_pylist()]
    kinds = collections.Counter(by_id[r["id"]]["kind"] for r in kept)
    assert kinds["good"] >= 11 and set(kinds) <= {"good", "paraphrase_duplicate"}  # at most a twin kept instead
    assert all(r["support_score"] >= 0.5 and r["answer_similarity_score"] >= 0.25 for r in kept)
    assert all(r["answer_logprob"] >= -3.1 for r in kept)  # each kept row scored, above the floor
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["droppedRows"] == len(dropped) == len(chosen) - len(kept)
    # The topic map of what was kept: every kept row in a named cluster, drawn, and in the card.
    topics = manifest["topics"]
    assert topics["samples"] == len(kept) == sum(c["size"] for c in topics["clusters"])
    assert all(c["name"] and c["example"] for c in topics["clusters"])
    assert 0.3 < topics["meanCosineDistance"] < 1.0 and 1.0 <= topics["effectiveTopics"] <= len(topics["clusters"])
    assert (output / "topics.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Topics" in (output / "README.md").read_text()
