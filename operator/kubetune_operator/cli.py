"""The ``kubetune`` command: validate resources, run them locally, run the operator, write the CRDs."""

from __future__ import annotations

import os
import sys
import time
from enum import StrEnum
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from kubetune.api.v1alpha1.resources import NAME_RULE, Resource, SpecError, load_resources
from kubetune.api.v1alpha1.status import Phase

app = typer.Typer(
    help="kubetune: instruction datasets and LLM fine-tuning, on Kubernetes or on one machine.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

FILES = typer.Option(None, "-f", "--filename", help="YAML file(s) of DatasetBuild and FineTuneJob resources.")
# The files after the first -f (``-f a.yaml b.yaml``, as a shell glob gives them), or with no -f at all.
MORE_FILES = typer.Argument(None, help="More YAML files (-f a.yaml b.yaml, or the files alone).", show_default=False)


def _load(files: list[Path] | None, more: list[Path] | None = None) -> list[Resource]:
    files = [*(files or []), *(more or [])]
    if not files:
        err_console.print("[red]error[/red] name the resources' YAML files: -f FILE [FILE...]")
        raise typer.Exit(2)
    resources, errors = [], []
    for path in files:
        if not path.is_file():
            errors.append(f"{path}: no such file")
            continue
        try:
            resources.extend(load_resources(path.read_text(), source=str(path)))
        except SpecError as exc:
            errors.extend(str(e) for e in exc.errors)
    if errors:
        for line in errors:
            err_console.print(f"[red]error[/red] {escape(line)}", soft_wrap=True)
        err_console.print(f"[red]{len(errors)} error(s)[/red]")
        raise typer.Exit(1)
    return resources


@app.command()
def validate(filename: list[Path] = FILES, more: list[Path] = MORE_FILES) -> None:
    """Check every resource in the files; name each bad field, its value and what would be valid."""
    for res in _load(filename, more):
        console.print(f"[green]valid[/green] {res.kind}/{escape(res.metadata.name)}")
        for warning in res.spec.deprecations():
            err_console.print(
                f"[yellow]warning[/yellow] {res.kind}/{escape(res.metadata.name)}: {escape(warning)}", soft_wrap=True
            )


@app.command()
def run(
    filename: list[Path] = FILES,
    more: list[Path] = MORE_FILES,
    workdir: Path = typer.Option(Path(".kubetune"), help="Where datasets, adapters and the MLflow store go."),
    force: bool = typer.Option(False, "--force", help="Run again even what is up to date."),
) -> None:
    """Run the resources on this machine, in dependency order, through the same entrypoints pods run: one progress
    bar per resource; each service's own output goes to OUTPUT/logs/KIND.log."""
    from kubetune_operator import display, local

    resources = _load(filename, more)
    started = time.perf_counter()
    try:
        with display.Display(console, err_console) as shown:
            outcomes = local.run(resources, workdir, observer=shown, force=force)
    except local.DependencyError as exc:
        err_console.print(f"[red]error[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None
    title = f"kubetune run: {time.perf_counter() - started:.0f}s"
    table = Table(title=title)
    for column in ("resource", "phase", "time", "output", "details"):
        table.add_column(column, overflow="fold")
    rows = []
    for o in outcomes:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in o.details.items() if k != "stages"}
        colour = "green" if o.phase == Phase.SUCCEEDED else "red"
        phase = f"{o.phase} (up to date)" if shown.pop("upToDate", False) else str(o.phase)
        row = [o.ref, f"[{colour}]{phase}[/{colour}]", f"{o.seconds:.0f}s", o.output]
        rows.append([*row, ", ".join(f"{k}={v}" for k, v in shown.items())])
        table.add_row(*rows[-1])
    if console.is_terminal:
        console.print(table)
    else:  # a pipe or a log: a line per resource, not a table folded into the pipe's 80 columns
        console.print(title)
        for row in rows:
            console.print(
                "  ".join(escape(cell) if i != 1 else cell for i, cell in enumerate(row) if cell), soft_wrap=True
            )
    for o in outcomes:
        if o.details.get("stages"):
            console.print(
                f"{o.ref} funnel: " + " -> ".join(f"{s['name']} {s['output']}" for s in o.details["stages"]),
                soft_wrap=True,
            )
    if len(outcomes) < len(resources) or any(o.phase != Phase.SUCCEEDED for o in outcomes):
        raise typer.Exit(1)


@app.command()
def crds(output: Path = typer.Option(Path("crds"), help="Folder the CRD YAML files are written to.")) -> None:
    """Write the CustomResourceDefinitions generated from the spec models."""
    from kubetune_operator.crds import main

    main([str(output)])


class LogFormat(StrEnum):
    plain = "plain"
    full = "full"
    json = "json"


@app.command()
def operator(
    namespace: list[str] = typer.Option(
        [], "-n", "--namespace", help="Watch only this namespace (repeatable). Default: every namespace."
    ),
    liveness: str | None = typer.Option(
        None, help="Serve a liveness probe at this URL, e.g. http://0.0.0.0:8080/healthz."
    ),
    leader_election: bool = typer.Option(
        False,
        "--leader-election",
        help="Act only while holding the Lease kubetune-operator (one active replica among several; the others "
        "wait as standbys).",
    ),
    leader_election_namespace: str = typer.Option(
        "", help="Namespace of that Lease. Default: $POD_NAMESPACE (the chart sets it to the release's)."
    ),
    readiness: str | None = typer.Option(
        None,
        help="Serve a readiness probe at this URL, e.g. http://0.0.0.0:8081/readyz: 200 once this replica leads "
        "(or waits as a standby) and reaches the API server, 503 before or when it cannot.",
    ),
    metrics: str | None = typer.Option(
        None, help="Serve Prometheus metrics at this HOST:PORT (path /metrics), e.g. 0.0.0.0:9090."
    ),
    log_format: LogFormat = typer.Option(LogFormat.full, help="Log lines as plain text, with time and level, or JSON."),
    verbose: bool = typer.Option(False, "--verbose", help="Log at DEBUG level."),
    debug: bool = typer.Option(False, "--debug", help="Log at DEBUG level, asyncio and HTTP included."),
) -> None:
    """Run the operator against the cluster of the current kubeconfig (or the in-cluster service account)."""
    import kopf

    from kubetune_operator import handlers  # noqa: F401  (registers the handlers)

    for name in namespace:
        if not NAME_RULE.holds(name):
            err_console.print(
                f"[red]error[/red] --namespace {escape(repr(name))}: not a namespace name; name each namespace "
                "exactly (patterns are not supported)"
            )
            raise typer.Exit(2)
    # kopf's own CLI sets up logging; kopf.run() alone does not, and the log would stay empty.
    kopf.configure(debug=debug, verbose=verbose, log_format=kopf.LogFormat[log_format.name.upper()])
    if metrics:
        from kubetune_operator import metrics as served

        served.serve(metrics)
    from kubetune_operator import health

    with health.serving(readiness, health.READINESS.answer):
        if leader_election:
            _lead(leader_election_namespace or os.environ.get("POD_NAMESPACE", ""), liveness)
        kopf.run(
            clusterwide=not namespace,
            namespaces=namespace,
            standalone=True,
            liveness_endpoint=liveness,
        )


def _lead(namespace: str, liveness: str | None) -> None:
    """Block until this replica holds the Lease, answering the liveness probe meanwhile (a standby is alive),
    then keep renewing it in a thread."""
    from kubernetes import config

    from kubetune_operator import health, leader

    if not NAME_RULE.holds(namespace):
        err_console.print(
            "[red]error[/red] --leader-election needs the Lease's namespace: --leader-election-namespace or "
            "$POD_NAMESPACE"
        )
        raise typer.Exit(2)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))
    election = leader.LeaderElection(namespace, leader.identity())
    health.READINESS.elected, health.READINESS.lease_seconds = True, election.duration
    with leader.standby_probe(liveness):
        election.acquire()
    election.keep()


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


class PlanOutput(StrEnum):
    table = "table"
    json = "json"


class _BuildPlan(dict):
    """A DatasetBuild's plan as the datagen entrypoint printed it."""

    def __getattr__(self, name: str):
        return self[name]

    def to_dict(self) -> dict:
        return dict(self)


def _plan_build(res: Resource) -> _BuildPlan:
    """The datagen entrypoint's ``--plan`` in a subprocess, as ``kubetune run`` runs the services: the CLI (the
    operator image's too) imports none of the datagen stack, which only the datagen extra installs."""
    import json
    import os
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json") as spec_file:
        json.dump(res.spec.to_wire(), spec_file)
        spec_file.flush()
        proc = subprocess.run(
            [sys.executable, "-m", "kubetune.datagen", "--spec", spec_file.name, "--plan"],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or ["the datagen entrypoint failed"]
        if "ModuleNotFoundError" in proc.stderr:
            lines.append("planning a DatasetBuild needs the datagen extra: pip install 'kubetune[datagen-cpu]'")
        raise ValueError(lines[-1].removeprefix("datagen failed: "))
    return _BuildPlan(json.loads(proc.stdout.strip().splitlines()[-1]))


def _nothing_to_generate(stages: list[dict]) -> str:
    """Why a build plans no prompt: the stage that kept nothing, with what it was given and why it dropped it."""
    for stage in stages:
        if stage["output"] == 0:
            if stage["input"] == 0:
                return f"nothing to build from: {stage['name']} found nothing in spec.source.paths"
            why = ", ".join(f"{n} {reason}" for reason, n in stage["dropped"].items() if n) or "none kept"
            return f"nothing to build from: {stage['name']} kept 0 of {stage['input']} ({why})"
    return "nothing to build from: no stage ran"


@app.command()
def plan(
    filename: list[Path] = FILES,
    more: list[Path] = MORE_FILES,
    output: PlanOutput = typer.Option(PlanOutput.table, "-o", "--output", help="A table per job, or JSON."),
    gpu: str | None = typer.Option(
        None,
        "--gpu",
        help="GPU type to fit: H100-80GB, H200-141GB, A100-40GB, A100-80GB, L40S-48GB, L4-24GB, A10G-24GB, T4-16GB, "
        "or cpu. Default: cpu when spec.resources.gpus is 0, else spec.resources.gpuType, else a GPU of no named type "
        "(no fit check).",
    ),
) -> None:
    """Before anything runs: a FineTuneJob's peak memory per GPU (or on the CPU) from its base model's config.json
    alone; a DatasetBuild's stages before generation (their funnel), its prompts and the tokens they take."""
    import json

    from kubetune.trainer import memory

    if gpu is not None:
        try:
            memory.gpu_type(gpu)
        except memory.PlanError as exc:
            err_console.print(f"[red]error[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(1) from None
    failed, plans, builds = 0, [], []
    for res in _load(filename, more):
        ref = f"{res.kind}/{res.metadata.name}"
        try:
            if res.kind == "DatasetBuild":
                builds.append((ref, _plan_build(res)))
            else:
                plans.append((ref, memory.plan_memory(memory.load_config(res.spec.base_model), res.spec, gpu)))
        except (memory.PlanError, ValueError, OSError) as exc:
            err_console.print(f"[red]error[/red] {escape(ref)}: {escape(str(exc))}", soft_wrap=True)
            failed += 1
    if output == PlanOutput.json:
        found = [{"resource": ref, **p.to_dict()} for ref, p in [*builds, *plans]]
        typer.echo(json.dumps(found, indent=2))
    for ref, b in builds if output == PlanOutput.table else []:
        table = Table(title=f"{ref}: the stages before generation", title_justify="left")
        for column in ("stage", "in", "out", "dropped"):
            table.add_column(column, justify="right" if column in ("in", "out") else "left")
        for s in b.stages:
            dropped = ", ".join(f"{n} {why}" for why, n in s["dropped"].items() if n)
            table.add_row(s["name"], str(s["input"]), str(s["output"]), dropped)
        console.print(table)
        console.print(
            f"generate: {b.prompts} prompts, {b.prompt_tokens:,} prompt tokens, at most {b.max_output_tokens:,} "
            "tokens written" + "".join(f"; then {stage}: about {n} requests" for stage, n in b.later_requests.items()),
            soft_wrap=True,
        )
    for ref, b in builds:
        if not b.stages or b.stages[-1]["output"] == 0:  # kubetune run would fail: say so now, and where they went
            err_console.print(
                f"[red]error[/red] {escape(ref)}: {escape(_nothing_to_generate(b.stages))}", soft_wrap=True
            )
            failed += 1
    for ref, p in plans if output == PlanOutput.table else []:
        steps = f"batch {p.batch} x {p.seq_len} tokens, checkpointing {'on' if p.gradient_checkpointing else 'off'}"
        table = Table(title=f"{ref}: {p.method} on {p.device} ({p.compute_dtype}), {steps}", title_justify="left")
        table.add_column("term")
        table.add_column("GiB", justify="right")
        table.add_column("how", overflow="fold")
        for name, value, how in p.rows():
            table.add_row(name, f"{value / memory.GIB:.2f}", how)
        table.add_row("[bold]peak allocated[/bold]", f"[bold]{p.peak_allocated / memory.GIB:.2f}[/bold]", p.peak_phase)
        if p.overhead:
            table.add_row("[bold]per GPU[/bold]", f"[bold]{p.total / memory.GIB:.2f}[/bold]", "peak + overhead")
        console.print(table)
        colour = "green" if p.fits or p.fits is None else "yellow"
        console.print(f"[{colour}]{escape(p.verdict())}[/{colour}]", soft_wrap=True)
        for note in p.notes:
            console.print(f"  note: {escape(note)}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)
