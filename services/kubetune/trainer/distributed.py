"""The ranks a FineTuneJob trains on: torchrun's command, the rank a process is, and the strategy it shards by.

kubetune writes no distributed engine of its own. torchrun (``python -m torch.distributed.run``) starts the ranks
and sets RANK, LOCAL_RANK and WORLD_SIZE; the transformers Trainer, as TRL drives it, reads them and wraps the
model in DDP or FSDP through accelerate. What is here is the part around it: the launch command (the ranks of
one machine, or one pod), the strategy ``auto`` resolves to, and the options the Trainer is given for it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ranks (torchrun's environment; one process, rank 0 of 1, without it)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes progress, metrics, the adapter, the lineage, and publishes."""
        return self.rank == 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Ranks:
        env = os.environ if env is None else env
        return cls(
            rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)), world=int(env.get("WORLD_SIZE", 1))
        )


def torchrun(python: str, module: str, args: Sequence[str], processes: int) -> list[str]:
    """The torchrun command that starts ``python -m module args`` as ``processes`` ranks on this machine
    (``--standalone``: the rendezvous on a free local port). torchrun keeps no restarts of its own: a rank that
    fails ends the group, and the group restarts whole (the Job's retry, or kubetune run again) from the last
    checkpoint."""
    return [
        python, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--standalone", "--nnodes", "1",
        "--max-restarts", "0", "-m", module, *args,
    ]  # fmt: skip


RENDEZVOUS_PORT = 29500  # torchrun's default --master-port: pod 0's TCP store, which the other pods join


def torchrun_nodes(
    python: str, module: str, args: Sequence[str], nodes: int, processes: int, master: str, node_rank: str
) -> list[str]:
    """The command of one of ``nodes`` pods that train together, each starting ``processes`` ranks: torchrun's
    static rendezvous at ``master`` (pod 0's stable name), this pod's ``node_rank`` (in a cluster the Job
    controller's ``$(JOB_COMPLETION_INDEX)``, expanded by the kubelet). :mod:`kubetune.trainer.rendezvous` starts
    torchrun once ``master`` resolves (a pod's DNS name exists only once that pod does). No restarts of torchrun's
    own: a rank that fails ends its pod, the Job fails, and the operator starts the whole group again."""
    return [
        python, "-m", "kubetune.trainer.rendezvous", "--nnodes", str(nodes), "--nproc-per-node", str(processes),
        "--node-rank", node_rank, "--master-addr", master, "--master-port", str(RENDEZVOUS_PORT),
        "--max-restarts", "0", "-m", module, *args,
    ]  # fmt: skip


def wait_for(path: Path, what: str, timeout: float = 3600.0) -> None:
    """Wait for rank 0 to write ``path`` (before the process group exists, there is no barrier to wait at)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what} ({path})")
        time.sleep(1.0)


def resolve_strategy(spec: FineTuneJobSpec, world: int, base: str) -> str:
    """distributed.strategy with auto decided: one rank needs none; adapters (lora, qlora) train under DDP; a full
    fine-tune under FSDP when the memory planner, given the base's config.json and resources.gpuType, finds that a
    DDP rank (the whole step and its gradient buckets) does not fit one GPU of that type, else under DDP (each
    rank holding the whole model is fastest). The planner decides it, so kubetune plan shows what runs; without
    resources.gpuType it has no GPU to fit, and auto is DDP."""
    wanted = spec.distributed.strategy
    if world == 1:
        return "none"
    if wanted != "auto":
        return wanted
    if spec.method != "full" or spec.resources.gpu_type is None:
        return "ddp"
    from kubetune.trainer.memory import load_config, plan_memory

    return plan_memory(load_config(base), spec, spec.resources.gpu_type, ranks=world).strategy


def trainer_options(strategy: str, on_gpu: bool) -> dict[str, Any]:
    """The Trainer's arguments for a strategy. FSDP: FSDP2's full shard, each decoder layer its own unit (the
    model's _no_split_modules, as accelerate wraps by default); a checkpoint holds the whole state, gathered (the
    Trainer's FULL_STATE_DICT), which the group resumes from."""
    options: dict[str, Any] = {}
    if strategy == "none":
        return options
    options["ddp_backend"] = "nccl" if on_gpu else "gloo"
    if strategy == "fsdp":
        # fsdp=True and everything in fsdp_config, as transformers 5 wants it (the "full_shard auto_wrap" string is
        # deprecated): full shard is reshard_after_forward, and each decoder layer is wrapped by default.
        options["fsdp"] = True
        options["fsdp_config"] = {"version": 2, "reshard_after_forward": True, "state_dict_type": "FULL_STATE_DICT"}
    else:
        # Every trainable parameter (the adapters', or all of a full fine-tune's) gets a gradient at each step, so
        # DDP need not walk the graph after each forward looking for unused ones.
        options["ddp_find_unused_parameters"] = False
    return options
