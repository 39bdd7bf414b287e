"""One training run: load the base model (4-bit NF4 for QLoRA), attach LoRA, train with TRL's SFTTrainer or
DPOTrainer, save the adapter.

DPO reads prompt/chosen/rejected rows (TRL's conversational preference format, what a preference
DatasetBuild writes); its reference model is the frozen base, which for an adapter is the policy with the
adapter switched off (no second copy of the weights).

Checkpoints go to ``OUTPUT/checkpoints``; a run that finds one there resumes from it, so a killed pod
that is started again loses at most ``saveSteps`` steps. ``progress.json`` and ``metrics.json`` are what
an observer (the CLI, the operator) reads.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from kubetune import plots, pod_report
from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.trainer import distributed

# Where the result goes in the output folder: an adapter (lora, qlora) or the whole model (full).
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
MERGED_DIR = "merged"  # merge: true: the base with the adapter merged in, 16-bit


COLUMNS = {"sft": ["prompt", "completion"], "dpo": ["prompt", "chosen", "rejected"]}


class DatasetMismatchError(ValueError):
    """The dataset lacks the columns the objective trains on."""


def _load_dataset(dataset_dir: Path, objective: str = "sft"):
    from datasets import load_dataset

    files = {s: str(dataset_dir / f"{s}.parquet") for s in ("train", "test") if (dataset_dir / f"{s}.parquet").exists()}
    if "train" not in files:
        raise FileNotFoundError(f"{dataset_dir} holds no train.parquet")
    data = load_dataset("parquet", data_files=files)
    keep = COLUMNS[objective]
    missing = [c for c in keep if c not in data["train"].column_names]
    if missing:
        other = next(
            (o for o, cols in COLUMNS.items() if o != objective and set(cols) <= set(data["train"].column_names)), None
        )
        hint = (
            f"; it holds {other} data (columns {', '.join(COLUMNS[other])}): set spec.objective: {other}"
            + (", or build a DatasetBuild with spec.type: preference" if objective == "dpo" else "")
            if other
            else ""
        )
        raise DatasetMismatchError(
            f"spec.objective {objective} trains on columns {', '.join(keep)}; {dataset_dir / 'train.parquet'} "
            f"has no {', '.join(missing)} (its columns: {', '.join(data['train'].column_names)}){hint}"
        )
    if objective == "sft" and "messages" in data["train"].column_names:
        keep = [*keep, "messages"]  # rendered again with the template of the model that trains on them
    return {split: ds.select_columns(keep) for split, ds in data.items()}


def render_with_template(spec: FineTuneJobSpec, data: dict, tokenizer, base: str, log=print) -> tuple[dict, str]:
    """The rows as the model that trains on them formats a conversation, and where that format came from.

    A DatasetBuild renders prompt/completion with its own tokenizer's template (``format.tokenizer``, else the
    generation model's), which need not be the template of the model trained here: SFT rows that keep their
    ``messages`` are rendered again with ``spec.chatTemplate`` or the base model's template. DPO rows are
    conversations, which TRL renders with the tokenizer's template."""
    if spec.chat_template:
        path = Path(spec.chat_template)
        if not path.is_file():
            raise FileNotFoundError(f"spec.chatTemplate {path} is not a file")
        tokenizer.chat_template = path.read_text()
        source = "spec.chatTemplate"
    elif tokenizer.chat_template:
        source = "base model"
    else:
        source = None
    conversational = spec.objective == "dpo" and not isinstance(data["train"][0]["prompt"], str)
    if source is None:
        if conversational:
            raise CapabilityError(
                f"the tokenizer of {base} has no chat template and the preference rows are conversations: set "
                "spec.chatTemplate to a Jinja template file"
            )
        return {
            split: ds.remove_columns([c for c in ds.column_names if c == "messages"]) for split, ds in data.items()
        }, ("dataset")
    if "messages" not in data["train"].column_names:
        return data, "dataset" if spec.objective == "sft" else source

    def render(row):
        messages = row["messages"]
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise CapabilityError(
                f"the chat template ({source}) renders a conversation's prompt differently with and without the "
                "answer, so the loss cannot be put on the answer alone; set spec.chatTemplate"
            )
        return {"prompt": prompt, "completion": full[len(prompt) :]}

    log(f"rendering the conversations with the chat template of the {source}")
    return {split: ds.map(render, remove_columns=["messages"]) for split, ds in data.items()}, source


class StartFromError(ValueError):
    """The FineTuneJob to start from left nothing this job can start from."""


def check_base_model(base_model: str, field: str = "spec.baseModel") -> None:
    """A local base model must be a Hugging Face model folder: say so, naming the field, before transformers does
    (in a 29-line traceback ending in a hint about tokenizer libraries). A hub id is left to the hub, where one is
    reachable (HF_HUB_OFFLINE unset)."""
    path = Path(base_model)
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    if path.is_dir() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{field}: {base_model} holds no config.json: it is not a model folder (a "
                                "Hugging Face model's config.json, tokenizer and weights)")  # fmt: skip
    if not path.exists() and (offline or base_model.startswith(("/", ".")) or path.is_absolute()):
        raise FileNotFoundError(f"{field}: {base_model}: no such folder" + (" (and the model hub is not reached: "
                                "HF_HUB_OFFLINE=1)" if offline else ""))  # fmt: skip
    if path.is_file():
        raise FileNotFoundError(f"{field}: {base_model} is a file; name the model's folder")


def resolve_base(spec: FineTuneJobSpec, start_from: Path | None, output: Path, log=print) -> str:
    """The folder the model is loaded from: ``baseModel``; with ``startFrom``, the earlier job's full model, or
    its adapter merged into ``baseModel`` in 16-bit precision (never into a 4-bit base: merging into
    quantized weights would round the adapter away), written once to ``OUTPUT/start-model`` and reused on
    resume."""
    if start_from is None:
        return spec.base_model
    ref = f"spec.startFrom.fineTuneJobRef ({start_from})"
    if (start_from / MODEL_DIR / "config.json").exists():
        return str(start_from / MODEL_DIR)
    adapter = start_from / ADAPTER_DIR
    if not (adapter / "adapter_config.json").exists():
        raise StartFromError(f"{ref} holds neither {MODEL_DIR}/ nor {ADAPTER_DIR}/: did that job succeed?")
    trained_on = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if trained_on and Path(trained_on).resolve() != Path(spec.base_model).resolve():
        raise StartFromError(
            f"{ref} trained an adapter for {trained_on}, but spec.baseModel is {spec.base_model}; name the same model"
        )
    merged = output / "start-model"
    if not distributed.Ranks.from_env().main:  # rank 0 merges it, once; the others wait for it
        distributed.wait_for(merged / "config.json", f"rank 0's merge of the adapter of {start_from}")
    if not (merged / "config.json").exists():
        import torch

        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        log(f"merging the adapter of {start_from} into {spec.base_model}")
        merge_adapter(spec.base_model, adapter, merged, dtype)
    return str(merged)


def merge_adapter(base_model: str, adapter: Path, target: Path, dtype=None) -> Path:
    """Write ``base_model`` with the adapter merged in to ``target`` (bf16 unless ``dtype``), with the tokenizer.

    The base is loaded unquantized also for an adapter trained over a 4-bit base: merging into NF4 weights
    would round the update away. Written to a partial folder first, so a killed merge leaves no half model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_model, dtype=dtype or torch.bfloat16)
    model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    partial = target.with_name(f".{target.name}.partial")
    model.save_pretrained(partial)
    AutoTokenizer.from_pretrained(
        adapter if (adapter / "tokenizer_config.json").exists() else base_model
    ).save_pretrained(partial)
    partial.replace(target)
    return target


def _load_model(spec: FineTuneJobSpec, on_gpu: bool, path: str | None = None, bf16: bool = False):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    # On a GPU the weights are loaded in bf16 (a full fine-tune then trains pure bf16), unless fp32MasterWeights; on a
    # CPU they stay fp32 and bf16 is autocast only.
    master = spec.method == "full" and spec.training.fp32_master_weights
    dtype = torch.bfloat16 if on_gpu and bf16 and not master else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(path or spec.base_model, **kwargs)
    if spec.method == "qlora" and not on_gpu:
        import bitsandbytes as bnb

        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                # bitsandbytes 0.50 repacks a 4-bit weight for its AVX512-BF16 kernel at the first forward in
                # eval mode (the evaluation before training) and keeps it so; the backward then passes no
                # gradient through the layer, silently. The repacked kernel is for inference: not here.
                module.support_avx512bf16_for_cpu = False
    if spec.method == "qlora":
        model = _prepare_quantized(model, spec.lora.upcast_unquantized, spec.training.gradient_checkpointing)
    return model


def _prepare_quantized(model, upcast: bool, gradient_checkpointing: bool):
    """A 4-bit model made ready for adapters: every weight frozen and, with checkpointing, the embeddings' output
    made to require grad and non-reentrant checkpointing, as PEFT does. With
    ``upcast``, PEFT's prepare_model_for_kbit_training, which also casts the unquantized modules (embeddings,
    LM head, norms) to fp32; without, they keep the dtype they were loaded in (lora.upcastUnquantized)."""
    if upcast:
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    for param in model.parameters():
        param.requires_grad = False
    if gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _peft_config(spec: FineTuneJobSpec):
    if spec.method == "full":
        return None
    from peft import LoraConfig

    modules = spec.lora.target_modules
    return LoraConfig(
        r=spec.lora.r,
        lora_alpha=spec.lora.lora_alpha,
        lora_dropout=spec.lora.lora_dropout,
        target_modules="all-linear" if modules == ["all-linear"] else modules,
        use_dora=spec.lora.use_dora,
        use_rslora=spec.lora.use_rslora,
        task_type="CAUSAL_LM",
    )


class CapabilityError(ValueError):
    """The spec asks for something this machine or this model cannot do."""


def _bf16_supported(on_gpu: bool) -> bool:
    import torch

    if on_gpu:
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_prefers_bf16() -> bool:
    """Whether this CPU trains faster in bf16 than in fp32: one with AMX tiles (Sapphire Rapids and later) does
    bf16 matrix products in hardware. Without them (AVX2, or AVX512-BF16 alone) oneDNN emulates or converts, and
    bf16 autocast costs 150-170 s a step of the quickstart where fp32 takes seconds (measured on an AVX2 CPU)."""
    import torch

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(amx and amx()) and _bf16_supported(False)


def use_bf16(spec: FineTuneJobSpec, on_gpu: bool) -> bool:
    """``training.bf16``, or its default: bf16 on a GPU that has it; on a CPU, the precision it does fastest
    (bf16 with AMX, else fp32)."""
    wanted = spec.training.bf16
    if wanted is None:
        return _bf16_supported(True) if on_gpu else cpu_prefers_bf16()
    if wanted and not _bf16_supported(on_gpu):
        where = "this GPU" if on_gpu else "this CPU (it needs AVX512-BF16 or AMX)"
        raise CapabilityError(f"spec.training.bf16 is true, but {where} has no bf16 support; set it false or unset")
    return wanted


def check_capabilities(spec: FineTuneJobSpec, base: str, on_gpu: bool) -> None:
    """Fail before loading any weight on what cannot work here: a sequence longer than the model's positions,
    QLoRA or an 8-bit/paged optimizer where bitsandbytes cannot run, a paged optimizer or activation offloading
    without a GPU."""
    config_file = Path(base) / "config.json"
    if config_file.exists():
        config = json.loads(config_file.read_text())
        positions = config.get("max_position_embeddings")
        if isinstance(positions, int) and spec.training.max_length > positions:
            raise CapabilityError(
                f"spec.training.maxLength {spec.training.max_length} is above the {positions} positions of "
                f"{base} (config.json max_position_embeddings); set maxLength to at most {positions}"
            )
    if spec.training.activation_offloading and not on_gpu:
        raise CapabilityError(
            "spec.training.activationOffloading moves activations from GPU memory to CPU memory and needs a GPU; "
            "set it false on a CPU"
        )
    optim = spec.optimizer(on_gpu)
    needs_bnb = spec.method == "qlora" or "8bit" in optim or optim.startswith("paged_")
    if optim.startswith("paged_") and not on_gpu:
        raise CapabilityError(
            f"spec.training.optim {optim} pages optimizer states between GPU and CPU memory and needs a GPU; "
            "without one use adamw_torch_fused or adamw_8bit"
        )
    if not needs_bnb:
        return
    what = "spec.method qlora" if spec.method == "qlora" else f"spec.training.optim {optim}"
    try:
        import bitsandbytes.functional as bnbf
        import torch

        probe = torch.randn(64, 64, device="cuda" if on_gpu else "cpu")
        if spec.method == "qlora":
            packed, state = bnbf.quantize_4bit(probe, quant_type="nf4")
            bnbf.dequantize_4bit(packed, state)
    except Exception as exc:  # whatever stops bitsandbytes here is the answer
        raise CapabilityError(
            f"{what} needs bitsandbytes' {'4-bit' if spec.method == 'qlora' else '8-bit'} kernels, which do not "
            f"run here ({type(exc).__name__}: {exc}); use method lora or optim adamw_torch_fused"
        ) from None


class Progress:
    """Writes ``progress.json`` (step, maxSteps, loss, tokensPerSecond, etaSeconds, epoch, phase) for an
    observer, the CLI or the operator."""

    def __init__(self, output: Path):
        self.output = output
        self.loss: float | None = None
        self.started: float | None = None
        self.ended: float | None = None  # after training, the rate and ETA stay those of the training
        self.first_step = 0
        self.first_tokens = 0

    def write(self, state, phase: str) -> None:
        step, total = state.global_step, state.max_steps
        rate = eta = None
        if self.started is not None and step > self.first_step:
            elapsed = (self.ended or time.perf_counter()) - self.started
            tokens = (state.num_input_tokens_seen or 0) - self.first_tokens
            rate = round(tokens / elapsed, 1) if tokens > 0 else None
            eta = round(elapsed / (step - self.first_step) * max(total - step, 0), 1)
        progress = {"step": step, "maxSteps": total, "loss": self.loss, "tokensPerSecond": rate}
        progress |= {"etaSeconds": eta, "epoch": state.epoch, "phase": phase}
        pod_report.write(self.output, progress)

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Callback(TrainerCallback):
            def on_train_begin(self, args, state, control, **kwargs):
                outer.started, outer.first_step = time.perf_counter(), state.global_step
                outer.first_tokens = state.num_input_tokens_seen or 0
                outer.write(state, "train")

            def on_log(self, args, state, control, logs=None, **kwargs):
                loss = (logs or {}).get("loss")
                outer.loss = loss if isinstance(loss, int | float) else outer.loss
                outer.write(state, "train")

            def on_train_end(self, args, state, control, **kwargs):
                outer.ended = time.perf_counter()

            def on_evaluate(self, args, state, control, **kwargs):
                outer.write(state, "evaluate")

            def on_save(self, args, state, control, **kwargs):
                outer.write(state, "save")

        return Callback()


def _prompts(rows: list[dict[str, Any]], tokenizer) -> list[str]:
    """Each test row's prompt as the model sees it: SFT rows hold it rendered; DPO rows as chat messages."""
    return [
        r["prompt"]
        if isinstance(r["prompt"], str)
        else tokenizer.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True)
        for r in rows
    ]


def _reference(row: dict[str, Any]) -> str:
    answer = row.get("completion", row.get("chosen"))
    if isinstance(answer, list):  # conversational: the assistant's turn
        answer = "".join(m.get("content", "") for m in answer)
    return str(answer)


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[tuple[str, bool]]:
    """Greedy answers, one prompt at a time (no padding to get wrong), special tokens left out, each with
    whether the model stopped by itself (its end-of-turn token before ``max_new_tokens``)."""
    import torch

    configured = model.generation_config.eos_token_id
    stops = {tokenizer.eos_token_id, *([configured] if isinstance(configured, int) else configured or [])}
    answers = []
    model.eval()
    with torch.no_grad():
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            out = model.generate(
                **ids,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = out[0, ids["input_ids"].shape[1] :]
            stopped = len(new_tokens) > 0 and int(new_tokens[-1]) in stops
            answers.append((tokenizer.decode(new_tokens, skip_special_tokens=True), stopped))
    return answers


def compare_generations(spec: FineTuneJobSpec, model, tokenizer, test, base: str, bf16: bool, on_gpu: bool):
    """The first ``evaluation.generations`` test prompts answered by the base model and by the tuned ``model``."""
    rows = [test[i] for i in range(min(spec.evaluation.generations, len(test)))]
    prompts = _prompts(rows, tokenizer)
    n = spec.evaluation.max_new_tokens
    tuned = generate_answers(model, tokenizer, prompts, n)
    if spec.method == "full":
        before = generate_answers(_load_model(spec, on_gpu, base, bf16), tokenizer, prompts, n)
    else:
        with model.disable_adapter():  # the base model is the policy with its adapter off
            before = generate_answers(model, tokenizer, prompts, n)
    return [
        {"prompt": p, "reference": _reference(r), "base": b, "tuned": t, "base_stopped": bs, "tuned_stopped": ts}
        for p, r, (b, bs), (t, ts) in zip(prompts, rows, before, tuned, strict=True)
    ]


def _instructions(rows: list[dict[str, Any]]) -> list[str]:
    """What each test row asks, for the judge: the last user turn of a conversation, else the rendered prompt."""
    out = []
    for row in rows:
        turns = row.get("messages") or (row["prompt"] if isinstance(row["prompt"], list) else None)
        users = [m["content"] for m in turns or [] if m.get("role") == "user"]
        out.append(users[-1] if users else str(row["prompt"]))
    return out


def judge_generations(spec: FineTuneJobSpec, generations: list[dict[str, Any]], instructions: list[str]) -> dict:
    """Scores 1-5 for the base and the tuned model's answers from the DatasetBuild's judge, on the same rubric;
    written into each generation row. A verdict the judge cannot give is counted, never guessed."""
    from kubetune.api.v1alpha1.datasetbuild import GenerationSpec
    from kubetune.llm import judge
    from kubetune.llm.chat import complete_with_retries
    from kubetune.llm.endpoint import EndpointEngine

    j = spec.evaluation.judge
    assert j is not None
    model = j.endpoint.model or "judge"
    engine = EndpointEngine(
        GenerationSpec(model=model, backend="endpoint", endpoint=j.endpoint, max_tokens=j.max_tokens), model=model
    )
    requests = [
        judge.request(instruction, g[side], j.rubric, max_tokens=j.max_tokens, seed=spec.training.seed)
        for g, instruction in zip(generations, instructions, strict=True)
        for side in ("base", "tuned")
    ]
    completions, _ = complete_with_retries(engine, requests, j.malformed_retries)
    dropped: dict[str, int] = {}
    scores: dict[str, list[int]] = {"base": [], "tuned": []}
    for i, completion in enumerate(completions):
        g, side = generations[i // 2], ("base", "tuned")[i % 2]
        verdict = judge.read(completion, dropped, judge.criteria_for(None))
        g[f"{side}_score"], g[f"{side}_reason"] = (verdict.score, verdict.reason) if verdict else (None, None)
        if verdict:
            scores[side].append(verdict.score)
    mean = {side: round(sum(v) / len(v), 3) if v else None for side, v in scores.items()}
    judged = {f"{side}_judged": len(v) for side, v in scores.items()}
    return {"base_score": mean["base"], "tuned_score": mean["tuned"], **judged, **dropped}


def _quiet(*_args, **_kwargs) -> None:
    """The log of a rank other than 0: it would repeat rank 0's lines."""


def _strategy(spec: FineTuneJobSpec, ranks: distributed.Ranks, base: str, rows: int, log) -> str:
    """The strategy this group trains under, checked against what it trains: every rank needs rows of its own."""
    if ranks.world == 1:
        return "none"
    if no_gpu := _gpus_here(ranks):
        raise CapabilityError(no_gpu)
    if rows < ranks.world:
        raise DatasetMismatchError(
            f"spec.distributed asks for {ranks.world} ranks, but the train split has {rows} rows: each rank needs at "
            f"least one; lower distributed.numNodes or processesPerNode"
        )
    strategy = distributed.resolve_strategy(spec, ranks.world, base)
    import torch

    if strategy == "fsdp" and not torch.cuda.is_available():
        # accelerate applies its FSDP plugin to accelerators only: on CPU cores (its MULTI_CPU mode) it wraps the
        # model in DDP whatever the Trainer's fsdp options say. Say what runs, rather than report FSDP.
        log(f"{ranks.world} ranks, DDP (spec.distributed.strategy {spec.distributed.strategy} resolves to FSDP, "
            "which accelerate applies on GPUs only: on CPU cores each rank holds the whole model)")  # fmt: skip
        return "ddp"
    log(f"{ranks.world} ranks, {strategy.upper()} (spec.distributed.strategy {spec.distributed.strategy})")
    return strategy


def _gpus_here(ranks: distributed.Ranks) -> str | None:
    """Why this rank has no GPU of its own on a GPU machine (more ranks on it than GPUs), or None."""
    import torch

    count = torch.cuda.device_count()
    if count and ranks.local_rank >= count:
        return (
            f"rank {ranks.rank} is local rank {ranks.local_rank} on a machine of {count} GPUs: spec.distributed asks "
            f"for more ranks on one machine than it has GPUs (kubetune run starts numNodes x processesPerNode here)"
        )
    return None


def _save(trainer, target: Path, strategy: str, ranks: distributed.Ranks):
    """The adapter (or the full model) written to ``target`` once, by rank 0, as one rank would write it. Under
    FSDP every rank takes part in gathering the shards into rank 0's whole state dict; returns None there (no rank
    holds the whole model in memory), else the tuned model."""
    if strategy != "fsdp":
        if ranks.main:
            trainer.model.save_pretrained(target)
        return trainer.model
    accelerator = trainer.accelerator
    state = accelerator.get_state_dict(trainer.model)  # a collective: every rank, rank 0 receives it whole
    if ranks.main:
        accelerator.unwrap_model(trainer.model).save_pretrained(target, state_dict=state)
    return None


def _load_tuned(spec: FineTuneJobSpec, on_gpu: bool, base: str, bf16: bool, target: Path):
    """The tuned model read back from what was saved: the full model, or the base with the adapter."""
    if spec.method == "full":
        model = _load_model(spec, on_gpu, str(target), bf16)
        return model.to("cuda") if on_gpu else model
    from peft import PeftModel

    model = PeftModel.from_pretrained(_load_model(spec, on_gpu, base, bf16), target)
    return model.to("cuda") if on_gpu else model


def _eval_loss(trainer, log) -> float | None:
    """The eval loss, or None (said in the log) when truncation to maxLength left no test row a token to score."""
    loss = trainer.evaluate().get("eval_loss")
    if loss is None:
        log("no eval loss: every test row lost its answer to maxLength truncation; raise spec.training.maxLength")
    return loss


def _trainer_and_config(
    spec: FineTuneJobSpec, data: Any, checkpoints: Path, on_gpu: bool, bf16: bool, strategy: str = "none"
) -> tuple[Any, Any]:
    """TRL's trainer class for the objective (SFTTrainer, DPOTrainer) and its config from spec.training: TRL's own
    option names, each set from the field of the same name; with several ranks, the strategy's (DDP, FSDP)."""
    import sys

    t = spec.training
    if spec.objective == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        d = spec.dpo
        objective_options: dict[str, Any] = {
            "beta": d.beta,
            "loss_type": [d.loss_type],
            "label_smoothing": d.label_smoothing,
            "truncation_mode": d.truncation_mode,
            "precompute_ref_log_probs": d.precompute_ref_log_probs,
        }
    else:
        from trl import SFTConfig as Config
        from trl import SFTTrainer as Trainer

        objective_options = {"packing": t.packing, "completion_only_loss": t.completion_only_loss}
    every = spec.evaluation.eval_steps
    config = Config(
        **objective_options,
        output_dir=str(checkpoints),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_length=t.max_length,
        warmup_steps=int(t.warmup_steps) if t.warmup_steps >= 1 else t.warmup_steps,
        lr_scheduler_type=t.lr_scheduler_type,
        weight_decay=t.weight_decay,
        optim=spec.optimizer(on_gpu),
        logging_steps=t.logging_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        activation_offloading=t.activation_offloading,
        seed=t.seed,
        eval_strategy=("steps" if every else "epoch") if "test" in data else "no",
        eval_steps=every,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=not on_gpu,
        bf16=bf16,
        dataloader_pin_memory=on_gpu,
        include_num_input_tokens_seen="non_padding",
        # A bar on a terminal; in a pod or under `kubetune run` the log lines and progress.json tell the story.
        disable_tqdm=not sys.stderr.isatty(),
        **distributed.trainer_options(strategy, on_gpu),
    )
    return Trainer, config


def _history(log_history: list[dict[str, Any]], initial_eval: float | None) -> tuple[list, list, dict[str, Any]]:
    """The training losses, the eval losses and DPO's reward measures, from the trainer's own log (on a resumed
    run it holds the steps before the checkpoint too, restored with it)."""
    history = [h for h in log_history if isinstance(h.get("step"), int)]
    if initial_eval is not None:
        history.insert(0, {"step": 0, "eval_loss": initial_eval})
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    # Step 0 is the baseline evaluation, when there was one; the last is the one after training.
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    # DPO's own measures at the last evaluation: how often, and by how much, chosen beats rejected; without a test
    # split, at the last logged training step.
    preference = {k.removeprefix("eval_"): v for h in history for k, v in h.items() if k.startswith("eval_rewards/")}
    if not preference:
        preference = {k: v for h in history for k, v in h.items() if k.startswith("rewards/")}
    return losses, evals, preference


def last_checkpoint(checkpoints: Path) -> Path | None:
    """The newest whole checkpoint: one holding trainer_state.json, which rank 0 writes after its weights,
    optimizer and RNG state. A checkpoint cut short on rank 0 (its pod killed while the group saved) is passed
    over, not resumed from; another pod's RNG state file is written apart, and not checked here."""
    whole = [c for c in checkpoints.glob("checkpoint-*") if (c / "trainer_state.json").is_file()]
    return max(whole, key=lambda c: int(c.name.rpartition("-")[2]), default=None)


def train(
    spec: FineTuneJobSpec, dataset_dir: Path, output: Path, log=print, start_from: Path | None = None
) -> dict[str, Any]:
    """Fine-tune ``spec.base_model`` (or, with ``start_from``, the result of the FineTuneJob whose output folder
    that is) on the dataset; returns the metrics also written to metrics.json."""
    import gc
    import math

    import torch
    from transformers import AutoTokenizer

    output.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    ranks = distributed.Ranks.from_env()
    if not ranks.main:  # one voice in the log: rank 0's
        log = _quiet
    data = _load_dataset(dataset_dir, spec.objective)
    check_base_model(spec.base_model)
    base = resolve_base(spec, start_from, output, log)
    check_capabilities(spec, base, on_gpu)
    strategy = _strategy(spec, ranks, base, len(data["train"]), log)
    bf16 = use_bf16(spec, on_gpu)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.eos_token is None:
        raise CapabilityError(f"the tokenizer of {base} has no eos_token: a model trained with it would never stop")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    shown = min(spec.evaluation.generations, len(data["test"])) if "test" in data else 0
    instructions = _instructions([data["test"][i] for i in range(shown)])
    data, template_source = render_with_template(spec, data, tokenizer, base, log)
    checkpoints = output / "checkpoints"
    Trainer, config = _trainer_and_config(spec, data, checkpoints, on_gpu, bf16, strategy)
    progress = Progress(output)
    trainer = Trainer(
        model=_load_model(spec, on_gpu, base, bf16),
        args=config,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        processing_class=tokenizer,
        peft_config=_peft_config(spec),
        callbacks=[progress.callback()] if ranks.main else [],
    )
    # Counted before the Trainer wraps the model for DDP or FSDP.
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    resume = last_checkpoint(checkpoints)
    if resume is not None:
        log(f"resuming from {resume}")
    # The eval loss of the untouched base model: the baseline the final eval loss is judged against.
    baseline = output / "initial-eval.json"  # kept for a resumed run: the checkpoint's log starts at step 1
    if "test" in data and resume is None:
        initial = _eval_loss(trainer, log)  # every rank evaluates its share; the loss is their mean
        if ranks.main:
            baseline.write_text(json.dumps({"eval_loss": initial}))
    initial_eval = json.loads(baseline.read_text())["eval_loss"] if baseline.exists() and ranks.main else None
    if on_gpu:  # the training's own peak, as the memory planner predicts it
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    runtime = time.perf_counter() - started
    peak_gpu = torch.cuda.max_memory_allocated() if on_gpu else None
    final_eval = None
    if "test" in data:  # the evaluation at the last step, unless the schedule just ran it
        last = next((h for h in reversed(trainer.state.log_history) if "eval_loss" in h), None)
        at_end = last is not None and last.get("step") == trainer.state.global_step
        final_eval = last["eval_loss"] if at_end else _eval_loss(trainer, log)

    target = output / (MODEL_DIR if spec.method == "full" else ADAPTER_DIR)
    if ranks.main:
        progress.write(trainer.state, "save")
    tuned = _save(trainer, target, strategy, ranks)
    if not ranks.main:  # the rest (generations, merge, metrics, lineage, publishing) is rank 0's, once
        return {"rank": ranks.rank}
    tokenizer.save_pretrained(target)
    generations: list[dict[str, Any]] = []
    if "test" in data and spec.evaluation.generations:
        progress.write(trainer.state, "generate")
        if tuned is None:  # FSDP: this rank holds a shard; the whole model is on disk now
            tuned = _load_tuned(spec, on_gpu, base, bf16, target)
        generations = compare_generations(spec, tuned, tokenizer, data["test"], base, bf16, on_gpu)
    if spec.merge and spec.method != "full":
        progress.write(trainer.state, "merge")
        log(f"merging the adapter into {base} (16-bit) at {output / MERGED_DIR}")
        merge_adapter(base, target, output / MERGED_DIR)
    losses, evals, preference = _history(trainer.state.log_history, initial_eval)
    tokens = trainer.state.num_input_tokens_seen or 0
    metrics = {
        "method": spec.method,
        "objective": spec.objective,
        "started_from": str(start_from) if start_from else None,
        **preference,
        "steps": trainer.state.global_step,
        "train_samples": len(data["train"]),
        "eval_samples": len(data["test"]) if "test" in data else 0,
        "train_loss": result.training_loss,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "initial_eval_loss": initial_eval,
        "eval_loss": final_eval,
        "initial_perplexity": math.exp(initial_eval) if initial_eval is not None else None,
        "perplexity": math.exp(final_eval) if final_eval is not None else None,
        "bf16": bf16,
        "ranks": ranks.world,
        "strategy": strategy,
        "chat_template": template_source,
        "trainable_parameters": trainable,
        "tokens": tokens,
        "tokens_per_second": round(tokens / runtime, 1) if runtime > 0 and resume is None else None,
        "seconds_per_step": round(runtime / max(trainer.state.global_step, 1), 3) if resume is None else None,
        "runtime_seconds": round(runtime, 2),
        "peak_gpu_memory_bytes": peak_gpu,
        "resumed": resume.name if resume is not None else None,  # the checkpoint it resumed from
        "losses": losses,
        "eval_losses": evals,
        "generations": len(generations),
        # Whether the tuned model ends its answers (EOS) within evaluation.maxNewTokens: a model that never
        # stops was trained on completions without their end-of-turn token.
        "tuned_stopped_share": sum(g["tuned_stopped"] for g in generations) / len(generations) if generations else None,
        "output_quality": None,
        "judge": None,
        "output": str(target),
        "merged": str(output / MERGED_DIR) if spec.merge and spec.method != "full" else None,
    }
    if generations:
        from kubetune.trainer.scoring import score_generations

        metrics["output_quality"] = score_generations(generations, spec.evaluation.embedding_model)
    state = trainer.state
    if generations and spec.evaluation.judge is not None:
        progress.write(state, "judge")
        del trainer, tuned  # the judge's engine gets the memory the training held
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        metrics["judge"] = judge_generations(spec, generations, instructions)
    if generations:
        with (output / "generations.jsonl").open("w") as f:
            f.writelines(json.dumps(g) + "\n" for g in generations)
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    progress.write(state, "done")
    if losses:
        plots.loss_curve(
            losses, evals, output / "loss.png", f"{spec.objective} {spec.method} on {Path(spec.base_model).name}"
        )
    return metrics
