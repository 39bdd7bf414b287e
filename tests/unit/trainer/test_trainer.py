"""Training mechanics on the tiny random model: loss goes down, adapters are saved, runs resume."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.trainer.training import train


@pytest.fixture()
def dataset(tmp_path, tiny_model):
    """A tiny SFT dataset as a DatasetBuild writes it: the conversation, rendered with the tiny model's template."""
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
        rows.append({"messages": messages, "prompt": prompt, "completion": full[len(prompt) :]})
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
    # The curve spans both runs: steps 1-6 restored with the checkpoint, 7-12 trained now.
    assert [point["step"] for point in metrics["losses"]] == list(range(1, 13))


def test_full_fine_tuning_trains_every_weight_and_saves_the_model(tmp_path, tiny_model, dataset):
    from safetensors.torch import load_file

    spec = spec_for(tiny_model, learningRate=1e-3).model_copy(update={"method": "full"})
    metrics = train(spec, dataset, tmp_path / "out", log=lambda _: None)
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["trainable_parameters"] == sum(
        t.numel() for t in load_file(tiny_model / "model.safetensors").values()
    )
    assert not (tmp_path / "out" / "adapter").exists() and (tmp_path / "out" / "model" / "config.json").exists()


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


def test_qlora_gradients_are_the_same_after_an_evaluation(tiny_model):
    """An evaluation (no_grad, eval mode) before training must not change what the backward computes: with
    bitsandbytes 0.50 on a CPU with AVX512-BF16 it repacks the 4-bit weights and then passes no gradient
    through them, unless the trainer turns that off."""
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import get_peft_model

    from kubetune.trainer.training import _load_model, _peft_config

    spec = spec_for(tiny_model).model_copy(update={"method": "qlora"})
    spec = with_fields(spec, lora={"r": 8, "loraAlpha": 16, "loraDropout": 0.0})
    model = get_peft_model(_load_model(spec, on_gpu=False), _peft_config(spec))
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45]])

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = gradients()
    assert before.keys() == after.keys() and len(before) > 0
    for name, grad in before.items():
        assert torch.allclose(grad, after[name], rtol=1e-4, atol=1e-7), name


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
    lineage = json.loads((tmp_path / "out" / "lineage.json").read_text())
    assert lineage["adapter"]["digest"] == version.tags["kubetune.dev/adapter-digest"]
    assert lineage["spec"] == spec and lineage["libraries"]["transformers"]
    published = json.loads((tmp_path / "out" / "publish.json").read_text())
    assert published["published"] == [{"target": "mlflow", "reference": "models:/tiny/1",
                                        "digest": lineage["adapter"]["digest"]}]  # fmt: skip


def test_a_gate_that_fails_publishes_nothing_and_the_job_still_succeeds(tmp_path, tiny_model, dataset, monkeypatch):
    from mlflow import MlflowClient

    from kubetune.trainer.__main__ import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = spec_for(tiny_model, maxSteps=2).to_wire() | {
        "registry": {"modelName": "tiny", "trackingUri": uri},
        "publish": {"gate": {"maxEvalLoss": 0.001}},  # a random 2-layer model is nowhere near
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    args = ["--spec", str(tmp_path / "spec.json"), "--dataset", str(dataset), "--output", str(tmp_path / "out")]
    assert main(args) == 0
    assert not (tmp_path / "out" / "registration.json").exists()
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models() == []
    result = json.loads((tmp_path / "termination-log").read_text())
    assert result["published"] == [] and result["gate"]["passed"] is False
    (failure,) = result["gate"]["failures"]
    assert failure.startswith("publish.gate.maxEvalLoss: eval loss ") and failure.endswith(" is not below 0.001")
    assert (tmp_path / "out" / "lineage.json").exists()  # the record is kept whatever the gate says


def test_entrypoint_pushes_to_an_oci_registry_and_no_secret_leaks(tmp_path, tiny_model, dataset, monkeypatch,
                                                                   capsys):  # fmt: skip
    """``publish.oci`` with basic auth, the password in a file: the adapter pulled back is the adapter, and the
    password is nowhere it could leak to: the output folder, the logs, the termination message, MLflow's store,
    the registry's manifests and blobs (the OCI annotations and the lineage config among them)."""
    from kubetune.registry.oci_store import pull
    from kubetune.trainer.__main__ import main
    from tests import registry

    secret = "planted-Secret-9f3c2e"
    credentials = tmp_path / "secrets" / "registry"
    credentials.parent.mkdir()
    credentials.write_text(f"pusher:{secret}\n")
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    with registry.running(tmp_path / "registry", username="pusher", password=secret) as reg:
        target = {"repository": f"{reg.host}/team/tiny", "plainHttp": True, "credentialsFile": str(credentials)}
        spec = spec_for(tiny_model, maxSteps=2).to_wire() | {
            "registry": {"modelName": "tiny", "trackingUri": uri},
            "publish": {"oci": [target]},
        }
        (tmp_path / "spec.json").write_text(json.dumps(spec))
        args = ["--spec", str(tmp_path / "spec.json"), "--dataset", str(dataset), "--output", str(tmp_path / "out")]
        assert main(args) == 0
        printed = [capsys.readouterr()]
        result = json.loads((tmp_path / "termination-log").read_text())
        (oci,) = [p for p in result["published"] if p["target"] == "oci"]
        assert oci["reference"].startswith(f"{reg.host}/team/tiny:adapter-") and "@sha256:" in oci["reference"]
        pulled = pull(oci["reference"].split("@")[0], tmp_path / "pulled", plain_http=True,
                      credentials_file=credentials)  # fmt: skip
        adapter = tmp_path / "out" / "adapter"
        assert {p.name: p.read_bytes() for p in pulled} == {p.name: p.read_bytes() for p in adapter.iterdir()}
        assert main(args) == 0  # started again (a retried pod): nothing pushed twice
        printed.append(capsys.readouterr())
        assert "already in " + oci["reference"] in printed[-1].out

    leaks = [
        str(path)
        for root in (tmp_path / "out", tmp_path / "mlflow", tmp_path / "registry" / "data", tmp_path / "pulled")
        for path in root.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    ]
    assert leaks == []
    assert secret not in (tmp_path / "termination-log").read_text()
    assert not [p for p in printed if secret in p.out + p.err]


def test_a_target_that_is_down_fails_the_pod_saying_what_was_published(tmp_path, tiny_model, dataset, monkeypatch):
    from kubetune.trainer.__main__ import main
    from tests import registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    down = f"127.0.0.1:{registry._free_port()}/team/tiny"  # nothing listens there
    spec = spec_for(tiny_model, maxSteps=2).to_wire() | {
        "registry": {"modelName": "tiny", "trackingUri": uri},
        "publish": {"oci": [{"repository": down, "plainHttp": True}]},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(tmp_path / "termination-log"))
    args = ["--spec", str(tmp_path / "spec.json"), "--dataset", str(dataset), "--output", str(tmp_path / "out")]
    assert main(args) == 1
    partial = json.loads((tmp_path / "termination-log").read_text())
    assert [p["reference"] for p in partial["published"]] == ["models:/tiny/1"]  # MLflow's version stands
    assert partial["error"].startswith(f"trainer failed: publishing: oci {down}: failed after 3 attempts: ")


def test_registry_credentials_that_are_not_there_fail_the_job_before_it_trains(tmp_path, tiny_model, dataset,
                                                                                capsys, monkeypatch):  # fmt: skip
    """A credentialsSecret not mounted (the Secret missing; its volume is optional, so the pod starts): the trainer
    says so at once, not after the training it would have to do again on every retry."""
    from kubetune.trainer.__main__ import main

    monkeypatch.setenv("KUBETUNE_SECRETS_DIR", str(tmp_path / "secrets"))
    spec = spec_for(tiny_model, maxSteps=2).to_wire() | {
        "publish": {"oci": [{"repository": "r.example/team/tiny", "credentialsSecret": "team-registry"}]}
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    args = ["--spec", str(tmp_path / "spec.json"), "--dataset", str(dataset), "--output", str(tmp_path / "out")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "trainer failed: credentialsSecret team-registry: nothing at " in err and "does the Secret exist" in err
    assert not (tmp_path / "out").exists()  # nothing trained


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


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_dpo_learns_to_prefer_the_chosen_answer(tmp_path, tiny_model, preference_dataset, method):
    if method == "qlora":
        pytest.importorskip("bitsandbytes")
    spec = spec_for(tiny_model, learningRate=1e-4 if method == "full" else 1e-3, maxSteps=8)
    spec = spec.model_copy(update={"objective": "dpo", "method": method})
    metrics = train(spec, preference_dataset, tmp_path / "out", log=lambda _: None)
    assert metrics["objective"] == "dpo" and metrics["steps"] == 8
    # DPO's loss starts at ln 2 (policy = reference) and falls as chosen pulls away from rejected.
    assert metrics["initial_eval_loss"] == pytest.approx(0.6931, abs=1e-3)
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["rewards/accuracies"] == 1.0 and metrics["rewards/margins"] > 0
    saved = tmp_path / "out" / ("model" if method == "full" else "adapter")
    assert (saved / ("config.json" if method == "full" else "adapter_config.json")).exists()


def test_the_objective_must_match_the_dataset(tmp_path, tiny_model, dataset, preference_dataset):
    from kubetune.trainer.training import DatasetMismatchError

    sft = spec_for(tiny_model)
    with pytest.raises(DatasetMismatchError, match=r"has no completion .*it holds dpo data .*set spec\.objective: dpo"):
        train(sft, preference_dataset, tmp_path / "a", log=lambda _: None)
    dpo = sft.model_copy(update={"objective": "dpo"})
    with pytest.raises(DatasetMismatchError, match=r"has no chosen, rejected .*spec\.type: preference"):
        train(dpo, dataset, tmp_path / "b", log=lambda _: None)


def test_dpo_starts_from_the_sft_adapter_merged_into_the_base(tmp_path, tiny_model, dataset, preference_dataset):
    import torch
    from safetensors.torch import load_file

    from kubetune.trainer.training import StartFromError

    sft = spec_for(tiny_model, maxSteps=4)
    train(sft, dataset, tmp_path / "sft", log=lambda _: None)
    from kubetune.api.v1alpha1.finetunejob import StartFrom

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


def with_fields(spec: FineTuneJobSpec, **fields) -> FineTuneJobSpec:
    """The spec with top-level wire fields changed (validated again, as a resource would be)."""
    return FineTuneJobSpec.model_validate(spec.to_wire() | fields)


def test_progress_json_tells_step_loss_speed_and_eta(tmp_path, tiny_model, dataset):
    metrics = train(spec_for(tiny_model, maxSteps=4), dataset, tmp_path / "out", log=lambda _: None)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["phase"] == "done" and progress["step"] == progress["maxSteps"] == 4
    assert progress["loss"] == metrics["final_loss"]
    assert progress["tokensPerSecond"] > 0 and progress["etaSeconds"] == 0
    # The rate is the training loop's own (within train(), whose wall time the metrics' figure divides by);
    # what follows it (evaluation, generations, saving) does not dilute it.
    assert progress["tokensPerSecond"] >= metrics["tokens_per_second"]
    assert metrics["tokens"] > 4 * 4 * 8 and metrics["tokens_per_second"] > 0
    assert metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"], rel=1e-6)
    # Evaluated at step 0, at the end of each epoch (3 steps) and at the end, never twice at a step.
    assert [e["step"] for e in metrics["eval_losses"]] == [0, 3, 4]


def test_generations_of_the_base_and_the_tuned_model(tmp_path, tiny_model, dataset):
    spec = spec_for(tiny_model, maxSteps=40, learningRate=1e-2)
    spec = with_fields(spec, evaluation={"generations": 3, "maxNewTokens": 24})
    metrics = train(spec, dataset, tmp_path / "out", log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert metrics["generations"] == len(rows) == 3
    assert all(r["prompt"].endswith("<|im_start|>assistant\n") and r["reference"] for r in rows)
    # Trained for 40 steps at a high rate on one answer: the tuned model says it, the random base does not.
    assert all(r["base"] != r["tuned"] for r in rows), rows
    assert all(r["tuned"].startswith("LoRA trains") and "LoRA" not in r["base"] for r in rows), rows
    # It learned to end its turn too (the completions carry the end-of-turn token); the random base does not.
    assert metrics["tuned_stopped_share"] == 1.0 and not any(r["base_stopped"] for r in rows), rows


def test_merge_writes_the_base_with_the_adapter_in(tmp_path, tiny_model, dataset):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    spec = with_fields(spec_for(tiny_model, maxSteps=6), merge=True, evaluation={"generations": 0})
    metrics = train(spec, dataset, tmp_path / "out", log=lambda _: None)
    merged_dir = tmp_path / "out" / "merged"
    assert metrics["merged"] == str(merged_dir) and (merged_dir / "tokenizer_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    assert merged.dtype == torch.bfloat16
    ids = torch.tensor([[1, 40, 41, 42, 43, 44]])
    with torch.no_grad():
        adapted = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16), tmp_path / "out" / "adapter"
        )(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.bfloat16)(ids).logits
        got = merged(ids).logits
    assert (got - adapted).abs().max() < 0.05 < (got - base).abs().max()


def test_dora_and_rslora_reach_the_adapter_config(tmp_path, tiny_model, dataset):
    spec = with_fields(
        spec_for(tiny_model, maxSteps=2), lora={"r": 8, "loraAlpha": 16, "useDora": True, "useRslora": True}
    )
    train(spec, dataset, tmp_path / "out", log=lambda _: None)
    config = json.loads((tmp_path / "out" / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True and config["use_rslora"] is True


@pytest.mark.parametrize(
    ("training", "method", "message"),
    [
        pytest.param({"maxLength": 100_000}, "lora", r"maxLength 100000 is above the \d+ positions", id="too-long"),
        pytest.param({"optim": "paged_adamw_8bit"}, "lora", r"optim paged_adamw_8bit .* needs a GPU", id="paged-cpu"),
        pytest.param({"bf16": True}, "lora", r"bf16 is true, but this CPU", id="bf16-cpu"),
        pytest.param(
            {"activationOffloading": True}, "lora", r"activationOffloading .* needs a GPU", id="offloading-cpu"
        ),
    ],
)
def test_what_cannot_run_here_fails_before_training(
    tmp_path, tiny_model, dataset, monkeypatch, training, method, message
):
    from kubetune.trainer import training as training_module
    from kubetune.trainer.training import CapabilityError

    monkeypatch.setattr(training_module, "_bf16_supported", lambda on_gpu: False)  # a CPU without AVX512-BF16
    spec = spec_for(tiny_model, **training).model_copy(update={"method": method})
    with pytest.raises(CapabilityError, match=message):
        train(spec, dataset, tmp_path / "out", log=lambda _: None)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_qlora_is_refused_where_bitsandbytes_cannot_quantize(tmp_path, tiny_model, dataset, monkeypatch):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    from kubetune.trainer.training import CapabilityError

    def broken(*args, **kwargs):
        raise RuntimeError("no 4-bit kernel for this device")

    monkeypatch.setattr(bnbf, "quantize_4bit", broken)  # what an unsupported device answers
    spec = spec_for(tiny_model).model_copy(update={"method": "qlora"})
    with pytest.raises(CapabilityError, match=r"spec.method qlora needs bitsandbytes' 4-bit kernels.*no 4-bit kernel"):
        train(spec, dataset, tmp_path / "out", log=lambda _: None)


def test_a_killed_run_resumes_to_the_same_steps_and_losses(tmp_path, tiny_model, dataset):
    """The entrypoint as a pod runs it, killed (SIGKILL) after its first checkpoint and started again, ends at
    the step count and the loss curve of a run never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    spec = with_fields(spec_for(tiny_model, maxSteps=12, saveSteps=4), evaluation={"generations": 0})
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_wire()))

    def command(out):
        entrypoint = [sys.executable, "-m", "kubetune.trainer", "--spec", str(spec_file)]
        return [*entrypoint, "--dataset", str(dataset), "--output", str(out)]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(command(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (killed / "checkpoints" / "checkpoint-4" / "trainer_state.json").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "metrics.json").exists(), "killed before the end"
    subprocess.run(command(killed), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    resumed = json.loads((killed / "metrics.json").read_text())
    whole = train(spec, dataset, tmp_path / "whole", log=lambda _: None)

    assert resumed["resumed"] and resumed["steps"] == whole["steps"] == 12
    log = (killed / "checkpoints" / "checkpoint-12" / "trainer_state.json").read_text()
    # The whole curve, steps before the checkpoint (restored with it) and after, step for step.
    assert [p["step"] for p in resumed["losses"]] == [p["step"] for p in whole["losses"]] == list(range(1, 13))
    for got, want in zip(resumed["losses"], whole["losses"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4), (got, want, log)
    assert [e["step"] for e in resumed["eval_losses"]] == [e["step"] for e in whole["eval_losses"]]
    assert resumed["eval_loss"] == pytest.approx(whole["eval_loss"], rel=1e-4)
    assert resumed["initial_eval_loss"] == pytest.approx(whole["initial_eval_loss"], rel=1e-6)


@pytest.fixture()
def conversations(tmp_path):
    """SFT rows as a DatasetBuild writes them, rendered with another model's template ('### User:')."""
    rows = []
    for i in range(8):
        messages = [
            {"role": "user", "content": f"What does LoRA train, case {i}?"},
            {"role": "assistant", "content": "Small low-rank adapters."},
        ]
        rows.append({"messages": messages, "prompt": f"### User: {messages[0]['content']}\n### Assistant:"})
        rows[-1]["completion"] = " Small low-rank adapters."
    folder = tmp_path / "conversations"
    folder.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:6]), folder / "train.parquet")
    pq.write_table(pa.Table.from_pylist(rows[6:]), folder / "test.parquet")
    return folder


def test_conversations_are_rendered_with_the_trained_models_template(tmp_path, tiny_model, conversations):
    from transformers import AutoTokenizer

    from kubetune.trainer.training import _load_dataset, render_with_template

    spec = spec_for(tiny_model, maxSteps=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    data, source = render_with_template(spec, _load_dataset(conversations), tokenizer, str(tiny_model), print)
    row = data["train"][0]
    assert source == "base model" and data["train"].column_names == ["prompt", "completion"]
    assert row["prompt"].startswith("<|im_start|>user\nWhat does LoRA train, case 0?")
    assert row["prompt"].endswith("<|im_start|>assistant\n") and row["completion"].startswith("Small low-rank")

    template = tmp_path / "template.jinja"
    template.write_text(
        "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    spec = with_fields(spec, chatTemplate=str(template), evaluation={"generations": 0})
    metrics = train(spec, conversations, tmp_path / "out", log=lambda _: None)
    assert metrics["chat_template"] == "spec.chatTemplate"
    saved = AutoTokenizer.from_pretrained(tmp_path / "out" / "adapter")
    assert saved.chat_template == template.read_text()  # served with the format it was trained on
    with pytest.raises(FileNotFoundError, match=r"spec\.chatTemplate .* is not a file"):
        train(with_fields(spec, chatTemplate=str(tmp_path / "nope")), conversations, tmp_path / "x", log=print)


def test_rows_without_messages_train_as_rendered(tmp_path, tiny_model, dataset):
    folder = tmp_path / "rendered"
    folder.mkdir()
    for split in ("train", "test"):
        pq.write_table(pq.read_table(dataset / f"{split}.parquet").drop(["messages"]), folder / f"{split}.parquet")
    metrics = train(spec_for(tiny_model, maxSteps=1), folder, tmp_path / "out", log=lambda _: None)
    assert metrics["chat_template"] == "dataset"


def test_the_judge_scores_the_base_and_the_tuned_answers(tmp_path, tiny_model, dataset, monkeypatch):
    """The DatasetBuild's judge (kubetune.llm.judge) on both models' answers; the endpoint is scripted here (a
    grader that likes answers naming LoRA); tests/e2e asks a real `vllm serve`."""
    import kubetune.llm.endpoint
    from kubetune.llm.chat import Completion

    asked = []

    opened = []

    class Grader:
        def __init__(self, spec, model=None):
            opened.append((spec, model))

        def complete(self, requests):
            asked.extend(requests)
            out = []
            for r in requests:
                answer = r.messages[-1]["content"].split("Answer: ", 1)[1]
                if answer == "":
                    out.append(Completion('{"reason": "empty"', "length", 8))  # cut: counted, not scored
                else:
                    score = 5 if "LoRA" in answer else 1
                    out.append(
                        Completion(json.dumps({"reason": "graded", "helpfulness": score, "style": 5}), "stop", 9)
                    )
            return out

    monkeypatch.setattr(kubetune.llm.endpoint, "EndpointEngine", Grader)
    spec = spec_for(tiny_model, maxSteps=40, learningRate=1e-2)
    judge = {"endpoint": {"url": "http://judge:8000/v1", "model": "grader"}, "rubric": "Names the method."}
    spec = with_fields(spec, evaluation={"generations": 3, "maxNewTokens": 12, "judge": judge})
    metrics = train(spec, dataset, tmp_path / "out", log=lambda _: None)
    ((engine_spec, model),) = opened
    assert engine_spec.endpoint.url == "http://judge:8000/v1" and model == "grader"
    assert len(asked) == 6 and "Names the method." in asked[0].messages[0]["content"]
    # The instruction the judge reads is the user's question, not the rendered prompt.
    assert asked[0].messages[-1]["content"].startswith("Instruction: What does LoRA train, case 0?\n")
    rows = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert all(r["tuned_score"] == 5 for r in rows)
    # Output quality against the references, judge or not: ROUGE-L per row and per model.
    assert metrics["output_quality"]["answers"] == 3 and all(0 <= r["tuned_rouge_l"] <= 1 for r in rows)
    assert metrics["output_quality"]["base_rouge_l"] is not None
    assert metrics["judge"]["tuned_score"] == 5.0 and metrics["judge"]["tuned_judged"] == 3
    assert metrics["judge"]["base_score"] in (1.0, None)  # the random base: 1, or cut answers counted
    assert metrics["judge"]["base_score"] is not None or metrics["judge"]["judge_truncated"] == 3


@pytest.mark.parametrize(("amx", "bf16_kernels", "expected"), [(True, True, True), (False, True, False),
                                                                (False, False, False)])  # fmt: skip
def test_a_cpu_trains_in_the_precision_it_does_fastest(monkeypatch, tiny_model, amx, bf16_kernels, expected):
    """By default a CPU with AMX tiles trains under bf16 autocast, one without (this machine's AVX2, or
    AVX512-BF16 alone) in fp32; a set training.bf16 wins either way."""
    import torch

    from kubetune.trainer import training as training_module

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(training_module, "_bf16_supported", lambda on_gpu: bf16_kernels)
    assert training_module.use_bf16(spec_for(tiny_model), on_gpu=False) is expected
    assert training_module.use_bf16(spec_for(tiny_model, bf16=False), on_gpu=False) is False


def test_dpos_reward_measures_come_from_the_last_evaluation_else_the_last_training_log():
    from kubetune.trainer.training import _history

    log = [
        {"step": 1, "loss": 0.69, "rewards/margins": 0.01, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.60, "rewards/margins": 0.20, "rewards/accuracies": 1.0},
    ]
    losses, evals, preference = _history(log, None)
    assert [h["loss"] for h in losses] == [0.69, 0.60] and not evals
    assert preference == {"rewards/margins": 0.20, "rewards/accuracies": 1.0}  # no test split: the last step's
    evaluated = [*log, {"step": 2, "eval_loss": 0.65, "eval_rewards/margins": 0.15}]
    assert _history(evaluated, 0.7)[2] == {"rewards/margins": 0.15}
