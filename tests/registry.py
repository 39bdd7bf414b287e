"""A real OCI registry for tests: Debian's ``docker-registry`` (distribution 2.8) on loopback, with filesystem
storage in a temporary folder and, when asked, htpasswd basic auth, or bearer-token auth as GHCR, Docker Hub and
Harbor do it (the registry sends clients to a token service, here :class:`TokenService`, whose signed tokens it
verifies). ``make setup`` installs it."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
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
    tokens: TokenService | None = None  # with token auth: the service that issued the tokens


ISSUER, SERVICE = "kubetune-test-tokens", "kubetune-test-registry"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenService:
    """The token endpoint of Docker's token authentication (distribution's docs/spec/auth/token.md): a client
    sends its basic credentials and the scope the registry's challenge named; it gets an RS256 JWT granting that
    scope, signed by a key whose self-signed certificate the registry trusts (``rootcertbundle``). Each grant is
    recorded in :attr:`granted` (the scopes asked for, in order)."""

    def __init__(self, folder: Path, username: str, password: str):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.username, self.password, self.granted = username, password, []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, ISSUER)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(self.key, hashes.SHA256())
        )  # fmt: skip
        self.certificate = folder / "token.crt"
        self.certificate.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.port = _free_port()
        self.realm = f"http://127.0.0.1:{self.port}/token"

    def token(self, subject: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in scopes:  # repository:NAME:ACTION[,ACTION]
            kind, name, actions = scope.split(":", 2) if scope.count(":") >= 2 else (scope, "", "")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 5, "exp": now + 300,
                  "jti": _b64url(threading.get_native_id().to_bytes(8, "big") + time.time_ns().to_bytes(8, "big")),
                  "access": access}  # fmt: skip
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        signing = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        signature = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing}.{_b64url(signature)}"

    @contextlib.contextmanager
    def serving(self) -> Iterator[None]:
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                sent = self.headers.get("Authorization", "")
                user, _, password = (
                    base64.b64decode(sent.removeprefix("Basic ")).decode().partition(":")
                    if sent.startswith("Basic ") else ("", "", "")
                )  # fmt: skip
                if (user, password) != (service.username, service.password):
                    self.send_response(401)
                    self.end_headers()
                    return
                scopes = query.get("scope", [])
                service.granted.append(scopes)
                body = json.dumps({"token": service.token(user, scopes), "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(
    folder: Path, username: str | None = None, password: str | None = None, token_auth: bool = False
) -> Iterator[Registry]:
    """A registry serving until the block ends; with ``username``, only to that user: by basic auth, or with
    ``token_auth`` through bearer tokens from a :class:`TokenService` serving beside it."""
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
    tokens = None
    if username is not None and token_auth:
        tokens = TokenService(folder, username, str(password))
        config["auth"] = {"token": {"realm": tokens.realm, "service": SERVICE, "issuer": ISSUER,
                                    "rootcertbundle": str(tokens.certificate)}}  # fmt: skip
    elif username is not None:
        import bcrypt

        hashed = bcrypt.hashpw(str(password).encode(), bcrypt.gensalt(rounds=4)).decode()
        (folder / "htpasswd").write_text(f"{username}:{hashed}\n")
        config["auth"] = {"htpasswd": {"realm": "kubetune-test", "path": str(folder / "htpasswd")}}
    (folder / "config.yml").write_text(yaml.safe_dump(config))
    registry = Registry(f"127.0.0.1:{port}", folder / "data", username, password, tokens)
    with tokens.serving() if tokens else contextlib.nullcontext(), _serving(folder, port, registry):
        yield registry


@contextlib.contextmanager
def _serving(folder: Path, port: int, registry: Registry) -> Iterator[None]:
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
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
