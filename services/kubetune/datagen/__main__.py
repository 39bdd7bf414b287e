"""``python -m kubetune.datagen --spec SPEC.json --output DIR``: build one dataset, exit non-zero on failure."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kubetune.datagen.pipeline import EmptyDatasetError, build
from kubetune.spec import DATASET_BUILD, SpecError, parse_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubetune.datagen", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="JSON file holding the DatasetBuild spec")
    parser.add_argument("--output", required=True, type=Path, help="folder the dataset is written to")
    parser.add_argument("--name", default="dataset", help="the DatasetBuild's name, recorded in the manifest")
    args = parser.parse_args(argv)
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")  # vLLM's INFO lines drown the stage report
    try:
        spec = parse_spec(DATASET_BUILD, json.loads(args.spec.read_text()))
        manifest = build(spec, args.output, name=args.name)
    except (SpecError, EmptyDatasetError, FileNotFoundError) as exc:
        print(f"datagen failed: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"digest": manifest["digest"], "files": manifest["files"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
