"""Full fine-tuning, LoRA and QLoRA, each with SFT and DPO, on the same data and steps: the evidence to choose by.

    flock /tmp/kubetune-heavy.lock .venv/bin/python bench/methods/run.py            # CPU, SmolLM2-135M-Instruct
    python bench/methods/run.py --random-weights --out DIR                          # a GPU machine with no model

Each of the six runs is ``python -m kubetune.trainer`` in its own process, as a pod runs it, one after the
other. Per run: peak memory (on a GPU ``torch.cuda.max_memory_allocated`` during ``train()``, which the trainer
records; on a CPU the process's peak resident set, which also holds the Python runtime, the evaluation and
the data) beside the memory planner's prediction for the same spec, seconds per step, tokens per second,
trainable parameters, eval loss before and after (and, for DPO, the share of test pairs whose chosen answer
the tuned model prefers), and output quality: the base and the tuned model's greedy answers to ``--generations``
test prompts against the references (ROUGE-L, and all-MiniLM-L6-v2 cosine where models/ holds it). Writes
``results[-TAG].json``, ``results[-TAG].md`` and ``methods[-TAG].png``.

The data: examples/data's documents. SFT rows ask for the notes on a topic and answer with them; DPO rows
pair the same prompt with those notes (chosen) and the same words shuffled (rejected), in TRL's conversational
format: a preference a model can learn and carry to the held-out prompts. Every sample is longer than 256
tokens, so at the CPU default ``--max-length`` every batch is full.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
MINILM = ROOT / "models" / "all-MiniLM-L6-v2"
METHODS = ("full", "lora", "qlora")
OBJECTIVES = ("sft", "dpo")
# Learning rates as the methods are usually run: full fine-tuning lower than adapters, DPO lower than SFT.
RATES = {("sft", "full"): 2e-5, ("sft", "lora"): 2e-4, ("sft", "qlora"): 2e-4}
RATES |= {("dpo", "full"): 1e-6, ("dpo", "lora"): 2e-5, ("dpo", "qlora"): 2e-5}


def make_datasets(folder: Path, tokenizer_dir: Path, rows: int = 40, test: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    docs = [p.read_text() for p in sorted((ROOT / "examples" / "data").glob("*.md"))]
    sft, dpo = [], []
    for i in range(rows):
        topic = i % len(docs)
        question = f"Write out the notes on topic {topic + 1} (request {i}), in full."
        messages = [{"role": "user", "content": question}, {"role": "assistant", "content": docs[topic]}]
        prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        sft.append({"prompt": prompt, "completion": full[len(prompt) :]})
        words = docs[topic].split()
        random.Random(i).shuffle(words)
        dpo.append(
            {
                "prompt": messages[:1],
                "chosen": [{"role": "assistant", "content": docs[topic]}],
                "rejected": [{"role": "assistant", "content": " ".join(words)}],
            }
        )
    for name, table in (("sft", sft), ("dpo", dpo)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(table[test:]), folder / name / "train.parquet")
        pq.write_table(pa.Table.from_pylist(table[:test]), folder / name / "test.parquet")


def random_model(source: Path, target: Path) -> Path:
    """``source``'s config and tokenizer with random weights (no download, no checkpoint needed)."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(source)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(target)
    for f in source.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "chat_template", "generation")):
            shutil.copy(f, target / f.name)
    return target


def spec_for(model: Path, dataset: Path, objective: str, method: str, args) -> dict:
    return {
        "baseModel": str(model),
        "dataset": {"path": str(dataset)},
        "method": method,
        "objective": objective,
        "lora": {"r": 16, "loraAlpha": 32},
        "training": {
            "maxSteps": args.steps,
            "perDeviceTrainBatchSize": args.batch,
            "maxLength": args.max_length,
            "learningRate": RATES[objective, method],
            "saveSteps": 10_000,  # no checkpoint inside the measured steps
            "optim": args.optim,
            "gradientCheckpointing": args.gradient_checkpointing,
        },
        "evaluation": {
            "generations": args.generations,
            "maxNewTokens": args.max_new_tokens,
            # Answers scored against the references by ROUGE-L and, where the model is built, embedding similarity.
            "embeddingModel": str(MINILM) if (MINILM / "modules.json").exists() else None,
        },
    }


def plan(spec: dict, model: Path, gpu: str) -> dict:
    from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
    from kubetune.trainer.memory import load_config, plan_memory

    p = plan_memory(load_config(model), FineTuneJobSpec.model_validate(spec), gpu)
    return {
        "planned_peak_bytes": p.peak_allocated,
        "planned_total_bytes": p.total,
        "planned_trainable": p.trainable_parameters,
    }


def run_one(spec: dict, work: Path) -> dict:
    (work / "spec.json").write_text(json.dumps(spec))
    command = [sys.executable, "-m", "kubetune.trainer", "--spec", str(work / "spec.json")]
    command += ["--dataset", spec["dataset"]["path"], "--output", str(work / "out")]
    started = time.perf_counter()
    with (work / "log.txt").open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:  # reported, and the other runs go on
        return {"error": (work / "log.txt").read_text()[-3000:]}
    m = json.loads((work / "out" / "metrics.json").read_text())
    return {
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_gpu_bytes": m.get("peak_gpu_memory_bytes"),
        "seconds_per_step": m["seconds_per_step"],
        "tokens_per_second": m["tokens_per_second"],
        "trainable_parameters": m["trainable_parameters"],
        "initial_eval_loss": m["initial_eval_loss"],
        "eval_loss": m["eval_loss"],
        "reward_accuracy": m.get("rewards/accuracies"),
        "reward_margin": m.get("rewards/margins"),
        "losses": m["losses"],
        "bf16": m["bf16"],
        "output_quality": m.get("output_quality"),
    }


GIB = 1024**3


def markdown(report: dict) -> str:
    c = report["conditions"]
    on_gpu = c["gpu"] != "cpu"
    lines = [
        f"{c['model']}, {c['steps']} steps of batch {c['batch']} x {c['max_length']} tokens, LoRA r 16 / alpha 32 on "
        f"all linear layers, optimizer {c['optim']}, {'bf16' if on_gpu else 'fp32'}, gradient checkpointing "
        f"{'on' if c.get('gradient_checkpointing') else 'off'}; "
        f"{c['device']}.",
        "",
        "| objective | method | peak memory GiB (measured) | planned GiB | s/step | tokens/s | trainable params | "
        "eval loss before -> after | DPO: chosen preferred | "
        "answers vs references: ROUGE-L, similarity (base -> tuned) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        if "error" in r:
            lines.append(f"| {r['objective']} | {r['method']} | failed: {r['error'].strip().splitlines()[-1][:200]} |")
            continue
        measured = r["peak_gpu_bytes"] if on_gpu else r["peak_rss_bytes"]
        accuracy = (
            "" if r["reward_accuracy"] is None else f"{r['reward_accuracy']:.2f} (margin {r['reward_margin']:.3f})"
        )
        lines.append(
            f"| {r['objective']} | {r['method']} | {measured / GIB:.2f} | {r['planned_peak_bytes'] / GIB:.2f} | "
            f"{r['seconds_per_step']:.2f} | {r['tokens_per_second']:,.0f} | {r['trainable_parameters'] / 1e6:.1f} M | "
            f"{r['initial_eval_loss']:.3f} -> {r['eval_loss']:.3f} | {accuracy} | {_quality(r.get('output_quality'))} |"
        )
    what = "torch.cuda.max_memory_allocated during train()" if on_gpu else "the process's peak resident set"
    lines += ["", f"Measured memory: {what}; planned: the planner's peak of live tensors for the same spec."]
    return "\n".join(lines) + "\n"


def _quality(q: dict | None) -> str:
    """ROUGE-L (and embedding similarity) of the base and the tuned answers against the references."""
    if not q or q.get("tuned_rouge_l") is None:
        return ""
    text = f"{q['base_rouge_l']:.3f} -> {q['tuned_rouge_l']:.3f}"
    if q.get("tuned_similarity") is not None:
        text += f", {q['base_similarity']:.3f} -> {q['tuned_similarity']:.3f}"
    return text + f" ({q['answers']} prompts)"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if "error" not in r]
    on_gpu = report["conditions"]["gpu"] != "cpu"
    labels = [f"{r['objective']}\n{r['method']}" for r in runs]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    x = range(len(runs))
    measured = [(r["peak_gpu_bytes"] if on_gpu else r["peak_rss_bytes"]) / GIB for r in runs]
    axes[0].bar([i - 0.2 for i in x], measured, 0.4, label="measured")
    axes[0].bar([i + 0.2 for i in x], [r["planned_peak_bytes"] / GIB for r in runs], 0.4, label="planned")
    axes[0].set_title("peak memory (GiB)" + ("" if on_gpu else ": RSS vs planned tensors"))
    axes[0].legend()
    axes[1].bar(list(x), [r["seconds_per_step"] for r in runs])
    axes[1].set_title("seconds per step")
    for r in runs:
        axes[2].plot([p["step"] for p in r["losses"]], [p["loss"] for p in r["losses"]], label=labels[runs.index(r)])
    axes[2].set_title("training loss")
    axes[2].set_xlabel("step")
    axes[2].legend(fontsize=7)
    for ax in axes[:2]:
        ax.set_xticks(list(x), labels, fontsize=8)
    fig.suptitle(f"{report['conditions']['model']} on {report['conditions']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--random-weights", action="store_true", help="the model's config with random weights")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--optim", default="adamw_torch_fused")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--generations", type=int, default=4, help="test prompts answered by both models, scored")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--objectives", default=",".join(OBJECTIVES))
    parser.add_argument("--gpu", default=None, help="the planner's GPU type (default: H100-80GB/H200-141GB by name)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--tag", default="", help="suffix of the result files")
    args = parser.parse_args()
    import torch

    on_gpu = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if on_gpu else f"{os.cpu_count()} CPU cores ({platform.machine()})"
    gpu = args.gpu or ("cpu" if not on_gpu else ("H200-141GB" if "H200" in device else "H100-80GB"))
    suffix = f"-{args.tag}" if args.tag else ""
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = random_model(args.model, work / "model") if args.random_weights else args.model
        make_datasets(work / "data", model)
        for objective in args.objectives.split(","):
            for method in args.methods.split(","):
                spec = spec_for(model, work / "data" / objective, objective, method, args)
                run_dir = work / f"{objective}-{method}"
                run_dir.mkdir()
                result = {"objective": objective, "method": method, **plan(spec, model, gpu), **run_one(spec, run_dir)}
                runs.append(result)
                if "error" in result:
                    print(f"{objective} {method} failed:\n{result['error']}", flush=True)
                    continue
                print(
                    f"{objective} {method}: {result['seconds_per_step']:.2f} s/step, peak RSS "
                    f"{result['peak_rss_bytes'] / GIB:.2f} GiB, GPU {(result['peak_gpu_bytes'] or 0) / GIB:.2f} GiB, "
                    f"planned {result['planned_peak_bytes'] / GIB:.2f} GiB, eval loss "
                    f"{result['initial_eval_loss']:.3f} -> {result['eval_loss']:.3f}",
                    flush=True,
                )
    import peft
    import transformers
    import trl

    report = {
        "conditions": {
            "model": args.model.name + (" (random weights)" if args.random_weights else ""),
            "device": device,
            "gpu": gpu,
            "steps": args.steps,
            "batch": args.batch,
            "max_length": args.max_length,
            "optim": args.optim,
            "gradient_checkpointing": args.gradient_checkpointing,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "trl": trl.__version__,
                "peft": peft.__version__,
            },
        },
        "runs": runs,
    }
    (args.out / f"results{suffix}.json").write_text(json.dumps(report, indent=2))
    (args.out / f"results{suffix}.md").write_text(markdown(report))
    plot(report, args.out / f"methods{suffix}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
