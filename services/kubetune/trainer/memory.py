"""Peak memory of a FineTuneJob, per GPU or for a CPU run, predicted from the base model's config.json alone.

``plan_memory(load_config(spec.base_model), spec, gpu)`` adds up what one training step keeps in memory:
weights, LoRA adapters, gradients, optimizer states, activations, the LM head's loss working set and
the framework's overhead, and says how many GPUs of a named type the job needs. No weights are read and
torch is not imported (the operator image has no torch): everything follows from the model's shape and
the spec.

The defaults describe the stack kubetune's trainer runs (``kubetune.trainer.training``: TRL 1.16's
``SFTTrainer``, PEFT 0.21, bitsandbytes 0.50, transformers 5.19, ``constraints.txt``): on a GPU the model
is loaded in bf16 and trained under bf16 autocast; on a CPU everything is fp32. :class:`Assumptions`
changes what differs in other stacks (the published figures the tests compare against).

Symbols: N = tokens per device and step (batch x maxLength; a padded batch is at most that long), L
decoder layers, h hidden size, q = heads x head_dim, k = kv_heads x head_dim, f = MLP intermediate size,
V vocabulary, r the LoRA rank. Sizes are bytes; "r_b" is the bytes of the residual stream's dtype
(2 for bf16; 4 for fp32, which a CPU run and QLoRA's fp32 embeddings give), "a_b" those of the attention
tensors (2 under bf16 autocast, else r_b), "m_b" those of the MLP's intermediate tensors.

Weights
    full, lora: every parameter in the load dtype (bf16 on a GPU, fp32 on a CPU).
    qlora: the decoder's linear weights in NF4 with double quantization, as bitsandbytes stores them
    (blocksize 64): 0.5 byte per weight + an 8-bit absmax per 64 weights + an fp32 absmax per 256 blocks
    = 0.5159 byte. The embeddings, lm_head, norms and biases stay unquantized, and PEFT's
    ``prepare_model_for_kbit_training`` upcasts them to fp32.
LoRA adapters
    r x (in + out) per adapted linear; fp32 as PEFT keeps them (``autocast_adapter_dtype``) for lora, bf16
    for qlora (TRL's SFTTrainer casts a quantized model's trainable parameters to bf16).
Gradients
    One per trainable parameter, in its dtype. ``zero_grad(set_to_none=True)`` frees them after each
    optimizer step, so they only add to the forward's peak with gradient accumulation.
Optimizer states
    AdamW (the Trainer's default ``adamw_torch_fused``): m and v in the parameter's dtype (fp32 for fp32
    adapters; bf16 for a full fine-tune of a model loaded in bf16, which keeps no fp32 master copy).
    bitsandbytes 8-bit optimizers: 1 byte per state and element + an fp32 absmax per 256 elements.
    Adafactor: the factored second moment, rows + columns per matrix. SGD: none.
Activations, per layer and token (what autograd saves; Korthikanti et al. 2022, "Reducing Activation
Recomputation in Large Transformer Models", sec. 4.1: 34·h + 5·a·s bytes per token and layer for a GPT
layer in 16-bit), adapted to Llama's layer (RMSNorm, GQA attention through SDPA, SwiGLU MLP, no dropout
in the base model) as transformers 5.19 runs it:
    2 RMSNorms: each saves its input upcast to fp32 (4h) [+ its bf16 output r_b·h when the weight trains]
    attention: Q, K, V as SDPA saves them a_b·(q + 2k) (a padded batch has a mask, and transformers then
    repeats K and V to every head: a_b·3q), its output a_b·q, its fp32 logsumexp 4·heads; no s² term:
    SDPA runs a flash / memory-efficient kernel (Korthikanti's 5·a·s term is the unfused softmax's)
    MLP: gate (kept by SiLU), SiLU(gate) and up (kept by the product): 3·m_b·f
    full fine-tune only: the inputs the trainable linears keep: r_b·h (q, k, v), a_b·q (o), r_b·h (gate,
    up), m_b·f (down)
    LoRA, per adapted linear of input width w: the input lora_A keeps (a fresh bf16 copy under autocast:
    PEFT casts the input to the adapter's dtype and autocast back; a shared tensor, counted once, when
    neither a cast nor dropout copies it) + dropout's mask (1 byte on a GPU; on a CPU, where PyTorch's
    unfused dropout keeps a float mask, the dtype's bytes) + lora_A's output, r values per token
    Full fine-tune on a GPU, unpadded, h = q: 22·h + 4·k + 8·f + 4·heads bytes. With gradient checkpointing
    a layer keeps only its input, r_b·h per token (Korthikanti's "full recomputation": 2·s·b·h per
    layer), and the layer being recomputed holds its whole set again during its backward.
LM head and loss
    ``fused`` (kubetune: TRL 1.16's SFTTrainer patches the model with a fused LM head, ``add_fused_lm_head``,
    and never builds the batch x sequence x vocabulary logits): tiles of min(N, 4096) tokens x min(V,
    32768) vocabulary in the compute dtype, the fp32 gradient of the hidden states (4·N·h) and, when lm_head
    trains, an fp32 gradient of its weight (4·V·h). On a GPU Triton folds each tile in place; on a CPU the
    torch fallback keeps about five fp32 copies of a tile alive in the backward: (dtype + 29) bytes per
    tile element.
    ``full`` (transformers' own loss, as a plain training loop such as bench/gpu/run.py calls it):
    12·N·V: the fp32 log-probabilities cross-entropy keeps for the backward, the gradient arriving at them
    and the gradient it hands back, alive together (the forward's bf16 logits + fp32 copy + log-softmax,
    10 bytes, is less). For Llama 3.1's 128k vocabulary this is often the largest term.
    ``chunked`` (torchtune's CEWithChunkedOutputLoss, compiled): the bf16 logits, 2·N·V, + one chunk's
    fp32 upcast and its gradient, 8·N·V / chunks.
Peak
    The largest of three moments, each the persistent terms (weights, adapters, optimizer states) plus:
    the loss backward (saved activations + the final norm and head input + the LM head's working set +
    frozen fp32 weights autocast keeps a bf16 copy of), a decoder layer's backward (saved activations +
    the recomputed layer with checkpointing + its gradient temporaries, about 3·m_b·f per token + an NF4
    weight dequantized for the matmul), and the end of the backward (every gradient).
Framework overhead (GPU only)
    0.5 GiB for the CUDA context (driver, kernels, cuBLAS handles: outside PyTorch's allocator; an
    estimate, not measured here) + 20 % of the peak for the caching allocator's reserve and fragmentation
    (peak reserved / peak allocated measured 1.03 to 1.17 on an H200 in bench/gpu and bench/planner; 20 %
    covers them all). ``peak_allocated`` is what ``torch.cuda.max_memory_allocated`` would read; ``total``
    adds the overhead and must fit the GPU.
    On a CPU there is none: the peak is the live tensors. glibc keeps freed heap for reuse, so the process's
    resident set ran 10 to 40 % above it in bench/planner's runs.
GPUs needed
    Data-parallel replicas hold everything, so a plan that does not fit one GPU needs sharding: N GPUs
    with FSDP full shard, estimated as (weights + adapters + gradients + optimizer states) / N + the
    rest of the peak + the all-gathered unit (the largest of a decoder layer and the embeddings with
    lm_head) and the next layer prefetched + the overhead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec

GIB = 1024**3
CPU = "cpu"


@dataclass(frozen=True)
class GpuType:
    name: str
    memory_gib: float  # total memory CUDA reports (torch.cuda.get_device_properties), rounded down
    native_bf16: bool


GPU_TYPES: dict[str, GpuType] = {
    g.name.lower(): g
    for g in (
        GpuType("H100-80GB", 79.1, True),
        GpuType("H200-141GB", 139.8, True),
        GpuType("A100-40GB", 39.4, True),
        GpuType("A100-80GB", 79.1, True),
        GpuType("L40S-48GB", 44.3, True),
        GpuType("L4-24GB", 22.0, True),
        GpuType("A10G-24GB", 22.0, True),
        GpuType("T4-16GB", 14.7, False),
    )
}

CUDA_CONTEXT_BYTES = GIB // 2
ALLOCATOR_RESERVE = 0.20
MAX_SHARDS = 1024

# bitsandbytes NF4, blocksize 64, double quantization: packed 4-bit + uint8 absmax per block + fp32 absmax per
# 256 blocks; per tensor an fp32 offset and two 256-entry fp32 code tables.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
NF4_BYTES_PER_WEIGHT_NO_DOUBLE_QUANT = 0.5 + 4 / 64
NF4_BYTES_PER_TENSOR = 2 * 256 * 4 + 4

# TRL's fused LM head (trl/kernels/chunked_logprob.py): token rows and vocabulary columns per tile.
FUSED_TOKEN_TILE = 4096
FUSED_VOCAB_TILE = 32768

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
LINEARS = ATTENTION + MLP
LORA_MODULES = (*LINEARS, "lm_head")
LLAMA_LIKE = {"llama", "mistral", "qwen2", "qwen3", "granite", "smollm3"}
MOE_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


class PlanError(ValueError):
    """Input the planner cannot use; ``field`` names where it is (a spec field, a config.json key, an option)."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


# ---------------------------------------------------------------------------------------------------------
# The model's shape, from config.json


def load_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a Hugging Face model folder (or that file itself); nothing else is read."""
    path = Path(path)
    file = path if path.suffix == ".json" and not path.is_dir() else path / "config.json"
    if not file.is_file():
        where = "no such folder" if not path.exists() else "it holds no config.json"
        raise PlanError("spec.baseModel", f"cannot plan without {file}: {where} (the base model is {str(path)!r})")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PlanError(str(file), f"not a readable JSON file: {exc}") from None
    if not isinstance(config, dict):
        raise PlanError(str(file), "must hold a JSON object")
    config.setdefault("_source", str(file))
    return config


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs of a decoder-only transformer with Llama's layer layout."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @property
    def q_width(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, q, k, f = self.hidden, self.q_width, self.kv_width, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, k),
            "v_proj": (h, k),
            "o_proj": (q, h),
            "gate_proj": (h, f),
            "up_proj": (h, f),
            "down_proj": (f, h),
        }

    @property
    def layer_linear_weights(self) -> int:
        return sum(i * o for i, o in self.linears().values())

    @property
    def layer_small_params(self) -> int:
        """Norm weights and biases of one decoder layer: never quantized."""
        h, q, k, f = self.hidden, self.q_width, self.kv_width, self.intermediate
        biases = (q + 2 * k) * self.qkv_bias + h * self.o_bias + (2 * f + h) * self.mlp_bias
        return 2 * h + biases

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """lm_head's own weight; none when it is tied to the embeddings."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def decoder_linear_params(self) -> int:
        return self.layers * self.layer_linear_weights

    @property
    def unquantized_params(self) -> int:
        """What QLoRA leaves in 16/32-bit: embeddings, lm_head, norms and biases."""
        return self.embedding_params + self.head_params + self.layers * self.layer_small_params + self.hidden

    @property
    def parameters(self) -> int:
        return self.decoder_linear_params + self.unquantized_params


def _int_field(config: dict, key: str, source: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None:
        raise PlanError(f"{source}: {key}", "missing; a decoder-only transformer's config.json names it")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanError(f"{source}: {key}", f"must be a positive integer (got {value!r})")
    return value


def model_shape(config: dict[str, Any]) -> ModelShape:
    """The shape of the model a config.json describes; a PlanError names a missing or bad key."""
    source = str(config.get("_source", "config.json"))
    if "hidden_size" not in config and isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], "_source": f"{source} text_config"}
        source = config["_source"]
    for key in MOE_KEYS:
        experts = config.get(key)
        if isinstance(experts, int) and not isinstance(experts, bool) and experts > 1:
            raise PlanError(f"{source}: {key}", f"mixture-of-experts models ({experts} experts) are not planned yet")
    hidden = _int_field(config, "hidden_size", source)
    heads = _int_field(config, "num_attention_heads", source)
    kv_heads = _int_field(config, "num_key_value_heads", source, heads)
    if heads % kv_heads:
        raise PlanError(f"{source}: num_key_value_heads", f"must divide num_attention_heads ({heads}) (got {kv_heads})")
    head_dim = config.get("head_dim")
    if head_dim is None:
        if hidden % heads:
            raise PlanError(f"{source}: head_dim", f"missing, and hidden_size {hidden} is not a multiple of {heads}")
        head_dim = hidden // heads
    else:
        head_dim = _int_field(config, "head_dim", source)
    tied = config.get("tie_word_embeddings", False)
    if not isinstance(tied, bool):
        raise PlanError(f"{source}: tie_word_embeddings", f"must be true or false (got {tied!r})")
    model_type = str(config.get("model_type", ""))
    attention_bias = bool(config.get("attention_bias", False))
    return ModelShape(
        model_type=model_type,
        hidden=hidden,
        intermediate=_int_field(config, "intermediate_size", source),
        layers=_int_field(config, "num_hidden_layers", source),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        vocab=_int_field(config, "vocab_size", source),
        tied=tied,
        qkv_bias=attention_bias or model_type == "qwen2",
        o_bias=attention_bias,
        mlp_bias=bool(config.get("mlp_bias", False)),
    )


# ---------------------------------------------------------------------------------------------------------
# What the training stack does


@dataclass(frozen=True)
class Assumptions:
    """How the training stack lays memory out; the defaults are kubetune's trainer (see the module docstring).

    loss: ``fused`` TRL's fused LM head (kubetune), ``full`` transformers' loss on the whole logits (a plain
    training loop), ``chunked`` torchtune's CEWithChunkedOutputLoss over ``loss_chunks`` chunks (compiled).
    adapter_dtype: ``auto`` is kubetune's: fp32 for lora (PEFT), bf16 for qlora (TRL); on a CPU the same.
    upcast_unquantized: QLoRA's embeddings, lm_head, norms and biases in fp32 (PEFT's
    ``prepare_model_for_kbit_training``), or in the compute dtype (torchtune); None: as the spec's
    ``lora.upcastUnquantized`` says (kubetune's default: the compute dtype).
    padded_batches: a padded batch carries an attention mask (K and V repeated to every head, a boolean
    s x s mask); None: padded unless ``training.packing``.
    """

    loss: Literal["fused", "full", "chunked"] = "fused"
    loss_chunks: int = 8
    adapter_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    upcast_unquantized: bool | None = None
    padded_batches: bool | None = None


@dataclass(frozen=True)
class _Optimizer:
    states: int  # per trainable element
    state_bytes: float | None  # None: the parameter's dtype
    paged: bool = False
    factored: bool = False


# transformers' OptimizerNames that the planner knows; TrainingArguments' default on torch >= 2.8 first.
OPTIMIZERS: dict[str, _Optimizer] = {
    "adamw_torch_fused": _Optimizer(2, None),
    "adamw_torch": _Optimizer(2, None),
    "adamw_8bit": _Optimizer(2, 1 + 4 / 256),
    "adamw_bnb_8bit": _Optimizer(2, 1 + 4 / 256),
    "paged_adamw_8bit": _Optimizer(2, 1 + 4 / 256, paged=True),
    "paged_adamw_32bit": _Optimizer(2, 4, paged=True),
    "lion_8bit": _Optimizer(1, 1 + 4 / 256),
    "lion_32bit": _Optimizer(1, 4),
    "paged_lion_8bit": _Optimizer(1, 1 + 4 / 256, paged=True),
    "paged_lion_32bit": _Optimizer(1, 4, paged=True),
    "adafactor": _Optimizer(0, 4, factored=True),
    "sgd": _Optimizer(0, None),
}


def gpu_type(name: str) -> GpuType | None:
    """The GPU type named (any case), or None for ``cpu``; a PlanError lists the valid names."""
    if name.lower() == CPU:
        return None
    try:
        return GPU_TYPES[name.lower()]
    except KeyError:
        valid = ", ".join([*(g.name for g in GPU_TYPES.values()), CPU])
        raise PlanError("--gpu", f"unknown GPU type {name!r}; one of: {valid}") from None


def _lora_modules(spec: FineTuneJobSpec) -> list[str]:
    targets = spec.lora.target_modules
    if targets == ["all-linear"]:
        return list(LINEARS)  # PEFT's all-linear: every linear layer but the output head
    if "all-linear" in targets:
        raise PlanError("spec.lora.targetModules", "'all-linear' must be the only entry (PEFT takes it alone)")
    modules = []
    for name in targets:
        leaf = name.rsplit(".", 1)[-1]
        if leaf not in LORA_MODULES:
            raise PlanError(
                "spec.lora.targetModules",
                f"{name!r} names no linear layer of this model; valid: all-linear or any of {', '.join(LORA_MODULES)}",
            )
        if leaf not in modules:
            modules.append(leaf)
    return modules


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class MemoryPlan:
    """Predicted memory of one training step, in bytes, per GPU (or of the process, on a CPU)."""

    model: ModelShape
    method: str
    device: str  # "cpu", a GPU type's name, or "gpu" when none was named
    compute_dtype: str
    batch: int
    seq_len: int
    gradient_checkpointing: bool
    gradient_accumulation_steps: int
    optimizer: str
    parameters: int
    trainable_parameters: int
    lora_modules: list[str]
    weights: int
    weights_quantized: int
    weights_unquantized: int
    adapters: int
    gradients: int
    optimizer_states: int
    activations: int  # saved for the backward, with the spec's gradient checkpointing setting
    activations_with_checkpointing: int
    activations_without_checkpointing: int
    activation_bytes_per_token_layer: int  # one decoder layer without checkpointing, per token
    recompute: int  # the layer recomputed in the backward (checkpointing) and its gradient temporaries
    final: int  # the final norm's saved input and what the LM head keeps of its input
    logits: int  # the LM head and loss working set at its peak
    autocast_copies: int  # bf16 copies of fp32 weights that autocast makes and the backward keeps
    overhead: int
    peak_allocated: int
    peak_phase: str
    total: int
    gpu: GpuType | None = None
    fits: bool | None = None
    gpus_needed: int | None = None
    sharded_per_gpu: int | None = None
    ranks: int = 1  # spec.distributed's numNodes x processesPerNode
    pods: int = 1  # spec.distributed.numNodes: the pods the ranks are spread over in a cluster
    strategy: str = "none"  # ddp or fsdp with several ranks (auto decided)
    per_rank: int | None = None  # with several ranks: one rank's peak, overhead included on a GPU
    assumptions: Assumptions = field(default_factory=Assumptions)
    notes: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, int, str]]:
        """(term, bytes, how it is counted) for a table."""
        m = self.model
        wdt = "bf16" if self.compute_dtype == "bf16" else "fp32"
        if self.method == "qlora":
            unq = "fp32" if self.assumptions.upcast_unquantized else wdt
            how_w = (
                f"NF4 decoder linears {_g(self.weights_quantized)} (0.516 B/weight with double quant) + "
                f"embeddings, lm_head, norms in {unq} {_g(self.weights_unquantized)}"
            )
        else:
            how_w = f"{self.parameters / 1e9:.2f} B parameters in {wdt}"
        off = _g(self.activations_without_checkpointing)
        act_how = (
            f"checkpointing on: layer inputs, {self.model.layers} layers (off: {off})"
            if self.gradient_checkpointing
            else f"{self.activation_bytes_per_token_layer:,} B/token/layer x {self.batch * self.seq_len:,} tokens x "
            f"{m.layers} layers (checkpointing on: {_g(self.activations_with_checkpointing)})"
        )
        loss = self.assumptions.loss
        logit_how = {
            "fused": "TRL's fused LM head: vocabulary tiles, no full logits",
            "full": f"{self.batch}x{self.seq_len}x{m.vocab:,} logits: fp32 log-probs + 2 fp32 gradients",
            "chunked": f"bf16 logits + one of {self.assumptions.loss_chunks} chunks in fp32",
        }[loss]
        rows = [
            ("weights", self.weights, how_w),
            ("LoRA adapters", self.adapters, f"{self.trainable_parameters / 1e6:.1f} M parameters")
            if self.method != "full"
            else None,
            ("gradients", self.gradients, f"{self.trainable_parameters / 1e6:,.1f} M trainable parameters"),
            ("optimizer states", self.optimizer_states, self.optimizer),
            ("activations", self.activations, act_how),
            ("recomputed layer", self.recompute, "one layer's activations + gradient temporaries, in its backward"),
            ("final norm, head input", self.final, "saved for the backward"),
            ("LM head and loss", self.logits, logit_how),
            ("autocast copies", self.autocast_copies, "bf16 copies of fp32 weights kept for the backward")
            if self.autocast_copies
            else None,
            ("framework overhead", self.overhead, "CUDA context 0.5 GiB + 20 % allocator reserve")
            if self.device != CPU
            else None,
        ]
        return [r for r in rows if r is not None]

    def to_dict(self) -> dict[str, Any]:
        terms = {name: value for name, value, _ in self.rows()}
        return {
            "model": {
                "modelType": self.model.model_type,
                "parameters": self.parameters,
                "layers": self.model.layers,
                "hidden": self.model.hidden,
                "vocab": self.model.vocab,
            },
            "method": self.method,
            "device": self.device,
            "computeDtype": self.compute_dtype,
            "batch": self.batch,
            "seqLen": self.seq_len,
            "gradientCheckpointing": self.gradient_checkpointing,
            "optimizer": self.optimizer,
            "trainableParameters": self.trainable_parameters,
            "loraModules": self.lora_modules,
            "bytes": {
                "weights": self.weights,
                "adapters": self.adapters,
                "gradients": self.gradients,
                "optimizerStates": self.optimizer_states,
                "activations": self.activations,
                "activationsWithCheckpointing": self.activations_with_checkpointing,
                "activationsWithoutCheckpointing": self.activations_without_checkpointing,
                "recompute": self.recompute,
                "final": self.final,
                "logits": self.logits,
                "autocastCopies": self.autocast_copies,
                "overhead": self.overhead,
                "peakAllocated": self.peak_allocated,
                "total": self.total,
            },
            "gib": {name: round(value / GIB, 3) for name, value in terms.items()}
            | {"peakAllocated": round(self.peak_allocated / GIB, 3), "total": round(self.total / GIB, 3)},
            "peakPhase": self.peak_phase,
            "gpu": None
            if self.gpu is None
            else {
                "type": self.gpu.name,
                "memoryGiB": self.gpu.memory_gib,
                "fits": self.fits,
                "gpusNeeded": self.gpus_needed,
                "shardedPerGpuGiB": None if self.sharded_per_gpu is None else round(self.sharded_per_gpu / GIB, 3),
            },
            "distributed": {
                "ranks": self.ranks,
                "pods": self.pods,
                "strategy": self.strategy,
                "perRankGiB": None if self.per_rank is None else round(self.per_rank / GIB, 3),
                "fits": self.rank_fits(),
            },
            "assumptions": {
                "loss": self.assumptions.loss,
                "adapterDtype": self.assumptions.adapter_dtype,
                "upcastUnquantized": self.assumptions.upcast_unquantized,
                "paddedBatches": self.assumptions.padded_batches,
            },
            "notes": self.notes,
        }

    def rank_fits(self) -> bool | None:
        """With several ranks, whether one rank's share fits the named GPU (None: one rank, or no GPU named)."""
        if self.per_rank is None or self.gpu is None:
            return None
        return self.per_rank <= self.gpu.memory_gib * GIB

    def verdict(self) -> str:
        """One line: whether it fits, and how many GPUs it needs."""
        if self.per_rank is not None:
            where = "a CPU rank" if self.device == CPU else "each GPU"
            spread = f" ({self.pods} pods x {self.ranks // self.pods})" if self.pods > 1 else ""
            line = f"{self.ranks} ranks{spread}, {self.strategy.upper()}: {_g(self.per_rank)} on {where}"
            if self.gpu is None or self.device == CPU:
                return line
            if self.rank_fits():
                return f"{line}: fits {self.gpu.name} ({self.gpu.memory_gib:.1f} GiB)"
            if self.strategy == "fsdp" and self.gpus_needed is not None:
                return f"{line}: does not fit {self.gpu.name}; FSDP over {self.gpus_needed} GPUs would"
            return f"{line}: does not fit {self.gpu.name} ({self.gpu.memory_gib:.1f} GiB)"
        if self.device == CPU:
            return f"CPU run: {_g(self.total)} of tensors at the peak (the process's resident set runs higher)"
        if self.gpu is None:
            return f"{_g(self.total)} per GPU; name a GPU type (--gpu) to check the fit"
        if self.fits:
            return f"fits one {self.gpu.name} ({_g(self.total)} of {self.gpu.memory_gib:.1f} GiB)"
        if self.gpus_needed is None and self.method == "qlora":
            size = f"{_g(self.total)} of {self.gpu.memory_gib:.1f} GiB"
            return f"does not fit one {self.gpu.name} ({size}); qlora is not sharded"
        if self.gpus_needed is None:
            return f"does not fit a {self.gpu.name} even sharded over {MAX_SHARDS} GPUs"
        return (
            f"does not fit one {self.gpu.name} ({_g(self.total)} of {self.gpu.memory_gib:.1f} GiB): needs sharding: "
            f"{self.gpus_needed} GPUs with FSDP full shard, about {_g(self.sharded_per_gpu or 0)} each"
        )


def _g(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def _dtype_bytes(name: str) -> int:
    return 4 if name == "fp32" else 2


@dataclass(frozen=True)
class _Dtypes:
    """Bytes per element of each kind of tensor (the module docstring's symbols)."""

    on_gpu: bool
    compute: int  # autocast's: bf16 on a GPU; fp32 on a CPU
    w_b: int  # the unquantized model's load dtype
    adapter_b: int
    unq_b: int  # what QLoRA leaves unquantized: embeddings, lm_head, norms and biases
    r_b: int
    a_b: int
    m_b: int
    lora_a_out: int  # lora_A's output


def _device(spec: FineTuneJobSpec, gpu: str | None, notes: list[str]) -> tuple[GpuType | None, bool]:
    """The GPU type planned for (None: a CPU, or a GPU of no named type) and whether the step runs on a GPU."""
    gpu_spec: GpuType | None = None
    if gpu is None and spec.resources.gpu_type and spec.resources.gpu_count() != 0:
        gpu = spec.resources.gpu_type
    if gpu is not None:
        gpu_spec = gpu_type(gpu)
        on_gpu = gpu_spec is not None
    else:
        on_gpu = spec.resources.gpu_count() != 0  # a count, or auto
    if gpu_spec is not None and not gpu_spec.native_bf16:
        notes.append(f"{gpu_spec.name} has no native bf16: torch emulates it (the trainer still picks bf16), slowly")
    return gpu_spec, on_gpu


def _dtypes(spec: FineTuneJobSpec, on_gpu: bool, a: Assumptions, notes: list[str]) -> _Dtypes:
    """Which tensors are which dtype (see the module docstring)."""
    method = spec.method
    compute = 2 if on_gpu else 4  # training.py: bf16 on a GPU (autocast), fp32 on a CPU without AMX
    bf16 = getattr(spec.training, "bf16", None)
    if bf16 is not None and bf16 != on_gpu:
        notes.append(
            f"training.bf16 {str(bf16).lower()} on a {'GPU' if on_gpu else 'CPU'} is not modelled: the plan is for "
            f"{'bf16' if on_gpu else 'fp32'}, the default there"
        )
    w_b = compute  # load dtype of the unquantized model
    if method == "full" and on_gpu and spec.training.fp32_master_weights:
        w_b = 4  # fp32 weights (and so gradients and AdamW states) under bf16 autocast
    auto_adapter_b = 2 if method == "qlora" else 4  # TRL casts a quantized model's adapters to bf16
    adapter_b = auto_adapter_b if a.adapter_dtype == "auto" else _dtype_bytes(a.adapter_dtype)
    unq_b = 4 if (method == "qlora" and a.upcast_unquantized) else w_b
    r_b = unq_b if method == "qlora" else w_b  # the residual stream follows the embeddings' dtype
    a_b = compute if on_gpu else r_b
    m_b = r_b if method == "qlora" else compute  # a Linear4bit returns its input's dtype
    if not on_gpu:
        m_b = r_b
    return _Dtypes(
        on_gpu=on_gpu,
        compute=compute,
        w_b=w_b,
        adapter_b=adapter_b,
        unq_b=unq_b,
        r_b=r_b,
        a_b=a_b,
        m_b=m_b,
        lora_a_out=2 if on_gpu else adapter_b,
    )


@dataclass(frozen=True)
class _Parameters:
    """Parameter counts, and the bytes of the weights, LoRA adapters and gradients."""

    lora_modules: list[str]
    n_lora: int
    trainable: int
    grad_b: int  # the trainable parameters' dtype
    weights_q: int
    weights_u: int
    weights: int
    adapters: int
    gradients: int


def _parameters(shape: ModelShape, spec: FineTuneJobSpec, d: _Dtypes, notes: list[str]) -> _Parameters:
    """Weights (NF4 and unquantized), LoRA adapters and gradients, as the method lays them out."""
    method = spec.method
    modules = _lora_modules(spec) if method != "full" else []
    lin = shape.linears()
    per_layer_lora = sum(spec.lora.r * (lin[m][0] + lin[m][1]) for m in modules if m in lin)
    head_lora = spec.lora.r * (shape.hidden + shape.vocab) if "lm_head" in modules else 0
    n_lora = shape.layers * per_layer_lora + head_lora
    if method == "full":
        weights_q, weights_u = 0, shape.parameters * d.w_b
        trainable = shape.parameters
        grad_b = d.w_b
    elif method == "lora":
        weights_q, weights_u = 0, shape.parameters * d.w_b
        trainable = n_lora
        grad_b = d.adapter_b
    else:
        n_tensors = shape.layers * len(LINEARS)
        weights_q = round(shape.decoder_linear_params * NF4_BYTES_PER_WEIGHT + n_tensors * NF4_BYTES_PER_TENSOR)
        weights_u = shape.unquantized_params * d.unq_b
        trainable = n_lora
        grad_b = d.adapter_b
    if spec.objective == "dpo" and method == "full":
        # The reference model: a frozen copy of the base (adapters use the base itself, adapter switched off).
        weights_u += shape.parameters * d.w_b
        notes.append("dpo, full: a frozen reference copy of the weights is counted with the weights")
    return _Parameters(
        lora_modules=modules,
        n_lora=n_lora,
        trainable=trainable,
        grad_b=grad_b,
        weights_q=weights_q,
        weights_u=weights_u,
        weights=weights_q + weights_u,
        adapters=n_lora * d.adapter_b,
        gradients=trainable * grad_b,
    )


def _optimizer_states(
    optim_name: str, shape: ModelShape, spec: FineTuneJobSpec, params: _Parameters, notes: list[str]
) -> int:
    """Bytes of the optimizer's states over the trainable parameters."""
    opt = OPTIMIZERS.get(str(optim_name))
    if opt is None:
        raise PlanError(
            "spec.training.optim", f"unknown optimizer {optim_name!r}; the planner knows: {', '.join(OPTIMIZERS)}"
        )
    if opt.factored:
        # Adafactor without a first moment: per matrix an fp32 row and column accumulator; vectors keep theirs.
        lin = shape.linears()
        if spec.method == "full":
            mats = shape.layers * sum(i + o for i, o in lin.values()) + (shape.vocab + shape.hidden) * (
                1 if shape.tied else 2
            )
            vectors = shape.layers * shape.layer_small_params + shape.hidden
        else:
            r = spec.lora.r
            mats = shape.layers * sum(r + lin[m][0] + r + lin[m][1] for m in params.lora_modules if m in lin)
            vectors = 0
        optimizer_states = 4 * (mats + vectors)
    else:
        state_b = opt.state_bytes if opt.state_bytes is not None else params.grad_b
        optimizer_states = round(params.trainable * opt.states * state_b)
    if opt.paged:
        notes.append(
            f"{optim_name}: paged states live in CUDA unified memory, outside PyTorch's allocator, and move to the "
            "host under memory pressure; they are counted here as if resident"
        )
    return optimizer_states


@dataclass(frozen=True)
class _Activations:
    """What autograd saves for the backward: per decoder layer, and over all layers with and without
    checkpointing (the attention mask included)."""

    batch: int  # sequences per forward
    seq_len: int
    n_tok: int  # N
    padded: bool
    per_tok: int  # one decoder layer without checkpointing, per token
    layer_bytes: int  # one decoder layer without checkpointing
    with_checkpointing: int
    without_checkpointing: int


def _activations(
    shape: ModelShape, spec: FineTuneJobSpec, a: Assumptions, d: _Dtypes, modules: list[str], notes: list[str]
) -> _Activations:
    """The activations a step saves for the backward: one decoder layer's per token, then all layers'."""
    t = spec.training
    b, s = t.per_device_train_batch_size, t.max_length
    if spec.objective == "dpo":
        b *= 2  # TRL's DPOTrainer runs chosen and rejected through the policy as one batch
        notes.append("dpo: chosen and rejected go through the model as one batch of twice perDeviceTrainBatchSize")
    n_tok = b * s
    padded = (not t.packing) if a.padded_batches is None else a.padded_batches
    h, q, k, f = shape.hidden, shape.q_width, shape.kv_width, shape.intermediate
    r_b, a_b, m_b = d.r_b, d.a_b, d.m_b
    kv_saved = q if padded else k

    per_tok = 2 * 4 * h  # the RMSNorms' fp32 inputs
    per_tok += a_b * (q + 2 * kv_saved) + a_b * q + 4 * shape.heads  # SDPA's Q, K, V, output, logsumexp
    per_tok += 3 * m_b * f  # SwiGLU: gate, SiLU(gate), up
    if spec.method == "full":
        per_tok += 2 * r_b * h  # the norms' outputs, kept for their trainable weights
        per_tok += r_b * h + a_b * q + r_b * h + m_b * f  # the trainable linears' inputs
    per_tok += _lora_activations(shape, spec, d, modules)
    layer_bytes = per_tok * n_tok
    mask = b * s * s if padded else 0  # a boolean attention mask, shared by the layers
    return _Activations(
        batch=b,
        seq_len=s,
        n_tok=n_tok,
        padded=padded,
        per_tok=per_tok,
        layer_bytes=layer_bytes,
        with_checkpointing=shape.layers * r_b * h * n_tok + mask,
        without_checkpointing=shape.layers * layer_bytes + mask,
    )


def _lora_activations(shape: ModelShape, spec: FineTuneJobSpec, d: _Dtypes, modules: list[str]) -> int:
    """LoRA: what each adapter of one decoder layer keeps, per token: its input (shared with the linears that read
    the same tensor unless a cast or dropout copies it), dropout's mask and lora_A's output."""
    h, q, f = shape.hidden, shape.q_width, shape.intermediate
    r_b, a_b, m_b = d.r_b, d.a_b, d.m_b
    inputs = {"q_proj": ("attn", r_b, h), "k_proj": ("attn", r_b, h), "v_proj": ("attn", r_b, h)}
    inputs |= {"o_proj": ("o", a_b, q), "gate_proj": ("mlp", r_b, h), "up_proj": ("mlp", r_b, h)}
    inputs |= {"down_proj": ("down", m_b, f)}
    method, p = spec.method, spec.lora.lora_dropout
    per_tok = 0
    shared: dict[str, int] = {}
    for mod in modules:
        if mod not in inputs:
            continue
        group, x_b, width = inputs[mod]
        if d.on_gpu:
            peft_cast = method == "lora" and d.adapter_b != x_b  # lora.Linear casts; bnb layers skip it under autocast
            fresh = p > 0 or peft_cast or x_b != d.compute
            saved_b, mask_b = d.compute, 1
        else:
            fresh = p > 0 or d.adapter_b != x_b
            saved_b, mask_b = d.adapter_b, d.adapter_b
        if fresh:
            per_tok += saved_b * width + (mask_b * width if p > 0 else 0)
        else:
            shared[group] = x_b * width
        per_tok += spec.lora.r * d.lora_a_out
    return per_tok + sum(shared.values())


def _final(
    shape: ModelShape, spec: FineTuneJobSpec, a: Assumptions, d: _Dtypes, modules: list[str], n_tok: int, n_head: int
) -> int:
    """The final norm's saved input, and what the LM head keeps of its input."""
    h = shape.hidden
    full = spec.method == "full"
    final = 4 * h * n_tok + (d.r_b * h * n_tok if full else 0)
    if a.loss == "fused" or full:
        final += d.r_b * h * n_head
    if "lm_head" in modules:
        final += (d.compute if d.on_gpu else d.adapter_b) * h * n_tok + spec.lora.r * d.lora_a_out * n_tok
    return final


def _head_and_loss(
    shape: ModelShape, spec: FineTuneJobSpec, a: Assumptions, d: _Dtypes, n_tok: int, n_head: int
) -> tuple[int, int]:
    """The LM head and the loss: their working set at its peak, and the bf16 copy autocast makes of a frozen fp32
    lm_head, kept for the backward."""
    h, compute = shape.hidden, d.compute
    head_weight_b = d.unq_b if spec.method == "qlora" else d.w_b
    copies = 0
    if a.loss == "fused":
        rows, cols = min(n_head, FUSED_TOKEN_TILE), min(shape.vocab, FUSED_VOCAB_TILE)
        tile_b = compute
        if d.on_gpu:
            logits = tile_b * rows * cols
            if head_weight_b != compute:
                logits += compute * cols * h  # a vocabulary chunk of the weight cast to bf16
            if d.r_b != compute:
                logits += compute * rows * h
        else:
            logits = (tile_b + 29) * rows * cols
        logits += 4 * n_head * h  # fp32 gradient of the hidden states
        if spec.method == "full":
            logits += 4 * shape.vocab * h  # fp32 gradient of lm_head's weight
    elif a.loss == "full":
        logits = 12 * n_tok * shape.vocab
        if d.on_gpu and head_weight_b != compute:
            copies += compute * shape.vocab * h  # the frozen fp32 lm_head's bf16 copy, kept for the backward
    else:
        logits = compute * n_tok * shape.vocab + 8 * n_tok * shape.vocab // a.loss_chunks
        if d.on_gpu and head_weight_b != compute:
            copies += compute * shape.vocab * h
    return logits, copies


@dataclass(frozen=True)
class _LayerBackward:
    """What a decoder layer's backward holds on top of the saved activations."""

    recompute: int  # the recomputed layer (checkpointing), its gradient temporaries, a dequantized NF4 weight
    temporaries: int  # the gradients flowing through the layer
    head_grad: int  # lm_head's weight gradient (full)
    adapter_copies: int  # autocast's copies of every layer's adapters, kept without checkpointing


def _layer_backward(
    shape: ModelShape, spec: FineTuneJobSpec, d: _Dtypes, params: _Parameters, acts: _Activations
) -> _LayerBackward:
    """The layer backward: a recomputed layer (with checkpointing) and the gradients flowing through it."""
    gc = spec.training.gradient_checkpointing
    # Autocast's bf16 copies of fp32 trainable adapters are kept by the matmuls that used them (one layer's
    # worth at a time with checkpointing, which recomputes them).
    copy_adapters = 2 * params.n_lora if (d.on_gpu and d.adapter_b == 4) else 0
    if d.on_gpu and spec.method == "full" and d.w_b == 4:  # fp32MasterWeights: the decoder's weights, likewise
        copy_adapters += 2 * (shape.decoder_linear_params + shape.head_params)
    temporaries = 3 * d.m_b * shape.intermediate * acts.n_tok
    dequant = d.compute * max(i * o for i, o in shape.linears().values()) if spec.method == "qlora" else 0
    recompute = (acts.layer_bytes if gc else 0) + temporaries + dequant
    if gc:
        recompute += copy_adapters // max(shape.layers, 1)
    return _LayerBackward(
        recompute=recompute,
        temporaries=temporaries,
        head_grad=(shape.vocab * shape.hidden * params.grad_b) if spec.method == "full" else 0,
        adapter_copies=0 if gc else copy_adapters,
    )


def _gpus_needed(
    gpu_spec: GpuType | None,
    total: int,
    shardable: int,
    rest: int,
    shape: ModelShape,
    spec: FineTuneJobSpec,
    d: _Dtypes,
    notes: list[str],
) -> tuple[bool | None, int | None, int | None]:
    """Whether the step fits one GPU of the type, the GPUs it needs (FSDP full shard when one is not enough; None:
    not even MAX_SHARDS) and, sharded, the bytes each holds; all None when no GPU type is named."""
    if gpu_spec is None:
        return None, None, None
    capacity = gpu_spec.memory_gib * GIB
    if total <= capacity:
        return True, 1, None
    gpus_needed = sharded = None
    if spec.method == "qlora":
        notes.append("sharding: qlora trains under DDP only (its 4-bit weights are not sharded): no GPU count helps")
        return False, None, None
    for n in range(2, MAX_SHARDS + 1):
        per_gpu = _fsdp_rank(n, shardable, rest, shape, spec, d, on_gpu=True)
        if per_gpu <= capacity:
            gpus_needed, sharded = n, per_gpu
            break
    return False, gpus_needed, sharded


def _fsdp_rank(
    n: int, shardable: int, rest: int, shape: ModelShape, spec: FineTuneJobSpec, d: _Dtypes, on_gpu: bool
) -> int:
    """One rank's peak under FSDP full shard over ``n`` ranks: its 1/n of the weights, adapters, gradients and
    optimizer states, the whole rest of the step (activations, head and loss), and the all-gathered unit being
    computed (the largest of a decoder layer and the embeddings with lm_head) with the next layer prefetched;
    on a GPU, the overhead on top."""
    layer_w = shape.layer_linear_weights
    layer_weights = (
        round(layer_w * NF4_BYTES_PER_WEIGHT) if spec.method == "qlora" else layer_w * d.w_b
    ) + shape.layer_small_params * d.unq_b
    root = (shape.embedding_params + shape.head_params + shape.hidden) * (d.unq_b if spec.method == "qlora" else d.w_b)
    alloc = shardable / n + rest + max(layer_weights, root) + layer_weights
    return round(alloc + CUDA_CONTEXT_BYTES + ALLOCATOR_RESERVE * alloc if on_gpu else alloc)


def _ranks(
    spec: FineTuneJobSpec,
    ranks: int,
    capacity: float | None,
    peak: int,
    gradients: int,
    fsdp: Any,
    on_gpu: bool,
    notes: list[str],
) -> tuple[int, str, int | None]:
    """The strategy ``ranks`` train under (the spec's numNodes x processesPerNode, or the GPUs a pod was given)
    and one rank's peak: under DDP the whole step plus DDP's gradient buckets (a copy of the trainable parameters'
    gradients it all-reduces from); under FSDP ``fsdp(ranks)``. auto (the trainer asks this function too) is DDP
    unless a full fine-tune's DDP rank would not fit ``capacity``, the named GPU's bytes."""
    if ranks == 1:
        return 1, "none", None
    alloc = peak + gradients
    ddp = round(alloc + CUDA_CONTEXT_BYTES + ALLOCATOR_RESERVE * alloc if on_gpu else alloc)
    strategy = spec.distributed.strategy
    if strategy == "auto":
        too_big = capacity is not None and ddp > capacity
        strategy = "fsdp" if spec.method == "full" and too_big else "ddp"
    if strategy == "fsdp":
        return ranks, strategy, fsdp(ranks)
    notes.append("DDP: every rank holds the whole step, and its gradient buckets (a copy of the trainable gradients)")
    return ranks, strategy, ddp


def _run_notes(spec: FineTuneJobSpec, on_gpu: bool, acts: _Activations, notes: list[str]) -> None:
    """Notes on how the run reads the plan: padded batches, a CPU's resident set."""
    if acts.padded:
        notes.append(
            f"padded batches (packing off): up to {acts.batch} x {acts.seq_len} tokens; K and V repeated to all heads "
            "under the mask"
        )
    if not on_gpu:
        notes.append(
            "CPU: fp32 throughout; this is the live tensors: glibc's kept heap put the resident set 10-40 % above "
            "it in bench/planner, and the Python runtime (about 1 GiB) comes on top"
        )


def plan_memory(
    config: dict[str, Any],
    spec: FineTuneJobSpec,
    gpu: str | None = None,
    *,
    assumptions: Assumptions | None = None,
    optim: str | None = None,
    ranks: int | None = None,
) -> MemoryPlan:
    """Predict one training step's peak memory for ``spec`` on ``gpu`` (a GPU type's name, ``cpu``, or None:
    the CPU when ``spec.resources.gpus`` is 0, else ``spec.resources.gpuType``, else a GPU of no named type),
    and one rank's, on ``ranks`` (default: the spec's numNodes x processesPerNode)."""
    a = assumptions or Assumptions()
    if a.upcast_unquantized is None:
        a = replace(a, upcast_unquantized=spec.lora.upcast_unquantized)
    shape = model_shape(config)
    t = spec.training
    notes: list[str] = []
    if shape.model_type and shape.model_type not in LLAMA_LIKE:
        notes.append(f"model_type {shape.model_type!r}: Llama's layer layout assumed (q, k, v, o; gated MLP)")

    gpu_spec, on_gpu = _device(spec, gpu, notes)
    d = _dtypes(spec, on_gpu, a, notes)
    params = _parameters(shape, spec, d, notes)
    optim_name = optim or spec.optimizer(on_gpu)
    optimizer_states = _optimizer_states(optim_name, shape, spec, params, notes)
    acts = _activations(shape, spec, a, d, params.lora_modules, notes)
    gc = t.gradient_checkpointing
    activations = acts.with_checkpointing if gc else acts.without_checkpointing
    if t.activation_offloading and on_gpu:
        # TRL's OffloadActivations: what the forward keeps goes to pinned CPU memory as it is made, and comes back
        # a layer ahead of the backward: about two layers' worth stays on the GPU.
        activations = activations * 2 // shape.layers
        notes.append("activation offloading: the saved activations of all but about two layers are in CPU memory")
    n_head = acts.batch * (acts.seq_len - 1) if a.loss == "fused" else acts.n_tok
    final = _final(shape, spec, a, d, params.lora_modules, acts.n_tok, n_head)
    logits, head_copy = _head_and_loss(shape, spec, a, d, acts.n_tok, n_head)
    back = _layer_backward(shape, spec, d, params, acts)
    copies_a = head_copy + back.adapter_copies

    persistent = params.weights + params.adapters + optimizer_states
    if t.gradient_accumulation_steps > 1:
        persistent += params.gradients
        grads_end = 0
    else:
        grads_end = params.gradients
    phases = {
        "loss backward": persistent + activations + final + logits + copies_a,
        "layer backward": persistent + activations + back.recompute + back.head_grad + back.adapter_copies,
        "end of backward": persistent + grads_end + back.temporaries,
    }
    peak_phase = max(phases, key=lambda name: phases[name])
    peak = phases[peak_phase]
    overhead = round(CUDA_CONTEXT_BYTES + ALLOCATOR_RESERVE * peak) if on_gpu else 0
    total = peak + overhead

    # Sharded: the parameters and what is proportional to them; whole: the rest of the peak.
    shardable = params.weights + params.adapters + optimizer_states + params.gradients
    rest = max(phases["loss backward"], phases["layer backward"]) - persistent
    fits, gpus_needed, sharded = _gpus_needed(gpu_spec, total, shardable, rest, shape, spec, d, notes)
    ranks, strategy, per_rank = _ranks(
        spec,
        ranks or spec.world_size(),
        gpu_spec.memory_gib * GIB if gpu_spec is not None else None,
        peak,
        params.gradients,
        lambda n: _fsdp_rank(n, shardable, rest, shape, spec, d, on_gpu),
        on_gpu,
        notes,
    )
    _run_notes(spec, on_gpu, acts, notes)
    return MemoryPlan(
        model=shape,
        method=spec.method,
        device=gpu_spec.name if gpu_spec else ("gpu" if on_gpu else CPU),
        compute_dtype="bf16" if d.compute == 2 else "fp32",
        batch=acts.batch,
        seq_len=acts.seq_len,
        gradient_checkpointing=gc,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        optimizer=str(optim_name),
        parameters=shape.parameters,
        trainable_parameters=params.trainable,
        lora_modules=params.lora_modules,
        weights=params.weights,
        weights_quantized=params.weights_q,
        weights_unquantized=params.weights_u,
        adapters=params.adapters,
        gradients=params.gradients,
        optimizer_states=optimizer_states,
        activations=activations,
        activations_with_checkpointing=acts.with_checkpointing,
        activations_without_checkpointing=acts.without_checkpointing,
        activation_bytes_per_token_layer=acts.per_tok,
        recompute=back.recompute,
        final=final,
        logits=logits,
        autocast_copies=copies_a,
        overhead=overhead,
        peak_allocated=peak,
        peak_phase=peak_phase,
        total=total,
        gpu=gpu_spec,
        fits=fits,
        gpus_needed=gpus_needed,
        sharded_per_gpu=sharded,
        ranks=ranks,
        pods=spec.distributed.num_nodes if ranks == spec.world_size() else 1,
        strategy=strategy,
        per_rank=per_rank,
        assumptions=a,
        notes=notes,
    )
