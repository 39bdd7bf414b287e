"""The memory planner against one GPU: peak allocated memory of LoRA and QLoRA steps on a Llama-3.1-8B shape,
with the LM head as kubetune's trainer runs it (TRL 1.16's fused head) and as a plain loop runs it (whole logits).

    python bench/planner/gpu.py --out DIR            # on a GPU machine: 4 processes, about 2 minutes on an H200
    python bench/planner/gpu.py --out DIR --tiny     # a 2-layer toy on the CPU: a smoke test
    python bench/planner/gpu.py --report DIR/gpu.json   # predicted vs measured: results-gpu.json and .md here

    python bench/planner/gpu.py --out DIR --cases full-fused,lora-nockpt-fused,full-full --case-timeout 150
    python bench/planner/gpu.py --report DIR/gpu.json --report-stem results-gpu-more

``--cases`` picks other cases (default: the four above, ``lora-fused,qlora-fused,lora-full,qlora-full``):
``full-*`` fine-tunes every parameter (bf16 weights, fused AdamW with its states in bf16, gradient
checkpointing, the LM head's weight trained too), ``*-nockpt-*`` turns gradient checkpointing off.

The model, the NF4 quantization and the training step are bench/gpu/run.py's (random weights, random tokens,
no mask, gradient checkpointing, bf16 autocast, fused AdamW, LoRA r=16 on all seven linear layers, dropout 0),
with what TRL's SFTTrainer adds for kubetune: ``enable_input_require_grads``, the adapters of a quantized
model cast to bf16, and, for ``fused``, the forward of ``trl.trainer.utils.add_fused_lm_head`` written out:
the backbone, then ``trl.kernels.chunked_logprob.ChunkedLogProbFunction`` over the labelled positions. That
one file is loaded from TRL's source (``--trl-kernel``; the GPU machine has no TRL). ``full`` is the plain
``model(input_ids, labels=...)`` loss, the control that bench/gpu/results measured.

Memory: ``torch.cuda.max_memory_allocated`` reset after set-up (the model resident), over the warm-up and
timed steps: what ``plan_memory(...).peak_allocated`` predicts.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GIB = 1024**3
TRL_KERNEL = ROOT / ".venv/lib/python3.11/site-packages/trl/kernels/chunked_logprob.py"
CASES = [("lora", "fused"), ("qlora", "fused"), ("lora", "full"), ("qlora", "full")]
DEFAULT_CASES = ",".join(f"{method}-{loss}" for method, loss in CASES)


def parse_case(name: str) -> tuple[str, str, bool]:
    """``METHOD[-nockpt]-LOSS`` -> (method, loss, gradient checkpointing)."""
    parts = name.split("-")
    checkpointing = "nockpt" not in parts
    parts = [x for x in parts if x != "nockpt"]
    if len(parts) != 2 or parts[0] not in ("full", "lora", "qlora") or parts[1] not in ("fused", "full"):
        raise ValueError(f"unknown case {name!r}: METHOD[-nockpt]-LOSS, METHOD full|lora|qlora, LOSS fused|full")
    return parts[0], parts[1], checkpointing


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def chunked_logprob(path: Path):
    """TRL's kernel file alone; its backward imports ``..trainer.utils.maybe_gather_lm_head_ctx`` (ZeRO-3 only)."""
    for name in ("trl", "trl.trainer", "trl.kernels"):
        sys.modules.setdefault(name, types.ModuleType(name))
    utils = types.ModuleType("trl.trainer.utils")
    utils.maybe_gather_lm_head_ctx = lambda *params: contextlib.nullcontext()
    sys.modules["trl.trainer.utils"] = utils
    spec = importlib.util.spec_from_file_location("trl.kernels.chunked_logprob", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def worker(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, LlamaConfig

    bench = load("bench_gpu_run", ROOT / "bench" / "gpu" / "run.py")
    kernel = chunked_logprob(args.trl_kernel)
    method, loss_kind = args.method, args.loss
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16
    torch.manual_seed(0)
    shape = bench.TINY if args.tiny else bench.LLAMA_31_8B
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    config.use_cache = False
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    gc_kwargs = {"use_reentrant": False}
    checkpointing = not args.no_checkpointing
    if method == "qlora":
        bench.quantize_nf4_in_place(model, dtype)
        if on_gpu:
            torch.cuda.empty_cache()
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs=gc_kwargs
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if method != "full":
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules=bench.LORA_TARGETS, task_type="CAUSAL_LM"
        )
        model = get_peft_model(model, lora)
        if checkpointing:
            model.enable_input_require_grads()  # what SFTTrainer does for a PEFT model with gradient checkpointing
    if method == "qlora":  # SFTTrainer casts a quantized model's trainable parameters to bf16
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    # full: bf16 parameters, so the fused AdamW keeps m and v in bf16 (no fp32 master copy), as the Trainer does
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, fused=on_gpu)
    base = model if method == "full" else model.get_base_model()  # LlamaForCausalLM
    head = base.get_output_embeddings()

    def fused_loss(ids):
        # trl.trainer.utils.add_fused_lm_head's forward with fused_lm_head=True, for a batch with every label valid
        hidden = base.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
        labels = ids[:, 1:]
        mask = labels != -100
        compact = kernel._use_triton(hidden.device)
        rows = hidden[mask] if compact else hidden.reshape(-1, hidden.size(-1))
        targets = labels[mask] if compact else labels.clamp(min=0).reshape(-1)
        outputs = ("log_probs", "entropy", "is_top1")
        per_token = kernel.ChunkedLogProbFunction.apply(
            rows, head.weight, head.bias, targets, 1.0, 32768, None, 1.0, outputs
        )
        log_probs = per_token[0]
        log_probs = (
            mask.new_zeros(mask.shape, dtype=log_probs.dtype).masked_scatter(mask, log_probs) if compact else log_probs
        )
        return -log_probs.sum() / mask.sum()

    gen = torch.Generator(device="cpu").manual_seed(1234)
    batches = [
        torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=gen).to(device) for _ in range(2)
    ]

    phase_peaks = [] if (on_gpu and args.phase_peaks) else None

    def phase(name: str) -> None:
        # --phase-peaks: the peak of each phase (the counter reset after each); their maximum is the step's peak
        torch.cuda.synchronize()
        phase_peaks[-1][name] = torch.cuda.max_memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()

    def step(i: int) -> float:
        ids = batches[i % len(batches)]
        with torch.autocast(device_type=device.type, dtype=dtype):
            loss = fused_loss(ids) if loss_kind == "fused" else model(input_ids=ids, labels=ids).loss
        if phase_peaks is not None:
            phase_peaks.append({})
            phase("forward")
        loss.backward()
        if phase_peaks is not None:
            phase("backward")
            phase_peaks[-1]["after_backward"] = torch.cuda.memory_allocated() / GIB
        optimizer.step()
        if phase_peaks is not None:
            phase("optimizer_step")
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    result = {
        "device": "cpu",
        "method": method,
        "loss": loss_kind,
        "gradient_checkpointing": checkpointing,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "trainable_parameters": sum(p.numel() for p in trainable),
        "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable}),
        "triton": kernel._use_triton(device),
    }
    if on_gpu:
        torch.cuda.synchronize()
        result["resident_gib"] = torch.cuda.memory_allocated() / GIB
        torch.cuda.reset_peak_memory_stats()
    result["losses"] = [round(step(i), 4) for i in range(args.steps)]
    if on_gpu:
        torch.cuda.synchronize()
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        if phase_peaks is not None:
            result["phase_peaks_gib"] = phase_peaks
            result["peak_allocated_gib"] = max(v for p in phase_peaks for k, v in p.items() if k != "after_backward")
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["device"] = torch.cuda.get_device_name(device)
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path)
    p.add_argument("--report", type=Path, help="a run's gpu.json: write results-gpu.json and .md next to this script")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--trl-kernel", type=Path, default=TRL_KERNEL)
    p.add_argument(
        "--cases", default=DEFAULT_CASES, help=f"comma-separated METHOD[-nockpt]-LOSS (default {DEFAULT_CASES})"
    )
    p.add_argument("--case-timeout", type=float, default=300, help="seconds for each case's process")
    p.add_argument("--report-stem", default="results-gpu", help="--report writes STEM.json and STEM.md")
    p.add_argument(
        "--phase-peaks", action="store_true", help="also record each step's forward, backward, optimizer peaks"
    )
    p.add_argument("--no-checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--loss", help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.seq_len = args.seq_len or (64 if args.tiny else 2048)
    if args.report:
        report(args.report, Path(__file__).resolve().parent, args.report_stem)
        return 0
    if args.out is None:
        p.error("--out or --report is required")
    try:
        cases = [(name, *parse_case(name)) for name in args.cases.split(",") if name]
    except ValueError as exc:
        p.error(str(exc))
    if args.result:
        args.result.write_text(json.dumps(worker(args)))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name, method, loss, checkpointing in cases:
        file = args.out / f"{name}.json"
        cmd = [sys.executable, __file__, "--out", str(args.out), "--batch", str(args.batch)]
        cmd += ["--seq-len", str(args.seq_len), "--steps", str(args.steps), "--trl-kernel", str(args.trl_kernel)]
        cmd += ["--method", method, "--loss", loss, "--result", str(file)] + (["--tiny"] if args.tiny else [])
        cmd += ([] if checkpointing else ["--no-checkpointing"]) + (["--phase-peaks"] if args.phase_peaks else [])
        started = time.perf_counter()
        try:
            rc = subprocess.run(cmd, timeout=args.case_timeout).returncode
        except subprocess.TimeoutExpired:  # the child is killed: the next case still runs
            rc = "timeout"
        row = (
            json.loads(file.read_text())
            if rc == 0 and file.exists()
            else {"method": method, "loss": loss, "gradient_checkpointing": checkpointing, "error": rc}
        )
        row["process_wall_s"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {"command": "python bench/planner/gpu.py " + " ".join(sys.argv[1:]), "versions": versions()}
    summary["device"] = next((r["device"] for r in results if r.get("device")), None)
    summary["results"] = results
    (args.out / "gpu.json").write_text(json.dumps(summary, indent=2))
    return 0 if all("error" not in r for r in results) else 1


def versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "transformers", "peft", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def predict(r: dict, bench):
    """``plan_memory`` for one measured case: its FineTuneJobSpec (method, checkpointing) and its LM head."""
    from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
    from kubetune.trainer.memory import Assumptions, plan_memory

    spec = FineTuneJobSpec.model_validate(
        {
            "baseModel": "unused",
            "dataset": {"path": "unused"},
            "method": r["method"],
            "lora": {"r": 16, "loraAlpha": 32, "loraDropout": 0.0},
            "training": {
                "perDeviceTrainBatchSize": r["batch"],
                "maxLength": r["seq_len"],
                "gradientCheckpointing": r.get("gradient_checkpointing", True),
                "packing": True,
            },
        }
    )
    plan = plan_memory(
        {**bench.LLAMA_31_8B, "model_type": "llama"}, spec, "H200-141GB", assumptions=Assumptions(loss=r["loss"])
    )
    r["predicted_peak_allocated_gib"] = plan.peak_allocated / GIB
    r["predicted_resident_gib"] = (plan.weights + plan.adapters) / GIB
    r["predicted_total_gib"] = plan.total / GIB
    r["predicted_phase"] = plan.peak_phase
    return plan


def report(measured: Path, out: Path, stem: str = "results-gpu") -> None:
    """Predicted vs measured, from a run's gpu.json: STEM.json and STEM.md in ``out``."""
    bench = load("bench_gpu_run", ROOT / "bench" / "gpu" / "run.py")
    run = json.loads(measured.read_text())
    if stem != "results-gpu":
        return report_more(run, bench, out, stem)
    rows = [
        "# Memory planner vs measured: LoRA and QLoRA on one GPU, Llama-3.1-8B shape",
        "",
        "`python bench/planner/gpu.py --out DIR` on the lent GPU machine (bitsandbytes installed from the carried "
        "wheel, TRL's kernel file carried from .venv), then `python bench/planner/gpu.py --report DIR/gpu.json`. "
        f"Device: {run['device']}; " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()) + "; "
        f"TRL kernel from trl {run.get('trl', '1.16.0')}.",
        "",
        "Batch 2 x 2048 random tokens, no mask, gradient checkpointing, bf16 autocast, fused AdamW, LoRA r=16 "
        "on all seven linear layers, dropout 0; QLoRA's base NF4 with double quantization, its adapters cast "
        "to bf16 as TRL does. *fused*: the LM head as kubetune's trainer (TRL 1.16) runs it; *full*: "
        "transformers' loss on the whole logits (bench/gpu's loop). Measured: torch.cuda.max_memory_allocated "
        "over 4 steps, reset after set-up. Predicted: `plan_memory(...).peak_allocated` with "
        "`Assumptions(loss=...)`, everything else kubetune's defaults.",
        "",
        "| method | LM head | predicted GiB | measured GiB | error | predicted at | resident predicted / measured GiB "
        "| peak reserved GiB | predicted per GPU (+ overhead) GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in run["results"]:
        plan = predict(r, bench)
        err = (r["predicted_peak_allocated_gib"] - r["peak_allocated_gib"]) / r["peak_allocated_gib"]
        rows.append(
            f"| {r['method']} | {r['loss']} | {r['predicted_peak_allocated_gib']:.2f} | {r['peak_allocated_gib']:.2f} "
            f"| {err:+.1%} | {plan.peak_phase} | {r['predicted_resident_gib']:.2f} / {r['resident_gib']:.2f} "
            f"| {r['peak_reserved_gib']:.2f} | {r['predicted_total_gib']:.2f} |"
        )
    (out / f"{stem}.json").write_text(json.dumps(run, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


def report_more(run: dict, bench, out: Path, stem: str) -> None:
    """The other cases (``--cases``): full fine-tuning, checkpointing off; with the planner's terms."""
    rows = [
        "# Memory planner vs measured: full fine-tuning and LoRA without checkpointing, one GPU, Llama-3.1-8B shape",
        "",
        f"`{run['command']}` on the lent GPU machine (TRL's kernel file carried from .venv), then "
        f"`python bench/planner/gpu.py --report DIR/gpu.json --report-stem {stem}`. Device: {run['device']}; "
        + ", ".join(f"{k} {v or 'not installed (not used)'}" for k, v in run["versions"].items())
        + f"; TRL kernel from trl {run.get('trl', '1.16.0')}.",
        "",
        "Batch 2 x 2048 random tokens, no mask, bf16 weights, bf16 autocast, fused AdamW (weight decay 0). "
        "*full*: every parameter trains (lm_head and the embeddings too, untied), m and v in bf16 as the "
        "Trainer's adamw_torch_fused keeps them for bf16 parameters. *lora*: r=16 on all seven linear layers, "
        "dropout 0, adapters fp32 (PEFT). Checkpointing: `gradient_checkpointing_enable(use_reentrant=False)`, "
        "or none. LM head *fused*: as kubetune's trainer (TRL 1.16) runs it; *full*: transformers' loss on the "
        "whole logits. Measured: torch.cuda.max_memory_allocated over the steps, reset after set-up (the "
        "optimizer states, created in the first step, are inside it). Predicted: `plan_memory(...).peak_allocated` "
        "for the matching FineTuneJobSpec (method, gradientCheckpointing) with `Assumptions(loss=...)`, "
        "everything else kubetune's defaults.",
        "",
        "| method | checkpointing | LM head | predicted GiB | measured GiB | error | predicted at "
        "| resident predicted / measured GiB | peak reserved GiB | predicted per GPU (+ overhead) GiB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    terms = ["", "Predicted terms (GiB):", ""]
    terms += ["| method | checkpointing | LM head | " + " | ".join(TERMS) + " |", "|---|---|---|" + "---|" * len(TERMS)]
    for r in run["results"]:
        ckpt = "on" if r.get("gradient_checkpointing", True) else "off"
        plan = predict(r, bench)
        r["predicted_terms_gib"] = {name: round(value / GIB, 3) for name, value, _ in plan.rows()}
        terms.append(
            f"| {r['method']} | {ckpt} | {r['loss']} | "
            + " | ".join(f"{r['predicted_terms_gib'].get(t, 0):.2f}" for t in TERMS)
            + " |"
        )
        if "error" in r:
            rows.append(
                f"| {r['method']} | {ckpt} | {r['loss']} | {r['predicted_peak_allocated_gib']:.2f} | not measured "
                f"({r['error']}) | | {plan.peak_phase} | {r['predicted_resident_gib']:.2f} / | | "
                f"{r['predicted_total_gib']:.2f} |"
            )
            continue
        err = (r["predicted_peak_allocated_gib"] - r["peak_allocated_gib"]) / r["peak_allocated_gib"]
        r["error_relative"] = round(err, 4)
        rows.append(
            f"| {r['method']} | {ckpt} | {r['loss']} | {r['predicted_peak_allocated_gib']:.2f} "
            f"| {r['peak_allocated_gib']:.2f} | {err:+.1%} | {plan.peak_phase} "
            f"| {r['predicted_resident_gib']:.2f} / {r['resident_gib']:.2f} | {r['peak_reserved_gib']:.2f} "
            f"| {r['predicted_total_gib']:.2f} |"
        )
    rows += terms
    phased = [r for r in run["results"] if r.get("phase_peaks_gib")]
    if phased:
        rows += [
            "",
            "Measured by phase (`--phase-peaks`), GiB: the peak of each phase of a step, the counter reset after "
            "each (a phase's peak is at least what was allocated at its start: the forward of steps 2 on starts "
            "with the last step's gradients, which `zero_grad` frees only after the reset), and what is allocated "
            "when the backward ends. Optimizer states exist from the first optimizer step on.",
            "",
            "| method | checkpointing | LM head | step | forward | backward | after backward | optimizer step |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in phased:
            ckpt = "on" if r.get("gradient_checkpointing", True) else "off"
            for i, ph in enumerate(r["phase_peaks_gib"], 1):
                rows.append(
                    f"| {r['method']} | {ckpt} | {r['loss']} | {i} | "
                    + " | ".join(f"{ph[k]:.2f}" for k in ("forward", "backward", "after_backward", "optimizer_step"))
                    + " |"
                )
    (out / f"{stem}.json").write_text(json.dumps(run, indent=2) + "\n")
    (out / f"{stem}.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


TERMS = [
    "weights",
    "LoRA adapters",
    "gradients",
    "optimizer states",
    "activations",
    "recomputed layer",
    "final norm, head input",
    "LM head and loss",
    "autocast copies",
]


if __name__ == "__main__":
    sys.exit(main())
