"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback, with filesystem
storage in a temporary folder and, when asked, htpasswd basic auth. ``make setup`` installs it."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

BINARY = "docker-registry"


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path  # its storage folder
    username: str | None = None
    password: str | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(folder: Path, username: str | None = None, password: str | None = None) -> Iterator[Registry]:
    """A registry serving until the block ends; with ``username``, only to that user."""
    if shutil.which(BINARY) is None:
        raise RuntimeError(f"{BINARY} is not installed: `make setup` installs it (Debian's docker-registry)")
    folder.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "kubetune-test"},
    }
    if username is not None:
        import bcrypt

        hashed = bcrypt.hashpw(str(password).encode(), bcrypt.gensalt(rounds=4)).decode()
        (folder / "htpasswd").write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "kubetune-test", "path": str(folder / "htpasswd")}}
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    log = (folder / "registry.log").open("wb")
    proc = subprocess.Popen([BINARY, "serve", str(folder / "config.yml")], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1)
                break
            except urllib.error.HTTPError:
                break  # 401: up, and asking for credentials
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_text = (folder / "registry.log").read_text()[-2000:]
                    raise RuntimeError(f"{BINARY} did not start: {log_text}") from None
                time.sleep(0.1)
        yield Registry(f"127.0.0.1:{port}", folder / "data", username, password)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
