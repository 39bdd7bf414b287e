"""The memory planner against measured memory: SmolLM2-135M-Instruct fine-tuned on the CPU (full, lora, qlora).

    .venv/bin/python bench/planner/measure.py            # all three methods, one process each, in turn
    .venv/bin/python bench/planner/measure.py --methods lora --steps 2

Each method trains through kubetune's own trainer, ``kubetune.trainer.training.train`` (TRL's SFTTrainer, as a
pod runs it), a few steps at batch 4 x 256 tokens. What is measured is the growth of the process's resident
set during ``SFTTrainer.train()`` over its resident set just before it, when the model (and its adapters)
are loaded and the dataset is tokenized: just before, freed heap is handed back (``malloc_trim``) and the
kernel's high-water mark is reset (``echo 5 > /proc/self/clear_refs``); just after, the high-water mark is
read (``VmHWM`` in ``/proc/self/status``). That is the CPU's counterpart of resetting
``torch.cuda.max_memory_allocated`` after set-up. A thread also samples ``VmRSS`` every 5 ms, as a check.

The prediction is ``kubetune.trainer.memory.plan_memory`` for the same spec on ``cpu``, minus the weights and
adapters (already in the baseline). Every sample is longer than 256 tokens, so no batch is padded: the
planner is told so (``Assumptions(padded_batches=False)``). Results go to bench/planner/results.md and
results.json.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct"
HERE = Path(__file__).resolve().parent
METHODS = ("full", "lora", "qlora")
BATCH, MAX_LENGTH = 4, 256


def spec_for(method: str, dataset: Path, steps: int):
    from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec

    return FineTuneJobSpec.model_validate(
        {
            "baseModel": str(MODEL),
            "dataset": {"path": str(dataset)},
            "method": method,
            "training": {
                "maxSteps": steps,
                "perDeviceTrainBatchSize": BATCH,
                "maxLength": MAX_LENGTH,
                "saveSteps": 10_000,  # no checkpoint inside the measured steps
                "learningRate": 1e-4 if method == "full" else 2e-4,
            },
        }
    )


def make_dataset(folder: Path) -> None:
    """train.parquet only (no test split, so no evaluation pass): each completion is a whole document of
    examples/data, a few hundred tokens, so every sample is truncated to exactly MAX_LENGTH tokens."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(MODEL)
    docs = [p.read_text() for p in sorted((ROOT / "examples" / "data").glob("*.md"))]
    rows = []
    for i in range(32):
        doc = docs[i % len(docs)]
        messages = [
            {"role": "user", "content": f"Write out the notes on topic {i % len(docs) + 1}, in full."},
            {"role": "assistant", "content": doc},
        ]
        prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        rows.append({"prompt": prompt, "completion": full[len(prompt) :]})
        if len(tok(full)["input_ids"]) <= MAX_LENGTH:
            raise SystemExit(f"sample {i} is not longer than {MAX_LENGTH} tokens")
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class Sampler(threading.Thread):
    """VmRSS every ``interval`` seconds; ``peak`` is the largest seen."""

    def __init__(self, interval: float = 0.005):
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak = max(self.peak, status_kib("VmRSS"))
            self.samples += 1
            time.sleep(self.interval)


def worker(method: str, dataset: Path, steps: int, result: Path) -> None:
    import gc

    import torch
    import trl

    from kubetune.trainer import training

    libc = ctypes.CDLL("libc.so.6")
    measured: dict = {"method": method, "rss_after_imports_kib": status_kib("VmRSS")}
    original_train = trl.SFTTrainer.train

    def measured_train(self, *args, **kwargs):
        batch = next(iter(self.get_train_dataloader()))
        measured["batch_shape"] = list(batch["input_ids"].shape)
        measured["batch_has_padding"] = (
            bool((batch["attention_mask"] == 0).any()) if "attention_mask" in batch else None
        )
        measured["trainable_parameters"] = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        measured["trainable_dtypes"] = sorted(
            {str(p.dtype).removeprefix("torch.") for p in self.model.parameters() if p.requires_grad}
        )
        # from_pretrained maps the safetensors file: a weight becomes resident when first read. Read them all
        # now, so that the baseline holds the loaded model.
        with torch.no_grad():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                tensor.detach().sum()
        gc.collect()
        libc.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current VmRSS
        measured["rss_baseline_kib"] = status_kib("VmRSS")
        measured["rss_anon_baseline_kib"] = status_kib("RssAnon")
        sampler = Sampler()
        sampler.start()
        started = time.perf_counter()
        try:
            return original_train(self, *args, **kwargs)
        finally:
            measured["train_seconds"] = round(time.perf_counter() - started, 1)
            measured["rss_hwm_kib"] = status_kib("VmHWM")
            sampler.stop_event.set()
            sampler.join()
            measured["rss_sampled_peak_kib"] = sampler.peak
            measured["samples"] = sampler.samples

    trl.SFTTrainer.train = measured_train
    with tempfile.TemporaryDirectory() as out:
        metrics = training.train(spec_for(method, dataset, steps), dataset, Path(out) / "run", log=lambda _: None)
    measured["steps"] = metrics["steps"]
    measured["losses"] = [round(x["loss"], 4) for x in metrics["losses"]]
    measured["torch_threads"] = torch.get_num_threads()
    result.write_text(json.dumps(measured, indent=2))


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes"):
        out[name] = md.version(name)
    return out


def predict(method: str, dataset: Path, steps: int) -> dict:
    from kubetune.trainer.memory import Assumptions, load_config, plan_memory

    plan = plan_memory(
        load_config(MODEL), spec_for(method, dataset, steps), "cpu", assumptions=Assumptions(padded_batches=False)
    )
    return {
        "peak": plan.peak_allocated,
        "growth": plan.peak_allocated - plan.weights - plan.adapters,
        "phase": plan.peak_phase,
        "terms": {name: value for name, value, _ in plan.rows()},
        "trainable_parameters": plan.trainable_parameters,
    }


ALLOCATORS = {
    # glibc as a pod runs it: freed heap is kept for reuse, so the resident set runs above the live tensors.
    "glibc": {},
    # Every allocation of 64 KiB or more gets its own mapping, handed back when freed: the resident set follows
    # the live tensors, as torch.cuda.max_memory_allocated does on a GPU.
    "exact": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}


def growth(measured: dict, key: str = "rss_hwm_kib") -> int:
    return (measured[key] - measured["rss_baseline_kib"]) * 1024


def markdown(report: dict) -> str:
    mb = 1e6
    lines = [
        "# Memory planner vs measured: SmolLM2-135M-Instruct on the CPU",
        "",
        f"Command: `{report['command']}` ({report['wall_s']:.0f} s in all; one process per method and allocator "
        "setting, one after the other, started with nothing else running).",
        "",
        f"Batch {BATCH} x {MAX_LENGTH} tokens (no padding: every sample is longer), {report['steps']} steps, "
        "gradient checkpointing off, LoRA r=16 on all linear layers with dropout 0.05 (the spec's defaults), "
        "AdamW (the Trainer's `adamw_torch_fused`), through `kubetune.trainer.training.train`. "
        f"Machine: {report['cpus']} CPU cores (shared), {report['host']}; "
        + ", ".join(f"{k} {v}" for k, v in report["versions"].items())
        + ".",
        "",
        "Measured: the growth of the resident set during `SFTTrainer.train()` (VmHWM after it minus VmRSS just",
        "before, the high-water mark reset and free heap trimmed at that point, every weight read once so that",
        "the memory-mapped model is resident; model, adapters and tokenized data are the baseline). *exact*: with",
        "`MALLOC_MMAP_THRESHOLD_=65536`, so that freed tensors leave the resident set at once (the counterpart",
        "of `torch.cuda.max_memory_allocated`); *glibc*: the default allocator, as a pod runs. Predicted:",
        "`plan_memory(..., 'cpu')` peak minus the weights and adapters. MB = 10^6 bytes. The last column is the",
        "first and last logged loss of each run (glibc / exact): it shows the steps ran, not that a few steps learn.",
        "",
        "| method | trainable params | predicted growth MB | measured, exact MB | error | measured, glibc MB | "
        "glibc / predicted | predicted peak at | loss first → last |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        pr, runs = r["predicted"], r["runs"]
        ok = {name: run for name, run in runs.items() if "error" not in run}
        exact, default = ok.get("exact"), ok.get("glibc")
        cells = [
            r["method"],
            f"{pr['trainable_parameters'] / 1e6:.1f} M",
            f"{pr['growth'] / mb:,.0f}",
            f"{growth(exact) / mb:,.0f}" if exact else runs["exact"].get("error", "n/a"),
            f"{(pr['growth'] - growth(exact)) / growth(exact):+.1%}" if exact else "",
            f"{growth(default) / mb:,.0f}" if default else runs["glibc"].get("error", "n/a"),
            f"{growth(default) / pr['growth']:.2f}" if default else "",
            pr["phase"],
            " / ".join(f"{run['losses'][0]:.2f} → {run['losses'][-1]:.2f}" for run in ok.values()),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The predicted terms (MB):", ""]
    names = max((list(r["predicted"]["terms"]) for r in report["results"]), key=len)
    lines.append("| term | " + " | ".join(r["method"] for r in report["results"]) + " |")
    lines.append("|---|" + "---|" * len(report["results"]))
    for name in names:
        cells = [f"{r['predicted']['terms'].get(name, 0) / mb:,.1f}" for r in report["results"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--dataset", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.worker:
        worker(args.worker, args.dataset, args.steps, args.result)
        return

    started = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        dataset = Path(tmp) / "dataset"
        make_dataset(dataset)
        for method in args.methods.split(","):
            row: dict = {"method": method, "predicted": predict(method, dataset, args.steps), "runs": {}}
            for allocator, env in ALLOCATORS.items():
                result_file = Path(tmp) / f"{method}-{allocator}.json"
                cmd = [sys.executable, __file__, "--worker", method, "--dataset", str(dataset)]
                cmd += ["--steps", str(args.steps), "--result", str(result_file)]
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, timeout=600)
                if proc.returncode == 0 and result_file.exists():
                    run = json.loads(result_file.read_text())
                else:
                    run = {"error": f"worker exited with {proc.returncode}"}
                run["process_wall_s"] = round(time.perf_counter() - t0, 1)
                run["env"] = env
                row["runs"][allocator] = run
                print(json.dumps({"method": method, "allocator": allocator, **run}), flush=True)
            results.append(row)
    report = {
        "command": "python bench/planner/measure.py"
        + (f" --methods {args.methods}" if args.methods != ",".join(METHODS) else "")
        + (f" --steps {args.steps}" if args.steps != 3 else ""),
        "steps": args.steps,
        "cpus": os.cpu_count(),
        "host": platform.processor() or platform.machine(),
        "versions": versions(),
        "results": results,
        "wall_s": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
