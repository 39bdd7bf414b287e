"""How ``kubetune run`` shows a resource while its service runs: one progress bar, drawn from progress.json.

:mod:`local` sends the service's output to a log file and passes on each progress.json the service writes; the
:class:`Display` turns them into one rich progress bar per resource on a terminal, or, where nothing can be
redrawn (CI, pipes), into a plain line per stage (DatasetBuild) or per tenth of the steps (FineTuneJob). When
a service fails, the end of its log is printed, so that the cause shows without opening the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from kubetune.api.v1alpha1.resources import Resource
from kubetune.api.v1alpha1.status import Phase
from kubetune_operator import local
from kubetune_operator.progress_text import report

TAIL_LINES = 30  # of the log, printed when a service fails


def tail(log: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a log, each as a terminal showed it (a progress bar's line as it was last redrawn)."""
    with log.open("rb") as f:
        size = f.seek(0, 2)
        f.seek(max(0, size - 256 * 1024))
        text = f.read().decode(errors="replace")
    found = text.split("\n")[1 if size > 256 * 1024 else 0 :]
    shown = [next((s for s in reversed(line.split("\r")) if s.strip()), "").rstrip() for line in found]
    while shown and not shown[-1]:
        shown.pop()
    return shown[-lines:]


def _why(code: int | None) -> str:
    return f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"


class Display(local.Observer):
    """``kubetune run``'s screen: a rule per resource, its bar (or plain lines), the log's path or end."""

    def __init__(self, console: Console, err_console: Console):
        self.console, self.err_console = console, err_console
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._milestone: Any = None

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *exc_info: object) -> None:
        # A run cut short (Ctrl-C) leaves no live bar behind, nor the terminal's cursor hidden.
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None

    def _redraws(self) -> bool:
        # FORCE_COLOR makes rich treat CI logs as a terminal, for colour; redrawn bars there would be noise.
        isatty = getattr(self.console.file, "isatty", None)
        return self.console.is_interactive and isatty is not None and isatty()

    def start(self, resource: Resource) -> None:
        self.console.rule(f"[bold]{resource.kind}/{escape(resource.metadata.name)}")

    def launched(self, resource: Resource, log: Path) -> None:
        self._milestone = None
        if self._redraws():
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[unit]}"),
                TextColumn("{task.fields[figures]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._task = self._bar.add_task("starting", total=None, unit="", figures="")
            self._bar.start()

    def progress(self, resource: Resource, progress: dict[str, Any]) -> None:
        r = report(resource.kind, progress)
        if self._bar is not None:
            self._bar.update(
                self._task,
                description=escape(r.label),
                completed=r.completed,
                total=r.total,
                unit=r.unit,
                figures=escape(r.figures),
            )
        elif r.milestone != self._milestone:
            self._milestone = r.milestone
            self.console.print(escape(f"{resource.kind}/{resource.metadata.name}: {r.line}"), soft_wrap=True)

    def finish(self, outcome: local.Outcome) -> None:
        if self._bar is not None:
            task = self._bar.tasks[0]
            if outcome.phase == Phase.SUCCEEDED:
                self._bar.update(self._task, total=task.total or 1, completed=task.total or 1)
            else:
                self._bar.update(self._task, description=f"[red]{task.description} failed[/red]")
            self._bar.stop()
            self._bar = self._task = None
        if outcome.log is None:
            return
        if outcome.phase == Phase.SUCCEEDED:
            self.console.print(f"[dim]log: {escape(outcome.log)}[/dim]", soft_wrap=True)
            return
        lines = tail(Path(outcome.log))
        self.err_console.print(
            f"[red]{escape(outcome.ref)} failed[/red] ({_why(outcome.exit_code)}); the last {len(lines)} lines of "
            f"its log, {escape(outcome.log)}:",
            soft_wrap=True,
        )
        for line in lines:
            self.err_console.print(escape(f"  {line}"), soft_wrap=True)
