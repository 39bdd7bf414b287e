"""``kubetune run``'s screen: one progress bar (or plain lines) per resource from its progress.json, the
service's own output in OUTPUT/logs/KIND.log, and the end of that log when the service fails.

The services are stood in for by small ``python -c`` scripts that write progress.json and some output, run
through the real ``kubetune run`` (only :func:`builders.service_command` is replaced).
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from kubetune.api.v1alpha1 import load_resources
from kubetune.api.v1alpha1.status import Phase
from kubetune_operator import builders, display, local, progress_text
from kubetune_operator.cli import app

RESOURCES = """
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {name: docs}
spec:
  source: {paths: [data]}
  generation: {model: models/m}
---
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune}
spec:
  baseModel: models/m
  dataset: {path: data}
  method: lora
"""

# What every stand-in service starts with: report() writes progress.json (a str as is: half-written JSON)
# and holds it long enough for several polls.
PRELUDE = """
import json, sys, time
from pathlib import Path
progress = Path(sys.argv[1]) / "progress.json"
def report(p, hold=0.3):
    progress.write_text(p if isinstance(p, str) else json.dumps(p))
    time.sleep(hold)
"""


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch):
    monkeypatch.setattr(local, "POLL_SECONDS", 0.02)


def service(monkeypatch, body: str) -> None:
    """Make every resource's service the script ``body``."""

    def command(python, kind, name, spec_file, output, *_):
        return [python, "-c", PRELUDE + textwrap.dedent(body), output]

    monkeypatch.setattr(builders, "service_command", command)


def kubetune_run(tmp_path: Path, kind: str):
    docs = [d for d in RESOURCES.split("---") if f"kind: {kind}" in d]
    (tmp_path / "resources.yaml").write_text(docs[0])
    args = ["run", "-f", str(tmp_path / "resources.yaml"), "--workdir", str(tmp_path / "work")]
    return CliRunner().invoke(app, args)


def log_of(tmp_path: Path, kind: str, name: str) -> Path:
    return Path(builders.output_path(str(tmp_path / "work"), kind, "default", name)) / "logs" / f"{kind.lower()}.log"


def progress_lines(text: str, ref: str) -> list[str]:
    return [line.removeprefix(f"{ref}: ") for line in text.splitlines() if line.startswith(f"{ref}: ")]


CASES = {
    "a DatasetBuild: a line per stage, not per part": (
        "DatasetBuild",
        "docs",
        """
        report('{"stage": "ing')
        report({"stage": "ingest", "done": 0, "total": 3})
        report({"stage": "generate", "done": 1, "total": 3, "part": 1, "parts": 2})
        report({"stage": "generate", "done": 1, "total": 3, "part": 2, "parts": 2})
        report({"stage": "done", "done": 3, "total": 3}, hold=0)
        """,
        [
            "0/3 stages done; ingest",
            "1/3 stages done; generate part 1/2",
            "3/3 stages done",
        ],
    ),
    "a FineTuneJob: a line per tenth of the steps, older files' keys too": (
        "FineTuneJob",
        "tune",
        """
        report({"step": 1, "maxSteps": 100})
        report({"step": 12, "maxSteps": 100, "loss": 2.5, "tokensPerSecond": 1234.4, "etaSeconds": 65, "epoch": 0.1,
                "phase": "train"})
        report({"step": 15, "maxSteps": 100, "loss": 2.25, "tokensPerSecond": 1250.0, "etaSeconds": 60})
        report({"step": 50, "maxSteps": 100, "loss": 1.5, "tokensPerSecond": 1300, "etaSeconds": 30,
                "phase": "evaluate"})
        report({"step": 100, "maxSteps": 100, "loss": 1.25, "tokensPerSecond": 1310, "etaSeconds": 0,
                "phase": "done"}, hold=0)
        """,
        [
            "step 1/100 (1%)",
            "step 12/100 (12%), loss 2.5, 1,234 tokens/s, ETA 1m05s",
            "step 50/100 (50%), evaluate, loss 1.5, 1,300 tokens/s, ETA 30s",
            "step 100/100 (100%), done, loss 1.25, 1,310 tokens/s",
        ],
    ),
}


@pytest.mark.parametrize(("kind", "name", "body", "expected"), CASES.values(), ids=list(CASES))
def test_progress_on_the_screen_and_the_service_output_in_the_log(tmp_path, monkeypatch, kind, name, body, expected):
    service(monkeypatch, 'print("said on stdout"); print("said on stderr", file=sys.stderr)\n' + textwrap.dedent(body))
    result = kubetune_run(tmp_path, kind)
    assert result.exit_code == 0, result.output
    assert progress_lines(result.stdout, f"{kind}/{name}") == expected, result.stdout
    assert "said on" not in result.output
    log = log_of(tmp_path, kind, name)
    assert f"log: {log}" in result.stdout
    text = log.read_text()
    assert "said on stdout" in text and "said on stderr" in text
    assert text.startswith(f"===== kubetune run {kind}/{name}: started ")
    assert "Succeeded" in result.stdout  # the summary table stays


def test_a_failed_service_prints_the_end_of_its_log(tmp_path, monkeypatch):
    service(
        monkeypatch,
        """
        for i in range(50):
            print(f"training line {i}", file=sys.stderr if i % 2 else sys.stdout)
        sys.exit(3)
        """,
    )
    result = kubetune_run(tmp_path, "FineTuneJob")
    assert result.exit_code == 1
    log = log_of(tmp_path, "FineTuneJob", "tune")
    assert f"FineTuneJob/tune failed (exit code 3); the last 30 lines of its log, {log}:" in result.stderr
    shown = [line.strip() for line in result.stderr.splitlines() if "training line" in line]
    assert shown == [f"training line {i}" for i in range(20, 50)]
    assert "training line" not in result.stdout


def test_a_progress_file_from_an_earlier_run_is_not_reported(tmp_path, monkeypatch):
    service(monkeypatch, 'report({"stage": "stale_stage", "done": 1, "total": 3}); sys.exit(1)')
    first = kubetune_run(tmp_path, "DatasetBuild")
    assert first.exit_code == 1 and "stale_stage" in first.stdout
    output = Path(builders.output_path(str(tmp_path / "work"), "DatasetBuild", "default", "docs"))
    assert (output / "progress.json").exists(), "the failed run is resumed, its folder kept"

    service(monkeypatch, 'time.sleep(0.5); print("resumed"); report({"stage": "fresh_stage", "done": 2, "total": 3})')
    second = kubetune_run(tmp_path, "DatasetBuild")
    assert second.exit_code == 0, second.output
    assert progress_lines(second.stdout, "DatasetBuild/docs") == ["2/3 stages done; fresh_stage"]
    log = log_of(tmp_path, "DatasetBuild", "docs").read_text()
    assert log.count("===== kubetune run DatasetBuild/docs: started ") == 2 and "resumed" in log


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


SCREENS = {
    "a terminal: the bar, no plain lines": (Tty, True),
    "a pipe (CI) with FORCE_COLOR: plain lines, no redraws": (io.StringIO, False),
}


@pytest.mark.parametrize(("screen_file", "redraws"), SCREENS.values(), ids=list(SCREENS))
@pytest.mark.parametrize("phase", [Phase.SUCCEEDED, Phase.FAILED])
def test_a_bar_only_where_it_can_be_redrawn(tmp_path, monkeypatch, screen_file, redraws, phase):
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.setenv("TERM", "xterm-256color")
    file = screen_file()
    console = Console(file=file, width=150, highlight=False)
    shown = display.Display(console, Console(file=io.StringIO()))
    (job,) = [r for r in load_resources(RESOURCES) if r.kind == "FineTuneJob"]
    log = tmp_path / "finetunejob.log"
    log.write_text("a line\n")
    shown.start(job)
    shown.launched(job, log)
    shown.progress(job, {"step": 50, "maxSteps": 100, "loss": 1.5, "phase": "train"})
    shown.finish(
        local.Outcome(job, phase, str(tmp_path), 1.0, log=str(log), exit_code=0 if phase == Phase.SUCCEEDED else 1)
    )
    screen = file.getvalue()
    assert ("FineTuneJob/tune: step 50/100" in screen) is not redraws
    assert ("\x1b[?25l" in screen) is redraws  # the cursor hidden while the bar is redrawn
    if redraws:
        assert "loss 1.5" in screen
        assert ("100/100" in screen) is (phase == Phase.SUCCEEDED)
        assert ("failed" in screen) is (phase == Phase.FAILED)


LINES = {
    "a job with keys of the wrong type": (
        "FineTuneJob",
        {"step": 3, "maxSteps": 10, "loss": "nan", "tokensPerSecond": None, "etaSeconds": 3725.0},
        "step 3/10 (30%), ETA 1h02m",
    ),
    "a job with no maxSteps yet": ("FineTuneJob", {"step": 7}, "step 7"),
    "a slow job": (
        "FineTuneJob",
        {"step": 1, "maxSteps": 4, "tokensPerSecond": 12.345},
        "step 1/4 (25%), 12.3 tokens/s",
    ),
    "a build with no total": ("DatasetBuild", {"stage": "chunk", "done": 2}, "2/? stages done; chunk"),
}


@pytest.mark.parametrize(("kind", "found", "line"), LINES.values(), ids=list(LINES))
def test_plain_lines(kind, found, line):
    assert progress_text.report(kind, found).line == line


def test_the_tail_shows_each_line_as_last_redrawn(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)) + "  0%|\r 50%|\r100%|\n\n\n")
    assert display.tail(log) == [*(f"line {i}" for i in range(11, 40)), "100%|"]
    log.write_bytes(b"cut" * 200_000 + b"\nlast\n")
    assert display.tail(log) == ["last"]
