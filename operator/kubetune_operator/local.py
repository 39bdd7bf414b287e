"""The local backend: run resources on this machine, in dependency order, with no cluster.

Each resource runs the same service entrypoint a pod would (built by :func:`builders.service_command`),
as a child process; the working directory plays the shared volume's part and a sqlite file the MLflow
server's. The child's stdout and stderr go to ``OUTPUT/logs/<kind>.log``, as a pod's go to its log; while it
runs, each new ``OUTPUT/progress.json`` it writes is passed to an :class:`Observer` (the CLI draws it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune.api.v1alpha1.finetunejob import Dependencies
from kubetune.api.v1alpha1.resources import Resource
from kubetune.api.v1alpha1.status import Phase
from kubetune_operator import builders


class DependencyError(ValueError):
    """A FineTuneJob names a DatasetBuild that is neither in the file nor already built."""


@dataclass
class Outcome:
    resource: Resource
    phase: Phase
    output: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)
    log: str | None = None  # the service's stdout and stderr; None when it did not run (up to date)
    exit_code: int | None = None  # the service's; negative: killed by that signal

    @property
    def ref(self) -> str:
        return f"{self.resource.kind}/{self.resource.metadata.name}"


class Observer:
    """What :func:`run` tells whoever shows a run, resource by resource; here each method does nothing."""

    def start(self, resource: Resource) -> None:
        """Before the resource is looked at; it may turn out to be up to date."""

    def launched(self, resource: Resource, log: Path) -> None:
        """Its service started, writing to ``log``."""

    def progress(self, resource: Resource, progress: dict[str, Any]) -> None:
        """Its service wrote a new progress.json (any JSON object: the schema is the service's)."""

    def finish(self, outcome: Outcome) -> None:
        """It ended, or was up to date."""


def order(resources: list[Resource], workdir: Path) -> list[Resource]:
    """DatasetBuilds first, then the FineTuneJobs, each after the one its ``startFrom`` names; a missing
    dependency (or a cycle) is an error before anything runs."""
    in_file = {(r.kind, r.metadata.namespace, r.metadata.name) for r in resources}

    def require(res: Resource, kind: str, name: str, field: str, done_file: str) -> None:
        if (kind, res.metadata.namespace, name) in in_file:
            return
        done = Path(builders.output_path(str(workdir), kind, res.metadata.namespace, name))
        if not (done / done_file).exists():
            raise DependencyError(
                f"FineTuneJob/{res.metadata.name}: {field} names {kind} {name!r}, which is neither in the file "
                f"nor done in {workdir}"
            )

    jobs = [r for r in resources if r.kind == FINE_TUNE_JOB]
    done_file = {DATASET_BUILD: "manifest.json", FINE_TUNE_JOB: "metrics.json"}
    for res in jobs:
        for kind, name in res.spec.dependencies().items():
            require(res, kind, name, Dependencies.FIELDS[kind], done_file[kind])
    ordered = [r for r in resources if r.kind == DATASET_BUILD]
    placed: set[tuple[str, str]] = set()
    while jobs:

        def ready_now(r: Resource) -> bool:
            previous = r.spec.dependencies().fine_tune_job
            ns = r.metadata.namespace
            return previous is None or (ns, previous) in placed or (FINE_TUNE_JOB, ns, previous) not in in_file

        ready = [r for r in jobs if ready_now(r)]
        if not ready:
            names = ", ".join(r.metadata.name for r in jobs)
            raise DependencyError(f"FineTuneJobs {names}: spec.startFrom forms a cycle")
        for r in ready:
            ordered.append(r)
            placed.add((r.metadata.namespace, r.metadata.name))
            jobs.remove(r)
    return ordered


def _details(kind: str, output: Path) -> dict[str, Any]:
    """What the summary shows, read from the files the service wrote."""
    if kind == DATASET_BUILD and (output / "manifest.json").exists():
        manifest = json.loads((output / "manifest.json").read_text())
        rows = {name.split(".")[0]: f["rows"] for name, f in manifest.get("files", {}).items()}
        return {"digest": (manifest.get("digest") or "")[:19], **rows, "stages": manifest.get("stages", [])}
    details: dict[str, Any] = {}
    if (output / "metrics.json").exists():
        metrics = json.loads((output / "metrics.json").read_text())
        details.update({k: metrics.get(k) for k in ("steps", "initial_eval_loss", "eval_loss")})
        quality = metrics.get("output_quality") or {}
        for figure in ("rouge_l", "similarity"):  # the answers against the references: base -> tuned
            if quality.get(f"tuned_{figure}") is not None:
                details[figure] = f"{quality[f'base_{figure}']:.3f}->{quality[f'tuned_{figure}']:.3f}"
    if (output / "registration.json").exists():
        reg = json.loads((output / "registration.json").read_text())
        details.update({"model": reg["name"], "version": reg["version"]})
    if (output / "publish.json").exists():
        publication = json.loads((output / "publish.json").read_text())
        gate = publication.get("gate") or {}
        if gate.get("passed") is False:
            details["published"] = "no: " + "; ".join(gate.get("failures") or ["the gate failed"])
        elif published := publication.get("published") or []:
            details["published"] = ", ".join(f"{p.get('target')} {p.get('reference')}" for p in published)
    return details


RUN_FILE = ".kubetune-run.json"  # in an output folder: what the run was made from, and whether it finished


def _spec_digest(resource: Resource) -> str:
    return hashlib.sha256(json.dumps(resource.spec.result_wire(), sort_keys=True).encode()).hexdigest()


def _inputs_digest(resource: Resource) -> str:
    """A DatasetBuild's inputs by content: each source file's and evaluation set's sha256 ("" when a path is
    missing: the build itself then says which)."""
    from kubetune.datagen.inputs import find_files
    from kubetune.datagen.stage_store import file_digest

    spec = resource.spec
    try:
        files = [*find_files(spec.source), *(Path(e.path) for e in spec.curation.decontamination.eval_sets)]
    except OSError:
        return ""
    return hashlib.sha256("".join(f"{f}\0{file_digest(f)}\n" for f in files if f.exists()).encode()).hexdigest()


def _fingerprint(resource: Resource, dataset: str | None, start_from: str | None = None) -> str:
    """The spec; a DatasetBuild's inputs by content; the digest of the dataset a FineTuneJob reads and the
    fingerprint of the job it starts from: equal fingerprints, same result."""
    parts = [_spec_digest(resource)]
    if resource.kind == DATASET_BUILD:
        parts.append(_inputs_digest(resource))
    if dataset and (Path(dataset) / "manifest.json").exists():
        parts.append(json.loads((Path(dataset) / "manifest.json").read_text()).get("digest", ""))
    if start_from and (Path(start_from) / RUN_FILE).exists():
        parts.append(json.loads((Path(start_from) / RUN_FILE).read_text()).get("fingerprint", ""))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _prepare(output: Path, fingerprint: str, spec: str, force: bool, staged: bool) -> bool:
    """True when the output is up to date. Otherwise the folder is made ready for a run.

    An unfinished run with the same fingerprint keeps its folder, so the service resumes from its
    checkpoints; anything made from another spec or dataset (or everything, with ``force``) is removed
    first, so that no stale checkpoint is resumed into a different run. A ``staged`` output (a DatasetBuild's,
    whose stages record the digest of their input) of the same spec is kept when only its inputs changed: the
    build reruns the stages the change reaches and replays the others.
    """
    marker = output / RUN_FILE
    previous = json.loads(marker.read_text()) if marker.exists() else None
    same = previous is not None and previous.get("fingerprint") == fingerprint
    if same and previous.get("complete") and not force:
        return True
    reusable = same or (staged and previous is not None and previous.get("spec") == spec)
    if output.exists() and (force or not reusable):
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"fingerprint": fingerprint, "spec": spec, "complete": False}))
    return False


POLL_SECONDS = 0.5  # how often progress.json is read while a service runs


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def _read_progress(path: Path) -> dict[str, Any] | None:
    """progress.json, or None while it is missing or half written (the service rewrites it in place)."""
    try:
        progress = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) else None


def _follow(child: subprocess.Popen, progress_file: Path, on_progress: Callable[[dict[str, Any]], None]) -> int:
    """Wait for the child, passing on each progress.json it writes; one left by an earlier run (the same
    file, unchanged since the child started) is not its progress."""
    earlier, last = _stamp(progress_file), None
    while True:
        try:
            code = child.wait(timeout=POLL_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        # Read once more after the exit: the last write often comes right before it.
        if _stamp(progress_file) != earlier and (progress := _read_progress(progress_file)) not in (None, last):
            on_progress(progress)
            last = progress
        if code is not None:
            return code


def run_one(resource: Resource, workdir: Path, force: bool = False, observer: Observer | None = None) -> Outcome:
    observer = observer or Observer()
    kind, name, ns = resource.kind, resource.metadata.name, resource.metadata.namespace
    spec_file = workdir / "specs" / f"{kind.lower()}-{ns}-{name}.json"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(json.dumps(resource.spec.to_wire(), indent=2))
    output = Path(builders.output_path(str(workdir), kind, ns, name))
    dataset = start_from = None
    if kind == FINE_TUNE_JOB:
        named = resource.spec.dependencies()
        dataset = resource.spec.dataset.path or builders.output_path(
            str(workdir), DATASET_BUILD, ns, named.dataset_build
        )
        if named.fine_tune_job is not None:
            start_from = builders.output_path(str(workdir), FINE_TUNE_JOB, ns, named.fine_tune_job)
    fingerprint = _fingerprint(resource, dataset, start_from)
    if _prepare(output, fingerprint, _spec_digest(resource), force, staged=kind == DATASET_BUILD):
        return Outcome(resource, Phase.SUCCEEDED, str(output), 0.0, {"upToDate": True, **_details(kind, output)})
    # A FineTuneJob's ranks, all of them on this machine (numNodes x processesPerNode).
    processes = resource.spec.world_size() if kind == FINE_TUNE_JOB else 1
    command = builders.service_command(
        sys.executable, kind, name, str(spec_file), str(output), dataset, start_from, processes
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{(workdir / 'mlflow.db').resolve()}"),
        # Unbuffered, so that the log keeps stdout and stderr lines in the order they were written.
        "PYTHONUNBUFFERED": "1",
    }
    log = output / "logs" / f"{kind.lower()}.log"
    log.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    with log.open("ab") as sink:
        # Appended: a resumed run's log follows the interrupted one's.
        now = datetime.now().astimezone().isoformat(timespec="seconds")
        sink.write(f"===== kubetune run {kind}/{name}: started {now} =====\n".encode())
        sink.flush()
        with subprocess.Popen(
            command, env=env, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        ) as child:
            observer.launched(resource, log)
            try:
                code = _follow(child, output / "progress.json", lambda p: observer.progress(resource, p))
            except BaseException:  # Ctrl-C included: no service is left running behind the command
                child.kill()
                raise
    phase = Phase.SUCCEEDED if code == 0 else Phase.FAILED
    if phase == Phase.SUCCEEDED:
        (output / RUN_FILE).write_text(
            json.dumps({"fingerprint": fingerprint, "spec": _spec_digest(resource), "complete": True})
        )
    seconds = time.perf_counter() - started
    return Outcome(resource, phase, str(output), seconds, _details(kind, output), log=str(log), exit_code=code)


def run(
    resources: list[Resource], workdir: Path, observer: Observer | None = None, force: bool = False
) -> list[Outcome]:
    """Run every resource in order; stop at the first failure (what follows depends on it).

    A resource whose output was already made from the same spec (and, for a FineTuneJob, the same
    dataset) is up to date and not run again, unless ``force``.
    """
    observer = observer or Observer()
    workdir.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for resource in order(resources, workdir):
        observer.start(resource)
        if resource.spec.suspend:  # not run, and neither is what follows (it may depend on it)
            outcome = Outcome(resource, Phase.SUSPENDED, "", 0.0, {"notRun": "spec.suspend is true"})
            observer.finish(outcome)
            outcomes.append(outcome)
            break
        outcome = run_one(resource, workdir, force=force, observer=observer)
        observer.finish(outcome)
        outcomes.append(outcome)
        if outcome.phase == Phase.FAILED:
            break
    return outcomes
