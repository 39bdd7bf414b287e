"""LoRA and QLoRA training throughput of a Llama-3.1-8B-shaped model with random weights, on one GPU.

    python bench/gpu/run.py --out DIR            # both methods, results.json and results.md in DIR
    python bench/gpu/run.py --out DIR --tiny     # a 2-layer toy Llama (CPU when there is no GPU): a smoke test

Nothing is downloaded: the model is built from a ``LlamaConfig`` with random weights, straight on the GPU in
bfloat16, and trained on random token ids. Each method runs in its own subprocess, so its peak memory is its
own. The set-up follows kubetune's trainer (``services/kubetune/trainer/training.py``) with the parts of TRL's
``SFTTrainer`` that matter for speed written out as a plain loop (TRL needs ``datasets``, which the GPU machine
lacks, and a plain loop times each step exactly):

- LoRA: bf16 base, ``get_peft_model`` (adapters kept in fp32 by PEFT), gradient checkpointing
  (``use_reentrant=False``), bf16 autocast (what ``bf16=True`` does in the Trainer), ``torch.optim.AdamW(fused)``
  (the Trainer's default ``adamw_torch_fused``).
- QLoRA: the decoder's linear layers quantized to NF4 in place with bitsandbytes (``Linear4bit``, double
  quantization, bf16 compute; ``lm_head`` stays unquantized, as ``from_pretrained`` with a
  ``BitsAndBytesConfig`` leaves it), then ``prepare_model_for_kbit_training`` (it upcasts the unquantized
  weights, embeddings, norms and ``lm_head``, to fp32), then the same as LoRA, the same fused AdamW.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("lora", "qlora")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Llama-3.1-8B's shape (its config.json), and a toy one for smoke tests.
LLAMA_31_8B = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "rope_theta": 500000.0,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}
TINY = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "vocab_size": 1024,
    "rope_theta": 500000.0,
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}

# Dense bf16 peak, TFLOP/s, from the vendors' datasheets (without sparsity). First match on the device name wins.
PEAK_BF16_TFLOPS = [
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
]

GIB = 1024**3


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key in device_name:
            return value
    return None


def flops_per_token(cfg: dict, seq_len: int, lora_params: int) -> dict:
    """Training FLOPs per token for LoRA on a frozen base (QLoRA computes the same: NF4 weights are dequantized
    to bf16 for each matmul).

    N_dec = the decoder's linear weights, N_head = lm_head (d x V); the embedding lookup does no arithmetic.
    A frozen weight costs 2 FLOPs per parameter forward and 2 backward (the gradient of its input; no weight
    gradient), so 4 per token; trainable LoRA weights cost 6 (forward, input gradient, weight gradient).
    Attention scores and values (QK^T, AV) with a causal mask, over an average context of T/2:
    2 * 2 * L * (heads * head_dim) * T/2 forward, 3x that forward + backward (both operands are activations).
    Gradient checkpointing recomputes each decoder layer's forward once more in the backward pass:
    + 2 * N_dec + the attention forward + 2 * N_lora. MFU counts model FLOPs (no recompute); HFU counts
    the hardware's (with recompute).
    """
    d, ff, layers, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // heads
    n_dec = layers * (d * heads * hd + 2 * d * kv * hd + heads * hd * d + 3 * d * ff)
    n_head = d * vocab
    attn_fwd = 2 * layers * heads * hd * seq_len  # = 2 * 2 * L * (heads*hd) * (T/2)
    model = 4 * (n_dec + n_head) + 6 * lora_params + 3 * attn_fwd
    hardware = model + 2 * n_dec + attn_fwd + 2 * lora_params
    return {
        "n_decoder_linear": n_dec,
        "n_lm_head": n_head,
        "n_lora": lora_params,
        "attention_forward_per_token": attn_fwd,
        "model_flops_per_token": model,
        "hardware_flops_per_token": hardware,
    }


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    try:
        import torch

        out["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return out


# ---------------------------------------------------------------------------------------------------------
# The worker: one method, one process.


def quantize_nf4_in_place(model, compute_dtype) -> int:
    """Replace every nn.Linear in the decoder layers by a bitsandbytes NF4 ``Linear4bit`` (double quantization),
    quantizing the weight it holds, one layer at a time; returns how many were replaced. ``lm_head`` stays as it
    is, as transformers' bitsandbytes loader leaves it."""
    import bitsandbytes as bnb
    import torch

    replaced = 0
    for layer in model.model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(
                    child.in_features,
                    child.out_features,
                    bias=child.bias is not None,
                    compute_dtype=compute_dtype,
                    compress_statistics=True,
                    quant_type="nf4",
                    quant_storage=torch.uint8,
                    device="meta",
                )
                weight = bnb.nn.Params4bit(
                    child.weight.data,
                    requires_grad=False,
                    compress_statistics=True,
                    quant_type="nf4",
                    quant_storage=torch.uint8,
                    module=q,
                )
                q.weight = weight._quantize(child.weight.device)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q)
                del child, weight
                replaced += 1
    # What transformers sets on a model loaded with load_in_4bit: PEFT's prepare_model_for_kbit_training reads it.
    model.is_loaded_in_4bit = True
    return replaced


def worker(args) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, LlamaConfig

    method = args.worker
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16
    torch.manual_seed(0)
    shape = TINY if args.tiny else LLAMA_31_8B
    config = LlamaConfig(**shape, attn_implementation="sdpa")
    config.use_cache = False

    t0 = time.perf_counter()
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    n_params_bf16 = sum(p.numel() for p in model.parameters())
    n_quantized = 0
    if method == "qlora":
        n_quantized = quantize_nf4_in_place(model, dtype)
        if on_gpu:
            torch.cuda.empty_cache()
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=0.0, fused=on_gpu)
    if on_gpu:
        torch.cuda.synchronize()
    setup_s = time.perf_counter() - t0
    n_nf4 = 0
    if method == "qlora":
        import bitsandbytes as bnb

        n_nf4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    print(
        f"[{method}] set up in {setup_s:.1f} s: {n_params_bf16 / 1e9:.3f} B parameters (bf16 count), "
        f"{n_quantized} linear layers in NF4 ({n_nf4} bnb Linear4bit under PEFT), {n_trainable / 1e6:.2f} M trainable",
        flush=True,
    )

    gen = torch.Generator(device="cpu").manual_seed(1234)
    batches = [
        torch.randint(0, config.vocab_size, (args.batch, args.seq_len), generator=gen).to(device) for _ in range(4)
    ]

    def step(i: int) -> float:
        ids = batches[i % len(batches)]
        with torch.autocast(device_type=device.type, dtype=dtype):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    if on_gpu:
        torch.cuda.synchronize()
        resident = torch.cuda.memory_allocated()
        setup_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    losses, times = [], []
    for i in range(args.warmup + args.steps):
        if on_gpu:
            torch.cuda.synchronize()
        s = time.perf_counter()
        loss = step(i)  # .item() waits for the step to finish
        if on_gpu:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - s
        losses.append(loss)
        if i >= args.warmup:
            times.append(elapsed)
        print(
            f"[{method}] step {i + 1}/{args.warmup + args.steps}{' (warm-up)' if i < args.warmup else ''}: "
            f"{elapsed:.3f} s, loss {loss:.4f}",
            flush=True,
        )
    if not all(math.isfinite(x) for x in losses):
        raise RuntimeError(f"non-finite loss: {losses}")
    # LoRA's B matrices start at zero: a non-zero norm now shows that gradients reached the adapters.
    lora_b_norm = (
        sum(p.detach().float().norm().item() ** 2 for n, p in model.named_parameters() if "lora_B" in n) ** 0.5
    )
    if lora_b_norm == 0:
        raise RuntimeError("the LoRA B matrices are still zero: no gradient reached the adapters")

    tokens = args.batch * args.seq_len
    median = statistics.median(times)
    flops = flops_per_token(shape, args.seq_len, n_trainable)
    name = torch.cuda.get_device_name(device) if on_gpu else platform.processor() or "cpu"
    peak = args.peak_tflops or (peak_tflops(name) if on_gpu else None)
    tok_s = tokens / median
    result = {
        "method": method,
        "device": name,
        "model": "tiny 2-layer Llama" if args.tiny else "Llama-3.1-8B shape, random weights",
        "params_bf16": n_params_bf16,
        "params_trainable": n_trainable,
        "nf4_linear_layers": n_quantized,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "tokens_per_step": tokens,
        "warmup_steps": args.warmup,
        "timed_steps": args.steps,
        "setup_s": round(setup_s, 2),
        "step_s_median": median,
        "step_s_mean": statistics.fmean(times),
        "step_s_min": min(times),
        "step_s_max": max(times),
        "step_s_all": times,
        "tokens_per_s": tok_s,
        "losses": losses,
        "lora_b_norm_after": lora_b_norm,
        "optimizer": "torch.optim.AdamW(fused=True)" if on_gpu else "torch.optim.AdamW",
        "gradient_checkpointing": "use_reentrant=False",
        "autocast": "bfloat16",
        "flops": flops,
        "peak_bf16_tflops": peak,
        "model_tflops": flops["model_flops_per_token"] * tok_s / 1e12,
        "hardware_tflops": flops["hardware_flops_per_token"] * tok_s / 1e12,
    }
    if peak:
        result["mfu"] = result["model_tflops"] / peak
        result["hfu"] = result["hardware_tflops"] / peak
    if on_gpu:
        result["memory_resident_gib"] = resident / GIB
        # QLoRA's set-up peak includes the whole bf16 model, built before it is quantized in place.
        result["setup_peak_allocated_gib"] = setup_peak / GIB
        result["peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        result["device_total_gib"] = torch.cuda.get_device_properties(device).total_memory / GIB
    return result


def matmul_ceiling(args) -> dict:
    """A 8192^3 bf16 matmul on random data: the rate the card reaches on the plainest dense work (median of 20)."""
    import torch

    if args.device != "cuda":
        return {}
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(5):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return {"matmul_8192_bf16_tflops": 2 * n**3 / statistics.median(times) / 1e12}


# ---------------------------------------------------------------------------------------------------------
# The driver: one subprocess per method, then the report.


def run_one(what: str, args, out: Path) -> dict:
    result_file = out / f"{what}.json"
    result_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", what, "--result", str(result_file)]
    cmd += ["--device", args.device, "--batch", str(args.batch), "--seq-len", str(args.seq_len)]
    cmd += ["--warmup", str(args.warmup), "--steps", str(args.steps)]
    if args.tiny:
        cmd.append("--tiny")
    if args.peak_tflops:
        cmd += ["--peak-tflops", str(args.peak_tflops)]
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, timeout=args.timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    wall = time.perf_counter() - started
    if rc == 0 and result_file.exists():
        result = json.loads(result_file.read_text())
        result_file.unlink()
    else:
        result = {"method": what, "error": f"worker exited with {rc}"}
    result["process_wall_s"] = round(wall, 1)
    return result


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    v = report["versions"]
    rows = [
        "| method | s/step (median) | tokens/s | peak allocated GiB | peak reserved GiB | resident after set-up GiB "
        "| trainable params | model TFLOP/s | MFU | HFU |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            rows.append(f"| {r['method']} | {r['error']} |||||||||")
            continue
        rows.append(
            f"| {r['method']} | {r['step_s_median']:.3f} | {r['tokens_per_s']:,.0f} "
            f"| {fmt(r.get('peak_allocated_gib'), '.1f')} | {fmt(r.get('peak_reserved_gib'), '.1f')} "
            f"| {fmt(r.get('memory_resident_gib'), '.1f')} | {r['params_trainable'] / 1e6:.1f} M "
            f"| {r['model_tflops']:.0f} | {fmt(r.get('mfu'), '.1%')} | {fmt(r.get('hfu'), '.1%')} |"
        )
    ok = [r for r in report["results"] if "error" not in r]
    first = ok[0] if ok else {}
    lines = [
        f"# LoRA and QLoRA on one GPU: {report['device']}",
        "",
        f"Model: {first.get('model', '?')} ({fmt(first.get('params_bf16', 0) / 1e9, '.2f')} B parameters), "
        f"batch {report['args']['batch']} x {report['args']['seq_len']} random token ids, "
        f"{report['args']['warmup']} warm-up + {report['args']['steps']} timed steps per method, each method in "
        "its own process. LoRA r=16, alpha 32, dropout 0 on q,k,v,o,gate,up,down; gradient checkpointing; "
        f"bf16 autocast; {first.get('optimizer', '?')} for both.",
        "",
        *rows,
        "",
        f"Peak TFLOP/s used for MFU/HFU: {report.get('peak_bf16_tflops')} (dense bf16, datasheet). "
        f"Measured 8192^3 bf16 matmul on this card: {fmt(report.get('matmul_8192_bf16_tflops'), '.0f')} TFLOP/s.",
        "",
        f"Versions: python {v.get('python')}, torch {v.get('torch')} (CUDA {v.get('cuda')}), "
        f"transformers {v.get('transformers')}, peft {v.get('peft')}, bitsandbytes {v.get('bitsandbytes')}.",
        f"Command: `{report['command']}`; total wall time {report['wall_s']:.0f} s.",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="folder for results.json and results.md")
    p.add_argument("--tiny", action="store_true", help="a 2-layer toy Llama, batch 2 x 64: a smoke test")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated: lora,qlora")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=None, help="default 2048 (64 with --tiny)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--peak-tflops", type=float, default=None, help="override the datasheet dense bf16 peak")
    p.add_argument("--timeout", type=float, default=300, help="seconds per method's process")
    p.add_argument("--worker", choices=[*METHODS, "matmul"], help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.seq_len is None:
        args.seq_len = 64 if args.tiny else 2048
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"

    if args.worker:
        result = matmul_ceiling(args) if args.worker == "matmul" else worker(args)
        args.result.write_text(json.dumps(result, indent=2))
        return 0

    if args.out is None:
        p.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = [run_one(m, args, args.out) for m in methods]
    ceiling = run_one("matmul", args, args.out) if args.device == "cuda" else {}
    ok = [r for r in results if "error" not in r]
    report = {
        "device": ok[0]["device"] if ok else args.device,
        "peak_bf16_tflops": ok[0].get("peak_bf16_tflops") if ok else None,
        "matmul_8192_bf16_tflops": ceiling.get("matmul_8192_bf16_tflops"),
        "versions": versions(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("worker",)},
        "command": "python bench/gpu/run.py " + " ".join(sys.argv[1:]),
        "host": platform.node(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "results": results,
    }
    report["wall_s"] = time.perf_counter() - started
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    md = markdown(report)
    (args.out / "results.md").write_text(md)
    print(md)
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
