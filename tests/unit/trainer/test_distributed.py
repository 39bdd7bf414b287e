"""Training on several ranks: the trainer's entrypoint under torchrun, two ranks over gloo on the CPU, against one
process with the same global batch. The ranks are real processes in one PyTorch process group; only the
backend (gloo, not NCCL) and the device (CPU cores, not GPUs) differ from a GPU node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.trainer import distributed
from kubetune.trainer.training import train
from tests.unit.trainer.test_trainer import dataset, spec_for, with_fields  # noqa: F401  (dataset: a fixture)

pytestmark = pytest.mark.slow


def _kubetune_run(spec: FineTuneJobSpec, data, workdir) -> tuple[subprocess.CompletedProcess, Path]:
    """``kubetune run -f job.yaml``, as typed: it starts the ranks with torchrun; the job's output folder."""
    wire = {**spec.to_wire(), "dataset": {"path": str(data)}, "publish": {"mlflow": {"modelName": "two"}}}
    job = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "two"}, "spec": wire}
    manifest = workdir.parent / "job.yaml"
    manifest.write_text(json.dumps(job))
    kubetune = Path(sys.executable).with_name("kubetune")
    command = [str(kubetune), "run", "-f", str(manifest), "--workdir", str(workdir)]
    # kubetune run's own MLflow store (WORKDIR/mlflow.db), not one an earlier test left in the environment (MLflow's
    # set_tracking_uri exports MLFLOW_TRACKING_URI to the process and its children).
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    return done, workdir / "finetunes" / "default" / "two"


def _two_ranks(tiny_model, method: str, strategy: str, **training) -> FineTuneJobSpec:
    spec = spec_for(tiny_model, maxSteps=6, saveSteps=3, **training)
    return with_fields(spec, method=method, distributed={"processesPerNode": 2, "strategy": strategy})


@pytest.mark.parametrize(("method", "strategy"), [("lora", "ddp"), ("full", "fsdp")])
def test_two_ranks_follow_one_process_with_the_same_global_batch(tmp_path, tiny_model, dataset, method, strategy):  # noqa: F811
    """Two ranks of 2 rows each against one process of 4 rows: the same global batch, the same rows (each rank
    takes its half of each global batch of the same shuffled order), so the same loss curve up to float rounding.

    A full fine-tune asking for FSDP runs under DDP here, and says so: accelerate applies FSDP to accelerators
    only (its MULTI_CPU mode wraps the model in DDP). What this case proves on CPU is the full fine-tune's launch,
    rank 0's writing and the resume, not sharding; FSDP itself needs a machine of two GPUs (bench/gpu/device.sh)."""
    lr = 5e-3 if method == "lora" else 1e-3
    two = _two_ranks(tiny_model, method, strategy, perDeviceTrainBatchSize=2, learningRate=lr)
    done, out = _kubetune_run(two, dataset, tmp_path / "work")
    log = (out / "logs" / "finetunejob.log").read_text() if (out / "logs").exists() else ""
    assert done.returncode == 0, done.stdout[-2000:] + log[-4000:]
    one = with_fields(spec_for(tiny_model, maxSteps=6, saveSteps=3, learningRate=lr), method=method)
    alone = train(one, dataset, tmp_path / "one", log=lambda _: None)
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["ranks"], metrics["strategy"], metrics["steps"]) == (2, "ddp", 6)
    got, want = [p["loss"] for p in metrics["losses"]], [p["loss"] for p in alone["losses"]]
    assert got == pytest.approx(want, rel=0.02), (got, want)
    assert metrics["eval_loss"] == pytest.approx(alone["eval_loss"], rel=0.02)
    saved = out / ("model" if method == "full" else "adapter")
    weights = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    # The whole model (or adapter), as one process saves it (under FSDP, on GPUs, gathered from the shards): the same
    # tensors, each within 2 % of the single process's (by norm).
    got_w, want_w = load_file(saved / weights), load_file(tmp_path / "one" / saved.name / weights)
    assert {k: v.shape for k, v in got_w.items()} == {k: v.shape for k, v in want_w.items()}
    for key, tensor in got_w.items():
        assert tensor.float().norm().item() == pytest.approx(want_w[key].float().norm().item(), rel=0.02), key
    assert not (saved / "training_args.bin").exists()
    # Rank 0 alone reports, writes the lineage and publishes (to kubetune run's MLflow store): once.
    assert json.loads((out / "progress.json").read_text())["phase"] == "done"
    assert str(json.loads((out / "registration.json").read_text())["version"]) == "1"
    said = {"ddp": "2 ranks, DDP (spec.distributed.strategy ddp)",
            "fsdp": "2 ranks, DDP (spec.distributed.strategy fsdp resolves to FSDP, which accelerate applies on GPUs "
                    "only"}[strategy]  # fmt: skip
    assert log.count(said) == 1, log
    if strategy == "fsdp":
        spec_file = tmp_path / "work" / "specs" / "finetunejob-default-two.json"  # as kubetune run wrote it
        _resumes_from_its_checkpoint(out, metrics, spec_file, dataset)


def _resumes_from_its_checkpoint(out, whole: dict, spec_file, data) -> None:
    """The full fine-tune's group cut after its step-3 checkpoint (the later checkpoint and the results removed, as
    if a rank's pod died at step 5) and started again: it resumes, every rank from that checkpoint, to the same 6
    steps."""
    import shutil

    shutil.rmtree(out / "checkpoints" / "checkpoint-6")
    (out / "metrics.json").unlink()
    args = ["--spec", str(spec_file), "--dataset", str(data), "--output", str(out), "--name", "two"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{out.parents[2] / 'mlflow.db'}"}  # kubetune run's
    command = distributed.torchrun(sys.executable, "kubetune.trainer", args, 2)
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["resumed"] and resumed["steps"] == whole["steps"] == 6
    got, want = [p["loss"] for p in resumed["losses"]], [p["loss"] for p in whole["losses"]]
    assert got[:3] == want[:3]  # restored with the checkpoint
    assert got[3:] == pytest.approx(want[3:], rel=0.01), (got, want)


def test_more_ranks_than_rows_is_refused_before_training(tmp_path, tiny_model, dataset):  # noqa: F811
    spec = _two_ranks(tiny_model, "lora", "ddp")
    with pytest.raises(ValueError, match=r"spec.distributed asks for 16 ranks, but the train split has 12 rows"):
        from kubetune.trainer.training import _strategy

        _strategy(spec, distributed.Ranks(rank=0, world=16), str(tiny_model), 12, print)


def test_qlora_is_not_sharded():
    with pytest.raises(ValueError, match=r"distributed\.strategy fsdp does not take method qlora"):
        FineTuneJobSpec.model_validate(
            {"baseModel": "m", "dataset": {"path": "d"}, "method": "qlora", "distributed": {"strategy": "fsdp"}}
        )


def test_one_rank_per_gpu():
    spec = {"baseModel": "m", "dataset": {"path": "d"}, "resources": {"gpus": 4}}
    assert FineTuneJobSpec.model_validate(spec).world_size() == 4
    assert FineTuneJobSpec.model_validate({**spec, "distributed": {"numNodes": 2}}).world_size() == 8
    with pytest.raises(ValueError, match=r"processesPerNode must equal resources\.gpus"):
        FineTuneJobSpec.model_validate({**spec, "distributed": {"processesPerNode": 2}})
    with pytest.raises(ValueError, match=r"with gpus auto the ranks follow the GPUs the planner sizes"):
        auto = {"gpus": "auto", "gpuType": "H100-80GB"}
        FineTuneJobSpec.model_validate({**spec, "resources": auto, "distributed": {"processesPerNode": 2}})


def test_auto_shards_a_full_fine_tune_on_the_gpus_a_pod_was_sized_for(tmp_path):
    """gpus auto: the spec names no rank count; the trainer plans with the ranks torchrun started."""
    from tests.unit.trainer.test_memory import LLAMA_31_8B, model_dir

    base = str(model_dir(tmp_path, LLAMA_31_8B))

    wire = {"baseModel": "m", "dataset": {"path": "d"}, "resources": {"gpus": "auto", "gpuType": "A100-40GB"}}
    full = FineTuneJobSpec.model_validate({**wire, "method": "full"})
    assert full.world_size() == 1
    assert distributed.resolve_strategy(full, 3, base) == "fsdp"
    assert distributed.resolve_strategy(full, 1, base) == "none"
    lora = FineTuneJobSpec.model_validate({**wire, "method": "lora"})
    assert distributed.resolve_strategy(lora, 3, "no/such/model") == "ddp"  # adapters: no config.json read


def test_the_torchrun_command():
    one = distributed.torchrun("python", "kubetune.trainer", ["--spec", "s"], 4)
    assert one == [
        "python", "-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone", "--nnodes", "1",
        "--max-restarts", "0", "-m", "kubetune.trainer", "--spec", "s",
    ]  # fmt: skip


def test_a_pod_of_a_group_waits_for_pod_0_to_resolve(monkeypatch):
    from kubetune.trainer import rendezvous

    said = []
    rendezvous.wait_for_host("localhost", timeout=0, log=said.append)
    assert said == []
    monkeypatch.setattr(rendezvous.time, "sleep", lambda _: None)
    with pytest.raises(TimeoutError, match=r"the rendezvous host tune-train-0\.tune-train\.invalid did not resolve"):
        rendezvous.wait_for_host("tune-train-0.tune-train.invalid", timeout=0.01, log=said.append)
    assert said == ["waiting for the rendezvous host tune-train-0.tune-train.invalid to resolve"]


def test_a_checkpoint_cut_short_is_passed_over(tmp_path):
    """A pod killed while the group saved leaves a checkpoint without trainer_state.json: resumed from the one
    before it."""
    from kubetune.trainer.training import last_checkpoint

    assert last_checkpoint(tmp_path) is None
    for step, whole in ((4, True), (12, True), (16, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if whole:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-12"  # by step, not by name: 12 after 4
