"""A small Dockerfile reader: instructions by stage, with ARG and ENV values substituted as a build would.

Enough for the checks in test_dockerfiles.py: FROM, ARG, ENV, LABEL, USER, COPY, RUN, ENTRYPOINT, CMD.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # as written, continuation lines joined
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT/CMD/RUN, else None."""
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


@dataclass
class Stage:
    base: str  # the FROM image, ARGs substituted
    name: str | None
    args: dict[str, str] = field(default_factory=dict)  # ARGs in scope, with their defaults
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    instructions: list[Instruction] = field(default_factory=list)

    def expand(self, text: str) -> str:
        """Substitute ${NAME} and $NAME with this stage's ENV or ARG defaults (unknown names stay)."""
        values = {**self.args, **self.env}
        return _VAR.sub(lambda m: values.get(m[1] or m[2], m[0]), text)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def stage_names(self) -> set[str]:
        return {s.name for s in self.stages if s.name}

    def external_bases(self) -> list[str]:
        """The FROM images that are not earlier stages."""
        names: set[str] = set()
        bases = []
        for stage in self.stages:
            if stage.base not in names:
                bases.append(stage.base)
            if stage.name:
                names.add(stage.name)
        return bases

    def args_everywhere(self) -> dict[str, set[str]]:
        """Each ARG name with every default it is given anywhere in the file."""
        found: dict[str, set[str]] = {}
        for name, value in self.global_args.items():
            found.setdefault(name, set()).add(value)
        for stage in self.stages:
            for name, value in stage.args.items():
                found.setdefault(name, set()).add(value)
        return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    lines: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):  # comment lines inside a continued instruction
            continue
        if not current:
            start = number
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        lines.append((start, current.strip()))
        current = ""
    if current:
        lines.append((start, current.strip()))
    return lines


def _pairs(text: str) -> dict[str, str]:
    """KEY=VALUE pairs of ENV or LABEL (the legacy `ENV KEY VALUE` form too)."""
    words = shlex.split(text)
    if words and "=" not in words[0]:
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []

    def expand_global(text: str) -> str:
        return _VAR.sub(lambda m: global_args.get(m[1] or m[2], m[0]), text)

    for line, text in _logical_lines(path.read_text()):
        keyword, _, args = text.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=expand_global(words[0]), name=name))
            continue
        if not stages:
            if keyword == "ARG":
                name, _, default = args.partition("=")
                global_args[name.strip()] = expand_global(default.strip().strip("\"'"))
            continue
        stage = stages[-1]
        stage.instructions.append(Instruction(keyword, args, line))
        if keyword == "ARG":
            name, eq, default = args.partition("=")
            name = name.strip()
            if eq:
                stage.args[name] = stage.expand(default.strip().strip("\"'"))
            elif name in global_args:
                stage.args[name] = global_args[name]
        elif keyword == "ENV":
            for key, value in _pairs(args).items():
                stage.env[key] = stage.expand(value)
        elif keyword == "LABEL":
            for key, value in _pairs(args).items():
                stage.labels[key] = stage.expand(value)
    return Dockerfile(path=path, global_args=global_args, stages=stages)


# A requirement as pip's command line names it: name[extras]==version (or another comparison, or none).
_REQUIREMENT = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[(?P<extras>[^\]]*)\])?(?P<spec>(?:[=!<>~]=?|===).+)?$"
)


@dataclass
class PipInstall:
    """One `pip install` in a RUN: the requirements it names and the constraint files it passes."""

    stage: Stage
    requirements: list[str]  # as written after substitution, e.g. "torch==2.13.0+cu130", "/dist/x.whl[trainer]"
    constraints: list[str]
    options: list[str]


def _commands(shell: str) -> list[list[str]]:
    """The simple commands of a shell line (split at ; && || | and braces), each as its words."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split, lexer.commenters = True, ""
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in (";", "&&", "||", "|", "{", "}", "(", ")"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def pip_installs(stage: Stage) -> list[PipInstall]:
    """Every `pip install` command in the stage's RUN instructions, with ARG/ENV values substituted."""
    found = []
    for run in stage.all("RUN"):
        for words in _commands(stage.expand(run.args)):
            try:
                at = next(i for i in range(len(words) - 1) if words[i].endswith("pip") and words[i + 1] == "install")
            except StopIteration:
                continue
            requirements, constraints, options = [], [], []
            rest = iter(words[at + 2 :])
            for word in rest:
                if word in ("-c", "--constraint"):
                    constraints.append(next(rest))
                elif word in ("--extra-index-url", "--index-url", "-i", "--find-links", "-f", "-r"):
                    options += [word, next(rest)]
                elif word.startswith("-"):
                    options.append(word)
                else:
                    requirements.append(word)
            found.append(PipInstall(stage, requirements, constraints, options))
    return found


def split_requirement(text: str) -> tuple[str, set[str], str] | None:
    """(canonical name, extras, specifier) of a requirement like `trl==1.16.*`; None for paths and URLs."""
    if "/" in text:
        extras = re.search(r"\[([^\]]*)\]$", text)
        return None if extras is None else ("", {e.strip() for e in extras[1].split(",")}, "")
    match = _REQUIREMENT.match(text)
    if match is None:
        return None
    name = re.sub(r"[-_.]+", "-", match["name"]).lower()
    extras = {e.strip() for e in (match["extras"] or "").split(",") if e.strip()}
    return name, extras, (match["spec"] or "").strip()
