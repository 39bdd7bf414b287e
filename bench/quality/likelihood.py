"""What a causal LM's likelihood of an answer tells good rows from each kind of bad one, on the labelled rows: the
figures behind ``curation.scoringModel`` and ``grounding.minAnswerLogProb`` (kubetune.llm.likelihood).

Each answer is scored token by token twice, after the source and the question (the curation's prompt) and after
the question alone. Reported per kind of bad row, the AUC of good rows against it (the chance that a random good
row scores higher than a random bad one; 0.5 is no signal) for five scores:

- ``mean``: the mean log-probability per answer token given the source (what ``low_likelihood`` drops on);
- ``mean_alone``: the same without the source;
- ``mean_gain``: ``mean`` minus ``mean_alone``, what the source adds (pointwise mutual information per token);
- ``min``, ``min_gain``: the least likely token, and the token the source makes least likely (a contradiction
  often turns on one word: "mutable" where the source says "immutable").

Then, on the rows the whole curation keeps (``results/TAG.decisions.jsonl`` from run.py), how many contradictions
each score would catch at a floor that drops 0, 1 or 2 more good rows.

    .venv/bin/python bench/quality/likelihood.py      # results/likelihood-cpu.{json,md}; 3 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "services"))

from kubetune.llm import likelihood  # noqa: E402

SCORES = ("mean", "mean_alone", "mean_gain", "min", "min_gain")


def scores(given: list[float], alone: list[float]) -> dict[str, float]:
    gain = [a - b for a, b in zip(given, alone, strict=True)]
    return {
        "mean": sum(given) / len(given),
        "mean_alone": sum(alone) / len(alone),
        "mean_gain": sum(gain) / len(gain),
        "min": min(given),
        "min_gain": min(gain),
    }


def auc(good: list[float], bad: list[float]) -> float:
    """The chance that a good row scores above a bad one, ties counting half."""
    wins = sum((g > b) + 0.5 * (g == b) for g in good for b in bad)
    return wins / (len(good) * len(bad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=Path, default=HERE / "labelled.jsonl")
    parser.add_argument("--tag", default="cpu", help="the run.py results whose kept rows to use, and the output's tag")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "SmolLM2-135M-Instruct")
    args = parser.parse_args()

    rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["answer"].strip()]
    bar = tqdm(total=2 * len(rows), desc="scoring", unit="answer")
    given = likelihood.token_logprobs(
        str(args.model), [(r["source"], r["instruction"], r["answer"]) for r in rows], lambda _: bar.update()
    )
    alone = likelihood.token_logprobs(
        str(args.model), [(None, r["instruction"], r["answer"]) for r in rows], lambda _: bar.update()
    )
    bar.close()
    scored = [(r["id"], r["kind"], scores(g, a)) for r, g, a in zip(rows, given, alone, strict=True)]

    kinds = sorted({kind for _, kind, _ in scored} - {"good"})
    by_kind = {k: [s for _, kind, s in scored if kind == k] for k in ["good", *kinds]}
    table = {
        name: {k: round(auc([s[name] for s in by_kind["good"]], [s[name] for s in by_kind[k]]), 3) for k in kinds}
        for name in SCORES
    }
    lines = ["| score | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    lines += [f"| `{name}` | " + " | ".join(f"{table[name][k]:.2f}" for k in kinds) + " |" for name in SCORES]

    caught: dict[str, list[int]] = {}
    decisions = HERE / "results" / f"{args.tag}.decisions.jsonl"
    if decisions.exists():
        kept = {d["id"] for d in map(json.loads, decisions.read_text().splitlines()) if d["decision"] == "kept"}
        good_kept = [s for i, kind, s in scored if i in kept and kind == "good"]
        contradictions = [s for i, kind, s in scored if i in kept and kind == "contradiction"]
        lines += ["", f"Kept by the whole curation (run.py, low_likelihood included): {len(good_kept)} good rows, "
                  f"{len(contradictions)} contradictions.",
                  "", "| score | contradictions caught, 0 / 1 / 2 more good rows dropped |", "|---|---|"]  # fmt: skip
        for name in SCORES:
            floor = sorted(s[name] for s in good_kept)
            caught[name] = [sum(c[name] < floor[n] for c in contradictions) for n in range(3)]
            lines.append(f"| `{name}` | " + " / ".join(f"{c}/{len(contradictions)}" for c in caught[name]) + " |")

    out = HERE / "results" / f"likelihood-{args.tag}"
    out.with_suffix(".json").write_text(
        json.dumps(
            {"model": args.model.name, "rows": len(rows), "auc": table, "contradictions_caught": caught}, indent=1
        )
    )
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
