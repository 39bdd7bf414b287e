"""``python -m kubetune.trainer --spec SPEC.json --dataset DIR --output DIR``: train, then publish.

After training: OUTPUT/lineage.json (kubetune.registry.lineage), then the gate (``spec.publish.gate``); a model
that passes it is registered in MLflow (``spec.registry``; the tracking URI is ``spec.registry.trackingUri``,
else ``$MLFLOW_TRACKING_URI``) and pushed to each OCI registry of ``spec.publish.oci``. OUTPUT/publish.json
says what the gate found and where the adapter went.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kubetune import progress as reporting
from kubetune.api.v1alpha1 import FINE_TUNE_JOB, SpecError, parse_spec
from kubetune.api.v1alpha1.result import PodResult
from kubetune.registry import gate, oci_store
from kubetune.registry.lineage import record, this_resource
from kubetune.registry.mlflow_store import publish
from kubetune.trainer.sft import CapabilityError, DatasetMismatchError, StartFromError, train


def size_gpus(spec_file: Path) -> int:
    """The memory plan's answer for ``resources.gpus: auto``: one GPU when a step fits one ``gpuType``, else none
    (the trainer runs one process per pod, without FSDP), with the plan's one-line verdict. Exit status 0 when
    it planned, whatever the answer; 1 when it could not (the base model's config.json unreadable)."""
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
    summary = PodResult(
        gpus=1 if plan.fits else None,
        gpu_type=plan.gpu.name,
        per_gpu_gib=round(plan.total / memory.GIB, 2),
        verdict=plan.verdict(),
    )
    reporting.finish(summary.model_dump(mode="json", by_alias=True, exclude_none=True), summary)
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
        for target in spec.publish.oci:  # before training, not after: a missing Secret costs no GPU hours
            oci_store.credentials_of(target)
        metrics = train(spec, args.dataset, args.output, start_from=args.start_from)
    except (SpecError, FileNotFoundError, DatasetMismatchError, StartFromError, CapabilityError,
            oci_store.PublishError) as exc:  # fmt: skip
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
    published: list[dict] = []
    if failed:
        print("not published: the gate failed: " + "; ".join(failed), flush=True)
    elif spec.registry is not None:
        tracking_uri = spec.registry.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not tracking_uri:
            print("trainer failed: spec.registry.trackingUri is unset and so is $MLFLOW_TRACKING_URI", file=sys.stderr)
            return 1
        version = publish(
            tracking_uri=tracking_uri,
            model_name=spec.registry.model_name,
            artifact_dir=adapter,
            lineage=lineage,
            params={"spec": json.dumps(spec.to_wire(), sort_keys=True)},
            metrics=metrics,
            files=[args.output / "metrics.json", args.output / "loss.png"],
        )
        (args.output / "registration.json").write_text(json.dumps(version, indent=2))
        result["registered"] = version
        published.append(
            {
                "target": "mlflow",
                "reference": f"models:/{version['name']}/{version['version']}",
                "digest": lineage["adapter"]["digest"],
            }
        )
    for target in [] if failed else spec.publish.oci:
        try:
            pushed = oci_store.push(target, adapter, lineage, spec.registry.model_name if spec.registry else args.name)
        except oci_store.PublishError as exc:
            # What was published stays published (a retried pod finds it and pushes nothing twice).
            reporting.fail(f"trainer failed: publishing: {exc}", PodResult(published=published))
            return 1
        print(f"pushed to {pushed['reference']}" if pushed["pushed"] == "true" else f"already in {pushed['reference']}")
        published.append({"target": "oci", "reference": pushed["reference"], "digest": lineage["adapter"]["digest"]})
    (args.output / "publish.json").write_text(json.dumps({"gate": result["gate"], "published": published}, indent=2))
    registered = result.get("registered") or {}
    summary = PodResult(
        digest=lineage["adapter"]["digest"],
        eval_loss=metrics.get("eval_loss"),
        published=published,
        gate=result["gate"] if spec.publish.gate is not None else None,
        model_name=registered.get("name"),
        model_version=str(registered["version"]) if registered else None,
    )
    reporting.finish(result, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
