"""kubetune's trainer against a plain TRL script: the same LoRA SFT steps, data, model and settings.

    flock /tmp/kubetune-heavy.lock .venv/bin/python bench/methods/overhead.py [--rounds 3]

Each round runs ``python -m kubetune.trainer`` (as a pod does) and ``bench/methods/plain_trl.py``, one
after the other in alternating order, each in its own process. Measured per process: the seconds
``trainer.train()`` took (both sides time the same call), the wall time of the whole process, and its peak
resident set (``ru_maxrss`` from ``wait4``). Writes ``results-overhead.json`` and ``results-overhead.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
STEPS, RANK, BATCH, MAX_LENGTH = 16, 16, 4, 512


def make_dataset(folder: Path, rows: int = 64) -> None:
    """train.parquet only: each completion one of examples/data's documents, the prompt a request for it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    docs = [p.read_text() for p in sorted((ROOT / "examples" / "data").glob("*.md"))]
    table = []
    for i in range(rows):
        messages = [
            {"role": "user", "content": f"Write out the notes on topic {i % len(docs) + 1}, in full."},
            {"role": "assistant", "content": docs[i % len(docs)]},
        ]
        prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        table.append({"prompt": prompt, "completion": full[len(prompt) :]})
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(table), folder / "train.parquet")


def measure(command: list[str], env: dict | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command} failed:\n{out}")
    return {"wall_seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024, "stdout": out}


def kubetune(dataset: Path, work: Path, bf16: bool) -> dict:
    spec = {
        "baseModel": str(MODEL),
        "dataset": {"path": str(dataset)},
        "method": "lora",
        "lora": {"r": RANK, "loraAlpha": 2 * RANK},
        "training": {
            "maxSteps": STEPS,
            "perDeviceTrainBatchSize": BATCH,
            "maxLength": MAX_LENGTH,
            "learningRate": 2e-4,
            "gradientCheckpointing": False,
            "bf16": bf16,
        },
        "evaluation": {"generations": 0},
    }
    (work / "spec.json").write_text(json.dumps(spec))
    out = work / "kubetune-out"
    command = [sys.executable, "-m", "kubetune.trainer", "--spec", str(work / "spec.json")]
    result = measure(
        [*command, "--dataset", str(dataset), "--output", str(out)], env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    metrics = json.loads((out / "metrics.json").read_text())
    result.update(
        train_seconds=metrics["runtime_seconds"], steps=metrics["steps"], losses=[x["loss"] for x in metrics["losses"]]
    )
    return result


def plain(dataset: Path, work: Path, bf16: bool) -> dict:
    command = [sys.executable, str(HERE / "plain_trl.py"), "--model", str(MODEL), "--dataset", str(dataset)]
    command += ["--output", str(work / "plain-out"), "--steps", str(STEPS), "--rank", str(RANK)]
    command += ["--batch", str(BATCH), "--max-length", str(MAX_LENGTH)] + (["--bf16"] if bf16 else [])
    result = measure(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (TRL's own default)")
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"kubetune": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_dataset(work / "data")
        for i in range(args.rounds):
            order = ("kubetune", "plain") if i % 2 == 0 else ("plain", "kubetune")
            for name in order:
                run_dir = work / f"{name}-{i}"
                run_dir.mkdir()
                result = (kubetune if name == "kubetune" else plain)(work / "data", run_dir, args.bf16)
                result.pop("stdout")
                runs[name].append(result)
                seconds = f"train {result['train_seconds']:.1f} s, wall {result['wall_seconds']:.1f} s"
                loss = f"loss {result['losses'][0]:.3f} -> {result['losses'][-1]:.3f}"
                print(f"round {i + 1} {name}: {seconds}, peak RSS {result['peak_rss_mib']:.0f} MiB, {loss}", flush=True)
    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("train_seconds", "wall_seconds", "peak_rss_mib")}
        for n, rs in runs.items()
    }
    ratio = {k: med["kubetune"][k] / med["plain"][k] for k in med["plain"]}
    report = {
        "conditions": {
            "steps": STEPS,
            "rank": RANK,
            "batch": BATCH,
            "max_length": MAX_LENGTH,
            "rounds": args.rounds,
            "bf16": args.bf16,
        },
        "runs": runs,
        "median": med,
        "ratio": ratio,
    }
    (args.out / f"results-overhead{'-bf16' if args.bf16 else ''}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({"median": med, "ratio": ratio}, indent=2))


if __name__ == "__main__":
    main()
