"""Reconcile scale: N DatasetBuilds and N FineTuneJobs (each naming its build) applied at once to the strict test
API server, with ``kubetune operator`` in its own process, as the chart runs it.

A stand-in Job controller marks every Job Succeeded as soon as it sees it (in the two steps the real one writes),
so what is measured is the control plane alone: the time until every Job exists and every resource is
Succeeded, the operator process's CPU time and peak resident memory, and the API requests it made per resource.
The API server runs in this process, beside the bench's own client: on 2 cores the three share the CPUs.

    .venv/bin/python bench/operator/scale.py --counts 100 300 1000
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.operator.cluster import Cluster, chart_operator  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def resources(n: int) -> list[dict]:
    """N builds and N jobs, the jobs first (GitOps applies in any order)."""
    builds, jobs = [], []
    for i in range(n):
        builds.append({
            "apiVersion": "kubetune.dev/v1alpha1", "kind": "DatasetBuild", "metadata": {"name": f"docs-{i}"},
            "spec": {"source": {"paths": ["corpus"]}, "generation": {"model": "/models/m"}},
        })  # fmt: skip
        jobs.append({
            "apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": f"tune-{i}"},
            "spec": {"baseModel": "/models/m", "dataset": {"datasetBuildRef": {"name": f"docs-{i}"}}},
        })  # fmt: skip
    return jobs + builds


def proc_stats(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and peak resident set (bytes) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    hwm = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmHWM"))
    return cpu, int(hwm.split()[1]) * 1024


def job_controller(cluster: Cluster, created: dict[str, float], start: float) -> set[asyncio.Task]:
    """Mark every Job Succeeded once the server has stored it, in the real controller's two steps, without
    listing Jobs (a listing of thousands, every half second, would cost more than the operator)."""
    running: set[asyncio.Task] = set()

    def created_one(job: dict) -> None:
        created[job["metadata"]["name"]] = time.perf_counter() - start

        async def finish() -> None:
            await asyncio.sleep(0.05)  # after the create's answer
            await cluster.finish_job(job, succeeded=True)

        task = asyncio.get_running_loop().create_task(finish())
        running.add(task)
        task.add_done_callback(running.discard)

    cluster.api.on_job_created = created_one
    return running


def count_phases(cluster: Cluster) -> collections.Counter:
    """Resources per phase, read off the test API server's store in this process: a listing of thousands over
    HTTP every few seconds would load the server the bench measures against."""
    phases: collections.Counter = collections.Counter()
    for (resource, _, _), stored in list(cluster.api.objects.items()):
        if getattr(resource, "plural", None) in ("datasetbuilds", "finetunejobs") and not stored.deleted:
            phases[(stored.raw.get("status") or {}).get("phase") or "-"] += 1
    return phases


async def one(n: int, wait_seconds: float, timeout: float, keep: Path | None = None) -> dict:
    settings, _ = chart_operator()
    # The operator's defaults, not the test cluster's (which reads progress every second).
    settings["operator_env"] = {**settings["operator_env"], "KUBETUNE_WAIT_SECONDS": str(wait_seconds),
                                "KUBETUNE_PROGRESS_SECONDS": "30"}  # fmt: skip
    settings["operator_args"] = [*settings["operator_args"], "--log-format", "plain"]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        async with Cluster(workdir, **settings) as cluster:
            await asyncio.sleep(3)  # the operator has started and listed the (empty) resources
            cpu0, _ = proc_stats(cluster.operator.pid)
            audit0 = len(cluster.operator_requests())
            created: dict[str, float] = {}
            start = time.perf_counter()
            finishing = job_controller(cluster, created, start)
            semaphore = asyncio.Semaphore(8)

            async def apply(doc: dict) -> None:
                async with semaphore:
                    await cluster.apply(doc)

            await asyncio.gather(*(apply(doc) for doc in resources(n)))
            applied = time.perf_counter() - start
            phases: collections.Counter = collections.Counter()
            while time.perf_counter() - start < timeout:
                phases = count_phases(cluster)
                if phases["Succeeded"] + phases["Failed"] == 2 * n:
                    break
                await asyncio.sleep(3)
            succeeded_at = time.perf_counter() - start
            for task in finishing:
                task.cancel()
            cpu1, peak = proc_stats(cluster.operator.pid)
            requests = cluster.operator_requests()[audit0:]
            by_kind = collections.Counter(f"{r.verb} {r.resource}{'/' + r.subresource if r.subresource else ''}"
                                          for r in requests)  # fmt: skip
            return {
                "resources": 2 * n,
                "wait_seconds": wait_seconds,
                "applied_s": round(applied, 1),
                "all_jobs_created_s": round(max(created.values()), 1) if len(created) == 2 * n else None,
                "all_succeeded_s": round(succeeded_at, 1),
                "phases": dict(phases),
                "operator_cpu_s": round(cpu1 - cpu0, 1),
                "operator_peak_rss_mib": round(peak / 2**20, 1),
                "api_requests_per_resource": round(len(requests) / (2 * n), 2),
                "requests": dict(by_kind.most_common()),
            }


def table(rows: list[dict]) -> str:
    out = [
        "| resources | applied s | all Jobs created s | all Succeeded s | operator CPU s | peak RSS MiB "
        "| requests/resource |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        out.append(
            f"| {r['resources']} | {r['applied_s']} | {r['all_jobs_created_s']} | {r['all_succeeded_s']} | "
            f"{r['operator_cpu_s']} | {r['operator_peak_rss_mib']} | {r['api_requests_per_resource']} |"
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000], help="FineTuneJobs (and builds)")
    parser.add_argument("--wait-seconds", type=float, default=60, help="KUBETUNE_WAIT_SECONDS (the chart's: 60)")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--tag", default="cpu")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one count, its row on stdout (see below)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(asyncio.run(one(args.one, args.wait_seconds, args.timeout))), flush=True)
        return
    rows = []
    RESULTS.mkdir(exist_ok=True)
    for n in args.counts:
        # Each count in a process of its own: run after smaller ones in one process, the 1,000 row took 10-20 s
        # longer (the server's process carries what the earlier clusters left).
        command = [sys.executable, __file__, "--one", str(n), "--wait-seconds", str(args.wait_seconds),
                   "--timeout", str(args.timeout)]  # fmt: skip
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        rows.append(row)
        # Written after each count: a run stopped at a larger one keeps the smaller ones.
        (RESULTS / f"scale-{args.tag}.json").write_text(json.dumps(rows, indent=2))
        (RESULTS / f"scale-{args.tag}.md").write_text(table(rows) + "\n")
    print(table(rows))
    print(yaml.safe_dump(rows[-1]["requests"]))


if __name__ == "__main__":
    main()
