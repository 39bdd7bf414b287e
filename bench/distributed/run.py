"""Training on 1 and 2 ranks on the CPU (gloo): speed, and each rank's memory against the planner.

    flock /tmp/kubetune-heavy.lock .venv/bin/python bench/distributed/run.py        # about 4 minutes
    .venv/bin/python bench/distributed/run.py --steps 4 --cases lora-ddp
    bench/gpu/device.sh                     # on a machine with two GPUs or more, it runs this with --gpu

SmolLM2-135M-Instruct, fine-tuned by kubetune's trainer entrypoint (``python -m kubetune.trainer``) as a pod runs
it: alone for one rank, under torchrun (the command ``kubetune run`` and the operator build) for two. LoRA under
DDP, full fine-tuning asking for FSDP, each at the same global batch: 4 rows of 256 tokens (bench/planner's
dataset), one rank of 4 or two of 2. On CPU cores the full fine-tune runs under DDP: accelerate applies FSDP on
accelerators only (its MULTI_CPU mode wraps the model in DDP), and the trainer says so and records what ran; FSDP
is measured with ``--gpu`` only. What is measured:

- tokens/s: the trainer's own figure in metrics.json (the input tokens of all ranks, over the training time);
- each rank's peak resident set: ``VmHWM`` of each rank's process, read from /proc every 50 ms until it exits.
  It holds the Python runtime, torch's libraries and the whole model as loaded, so it is
  compared with the planner by differences: the peak per rank at 2 ranks minus the peak at 1, against the
  planner's per-rank prediction (``plan_memory(...).per_rank``) at 2 minus its one-process total.

On this machine's 2 cores the two ranks share the cores one process had: the speed-up a second GPU gives is not
what this measures, but that the group trains, and what each rank holds. With ``--gpu TYPE`` (a machine of two
GPUs or more) rank 0's own peak (``torch.cuda.max_memory_allocated``, in metrics.json) is compared with the
planner's per-rank figure for that GPU type instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "bench" / "planner"))

import measure  # noqa: E402
from measure import BATCH, MODEL, make_dataset  # noqa: E402

CASES = {"lora-ddp": ("lora", "ddp"), "full-fsdp": ("full", "fsdp")}


def spec_for(method: str, strategy: str, ranks: int, dataset: Path, steps: int):
    """bench/planner's spec, its batch split over ``ranks`` (the same global batch), no generations."""
    from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec

    wire = measure.spec_for(method, dataset, steps).to_wire()
    wire["training"]["perDeviceTrainBatchSize"] = BATCH // ranks
    wire |= {"evaluation": {"generations": 0}, "distributed": {"processesPerNode": ranks, "strategy": strategy}}
    return FineTuneJobSpec.model_validate(wire)


def _hwm_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _ranks_of(root: int) -> list[int]:
    """The processes that run kubetune.trainer under ``root`` (itself, alone; torchrun's children, under it)."""
    import psutil

    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in procs:
        try:
            if "kubetune.trainer" in " ".join(p.cmdline()) and "torch.distributed.run" not in p.cmdline():
                found.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return found


def run_case(
    method: str, strategy: str, ranks: int, dataset: Path, steps: int, work: Path, gpu: str | None = None
) -> dict:
    from kubetune.trainer import distributed
    from kubetune.trainer.memory import GIB, Assumptions, load_config, plan_memory

    spec = spec_for(method, strategy, ranks, dataset, steps)
    out = work / f"{method}-{ranks}"
    spec_file = work / f"{method}-{ranks}.json"
    spec_file.write_text(json.dumps(spec.to_wire()))
    args = ["--spec", str(spec_file), "--dataset", str(dataset), "--output", str(out)]
    if ranks == 1:
        command = [sys.executable, "-m", "kubetune.trainer", *args]
    else:
        command = distributed.torchrun(sys.executable, "kubetune.trainer", args, ranks)
    peaks: dict[int, int] = {}
    started = time.perf_counter()
    with (work / f"{method}-{ranks}.log").open("w") as log:
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        while proc.poll() is None:
            for pid in _ranks_of(proc.pid):
                hwm = _hwm_kib(pid)
                if hwm is not None:
                    peaks[pid] = max(peaks.get(pid, 0), hwm)
            time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"{method} on {ranks} ranks failed; see {work / f'{method}-{ranks}.log'}")
    metrics = json.loads((out / "metrics.json").read_text())
    if ranks > 1 and metrics["strategy"] != strategy:  # FSDP asked on CPU cores runs as DDP: plan what ran
        spec = spec_for(method, metrics["strategy"], ranks, dataset, steps)
    plan = plan_memory(load_config(str(MODEL)), spec, gpu or "cpu", assumptions=Assumptions(padded_batches=False))
    predicted = plan.per_rank if plan.per_rank is not None else plan.total
    peak_gpu = metrics.get("peak_gpu_memory_bytes")
    return {
        "method": method,
        "strategy": metrics["strategy"],
        "ranks": ranks,
        "steps": metrics["steps"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "tokens_per_second": metrics["tokens_per_second"],
        "seconds_per_step": metrics["seconds_per_step"],
        "final_loss": metrics["final_loss"],
        "peak_rss_gib_per_rank": sorted(round(v / 1024**2, 3) for v in peaks.values()),
        "predicted_gib_per_rank": round(predicted / GIB, 3),
        "peak_gpu_gib_rank0": round(peak_gpu / GIB, 3) if peak_gpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--gpu", default=None, help="the GPU type, on a machine of two GPUs or more")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = work / "dataset"
        make_dataset(dataset)
        for case in args.cases:
            method, strategy = CASES[case]
            for ranks in (1, 2):
                results.append(run_case(method, strategy, ranks, dataset, args.steps, work, args.gpu))
                print(json.dumps(results[-1]), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "gpu" if args.gpu else "cpu"
    (args.out / f"{name}.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    lines = [
        "| method | ranks | strategy | tokens/s | s/step | peak RSS per rank (GiB) | planner per rank (GiB) |",
        "|---|---:|---|---:|---:|---|---:|",
    ]
    for r in results:
        rss = ", ".join(f"{v:.2f}" for v in r["peak_rss_gib_per_rank"])
        lines.append(
            f"| {r['method']} | {r['ranks']} | {r['strategy']} | {r['tokens_per_second']} | {r['seconds_per_step']} | "
            f"{rss} | {r['predicted_gib_per_rank']:.2f} |"
        )
    by = {(r["method"], r["ranks"]): r for r in results}
    for method in sorted({r["method"] for r in results}):
        if (method, 1) in by and (method, 2) in by:
            one, two = by[(method, 1)], by[(method, 2)]
            measured = max(two["peak_rss_gib_per_rank"]) - max(one["peak_rss_gib_per_rank"])
            predicted = two["predicted_gib_per_rank"] - one["predicted_gib_per_rank"]
            lines.append(f"\n{method}: a rank's peak at 2 ranks minus at 1: measured {measured:+.2f} GiB, "
                         f"planner {predicted:+.2f} GiB")  # fmt: skip
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
