"""The curation measured on labelled rows: what it drops of each kind of bad row, and what it wrongly drops of the
good ones.

The 431 rows of ``labelled.jsonl`` (good pairs, and seven kinds of bad ones, over real README passages; see
SOURCES.md) are written as an instruction set (id, instruction, answer, source) and curated by ``kubetune run`` of
a DatasetBuild with ``source.kind: instructions``, the command a user runs, with every CPU stage on and no LLM
judge: the quality heuristics, grounding (lexical support, all-MiniLM-L6-v2 similarities, and each answer's
likelihood given its source under SmolLM2-135M-Instruct: curation.scoringModel, ``--scoring-model none`` for off),
exact, near and semantic dedup. A row is dropped when its id is in neither split; ``dropped.jsonl`` says by which
stage and why.

    .venv/bin/python bench/quality/run.py            # results in bench/quality/results/cpu.{json,md}
    .venv/bin/python bench/quality/run.py --rows bench/quality/heldout/heldout.jsonl --tag heldout
    .venv/bin/python bench/quality/run.py --rows bench/quality/heldout2/heldout2.jsonl --tag heldout2

Reported: per kind, the share of bad rows dropped (recall) and of good rows kept; overall precision and recall of
the drop decisions; and the curation's time per 1,000 rows on this machine (the stages' own seconds, and the whole
``kubetune run``), beside the generation's cost from bench/generation.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
KUBETUNE = Path(sys.executable).parent / "kubetune"
SPEC = """apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {{name: quality-bench}}
spec:
  source: {{paths: [{rows}], kind: instructions}}
  generation: {{model: {model}}}   # its tokenizer formats the rows; nothing is generated
  curation:
    embeddingModel: {embedding}
{scoring}  split: {{testSize: 0.1}}
"""


def run(rows: list[dict], workdir: Path, scoring_model: str | None) -> tuple[dict, float, Path]:
    """Curate ``rows`` with kubetune run (``scoring_model``: curation.scoringModel, None: off); the manifest, the
    wall time and the output folder."""
    source = workdir / "rows.jsonl"
    with source.open("w") as f:
        for r in rows:
            f.write(json.dumps({k: r[k] for k in ("id", "instruction", "answer", "source")}) + "\n")
    spec = workdir / "bench.yaml"
    spec.write_text(
        SPEC.format(
            rows=source,
            model=ROOT / "models" / "SmolLM2-135M-Instruct",
            embedding=ROOT / "models" / "all-MiniLM-L6-v2",
            scoring=f"    scoringModel: {scoring_model}\n" if scoring_model else "",
        )
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [str(KUBETUNE), "run", "-f", str(spec), "--workdir", str(workdir / "work")], capture_output=True, text=True
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kubetune run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    output = workdir / "work" / "datasets" / "default" / "quality-bench"
    return json.loads((output / "manifest.json").read_text()), wall, output


def kept_ids(output: Path) -> set[str]:
    import pyarrow.parquet as pq

    return {row for name in ("train", "test") if (output / f"{name}.parquet").exists()
            for row in pq.read_table(output / f"{name}.parquet", columns=["id"]).column("id").to_pylist()}  # fmt: skip


def measure(rows: list[dict], kept: set[str], dropped: list[dict]) -> dict:
    """Per kind, what became of its rows. A paraphrased pair is one question: deduplication may keep either of
    the two, so a good row dropped as the duplicate of its own paraphrase, which was kept, counts as kept, and that
    paraphrase as dropped (the set labels the later of the two bad, an order the curation does not see)."""
    why = {d["id"]: f"{d['stage']}:{d['reason']}" for d in dropped if "id" in d}
    twin_of = {r["duplicate_of"]: r["id"] for r in rows if r.get("duplicate_of")}
    kept = set(kept)
    for original, paraphrase in twin_of.items():
        if original not in kept and paraphrase in kept and why.get(original, "").endswith("semantic_duplicate"):
            kept = (kept - {paraphrase}) | {original}
            why[paraphrase] = "semantic_dedup:semantic_duplicate (kept in its original's place)"
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    decided: list[dict] = []
    for r in rows:
        decision = "kept" if r["id"] in kept else why.get(r["id"], "other:dropped")
        kinds[r["kind"]][decision] += 1
        decided.append({"id": r["id"], "kind": r["kind"], "decision": decision})
    per_kind = {}
    for kind, decisions in sorted(kinds.items()):
        total = sum(decisions.values())
        kept_n = decisions["kept"]
        share = (kept_n if kind == "good" else total - kept_n) / total
        per_kind[kind] = {"rows": total, "kept": kept_n, "share": round(share, 3), "decisions": dict(decisions)}
    bad = [r for r in rows if r["label"] == "bad"]
    dropped_ids = {r["id"] for r in rows} - kept
    true_drops = sum(r["id"] in dropped_ids for r in bad)
    return {
        "per_kind": per_kind,
        "recall": round(true_drops / len(bad), 3),
        "precision": round(true_drops / max(len(dropped_ids), 1), 3),
        "good_kept": per_kind["good"]["share"],
        "decisions": decided,
    }


def table(result: dict) -> str:
    lines = [
        "| kind | rows | share (bad: dropped; good: kept) | decisions |",
        "|---|---:|---:|---|",
    ]
    for kind, k in result["per_kind"].items():
        decisions = ", ".join(f"{d} {n}" for d, n in sorted(k["decisions"].items(), key=lambda x: -x[1]))
        lines.append(f"| {kind} | {k['rows']} | {k['share']:.3f} | {decisions} |")
    lines.append("")
    lines.append(
        f"Overall: drop precision {result['precision']:.3f}, recall of bad rows {result['recall']:.3f}, good rows "
        f"kept {result['good_kept']:.3f}. Curation stages {result['stage_seconds']:.1f} s for {result['rows']} rows "
        f"({result['stage_seconds_per_1000']:.1f} s per 1,000; kubetune run whole: {result['wall_seconds']:.1f} s, "
        "model loads included)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="cpu")
    parser.add_argument(
        "--scoring-model",
        default=str(ROOT / "models" / "SmolLM2-135M-Instruct"),
        help="curation.scoringModel (the answer's likelihood given its source); 'none': off",
    )
    parser.add_argument(
        "--rows",
        type=Path,
        default=HERE / "labelled.jsonl",
        help="the labelled rows (heldout/heldout.jsonl: the held-out set, with --tag heldout)",
    )
    args = parser.parse_args()
    scoring = None if args.scoring_model == "none" else args.scoring_model
    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        manifest, wall, output = run(rows, Path(tmp), scoring)
        dropped = [json.loads(x) for x in (output / "dropped.jsonl").read_text().splitlines() if x.strip()]
        result = measure(rows, kept_ids(output), dropped)
        curation = {"quality", "grounding", "decontaminate", "dedup_samples", "semantic_dedup"}
        seconds = sum(s["seconds"] for s in manifest["stages"] if s["name"] in curation)
        result |= {
            "rows": len(rows),
            "stage_seconds": round(seconds, 2),
            "stage_seconds_per_1000": round(seconds * 1000 / len(rows), 2),
            "wall_seconds": round(wall, 1),
            "funnel": [{k: s[k] for k in ("name", "input", "output", "dropped")} for s in manifest["stages"]],
        }
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    decisions = result.pop("decisions")
    (results / f"{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")
    # Row by row, what the curation decided: the file to read when a figure moves.
    (results / f"{args.tag}.decisions.jsonl").write_text("".join(json.dumps(d) + "\n" for d in decisions))
    (results / f"{args.tag}.md").write_text(table(result))
    print(table(result))


if __name__ == "__main__":
    main()
