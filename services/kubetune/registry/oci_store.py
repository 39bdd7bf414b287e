"""The OCI registry backend: an adapter pushed as an ORAS artifact, one layer per file, lineage as its config.

Layout (what ``oras pull`` restores byte for byte, file names from each layer's
``org.opencontainers.image.title``):

- manifest ``application/vnd.oci.image.manifest.v1+json``; config: ``lineage.json``
  (:data:`LINEAGE_MEDIA_TYPE`), so the record travels with the weights;
- one layer per file of the adapter folder: ``*.safetensors`` as :data:`WEIGHTS_MEDIA_TYPE`,
  ``adapter_config.json`` as :data:`ADAPTER_CONFIG_MEDIA_TYPE`, other JSON as ``application/json``, anything else
  (tokenizer, chat template, card) as ``application/octet-stream``;
- manifest annotations: ``org.opencontainers.image.created``, ``.title`` (the model name), ``.source``
  (``kubetune://NAMESPACE/finetunejobs/NAME``, the resource that made it) and the lineage as flat
  ``kubetune.dev/*`` keys (base model and its digest, dataset digest, adapter digest, method, objective).

``layout: kaito`` pushes an adapter as KAITO's Workspace takes one (``inference.adapters[].source.image``; its
puller runs ``skopeo copy --dest-decompress`` and untars each layer's ``data/``): an OCI image, config
``application/vnd.oci.image.config.v1+json`` whose ``rootfs.diff_ids`` names the layer's uncompressed digest, one
``application/vnd.oci.image.layer.v1.tar+gzip`` layer holding ``data/`` (the adapter's files) and
``kubetune/lineage.json``, written reproducibly (sorted, owner 0, time 0): the same files and lineage make the
same bytes.
KServe's modelcars are not served: they run the image (a shell, ``ln`` and ``sleep`` in it, under ``/models``),
and KServe does not take LoRA adapters from ``oci://``.

Idempotent by digest: the default tag is derived from the adapter's digest, and a tag that already holds a
manifest whose ``kubetune.dev/adapter-digest`` is this adapter's, in this layout (``kubetune.dev/layout``; none:
an artifact), is not pushed again. Credentials come from a
file only (a mounted Secret: a ``.dockerconfigjson`` or ``username:password``), never from the spec; they are
sent as basic auth, or to the token service a registry names (GHCR, Docker Hub, Harbor) for bearer tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import gzip
import hashlib
import json
import os
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1.datasetbuild import OciTargetSpec
from kubetune.registry.lineage import TAG_PREFIX, tags

LINEAGE_MEDIA_TYPE = "application/vnd.kubetune.lineage.v1+json"
WEIGHTS_MEDIA_TYPE = "application/vnd.kubetune.adapter.weights.v1+safetensors"
ADAPTER_CONFIG_MEDIA_TYPE = "application/vnd.kubetune.adapter.config.v1+json"


class PublishError(RuntimeError):
    """A target refused or could not be reached; the message names the target and says why."""


DATASET_MANIFEST_MEDIA_TYPE = "application/vnd.kubetune.dataset.manifest.v1+json"
_BY_SUFFIX = {".parquet": "application/vnd.apache.parquet", ".md": "text/markdown", ".png": "image/png",
              ".json": "application/json"}  # fmt: skip


def media_type(path: Path) -> str:
    if path.suffix == ".safetensors":
        return WEIGHTS_MEDIA_TYPE
    if path.name == "adapter_config.json":
        return ADAPTER_CONFIG_MEDIA_TYPE
    return _BY_SUFFIX.get(path.suffix, "application/octet-stream")


def read_credentials(path: Path, registry: str) -> tuple[str, str]:
    """(username, password) for ``registry`` from a file: a Docker config (a ``kubernetes.io/dockerconfigjson``
    Secret's ``.dockerconfigjson``) or one line ``username:password``."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise PublishError(f"credentialsFile {path}: cannot be read ({exc.strerror})") from None
    if text.startswith("{"):
        try:
            auths = json.loads(text).get("auths") or {}
        except ValueError:
            raise PublishError(f"credentialsFile {path}: not JSON, and not username:password") from None
        entry = auths.get(registry) or auths.get(f"https://{registry}") or auths.get(f"http://{registry}")
        if not entry:
            raise PublishError(f"credentialsFile {path}: no auths entry for {registry} (has: {sorted(auths)})")
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"], validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                message = f"credentialsFile {path}: auths[{registry}].auth is not base64 of username:password"
                raise PublishError(message) from None
            return user, password
        return entry.get("username", ""), entry.get("password", "")
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise PublishError(f"credentialsFile {path}: expected username:password or a Docker config")
    return user, password


SECRETS_DIR_ENV = "KUBETUNE_SECRETS_DIR"  # where the operator mounts Secrets: SECRETS_DIR/oci/NAME/KEY
SECRETS_DIR = "/var/run/secrets/kubetune"


def secret_credentials(name: str, registry: str) -> tuple[str, str]:
    """(username, password) from the mounted Secret ``name``: its ``.dockerconfigjson`` key, else its
    ``username`` and ``password`` keys."""
    folder = Path(os.environ.get(SECRETS_DIR_ENV, SECRETS_DIR)) / "oci" / name
    if (folder / ".dockerconfigjson").exists():
        return read_credentials(folder / ".dockerconfigjson", registry)
    try:
        return (folder / "username").read_text().strip(), (folder / "password").read_text().strip()
    except OSError:
        raise PublishError(
            f"credentialsSecret {name}: nothing at {folder}: does the Secret exist in the resource's namespace? It "
            "needs a .dockerconfigjson key, or username and password keys"
        ) from None


RESCOPING_TOKEN = "kubetune-token"  # oras-py's token backend, rescoped: see _rescoping_token_backend


@functools.cache
def _rescoping_token_backend() -> str:
    """oras-py's token backend offers the token it holds again on every 401; a registry answers 401 to a token
    whose scope falls short (pull, from reading the tag, then the upload that needs pull and push), so the push
    fails. This one asks the token service again on a 401, for the scope of that challenge. Registered once among
    oras-py's backends (it builds a client's backend by name); its name is returned."""
    import oras.auth
    import oras.auth.token

    class RescopingTokenAuth(oras.auth.token.TokenAuth):
        def authenticate_request(self, original: Any, headers: dict, refresh: bool = False) -> Any:
            return super().authenticate_request(original, headers, refresh=refresh or original.status_code == 401)

    oras.auth.auth_backends[RESCOPING_TOKEN] = RescopingTokenAuth
    return RESCOPING_TOKEN


def _client(registry: str, plain_http: bool, credentials: tuple[str, str] | None, backend: str = "token"):
    import oras.provider

    if backend == "token":
        backend = _rescoping_token_backend()
    client = oras.provider.Registry(hostname=registry, insecure=plain_http, auth_backend=backend)
    if credentials:
        client.auth.set_basic_auth(*credentials)
    return client


def _probe(registry: str, plain_http: bool, credentials: tuple[str, str] | None) -> str:
    """Ask the registry's ``/v2/`` whether these credentials let us in; the auth backend its challenge wants
    (``basic``, or ``token`` for a registry that hands out bearer tokens). A refusal is final; a 5xx or no
    answer raises for a retry."""
    import requests

    scheme = "http" if plain_http else "https"
    response = requests.get(f"{scheme}://{registry}/v2/", auth=credentials, timeout=30)
    challenge = response.headers.get("WWW-Authenticate", "").lower()
    if response.status_code == 200:
        return "basic" if credentials else "token"
    if response.status_code == 401 and challenge.startswith("bearer"):
        # The token service decides; ask it now, as `docker login` does (no scope), so that refused credentials
        # are said here, once, rather than by oras-py's own retries of each request (minutes of sleeping).
        import oras.auth.utils

        bearer = oras.auth.utils.parse_auth_header(response.headers["WWW-Authenticate"])  # as oras-py reads it
        if credentials and bearer.realm:
            params = {"service": bearer.service} if bearer.service else {}
            answer = requests.get(bearer.realm, params=params, auth=credentials, timeout=30)
            if answer.status_code in (401, 403):
                raise PublishError(f"oci {registry}: {answer.status_code}: the credentials were refused")
            answer.raise_for_status()
        return "token"
    if response.status_code in (401, 403):
        how = "the credentials were refused" if credentials else "it wants credentials (credentialsFile)"
        raise PublishError(f"oci {registry}: {response.status_code}: {how}")
    response.raise_for_status()
    raise PublishError(f"oci {registry}: /v2/ answered {response.status_code}: not an OCI registry")


def _existing(client: Any, target: str) -> dict[str, Any] | None:
    """The manifest the tag holds now, or None when there is none."""
    import requests

    try:
        return client.get_manifest(target)
    except (ValueError, requests.HTTPError):
        return None


def push(
    target: OciTargetSpec,
    adapter_dir: Path,
    lineage: dict[str, Any],
    title: str,
    *,
    attempts: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Push the adapter in ``adapter_dir`` to ``target.repository`` as ``target.tag`` (default: from the adapter's
    digest), in the target's layout (an artifact with its lineage as the config, or KAITO's image); returns the
    reference (``repository:tag@manifest-digest``), the manifest digest and whether it was pushed now. A registry
    that fails is tried ``attempts`` times, waiting 1, 2, 4... s between."""
    if any(p.is_dir() for p in adapter_dir.iterdir()):
        raise PublishError(f"oci {target.repository}: {adapter_dir} holds folders; an adapter is a flat folder")
    digest = lineage["adapter"]["digest"]
    job = lineage["resources"]["fineTuneJob"] or {}
    annotations = {
        "org.opencontainers.image.created": lineage["created"],
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.source": _source(job, "finetunejobs"),
        TAG_PREFIX + "layout": target.layout,
        **tags(lineage),
    }
    files = sorted(p for p in adapter_dir.iterdir() if p.is_file())
    identity = {TAG_PREFIX + "adapter-digest": digest, TAG_PREFIX + "layout": target.layout}
    tag = f"adapter-{digest.removeprefix('sha256:')[:16]}"
    if target.layout == "artifact":
        layers = [(p, media_type(p)) for p in files]
        return _push(target, tag, layers, (lineage, LINEAGE_MEDIA_TYPE), identity, annotations, attempts, sleep)
    with tempfile.TemporaryDirectory() as tmp:
        layer, config = kaito_image(files, lineage, Path(tmp))
        layers = [(layer, IMAGE_LAYER_MEDIA_TYPE)]
        return _push(target, f"{tag}-kaito", layers, (config, IMAGE_CONFIG_MEDIA_TYPE), identity, annotations,
                     attempts, sleep)  # fmt: skip


IMAGE_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
IMAGE_LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


def kaito_image(files: list[Path], lineage: dict[str, Any], workdir: Path) -> tuple[Path, dict[str, Any]]:
    """KAITO's adapter image as a layer file and its image config: ``data/`` with the adapter's ``files`` and
    ``kubetune/lineage.json``, in one tar, gzipped, streamed through files in ``workdir`` (an adapter can be
    large); the same files and lineage make the same bytes."""
    (workdir / "lineage.json").write_text(json.dumps(lineage, indent=2, sort_keys=True))
    members = sorted([(f"data/{p.name}", p) for p in files] + [("kubetune/lineage.json", workdir / "lineage.json")])
    plain = workdir / "adapter.tar"
    with tarfile.open(plain, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in ("data", "kubetune"):
            tar.addfile(_owned_by_nobody(tarfile.TarInfo(folder), tarfile.DIRTYPE, 0o755))
        for name, path in members:
            info = _owned_by_nobody(tar.gettarinfo(path, arcname=name), tarfile.REGTYPE, 0o644)
            with path.open("rb") as data:
                tar.addfile(info, data)
    layer = workdir / "adapter.tar.gz"
    digest = hashlib.sha256()
    with (
        plain.open("rb") as source,
        layer.open("wb") as out,
        gzip.GzipFile(filename="", fileobj=out, mode="wb", mtime=0) as gz,
    ):
        while chunk := source.read(1 << 20):
            digest.update(chunk)
            gz.write(chunk)
    plain.unlink()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
    }
    return layer, config


def _owned_by_nobody(info: tarfile.TarInfo, kind: bytes, mode: int) -> tarfile.TarInfo:
    """A tar entry with nothing of the machine that wrote it: owner 0, no names, time 0, a fixed mode."""
    info.type, info.mode, info.mtime = kind, mode, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


DATASET_FILES = ("train.parquet", "test.parquet", "manifest.json", "README.md", "funnel.png")


def push_dataset(
    target: OciTargetSpec,
    dataset_dir: Path,
    manifest: dict[str, Any],
    *,
    attempts: int = 3,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Push a DatasetBuild's output (the splits, manifest.json, the card and the funnel chart) to ``target``; the
    manifest is also the artifact's config. Tag and idempotency by the dataset's digest, as :func:`push`."""
    digest = manifest["digest"]
    annotations = {
        "org.opencontainers.image.created": manifest.get("createdAt") or "",
        "org.opencontainers.image.title": manifest.get("name") or "dataset",
        "org.opencontainers.image.source": _source(manifest.get("resource") or {}, "datasetbuilds"),
        TAG_PREFIX + "dataset-digest": digest,
        TAG_PREFIX + "type": str(manifest.get("type")),
        **{TAG_PREFIX + f"rows-{n.removesuffix('.parquet')}": str(f["rows"]) for n, f in manifest["files"].items()},
    }
    layers = [(dataset_dir / n, media_type(dataset_dir / n)) for n in DATASET_FILES if (dataset_dir / n).is_file()]
    identity = {TAG_PREFIX + "dataset-digest": digest}
    config = (manifest, DATASET_MANIFEST_MEDIA_TYPE)
    return _push(target, f"dataset-{digest.removeprefix('sha256:')[:16]}", layers, config, identity, annotations,
                 attempts, sleep)  # fmt: skip


def _source(resource: dict[str, Any], plural: str) -> str:
    return f"kubetune://{resource.get('namespace') or 'local'}/{plural}/{resource.get('name')}"


def credentials_of(target: OciTargetSpec) -> tuple[str, str] | None:
    """The target's (username, password), or None for an open registry; PublishError, naming the field, when its
    file or mounted Secret cannot be read (a service checks this before its work, not after)."""
    registry = target.repository.split("/", 1)[0]
    if target.credentials_secret:
        return secret_credentials(target.credentials_secret, registry)
    return read_credentials(Path(target.credentials_file), registry) if target.credentials_file else None


def _push(
    target: OciTargetSpec,
    default_tag: str,
    layers: list[tuple[Path, str]],
    config: tuple[dict[str, Any], str],
    identity: dict[str, str],
    annotations: dict[str, str],
    attempts: int,
    sleep: Callable[[float], None],
) -> dict[str, str]:
    """Push ``layers`` (each a file and its media type) with ``config`` (its JSON and media type) as
    ``repository:tag``, unless the tag already holds a manifest whose annotations include ``identity``'s."""
    import requests

    repository, plain_http = target.repository, target.plain_http
    registry = repository.split("/", 1)[0]
    reference = f"{repository}:{target.tag or default_tag}"
    credentials = credentials_of(target)
    last: Exception | None = None
    for attempt in range(attempts):
        if attempt:
            sleep(2 ** (attempt - 1))
        try:
            client = _client(registry, plain_http, credentials, _probe(registry, plain_http, credentials))
            found = _existing(client, reference)
            # A manifest pushed before layouts existed has no layout annotation: it is an artifact.
            held = {TAG_PREFIX + "layout": "artifact", **(found or {}).get("annotations", {})}
            if found and identity.items() <= held.items():
                manifest_digest = _digest_of(client, reference)
                return {"reference": f"{reference}@{manifest_digest}", "digest": manifest_digest, "pushed": "false"}
            with tempfile.TemporaryDirectory() as tmp:
                config_file = Path(tmp) / "config.json"
                config_file.write_text(json.dumps(config[0], indent=2, sort_keys=True))
                response = client.push(
                    target=reference,
                    files=[f"{path}:{kind}" for path, kind in layers],
                    manifest_config=f"{config_file}:{config[1]}",
                    manifest_annotations=annotations,
                    disable_path_validation=True,
                    quiet=True,
                )
            manifest_digest = response.headers.get("Docker-Content-Digest") or _digest_of(client, reference)
            return {"reference": f"{reference}@{manifest_digest}", "digest": manifest_digest, "pushed": "true"}
        except (requests.RequestException, ValueError) as exc:
            last = exc  # unreachable, a 5xx, a cut answer, or a refused upload (oras raises ValueError): again
    raise PublishError(f"oci {repository}: failed after {attempts} attempts: {_one_line(last)}")


def _digest_of(client: Any, target: str) -> str:
    """The manifest digest the registry gives for a tag (HEAD: ``Docker-Content-Digest``)."""
    container = client.get_container(target)
    response = client.do_request(
        f"{client.prefix}://{container.manifest_url()}",
        "HEAD",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    return response.headers.get("Docker-Content-Digest", "")


def pull(reference: str, outdir: Path, plain_http: bool = False, credentials_file: Path | None = None) -> list[Path]:
    """Pull an artifact pushed by :func:`push` into ``outdir``: the adapter's files, by their titles."""
    registry = reference.split("/", 1)[0]
    credentials = read_credentials(credentials_file, registry) if credentials_file else None
    client = _client(registry, plain_http, credentials, _probe(registry, plain_http, credentials))
    outdir.mkdir(parents=True, exist_ok=True)
    return [Path(p) for p in client.pull(target=reference, outdir=str(outdir))]


def _one_line(exc: Exception | None) -> str:
    return " ".join(str(exc).split())[:300] if exc else "unknown error"
