"""``python -m kubetune.datagen --spec SPEC.json --output DIR [--shard I/N | --shard index/N]``: build one dataset.

``--plan`` (no ``--output``) runs the stages before generation in memory and prints the plan as JSON: what
``kubetune plan`` shows for a DatasetBuild.

Exit status 0 when the dataset is written (or, with ``--shard``, when the shard's parts are done); 1 with
the reason on stderr when the spec, its inputs or the curation leave nothing to write. A build started again
into the same folder resumes from its kept stages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from kubetune import pod_report
from kubetune.api.v1alpha1 import DATASET_BUILD, SpecError, parse_spec
from kubetune.api.v1alpha1.result import PodResult
from kubetune.datagen.pipeline import EmptyDatasetError, InputError, build, plan
from kubetune.datagen.stage_store import StaleOutputError
from kubetune.registry import publishers

INDEX_ENV = "JOB_COMPLETION_INDEX"  # what the Job controller sets in each pod of an Indexed Job


def shard_arg(value: str) -> tuple[int, int]:
    """``I/N``, or ``index/N``: I is then this pod's index in its Indexed Job (``$JOB_COMPLETION_INDEX``)."""
    match = re.fullmatch(r"(\d+|index)/(\d+)", value)
    if match and match[1] == "index":
        if not os.environ.get(INDEX_ENV, "").isdigit():
            raise argparse.ArgumentTypeError(f"--shard index/N needs ${INDEX_ENV} (an Indexed Job's pod sets it)")
        value = f"{os.environ[INDEX_ENV]}/{match[2]}"
        match = re.fullmatch(r"(\d+)/(\d+)", value)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"--shard takes I/N with 0 <= I < N, e.g. 0/4, or index/N; got {value!r}")
    return int(match[1]), int(match[2])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.datagen", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="JSON file holding the DatasetBuild spec")
    parser.add_argument("--output", type=Path, help="folder the dataset is written to (required unless --plan)")
    parser.add_argument("--plan", action="store_true", help="print the plan as JSON; write nothing")
    parser.add_argument("--name", default="dataset", help="the DatasetBuild's name, recorded in the manifest")
    parser.add_argument(
        "--shard",
        type=shard_arg,
        default=None,
        help="I/N: compute only this shard's parts of the LLM stages (index/N: I is $JOB_COMPLETION_INDEX, an "
        "Indexed Job's pod); a run without --shard then merges them and finishes the build",
    )
    args = parser.parse_args(argv)
    if args.output is None and not args.plan:
        parser.error("--output is required (unless --plan)")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines drown the stage report
    try:
        spec = parse_spec(DATASET_BUILD, json.loads(args.spec.read_text()))
        if args.plan:
            print(json.dumps(plan(spec).to_dict()))
            return 0
        targets = publishers.for_dataset_build(spec) if args.shard is None else []  # only the run that publishes
        publishers.check_all(targets)
        manifest = build(spec, args.output, name=args.name, shard=args.shard, log=lambda m: print(m, flush=True))
    except (SpecError, InputError, EmptyDatasetError, OSError, StaleOutputError, publishers.PublishError) as exc:
        print(f"datagen failed: {exc}", file=sys.stderr)
        return 1
    if manifest is not None:
        published: list[dict] = []
        try:
            publish(spec, args.output, manifest, published)
        except publishers.PublishError as exc:
            pod_report.fail(f"datagen failed: publishing: {exc}", PodResult(published=published))
            return 1
        rows = {name.removesuffix(".parquet"): f["rows"] for name, f in manifest["files"].items() if "rows" in f}
        result = {"digest": manifest["digest"], "files": manifest["files"], "published": published}
        summary = PodResult(digest=manifest["digest"], rows=rows, published=published if spec.publish.oci else None)
        pod_report.finish(result, summary)
    return 0


def publish(spec, output: Path, manifest: dict, published: list[dict] | None = None) -> list[dict]:
    """Publish the written dataset to each publisher of ``spec.publish``; where it went (appended to ``published``
    as it goes, also OUTPUT/publish.json)."""
    published = [] if published is None else published
    done: list[publishers.Publication] = []
    dataset = publishers.Output(kind="dataset", folder=output, digest=manifest["digest"], name=output.name,
                                manifest=manifest)  # fmt: skip
    try:
        publishers.publish_all(publishers.for_dataset_build(spec), dataset, done, say=lambda m: print(m, flush=True))
    finally:
        published += [p.entry() for p in done]
    if published:
        (output / "publish.json").write_text(json.dumps({"published": published}, indent=2))
    return published


if __name__ == "__main__":
    sys.exit(main())
