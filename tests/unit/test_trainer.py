"""Training mechanics on the tiny random model: loss goes down, adapters are saved, runs resume."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.spec.finetunejob import FineTuneJobSpec
from kubetune.trainer.sft import train


@pytest.fixture()
def dataset(tmp_path, tiny_model):
    """A tiny prompt-completion dataset rendered with the tiny model's chat template."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    rows = []
    for i in range(16):
        messages = [
            {"role": "user", "content": f"What does LoRA train, case {i % 4}?"},
            {"role": "assistant", "content": "LoRA trains small low-rank adapters."},
        ]
        prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(messages, tokenize=False)
        rows.append({"prompt": prompt, "completion": full[len(prompt) :]})
    folder = tmp_path / "dataset"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:12]), folder / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[12:]), folder / "test.parquet")
    return folder


def spec_for(model, **training) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "baseModel": str(model),
            "dataset": {"path": "unused"},
            "lora": {"r": 8, "loraAlpha": 16},
            "training": {
                "learningRate": 5e-3,
                "maxSteps": 12,
                "perDeviceTrainBatchSize": 4,
                "maxLength": 64,
                "saveSteps": 6,
                **training,
            },
        }
    )


def test_lora_lowers_the_loss_and_saves_an_adapter(tmp_path, tiny_model, dataset):
    metrics = train(spec_for(tiny_model), dataset, tmp_path / "out", log=lambda _: None)
    assert metrics["steps"] == 12
    assert metrics["final_loss"] < metrics["first_loss"] * 0.8, metrics["losses"]
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["eval_losses"][0] == {"step": 0, "eval_loss": metrics["initial_eval_loss"]}
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["steps"] == 12
    assert json.loads((tmp_path / "out" / "progress.json").read_text())["step"] == 12
    assert (tmp_path / "out" / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_a_restarted_run_resumes_from_its_checkpoint(tmp_path, tiny_model, dataset):
    out = tmp_path / "out"
    train(spec_for(tiny_model, maxSteps=6), dataset, out, log=lambda _: None)
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    logged = []
    metrics = train(spec_for(tiny_model, maxSteps=12), dataset, out, log=logged.append)
    assert metrics["resumed"] and any("resuming" in line for line in logged)
    assert metrics["steps"] == 12
    assert all(point["step"] > 6 for point in metrics["losses"])


def test_qlora_trains_over_a_4bit_base(tmp_path, tiny_model, dataset):
    pytest.importorskip("bitsandbytes")
    metrics = train(
        spec_for(tiny_model, maxSteps=4).model_copy(update={"method": "qlora"}),
        dataset,
        tmp_path / "out",
        log=lambda _: None,
    )
    assert metrics["method"] == "qlora" and metrics["steps"] == 4
    assert (tmp_path / "out" / "adapter" / "adapter_model.safetensors").exists()


def test_entrypoint_trains_then_publishes_with_lineage(tmp_path, tiny_model, dataset):
    from mlflow import MlflowClient

    from kubetune.registry.lineage import tree_digest
    from kubetune.trainer.__main__ import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = spec_for(tiny_model, maxSteps=2).to_wire() | {"registry": {"modelName": "tiny", "trackingUri": uri}}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    rc = main(["--spec", str(spec_file), "--dataset", str(dataset), "--output", str(tmp_path / "out"), "--name", "t"])
    assert rc == 0
    registration = json.loads((tmp_path / "out" / "registration.json").read_text())
    assert registration["version"] == "1"
    (version,) = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name = 'tiny'")
    assert version.tags["kubetune.dev/base-model-digest"] == tree_digest(tiny_model)
    assert version.tags["kubetune.dev/dataset-digest"] == tree_digest(dataset)  # no manifest: the files' digest
    assert version.tags["kubetune.dev/finetunejob"] == "t"


def test_entrypoint_reports_a_bad_spec(tmp_path, capsys):
    from kubetune.trainer.__main__ import main

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps({"baseModel": "m", "dataset": {"path": "d"}, "method": "lorra"}))
    assert main(["--spec", str(spec_file), "--dataset", "d", "--output", str(tmp_path / "out")]) == 1
    assert "spec.method" in capsys.readouterr().err


@pytest.fixture()
def preference_dataset(tmp_path):
    """Prompt/chosen/rejected rows in TRL's conversational format, as a preference DatasetBuild writes them."""
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What does LoRA train, case {i % 4}?"}],
            "chosen": [{"role": "assistant", "content": "LoRA trains small low-rank adapters."}],
            "rejected": [{"role": "assistant", "content": "It retrains every weight of the model."}],
        }
        for i in range(16)
    ]
    folder = tmp_path / "preference"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:12]), folder / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[12:]), folder / "test.parquet")
    return folder


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_learns_to_prefer_the_chosen_answer(tmp_path, tiny_model, preference_dataset, method):
    spec = spec_for(tiny_model, learningRate=1e-3 if method == "lora" else 1e-4, maxSteps=8)
    spec = spec.model_copy(update={"objective": "dpo", "method": method})
    metrics = train(spec, preference_dataset, tmp_path / "out", log=lambda _: None)
    assert metrics["objective"] == "dpo" and metrics["steps"] == 8
    # DPO's loss starts at ln 2 (policy = reference) and falls as chosen pulls away from rejected.
    assert metrics["initial_eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["rewards/accuracies"] == 1.0 and metrics["rewards/margins"] > 0
    saved = tmp_path / "out" / ("adapter" if method == "lora" else "model")
    assert (saved / ("adapter_config.json" if method == "lora" else "config.json")).exists()


def test_the_objective_must_match_the_dataset(tmp_path, tiny_model, dataset, preference_dataset):
    from kubetune.trainer.sft import DatasetMismatchError

    sft = spec_for(tiny_model)
    with pytest.raises(DatasetMismatchError, match=r"has no completion .*it holds dpo data .*set spec\.objective: dpo"):
        train(sft, preference_dataset, tmp_path / "a", log=lambda _: None)
    dpo = sft.model_copy(update={"objective": "dpo"})
    with pytest.raises(DatasetMismatchError, match=r"has no chosen, rejected .*spec\.type: preference"):
        train(dpo, dataset, tmp_path / "b", log=lambda _: None)


def test_dpo_starts_from_the_sft_adapter_merged_into_the_base(tmp_path, tiny_model, dataset, preference_dataset):
    import torch
    from safetensors.torch import load_file

    from kubetune.trainer.sft import StartFromError

    sft = spec_for(tiny_model, maxSteps=4)
    train(sft, dataset, tmp_path / "sft", log=lambda _: None)
    from kubetune.spec.finetunejob import StartFrom

    start = StartFrom.model_validate({"fineTuneJobRef": {"name": "sft"}})
    dpo = spec_for(tiny_model, maxSteps=4, learningRate=1e-3).model_copy(
        update={"objective": "dpo", "start_from": start}
    )
    metrics = train(dpo, preference_dataset, tmp_path / "dpo", log=lambda _: None, start_from=tmp_path / "sft")
    assert metrics["started_from"] == str(tmp_path / "sft") and metrics["steps"] == 4
    merged = load_file(tmp_path / "dpo" / "start-model" / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    name = next(k for k in base if k.endswith("q_proj.weight"))
    assert not torch.equal(merged[name], base[name]), "the SFT adapter is in the weights DPO starts from"
    assert json.loads((tmp_path / "dpo" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]

    with pytest.raises(StartFromError, match="neither model/ nor adapter/"):
        train(dpo, preference_dataset, tmp_path / "x", log=lambda _: None, start_from=tmp_path / "nothing")
