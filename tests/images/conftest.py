"""The per-extra venvs, shared by every test of a session (built once, or reused from .cache/extra-venvs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.images import venvs

_TIMINGS: dict[str, dict] = {}


class ExtraVenvs:
    def get(self, extra: str) -> Path:
        if extra not in _TIMINGS:
            path, stamp = venvs.ensure(extra)
            _TIMINGS[extra] = {**stamp, "path": path}
        return _TIMINGS[extra]["path"]


@pytest.fixture(scope="session")
def extra_venvs() -> ExtraVenvs:
    return ExtraVenvs()


def pytest_terminal_summary(terminalreporter) -> None:
    """How long each venv took: CI's logs show what the image tests cost."""
    if not _TIMINGS:
        return
    terminalreporter.section("extra venvs")
    for extra, info in _TIMINGS.items():
        if info["reused"]:
            took = f"reused (created in {info['created_s']} s)"
        elif "refreshed_s" in info:
            took = f"reused, the project's wheel reinstalled in {info['refreshed_s']} s"
        else:
            took = f"created in {info['created_s']} s"
        terminalreporter.write_line(f"{extra}: {took}  {info['path']}")
