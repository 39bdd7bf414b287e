"""The memory planner: against published and measured peaks, its own invariants, and bad input.

Measured figures are read from the benchmarks' recorded results (bench/gpu/results, bench/planner).

Model shapes are config.json files written into tmp_path, or dicts of their fields; no weights, no torch.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.trainer.memory import GIB, GPU_TYPES, Assumptions, MemoryPlan, PlanError, load_config, plan_memory
from kubetune_operator.cli import app

ROOT = Path(__file__).resolve().parents[3]
BENCH_GPU = json.loads((ROOT / "bench" / "gpu" / "results" / "results.json").read_text())
PLANNER_GPU = json.loads((ROOT / "bench" / "planner" / "results-gpu.json").read_text())
PLANNER_CPU = json.loads((ROOT / "bench" / "planner" / "results.json").read_text())

# The shapes of meta-llama's config.json files (the fields the planner reads).
LLAMA_31_8B = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "mlp_bias": False,
}
LLAMA_31_70B = {
    **LLAMA_31_8B,
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
}
LLAMA_31_405B = {
    **LLAMA_31_8B,
    "hidden_size": 16384,
    "intermediate_size": 53248,
    "num_hidden_layers": 126,
    "num_attention_heads": 128,
}
SMOLLM2_135M = {
    "model_type": "llama",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}

# torchtune's single-device recipes: bf16 everywhere (adapters and their AdamW states included), NF4 without
# an fp32 upcast of the other layers, and CEWithChunkedOutputLoss (8 chunks), compiled.
TORCHTUNE = Assumptions(loss="chunked", loss_chunks=8, adapter_dtype="bf16", upcast_unquantized=False)
# bench/gpu/run.py: a plain loop over model(input_ids, labels) (transformers' loss on the whole logits), PEFT's
# get_peft_model directly (adapters in fp32 for QLoRA too: TRL's bf16 cast does not happen there).
BENCH_LOOP = Assumptions(loss="full", adapter_dtype="fp32")


def model_dir(tmp_path: Path, config: dict, name: str = "model") -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def spec_for(
    model: Path | str, method: str = "lora", lora: dict | None = None, gpus: int = 1, **training
) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": str(model),
            "dataset": {"path": "data"},
            "method": method,
            "lora": lora or {},
            "training": training,
            "resources": {"gpus": gpus},
        }
    )


@dataclass(frozen=True)
class Published:
    config: dict
    method: str
    lora: dict
    training: dict
    gpu: str
    assumptions: Assumptions
    term: str  # compared: peak_allocated, resident (weights + adapters), growth (peak - resident), weights
    figure_bytes: float
    tolerance: float


def figure(plan: MemoryPlan, term: str) -> int:
    if term == "resident":
        return plan.weights + plan.adapters
    if term == "growth":
        return plan.peak_allocated - plan.weights - plan.adapters
    return getattr(plan, term)


BENCH = {r["method"]: r for r in BENCH_GPU["results"]}
# Measured with the trainer of then: QLoRA's unquantized modules upcast to fp32 (PEFT) and AdamW for every method.
BENCH_TRAINING = {
    "perDeviceTrainBatchSize": 2,
    "maxLength": 2048,
    "gradientCheckpointing": True,
    "packing": True,
    "optim": "adamw_torch_fused",
}
BENCH_LORA = {"r": 16, "loraAlpha": 32, "loraDropout": 0.0, "targetModules": ["all-linear"], "upcastUnquantized": True}
TT_TRAINING = {"perDeviceTrainBatchSize": 2, "maxLength": 2048, "gradientCheckpointing": True, "packing": True}

CASES = [
    # torchtune README, Llama 3.1 8B on one RTX 4090 (conditions in the test docstring)
    pytest.param(
        Published(
            LLAMA_31_8B,
            "lora",
            {"r": 8, "loraAlpha": 16, "loraDropout": 0.0, "targetModules": ["q_proj", "v_proj"]},
            TT_TRAINING,
            "H100-80GB",
            TORCHTUNE,
            "peak_allocated",
            16.2 * GIB,
            0.10,
        ),
        id="torchtune-llama3.1-8b-lora-16.2GiB",
    ),
    pytest.param(
        Published(
            LLAMA_31_8B,
            "qlora",
            {"r": 8, "loraAlpha": 16, "loraDropout": 0.0, "targetModules": ["all-linear"]},
            TT_TRAINING,
            "H100-80GB",
            TORCHTUNE,
            "peak_allocated",
            7.4 * GIB,
            0.10,
        ),
        id="torchtune-llama3.1-8b-qlora-7.4GiB",
    ),
    # bench/gpu/results/results.json, H200: the peak, and what is resident after set-up (weights, adapters)
    *[
        pytest.param(
            Published(
                LLAMA_31_8B,
                method,
                BENCH_LORA,
                BENCH_TRAINING,
                "H200-141GB",
                BENCH_LOOP,
                term,
                BENCH[method][key] * GIB,
                tolerance,
            ),
            id=f"bench-gpu-h200-{method}-{name}",
        )
        for method in ("lora", "qlora")
        for name, term, key, tolerance in (
            ("peak", "peak_allocated", "peak_allocated_gib", 0.05),
            ("resident", "resident", "memory_resident_gib", 0.02),
        )
    ],
    # bench/planner/results-gpu.json, H200, the LM head fused (kubetune) and whole
    *[
        pytest.param(
            Published(
                LLAMA_31_8B,
                r["method"],
                BENCH_LORA,
                BENCH_TRAINING,
                "H200-141GB",
                Assumptions(loss=r["loss"]),
                "peak_allocated",
                r["peak_allocated_gib"] * GIB,
                0.05,
            ),
            id=f"bench-planner-h200-{r['method']}-{r['loss']}-head",
        )
        for r in PLANNER_GPU["results"]
    ],
    # bench/planner/results.json, SmolLM2-135M-Instruct on the CPU
    *[
        pytest.param(
            Published(
                SMOLLM2_135M,
                r["method"],
                {},
                {"perDeviceTrainBatchSize": 4, "maxLength": 256},
                "cpu",
                Assumptions(padded_batches=False),
                "growth",
                (r["runs"]["exact"]["rss_hwm_kib"] - r["runs"]["exact"]["rss_baseline_kib"]) * 1024,
                0.03,
            ),
            id=f"bench-planner-cpu-{r['method']}-growth",
        )
        for r in PLANNER_CPU["results"]
    ],
    # Hugging Face's Llama 3.1 post, inference memory, FP16 (what is left out: in the test docstring)
    *[
        pytest.param(
            Published(config, "lora", {}, {}, "H100-80GB", Assumptions(), "weights", gb * 1e9, 0.05),
            id=f"hf-blog-llama3.1-{size}-fp16-weights-{gb}GB",
        )
        for size, config, gb in (("8b", LLAMA_31_8B, 16), ("70b", LLAMA_31_70B, 140), ("405b", LLAMA_31_405B, 810))
    ],
]


@pytest.mark.parametrize("case", CASES)
def test_published_and_measured_figures(tmp_path, case: Published):
    """Each case: the planner's figure, under the case's conditions, within the case's tolerance of the figure.

    torchtune README (commit 30b8519, "Readme Updates", 2024-09-24), "Memory and training speed", Llama 3.1 8B
    on one RTX 4090, "Peak Memory per GPU": LoRA 16.2 GiB, QLoRA 7.4 GiB. Stated: batch size 2 without
    gradient accumulation, a dataset packed to sequence length 2048, torch compile enabled. Assumed from the
    configs of that commit (recipes/configs/llama3_1/8B_lora_single_device.yaml, 8B_qlora_single_device.yaml):
    LoRA r=8, alpha 16, dropout 0 on q_proj and v_proj only; QLoRA r=8 on q, k, v, output_proj and the MLP
    (every linear layer), torchao NF4 with double quantization; dtype bf16 everywhere (adapters and AdamW
    states too), activation checkpointing on, fused AdamW, CEWithChunkedOutputLoss with 8 chunks (compiled:
    bf16 logits plus one chunk in fp32); the peak as allocated memory, reset per logging step
    (training.get_memory_stats). Unknown: which of peak active / allocated / reserved the table shows, and
    what compile changes. The LoRA figure is below its weights + layer checkpoints + bf16 logits (16.9 GiB),
    so some condition differs from these; the planner is about 8 % high on both (tolerance 10 %).

    bench/gpu/results/results.json: a Llama-3.1-8B-shaped model on an H200, LoRA r=16 (alpha 32, dropout 0)
    on all seven linear layers, batch 2 x 2048 random tokens with no mask (the case packing gives), gradient
    checkpointing, bf16 weights under bf16 autocast, fused AdamW, PEFT's fp32 adapters for both methods;
    QLoRA's base NF4 with double quantization and the other layers upcast to fp32 by
    prepare_model_for_kbit_training; transformers' loss on the whole logits. The peak is
    torch.cuda.max_memory_allocated reset after set-up, the model resident: compared with peak_allocated,
    without the planner's CUDA context and allocator reserve; "resident" is memory_allocated after set-up.

    bench/planner/results-gpu.json: the same step on an H200 with QLoRA's adapters in bf16 (as TRL casts
    them) and the LM head both as kubetune's trainer runs it (TRL 1.16's fused head: the planner's default)
    and with the whole logits. bench/planner/results.json: SmolLM2-135M-Instruct through kubetune.trainer.training
    on the CPU, batch 4 x 256 unpadded tokens, no checkpointing, the spec's LoRA defaults (r=16, all-linear,
    dropout 0.05): the growth of the resident set over the loaded model, with an exact allocator
    (MALLOC_MMAP_THRESHOLD_=65536).

    Hugging Face's Llama 3.1 post (huggingface.co/blog/llama31), "Inference Memory Requirements", FP16, the
    memory "just to load the model checkpoint": 16 GB, 140 GB and 810 GB, against the weights. Left out: the
    post's "Training Memory Requirements" (8B: full 60 GB, LoRA 16 GB, Q-LoRA 6 GB), "estimated values" with
    no batch size, sequence length, precision or optimizer, whose full fine-tuning figures grow 5x from 8B to
    70B where the parameters grow 8.8x, so no one set of conditions fits them; and torchtune's full fine-tune
    row (18.9 GiB on a 4090), which steps the optimizer inside the backward and pages 8-bit states out of
    PyTorch's allocator, neither of which kubetune's trainer does.
    """
    folder = model_dir(tmp_path, case.config)
    spec = spec_for(folder, case.method, case.lora, **case.training)
    plan = plan_memory(load_config(folder), spec, case.gpu, assumptions=case.assumptions)
    predicted = figure(plan, case.term)
    error = (predicted - case.figure_bytes) / case.figure_bytes
    assert abs(error) <= case.tolerance, (
        f"{case.term}: predicted {predicted / GIB:.2f} GiB vs {case.figure_bytes / GIB:.2f} GiB ({error:+.1%})"
    )


@pytest.mark.parametrize(
    ("results", "assumptions"),
    [
        pytest.param(BENCH_GPU["results"], lambda r: BENCH_LOOP, id="bench-gpu"),
        pytest.param(PLANNER_GPU["results"], lambda r: Assumptions(loss=r["loss"]), id="bench-planner"),
    ],
)
def test_the_per_gpu_total_covers_what_the_allocator_reserved(results, assumptions):
    """total = peak allocated + CUDA context + allocator reserve: at least the measured peak reserved + context."""
    for r in results:
        spec = spec_for("x", r["method"], BENCH_LORA, **BENCH_TRAINING)
        plan = plan_memory(LLAMA_31_8B, spec, "H200-141GB", assumptions=assumptions(r))
        assert plan.total >= r["peak_reserved_gib"] * GIB + GIB // 2, (r["method"], plan.total / GIB)
        assert plan.total <= 1.25 * (r["peak_reserved_gib"] * GIB + GIB // 2), (r["method"], plan.total / GIB)


def test_a_folder_with_only_config_json_is_enough(tmp_path):
    folder = model_dir(tmp_path, SMOLLM2_135M)
    assert [p.name for p in folder.iterdir()] == ["config.json"]
    plan = plan_memory(load_config(folder), spec_for(folder, "full", gpus=0, maxLength=256), None)
    assert plan.device == "cpu" and plan.compute_dtype == "fp32" and plan.overhead == 0
    assert plan.parameters == 134_515_008  # SmolLM2-135M's parameter count, tied embeddings counted once
    assert plan.weights == 4 * plan.parameters
    assert plan.gradients == plan.weights and plan.optimizer_states == 2 * plan.weights  # fp32 AdamW m and v
    assert plan.peak_allocated == max(plan.peak_allocated, plan.weights + plan.optimizer_states + plan.gradients)
    assert load_config(folder / "config.json")["hidden_size"] == 576  # the file itself works too


def test_the_cli_plans_a_finetunejob_from_config_json_alone(tmp_path):
    folder = model_dir(tmp_path, SMOLLM2_135M)
    resources = tmp_path / "jobs.yaml"
    resources.write_text(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: tune}}
spec:
  baseModel: {folder}
  dataset: {{datasetBuildRef: {{name: docs}}}}
  method: qlora
  training: {{perDeviceTrainBatchSize: 2, maxLength: 512}}
  resources: {{gpus: 1}}
"""
    )
    result = CliRunner().invoke(app, ["plan", "-f", str(resources), "-o", "json", "--gpu", "L4-24GB"])
    assert result.exit_code == 0, result.output
    [shown] = json.loads(result.stdout)
    spec = spec_for(folder, "qlora", perDeviceTrainBatchSize=2, maxLength=512)
    expected = plan_memory(load_config(folder), spec, "L4-24GB")
    assert shown["resource"] == "FineTuneJob/tune"
    assert shown["bytes"]["peakAllocated"] == expected.peak_allocated
    assert shown["gpu"] == {
        "type": "L4-24GB",
        "memoryGiB": 22.0,
        "fits": True,
        "gpusNeeded": 1,
        "shardedPerGpuGiB": None,
    }

    table = CliRunner().invoke(app, ["plan", "-f", str(resources)])
    assert table.exit_code == 0, table.output
    assert "FineTuneJob/tune: qlora on gpu (bf16)" in table.stdout
    assert "peak allocated" in table.stdout and "name a GPU type (--gpu)" in table.stdout


def plan_8b(tmp_path, method, gpu="H100-80GB", **training) -> MemoryPlan:
    folder = model_dir(tmp_path, LLAMA_31_8B, "llama")
    training = {"perDeviceTrainBatchSize": 2, "maxLength": 2048, **training}
    return plan_memory(load_config(folder), spec_for(folder, method, **training), gpu)


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("gpu", ["H100-80GB", "cpu"])
def test_gradient_checkpointing_lowers_activations(tmp_path, method, gpu):
    off = plan_8b(tmp_path, method, gpu, gradientCheckpointing=False)
    on = plan_8b(tmp_path, method, gpu, gradientCheckpointing=True)
    assert on.activations < off.activations / 10
    assert (
        on.activations == off.activations_with_checkpointing and off.activations == on.activations_without_checkpointing
    )
    assert on.peak_allocated < off.peak_allocated


@pytest.mark.parametrize("gpu", ["H100-80GB", "cpu"])
def test_qlora_needs_less_than_lora_which_needs_less_than_full(tmp_path, gpu):
    peaks = [plan_8b(tmp_path, m, gpu, gradientCheckpointing=True).peak_allocated for m in ("qlora", "lora", "full")]
    assert peaks == sorted(peaks) and len(set(peaks)) == 3
    weights = [plan_8b(tmp_path, m, gpu).weights for m in ("qlora", "lora", "full")]
    # NF4 is a quarter of bf16, but the unquantized bf16 embeddings and lm_head (2.1 GB) stay whole.
    assert weights[0] < weights[1] / 2 and weights[1] == weights[2]


def test_without_checkpointing_qloras_fp32_residual_stream_outweighs_its_4bit_weights(tmp_path):
    """prepare_model_for_kbit_training (lora.upcastUnquantized) upcasts the embeddings, so QLoRA's hidden states
    and MLP run in fp32; kubetune's default keeps them in bf16, as LoRA's."""
    lora = plan_8b(tmp_path, "lora", perDeviceTrainBatchSize=4, maxLength=1024)
    qlora = plan_8b(tmp_path, "qlora", perDeviceTrainBatchSize=4, maxLength=1024)
    upcast = plan_memory(
        LLAMA_31_8B,
        spec_for("x", "qlora", {"upcastUnquantized": True}, perDeviceTrainBatchSize=4, maxLength=1024),
        "H100-80GB",
    )
    assert upcast.activations > 1.2 * lora.activations
    assert qlora.activations == lora.activations  # without the upcast: bf16 like LoRA's
    # The unquantized embeddings and LM head (2 x 128256 x 4096) at 2 bytes instead of 4.
    assert upcast.weights - qlora.weights == 2 * 2 * 128256 * 4096 + 2 * 4096 * (2 * 32 + 1)


def test_activation_offloading_leaves_about_two_layers_of_checkpoints_on_the_gpu(tmp_path):
    """torchtune's published conditions (batch 2, packed 2048, checkpointing, r 8 on q, v, o and the MLP): with
    kubetune's defaults QLoRA is planned at 7.56 GiB; offloading the checkpoints takes it under torchtune's 7.4."""
    conditions = {"perDeviceTrainBatchSize": 2, "maxLength": 2048, "gradientCheckpointing": True, "packing": True}
    lora = {
        "r": 8,
        "loraAlpha": 16,
        "targetModules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    }
    kept = plan_memory(LLAMA_31_8B, spec_for("x", "qlora", lora, **conditions), "H100-80GB")
    offloaded = plan_memory(
        LLAMA_31_8B, spec_for("x", "qlora", lora, activationOffloading=True, **conditions), "H100-80GB"
    )
    assert offloaded.activations == kept.activations * 2 // 32
    assert kept.peak_allocated > 7.4 * GIB > offloaded.peak_allocated
    assert any("activation offloading" in n for n in offloaded.notes)
    on_cpu = plan_memory(LLAMA_31_8B, spec_for("x", "qlora", lora, activationOffloading=True, **conditions), "cpu")
    assert on_cpu.activations == plan_memory(LLAMA_31_8B, spec_for("x", "qlora", lora, **conditions), "cpu").activations


def test_a_full_fine_tune_with_fp32_master_weights_costs_twice_pure_bf16s_persistent_memory(tmp_path):
    """Pure bf16 (the default): 2 + 2 + 4 bytes per parameter for weights, gradients and AdamW; with an fp32 master
    copy 4 + 4 + 8, and autocast's bf16 copies of the matmuls' weights on top while a step runs."""
    conditions = {"perDeviceTrainBatchSize": 1, "maxLength": 1024, "gradientCheckpointing": True}
    pure = plan_memory(LLAMA_31_8B, spec_for("x", "full", **conditions), "H100-80GB")
    master = plan_memory(LLAMA_31_8B, spec_for("x", "full", fp32MasterWeights=True, **conditions), "H100-80GB")
    n = pure.parameters
    assert (pure.weights, pure.gradients, pure.optimizer_states) == (2 * n, 2 * n, 4 * n)
    assert (master.weights, master.gradients, master.optimizer_states) == (4 * n, 4 * n, 8 * n)
    assert master.peak_allocated > 2 * pure.peak_allocated - 10 * GIB
    assert not master.fits and pure.fits  # 8B: pure bf16 fits one 80 GB card, fp32 master weights do not


def test_the_whole_logits_dominate_a_128k_vocabulary_unless_the_head_is_fused(tmp_path):
    folder = model_dir(tmp_path, LLAMA_31_8B)
    spec = spec_for(folder, "lora", perDeviceTrainBatchSize=2, maxLength=2048, gradientCheckpointing=True)
    whole = plan_memory(load_config(folder), spec, "H100-80GB", assumptions=Assumptions(loss="full"))
    fused = plan_memory(load_config(folder), spec, "H100-80GB")
    assert whole.logits == 12 * 2 * 2048 * 128256  # fp32 log-probs, their gradient and the logits' gradient
    assert whole.logits > whole.activations + whole.optimizer_states + whole.adapters
    assert fused.logits < whole.logits / 10
    assert fused.peak_allocated < whole.peak_allocated - 4 * GIB


def test_8bit_optimizer_states(tmp_path):
    adamw = plan_8b(tmp_path, "full", gradientCheckpointing=True)
    eight = plan_memory(
        LLAMA_31_8B,
        spec_for("x", "full", perDeviceTrainBatchSize=2, maxLength=2048, gradientCheckpointing=True),
        "H100-80GB",
        optim="paged_adamw_8bit",
    )
    assert adamw.optimizer_states == 2 * 2 * adamw.parameters  # bf16 m and v: the model is loaded in bf16
    assert eight.optimizer_states == pytest.approx(2 * (1 + 4 / 256) * adamw.parameters, rel=1e-6)
    assert any("paged" in note for note in eight.notes)


@pytest.mark.parametrize(
    ("config", "method", "gpu", "needed"),
    [
        # 16.1 GB of bf16 weights + 42 MB of adapters and their states + checkpoints and the fused head: one L4.
        pytest.param(LLAMA_31_8B, "lora", "L4-24GB", (1, 1), id="8b-lora-fits-one-L4"),
        # 8 bytes per parameter (bf16 weights, gradients, m, v) = 64 GB: more than one 40 GB card, two hold the
        # shards (32 GB each) but the activations and overhead may need a third.
        pytest.param(LLAMA_31_8B, "full", "A100-40GB", (2, 3), id="8b-full-shards-over-2-or-3-A100-40GB"),
        # 70.6 B parameters in NF4 are 36 GB, plus 2.1 GB of fp32 embeddings and lm_head: one 80 GB card.
        pytest.param(LLAMA_31_70B, "qlora", "A100-80GB", (1, 1), id="70b-qlora-fits-one-A100-80GB"),
        # 8 bytes x 70.6 B = 564 GB over 79 GiB cards: at least 7 shards, and not twice that.
        pytest.param(LLAMA_31_70B, "full", "H100-80GB", (7, 14), id="70b-full-shards-over-7-to-14-H100"),
        # Each T4 would hold 14.7 GiB: the unsharded activations, fused head and all-gathered root (the 4.2 GB
        # embeddings and lm_head, twice) leave too little for any number of shards.
        pytest.param(LLAMA_31_405B, "full", "T4-16GB", None, id="405b-full-fits-no-number-of-T4"),
    ],
)
def test_gpus_needed(config, method, gpu, needed):
    spec = spec_for("x", method, perDeviceTrainBatchSize=1, maxLength=2048, gradientCheckpointing=True, packing=True)
    plan = plan_memory(config, spec, gpu)
    if needed is None:
        assert plan.fits is False and plan.gpus_needed is None, plan.verdict()
        return
    low, high = needed
    assert low <= plan.gpus_needed <= high, plan.verdict()
    assert plan.fits is (plan.gpus_needed == 1)
    if plan.gpus_needed > 1:
        assert plan.sharded_per_gpu <= plan.gpu.memory_gib * GIB < plan.total
        assert "needs sharding" in plan.verdict()


BAD = [
    pytest.param({"missing": "config"}, {}, None, "spec.baseModel", "config.json", id="no-config-json"),
    pytest.param({**SMOLLM2_135M, "hidden_size": None}, {}, None, "hidden_size", "missing", id="hidden-size-missing"),
    pytest.param(
        {**SMOLLM2_135M, "num_hidden_layers": "30"},
        {},
        None,
        "num_hidden_layers",
        "positive integer",
        id="layers-a-string",
    ),
    pytest.param(
        {**SMOLLM2_135M, "num_key_value_heads": 4}, {}, None, "num_key_value_heads", "must divide", id="kv-heads"
    ),
    pytest.param(
        {**SMOLLM2_135M, "num_local_experts": 8}, {}, None, "num_local_experts", "mixture-of-experts", id="moe"
    ),
    pytest.param(
        {**SMOLLM2_135M, "tie_word_embeddings": "yes"},
        {},
        None,
        "tie_word_embeddings",
        "true or false",
        id="tied-not-bool",
    ),
    pytest.param(
        SMOLLM2_135M,
        {"lora": {"targetModules": ["qkv_proj"]}},
        None,
        "spec.lora.targetModules",
        "qkv_proj",
        id="unknown-module",
    ),
    pytest.param(
        SMOLLM2_135M,
        {"lora": {"targetModules": ["all-linear", "q_proj"]}},
        None,
        "spec.lora.targetModules",
        "only entry",
        id="all-linear-mixed",
    ),
    pytest.param(SMOLLM2_135M, {}, "B200", "--gpu", "unknown GPU type 'B200'", id="unknown-gpu"),
    pytest.param(
        SMOLLM2_135M, {"optim": "adamw_9bit"}, None, "spec.training.optim", "adamw_9bit", id="unknown-optimizer"
    ),
]


@pytest.mark.parametrize(("config", "change", "gpu", "field", "message"), BAD)
def test_bad_input_names_the_field(tmp_path, config, change, gpu, field, message):
    folder = tmp_path / "model"
    folder.mkdir()
    if "missing" not in config:
        (folder / "config.json").write_text(json.dumps(config))
    optim = change.pop("optim", None)
    spec = FineTuneJobSpec.model_validate({"baseModel": str(folder), "dataset": {"path": "d"}, **change})
    with pytest.raises(PlanError) as raised:
        plan_memory(load_config(folder), spec, gpu, optim=optim)
    assert field in raised.value.field and message in str(raised.value)


def test_planning_imports_no_torch():
    """The operator image has no torch: the planner and the plan command must not need it."""
    code = "import sys, kubetune.trainer.memory, kubetune_operator.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_a_config_json_that_is_not_json(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PlanError, match=r"config\.json: not a readable JSON file"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    ("spec_yaml", "expected"),
    [
        pytest.param("baseModel: {model}\n  dataset: {{path: d}}", "planned", id="valid"),
        pytest.param("baseModel: {missing}\n  dataset: {{path: d}}", "spec.baseModel", id="missing-config-json"),
        pytest.param("baseModel: {model}\n  dataset: {{path: d}}\n  method: lorra", "spec.method", id="bad-method"),
        pytest.param(
            "baseModel: {model}\n  dataset: {{path: d}}\n  training: {{maxLength: 8}}",
            "spec.training.maxLength",
            id="max-length-too-small",
        ),
    ],
)
def test_cli_exits_1_naming_the_field(tmp_path, spec_yaml, expected):
    folder = model_dir(tmp_path, SMOLLM2_135M)
    doc = tmp_path / "job.yaml"
    body = spec_yaml.format(model=folder, missing=tmp_path / "nowhere")
    doc.write_text(f"apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: tune}}\nspec:\n  {body}\n")
    result = CliRunner().invoke(app, ["plan", "-f", str(doc)])
    if expected == "planned":
        assert result.exit_code == 0, result.output
        assert "CPU run:" in result.stdout
    else:
        assert result.exit_code == 1, result.output
        assert expected in result.output


def test_dpo_plans_two_sequences_per_sample_and_a_reference_copy_for_full(tmp_path):
    folder = model_dir(tmp_path, SMOLLM2_135M)
    for method in ("lora", "full"):
        sft = spec_for(folder, method, perDeviceTrainBatchSize=2, maxLength=256)
        dpo = sft.model_copy(update={"objective": "dpo"})
        a, b = plan_memory(load_config(folder), sft), plan_memory(load_config(folder), dpo)
        assert b.batch == 2 * a.batch and b.activations > a.activations
        assert b.weights == (2 * a.weights if method == "full" else a.weights)
        assert any(n.startswith("dpo") for n in b.notes)


def test_the_spec_names_every_gpu_type_the_planner_sizes():
    from kubetune.api.v1alpha1.scheduling import GPU_TYPES as SPEC_GPU_TYPES

    assert [g.name for g in GPU_TYPES.values()] == list(SPEC_GPU_TYPES)


@pytest.mark.parametrize(
    ("config", "method", "gpu_type", "strategy", "gpus", "verdict"),
    [
        pytest.param(LLAMA_31_8B, "lora", "L4-24GB", "auto", 1, "fits one L4-24GB", id="8b-lora-one-L4"),
        pytest.param(LLAMA_31_8B, "full", "A100-40GB", "auto", 3, "does not fit one A100-40GB",
                     id="8b-full-fsdp-over-3"),
        pytest.param(LLAMA_31_8B, "full", "A100-40GB", "ddp", None, "does not fit one A100-40GB",
                     id="8b-full-ddp-fits-none"),
        pytest.param(LLAMA_31_70B, "qlora", "T4-16GB", "auto", None, "does not fit one T4-16GB",
                     id="70b-qlora-is-not-sharded"),
        # auto trains adapters under DDP, where every rank holds the whole 141 GB base: no count helps.
        pytest.param(LLAMA_31_70B, "lora", "A100-80GB", "auto", None, "does not fit one A100-80GB",
                     id="70b-lora-auto-is-ddp"),
        pytest.param(LLAMA_31_70B, "lora", "A100-80GB", "fsdp", 3, "does not fit one A100-80GB",
                     id="70b-lora-fsdp-over-3"),
    ],
)  # fmt: skip
def test_the_sizing_step_reports_the_gpus_of_resources_gpus_auto(tmp_path, monkeypatch, config, method, gpu_type,
                                                                   strategy, gpus, verdict):  # fmt: skip
    """``python -m kubetune.trainer --size-gpus`` (the sizing Job's command): the plan's answer as the termination
    message the operator reads: one GPU when a step fits one, FSDP's count where the strategy may shard, else
    none."""
    from kubetune.trainer.__main__ import main

    spec = spec_for(model_dir(tmp_path, config), method, perDeviceTrainBatchSize=1, maxLength=2048,
                    gradientCheckpointing=True, packing=True).to_wire()  # fmt: skip
    spec["resources"] = {"gpus": "auto", "gpuType": gpu_type}
    spec["distributed"] = {"strategy": strategy}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    args = ["--spec", str(tmp_path / "spec.json"), "--dataset", "d", "--output", str(tmp_path / "out"), "--size-gpus"]
    assert main(args) == 0
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result.get("gpus") == gpus and result["gpuType"] == gpu_type
    assert result["verdict"].startswith(verdict) and result["perGpuGiB"] > 0
    assert not (tmp_path / "out").exists()  # trained nothing


def test_the_sizing_step_fails_naming_an_unreadable_model(tmp_path, capsys):
    from kubetune.trainer.__main__ import main

    spec = spec_for(tmp_path / "missing").to_wire()
    spec["resources"] = {"gpus": "auto", "gpuType": "L4-24GB"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    assert main(["--spec", str(tmp_path / "spec.json"), "--dataset", "d", "--output", "o", "--size-gpus"]) == 1
    assert "trainer failed: spec.baseModel" in capsys.readouterr().err


def test_each_fsdp_rank_holds_its_share_of_the_parameters_and_a_ddp_rank_all_of_them():
    """Per rank: FSDP's 1/N of the weights, gradients and optimizer states on top of the unsharded rest (so
    doubling the ranks takes exactly half the shard off each, with the allocator's 20 %); DDP's whole step and its
    gradient buckets, whatever the count."""

    def plan(strategy, ranks, gpu="H100-80GB"):
        spec = spec_for("x", "full", perDeviceTrainBatchSize=1, maxLength=2048, gradientCheckpointing=True,
                        packing=True)  # fmt: skip
        wire = {**spec.to_wire(), "resources": {"gpus": ranks}, "distributed": {"strategy": strategy}}
        return plan_memory(LLAMA_31_8B, FineTuneJobSpec.model_validate(wire), gpu)

    fsdp = {n: plan("fsdp", n) for n in (2, 4, 8)}
    # 8 bytes a parameter in pure bf16 (weights, gradients, AdamW m and v).
    shardable = fsdp[2].weights + fsdp[2].gradients + fsdp[2].optimizer_states
    assert shardable == 8 * fsdp[2].parameters
    for a, b in ((2, 4), (4, 8)):
        assert fsdp[a].per_rank - fsdp[b].per_rank == pytest.approx(1.2 * shardable * (1 / a - 1 / b), abs=2)
    assert all(p.ranks == n and p.strategy == "fsdp" and p.rank_fits() for n, p in fsdp.items())
    assert "2 ranks, FSDP" in fsdp[2].verdict() and "fits H100-80GB" in fsdp[2].verdict()
    ddp = plan("ddp", 2)
    alloc = ddp.peak_allocated + ddp.gradients  # the gradient buckets on top of a whole step
    assert ddp.per_rank == round(alloc * 1.2 + GIB / 2) and ddp.rank_fits() is False
    # auto: 8B in pure bf16 fits one H100 alone, but not with DDP's gradient buckets: sharded.
    assert plan("ddp", 1).fits and (plan("auto", 2).strategy, plan("auto", 1).strategy) == ("fsdp", "none")
    lora = spec_for("x", "lora", perDeviceTrainBatchSize=1, maxLength=2048, gradientCheckpointing=True, packing=True)
    wire = {**lora.to_wire(), "resources": {"gpus": 2}}
    assert plan_memory(LLAMA_31_8B, FineTuneJobSpec.model_validate(wire), "H100-80GB").strategy == "ddp"
