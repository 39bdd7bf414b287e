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
import time
from pathlib import Path
from typing import Any

from kubetune import plots
from kubetune.spec.finetunejob import FineTuneJobSpec

# Where the result goes in the output folder: an adapter (lora, qlora) or the whole model (full).
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"


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
    return {split: ds.select_columns(keep) for split, ds in data.items()}


class StartFromError(ValueError):
    """The FineTuneJob to start from left nothing this job can start from."""


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
    if not (merged / "config.json").exists():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
        log(f"merging the adapter of {start_from} into {spec.base_model}")
        base = AutoModelForCausalLM.from_pretrained(spec.base_model, dtype=dtype)
        model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
        partial = output / ".start-model.partial"
        model.save_pretrained(partial)
        AutoTokenizer.from_pretrained(
            adapter if (adapter / "tokenizer_config.json").exists() else spec.base_model
        ).save_pretrained(partial)
        partial.replace(merged)
    return str(merged)


def _load_model(spec: FineTuneJobSpec, on_gpu: bool, path: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch.bfloat16 if on_gpu and torch.cuda.is_bf16_supported() else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    model = AutoModelForCausalLM.from_pretrained(path or spec.base_model, **kwargs)
    if spec.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.training.gradient_checkpointing)
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
        task_type="CAUSAL_LM",
    )


def train(
    spec: FineTuneJobSpec, dataset_dir: Path, output: Path, log=print, start_from: Path | None = None
) -> dict[str, Any]:
    """Fine-tune ``spec.base_model`` (or, with ``start_from``, the result of the FineTuneJob whose output folder
    that is) on the dataset; returns the metrics also written to metrics.json."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    output.mkdir(parents=True, exist_ok=True)
    on_gpu = torch.cuda.is_available()
    data = _load_dataset(dataset_dir, spec.objective)
    base = resolve_base(spec, start_from, output, log)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    t = spec.training
    checkpoints = output / "checkpoints"
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
        logging_steps=t.logging_steps,
        gradient_checkpointing=t.gradient_checkpointing,
        seed=t.seed,
        eval_strategy="epoch" if "test" in data else "no",
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        report_to="none",
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        dataloader_pin_memory=on_gpu,
        disable_tqdm=False,
    )
    history: list[dict[str, float]] = []

    class Progress(TrainerCallback):
        """Keeps every logged loss and writes progress.json at each log step."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                history.append(
                    {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, int | float)}}
                )
            (output / "progress.json").write_text(json.dumps({"step": state.global_step, "maxSteps": state.max_steps}))

    trainer = Trainer(
        model=_load_model(spec, on_gpu, base),
        args=config,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        processing_class=tokenizer,
        peft_config=_peft_config(spec),
        callbacks=[Progress()],
    )
    resume = any(checkpoints.glob("checkpoint-*"))
    if resume:
        log(f"resuming from the last checkpoint in {checkpoints}")
    # The eval loss of the untouched base model: the baseline the final eval loss is judged against.
    initial_eval = trainer.evaluate()["eval_loss"] if "test" in data and not resume else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=True if resume else None)
    runtime = time.perf_counter() - started

    target = output / (MODEL_DIR if spec.method == "full" else ADAPTER_DIR)
    trainer.model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    # Step 0 is the baseline evaluation, when there was one.
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    # DPO's own measures at the last evaluation: how often, and by how much, chosen beats rejected.
    preference = {k.removeprefix("eval_"): v for h in history for k, v in h.items() if k.startswith("eval_rewards/")}
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
        "eval_loss": evals[-1]["eval_loss"] if evals else None,
        "runtime_seconds": round(runtime, 2),
        "resumed": resume,
        "losses": losses,
        "eval_losses": evals,
        "output": str(target),
    }
    (output / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if losses:
        plots.loss_curve(
            losses, evals, output / "loss.png", f"{spec.objective} {spec.method} on {Path(spec.base_model).name}"
        )
    return metrics
