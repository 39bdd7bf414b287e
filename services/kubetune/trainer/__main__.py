"""``python -m kubetune.trainer --spec SPEC.json --dataset DIR --output DIR``: train, then publish.

After training: OUTPUT/lineage.json (kubetune.registry.lineage), then the gate (``spec.publish.gate``); a model
that passes it goes to each publisher of ``spec.publish`` (kubetune.registry.publishers): registered in MLflow
(``publish.mlflow``, or the deprecated ``registry``; the tracking URI is its ``trackingUri``, else
``$MLFLOW_TRACKING_URI``), then pushed to each OCI registry of ``publish.oci``. OUTPUT/publish.json says what the
gate found and where the adapter went.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from kubetune import pod_report
from kubetune.api.v1alpha1 import FINE_TUNE_JOB, SpecError, parse_spec
from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec
from kubetune.api.v1alpha1.result import PodResult
from kubetune.registry import gate, publishers
from kubetune.registry.lineage import record, this_resource
from kubetune.trainer.distributed import Ranks
from kubetune.trainer.training import CapabilityError, DatasetMismatchError, StartFromError, train


def publishers_for(spec: FineTuneJobSpec) -> list[publishers.Publisher]:
    """Where a FineTuneJob's adapter goes: MLflow first (``publish.mlflow``, or the deprecated ``registry``), then
    each of ``publish.oci``."""
    from kubetune.registry.mlflow_store import MlflowPublisher

    found: list[publishers.Publisher] = []
    if spec.mlflow is not None:
        field_path = "spec.publish.mlflow" if spec.publish.mlflow is not None else "spec.registry"
        found.append(MlflowPublisher(spec.mlflow, field_path))
    return found + [publishers.OciPublisher(target) for target in spec.publish.oci]


def gpus_per_pod(plan, spec: FineTuneJobSpec) -> int | None:
    """GPUs each of the spec's numNodes pods asks for: one when a step fits one GPU; else, where the job will
    shard (strategy fsdp, or auto for method full, as the trainer decides it), the planner's FSDP count spread over
    the pods; None when nothing fits (DDP ranks each hold the whole step; qlora; more than 16 GPUs a pod)."""
    if plan.fits:
        return 1
    strategy = spec.distributed.strategy
    shards = strategy == "fsdp" or (strategy == "auto" and spec.method == "full")
    if plan.gpus_needed is None or not shards or spec.method == "qlora":
        return None
    per_pod = -(-plan.gpus_needed // spec.distributed.num_nodes)
    return per_pod if per_pod <= 16 else None


def size_gpus(spec_file: Path) -> int:
    """The memory plan's answer for ``resources.gpus: auto``: the GPUs a pod asks for (:func:`gpus_per_pod`),
    with the plan's one-line verdict. Exit status 0 when it planned, whatever the answer; 1 when it could not
    (the base model's config.json unreadable)."""
    from kubetune.trainer import memory

    try:
        spec = parse_spec(FINE_TUNE_JOB, json.loads(spec_file.read_text()))
        if spec.resources.gpu_type is None:
            raise memory.PlanError("spec.resources.gpuType", "is unset: name the GPU to size the job for")
        plan = memory.plan_memory(memory.load_config(spec.base_model), spec, spec.resources.gpu_type)
    except (SpecError, memory.PlanError, OSError) as exc:
        print(f"trainer failed: {exc}", file=sys.stderr)
        return 1
    print(plan.verdict(), flush=True)
    gpus = gpus_per_pod(plan, spec)
    summary = PodResult(
        gpus=gpus,
        gpu_type=plan.gpu.name,
        per_gpu_gib=round((plan.sharded_per_gpu if gpus and gpus > 1 else plan.total) / memory.GIB, 2),
        verdict=plan.verdict(),
    )
    pod_report.finish(summary.model_dump(mode="json", by_alias=True, exclude_none=True), summary)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.trainer", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="JSON file holding the FineTuneJob spec")
    parser.add_argument("--dataset", required=True, type=Path, help="folder holding train.parquet")
    parser.add_argument("--output", required=True, type=Path, help="folder for checkpoints and the adapter")
    parser.add_argument("--name", default="finetune", help="the FineTuneJob's name, recorded as lineage")
    parser.add_argument(
        "--start-from", type=Path, default=None, help="output folder of the FineTuneJob named by spec.startFrom"
    )
    parser.add_argument(
        "--size-gpus",
        action="store_true",
        help="train nothing: plan one training step's memory on spec.resources.gpuType and report the GPUs it "
        "needs as the result (the operator's sizing step for resources.gpus: auto)",
    )
    args = parser.parse_args(argv)
    if args.size_gpus:
        return size_gpus(args.spec)
    try:
        spec = parse_spec(FINE_TUNE_JOB, json.loads(args.spec.read_text()))
        if (spec.start_from is None) != (args.start_from is None):
            raise StartFromError("--start-from is given exactly when spec.startFrom is set")
        targets = publishers_for(spec)
        publishers.check_all(targets)  # before training, not after: a missing Secret costs no GPU hours
        metrics = train(spec, args.dataset, args.output, start_from=args.start_from)
        if not Ranks.from_env().main:  # lineage, the gate and publishing happen once, on rank 0
            return 0
    except (SpecError, FileNotFoundError, DatasetMismatchError, StartFromError, CapabilityError,
            publishers.PublishError) as exc:  # fmt: skip
        print(f"trainer failed: {exc}", file=sys.stderr)
        return 1
    result: dict = {"finalLoss": metrics["final_loss"], "output": metrics["output"]}
    adapter = Path(metrics["output"])
    started_from = None
    if args.start_from is not None:
        started_from = {"kind": FINE_TUNE_JOB, "name": spec.start_from.fine_tune_job_ref.name}
        previous = args.start_from / "registration.json"
        if previous.exists():  # the earlier job's registered version: its own lineage continues there
            started_from["version"] = str(json.loads(previous.read_text()).get("version"))
    lineage = record(
        spec=spec.to_wire(),
        resource=this_resource(FINE_TUNE_JOB, args.name),
        dataset_dir=args.dataset,
        adapter_dir=adapter,
        metrics=metrics,
        started_from=started_from,
    )
    (args.output / "lineage.json").write_text(json.dumps(lineage, indent=2))
    failed = gate.failures(spec.publish.gate, metrics)
    result["gate"] = {"passed": not failed, "failures": failed}
    done: list[publishers.Publication] = []
    if failed:
        print("not published: the gate failed: " + "; ".join(failed), flush=True)
    else:
        output = publishers.Output(
            kind="adapter",
            folder=adapter,
            digest=lineage["adapter"]["digest"],
            name=spec.mlflow.model_name if spec.mlflow else args.name,
            lineage=lineage,
            params={"spec": json.dumps(spec.to_wire(), sort_keys=True)},
            metrics=metrics,
            files=[args.output / "metrics.json", args.output / "loss.png"],
        )
        try:
            publishers.publish_all(targets, output, done, say=lambda line: print(line, flush=True))
        except publishers.PublishError as exc:
            # What was published stays published (a retried pod finds it and publishes nothing twice).
            _registration(args.output, done)
            pod_report.fail(f"trainer failed: publishing: {exc}", PodResult(published=[p.entry() for p in done]))
            return 1
    published = [p.entry() for p in done]
    registered = _registration(args.output, done)
    if registered is not None:
        result["registered"] = registered
    (args.output / "publish.json").write_text(json.dumps({"gate": result["gate"], "published": published}, indent=2))
    registered = registered or {}
    summary = PodResult(
        digest=lineage["adapter"]["digest"],
        eval_loss=metrics.get("eval_loss"),
        published=published,
        gate=result["gate"] if spec.publish.gate is not None else None,
        model_name=registered.get("name"),
        model_version=str(registered["version"]) if registered else None,
    )
    pod_report.finish(result, summary)
    return 0


def _registration(output: Path, done: list[publishers.Publication]) -> dict | None:
    """The MLflow version registered, if any, also as OUTPUT/registration.json (a startFrom job's lineage, and
    kubetune run's summary, read it there)."""
    registered = next((p.details["registered"] for p in done if "registered" in p.details), None)
    if registered is not None:
        (output / "registration.json").write_text(json.dumps(registered, indent=2))
    return registered


if __name__ == "__main__":
    sys.exit(main())
