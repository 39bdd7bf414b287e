"""The plain TRL script kubetune's trainer is compared with: what a user writes for LoRA SFT on a
prompt/completion Parquet file, with nothing of kubetune imported.

    python bench/methods/plain_trl.py --model DIR --dataset DIR --output DIR \\
        [--steps 16 --rank 16 --batch 4 --max-length 512 --bf16]

Prints one JSON line: the seconds ``trainer.train()`` took, the steps and the logged losses.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    # SFTConfig's own default is bf16=True, autocast also on a CPU that has bf16; kubetune's CPU default is fp32.
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    train = load_dataset("parquet", data_files={"train": f"{args.dataset}/train.parquet"})["train"]
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = SFTConfig(
        output_dir=args.output,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        gradient_checkpointing=args.gradient_checkpointing,
        bf16=args.bf16,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=42,
    )
    lora = LoraConfig(
        r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=train, processing_class=tokenizer, peft_config=lora)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    trainer.save_model()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    print(json.dumps({"train_seconds": seconds, "steps": trainer.state.global_step, "losses": losses}))


if __name__ == "__main__":
    main()
