"""Publishing to a real OCI registry (tests/registry.py: Debian's docker-registry on loopback) through ORAS:
pushed and pulled back byte for byte, annotated with the lineage, idempotent by digest, with and without basic
auth (credentials from a file), and clear refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile

import pytest
import requests

from kubetune.api.v1alpha1.datasetbuild import OciTargetSpec
from kubetune.registry.lineage import SCHEMA, record
from kubetune.registry.oci_store import (
    ADAPTER_CONFIG_MEDIA_TYPE,
    LINEAGE_MEDIA_TYPE,
    WEIGHTS_MEDIA_TYPE,
    PublishError,
    pull,
    push,
    read_credentials,
)
from tests import registry


def target(repository: str, **fields) -> OciTargetSpec:
    return OciTargetSpec.model_validate({"repository": repository, "plainHttp": True, **fields})


SPEC = {"baseModel": "models/base", "method": "lora", "objective": "sft", "dataset": {"path": "data"}}
JOB = {"kind": "FineTuneJob", "namespace": "team", "name": "tune", "uid": "f-1"}


@pytest.fixture()
def adapter(tmp_path):
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "chat_template.jinja").write_text("{{ messages }}")
    dataset = tmp_path / "dataset"
    dataset.mkdir()
    (dataset / "manifest.json").write_text(json.dumps({"digest": "sha256:d5", "resource": None}))
    lineage = record(spec=SPEC, resource=JOB, dataset_dir=dataset, adapter_dir=folder, metrics={"eval_loss": 1.5})
    return folder, lineage


def _manifest(host: str, repository: str, reference: str, auth=None) -> dict:
    response = requests.get(
        f"http://{host}/v2/{repository}/manifests/{reference}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
        auth=auth,
        timeout=10,
    )
    response.raise_for_status()
    return response.json()


def test_push_then_pull_gives_the_same_bytes_with_lineage(tmp_path, adapter):
    folder, lineage = adapter
    with registry.running(tmp_path / "registry") as reg:
        repository = f"{reg.host}/team/adapters"
        pushed = push(target(repository), folder, lineage, "docs-lora")
        assert pushed["pushed"] == "true" and pushed["digest"].startswith("sha256:")
        tag = f"adapter-{lineage['adapter']['digest'].removeprefix('sha256:')[:16]}"
        assert pushed["reference"] == f"{repository}:{tag}@{pushed['digest']}"

        pulled = pull(f"{repository}:{tag}", tmp_path / "pulled", plain_http=True)
        assert sorted(p.name for p in pulled) == sorted(p.name for p in folder.iterdir())
        for path in folder.iterdir():
            assert (tmp_path / "pulled" / path.name).read_bytes() == path.read_bytes(), path.name

        manifest = _manifest(reg.host, "team/adapters", tag)
        assert manifest["config"]["mediaType"] == LINEAGE_MEDIA_TYPE
        types = {
            layer["annotations"]["org.opencontainers.image.title"]: layer["mediaType"] for layer in manifest["layers"]
        }
        assert types == {
            "adapter_config.json": ADAPTER_CONFIG_MEDIA_TYPE,
            "adapter_model.safetensors": WEIGHTS_MEDIA_TYPE,
            "chat_template.jinja": "application/octet-stream",
        }
        notes = manifest["annotations"]
        assert notes["kubetune.dev/adapter-digest"] == lineage["adapter"]["digest"]
        assert notes["kubetune.dev/dataset-digest"] == "sha256:d5" and notes["kubetune.dev/method"] == "lora"
        assert notes["org.opencontainers.image.source"] == "kubetune://team/finetunejobs/tune"
        assert notes["org.opencontainers.image.created"] == lineage["created"]
        config = requests.get(f"http://{reg.host}/v2/team/adapters/blobs/{manifest['config']['digest']}", timeout=10)
        assert config.json()["schema"] == SCHEMA  # the whole lineage record travels as the config

        again = push(target(repository), folder, lineage, "docs-lora")
        assert (again["pushed"], again["reference"]) == ("false", pushed["reference"])  # nothing pushed twice


def test_with_basic_auth_the_credentials_come_from_a_file(tmp_path, adapter):
    folder, lineage = adapter
    with registry.running(tmp_path / "registry", username="pusher", password="s3cret-pw") as reg:
        repository = f"{reg.host}/team/adapters"
        plain = tmp_path / "plain-credentials"
        plain.write_text("pusher:s3cret-pw\n")
        pushed = push(target(repository, credentialsFile=str(plain), tag="v1"), folder, lineage, "x")
        assert pushed["pushed"] == "true"
        # A Docker config, as a kubernetes.io/dockerconfigjson Secret mounts it, works the same.
        docker = tmp_path / ".dockerconfigjson"
        auth = base64.b64encode(b"pusher:s3cret-pw").decode()
        docker.write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
        pulled = pull(f"{repository}:v1", tmp_path / "pulled", plain_http=True, credentials_file=docker)
        assert {p.name for p in pulled} == {p.name for p in folder.iterdir()}

        with pytest.raises(PublishError, match=r"401: it wants credentials \(credentialsFile\)"):
            push(target(repository, tag="v2"), folder, lineage, "x")
        wrong = tmp_path / "wrong"
        wrong.write_text("pusher:not-it")
        with pytest.raises(PublishError) as refused:
            push(target(repository, credentialsFile=str(wrong), tag="v2"), folder, lineage, "x")
        assert "401: the credentials were refused" in str(refused.value) and "not-it" not in str(refused.value)
        assert _manifest(reg.host, "team/adapters", "v1", auth=("pusher", "s3cret-pw"))  # v1 there, v2 never pushed
        with pytest.raises(requests.HTTPError):
            _manifest(reg.host, "team/adapters", "v2", auth=("pusher", "s3cret-pw"))


def test_a_registry_that_is_down_is_retried_then_named(tmp_path, adapter):
    folder, lineage = adapter
    waits: list[float] = []
    port = registry._free_port()  # nothing listens there
    with pytest.raises(PublishError) as failed:
        push(target(f"127.0.0.1:{port}/team/adapters"), folder, lineage, "x", attempts=3, sleep=waits.append)
    assert waits == [1, 2]  # backoff between the three attempts
    assert str(failed.value).startswith(f"oci 127.0.0.1:{port}/team/adapters: failed after 3 attempts: ")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param("user:pa:ss\n", ("user", "pa:ss"), id="plain"),
        pytest.param(
            json.dumps({"auths": {"r.example:5000": {"username": "u", "password": "p"}}}),
            ("u", "p"),
            id="docker-config-fields",
        ),
        pytest.param("just-a-token", "expected username:password or a Docker config", id="neither"),
        pytest.param(
            json.dumps({"auths": {"other": {"auth": "eDp5"}}}),
            "no auths entry for r.example:5000",
            id="docker-config-other-registry",
        ),
        pytest.param(
            json.dumps({"auths": {"r.example:5000": {"auth": "not base64!"}}}),
            r"auths\[r.example:5000\].auth is not base64 of username:password",
            id="docker-config-auth-not-base64",
        ),
    ],
)
def test_read_credentials(tmp_path, content, expected):
    path = tmp_path / "credentials"
    path.write_text(content)
    if isinstance(expected, tuple):
        assert read_credentials(path, "r.example:5000") == expected
    else:
        with pytest.raises(PublishError, match=expected):
            read_credentials(path, "r.example:5000")


def test_credentials_from_a_mounted_secret(tmp_path, monkeypatch):
    from kubetune.registry.oci_store import secret_credentials

    monkeypatch.setenv("KUBETUNE_SECRETS_DIR", str(tmp_path))
    keys = tmp_path / "oci" / "plain"
    keys.mkdir(parents=True)
    (keys / "username").write_text("u\n")
    (keys / "password").write_text("p\n")
    assert secret_credentials("plain", "r.example") == ("u", "p")
    docker = tmp_path / "oci" / "docker"
    docker.mkdir()
    (docker / ".dockerconfigjson").write_text(json.dumps({"auths": {"r.example": {"auth": "dTI6cDI="}}}))
    assert secret_credentials("docker", "r.example") == ("u2", "p2")
    with pytest.raises(PublishError, match=r"credentialsSecret gone: nothing at .*/oci/gone: does the Secret exist"):
        secret_credentials("gone", "r.example")


def test_a_dataset_is_pushed_with_its_manifest_as_config_and_pulled_back_whole(tmp_path, monkeypatch):
    """What ``python -m kubetune.datagen`` does after writing a dataset with ``publish.oci`` set."""
    from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
    from kubetune.datagen.__main__ import publish as publish_dataset

    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.parquet").write_bytes(b"PAR1 train PAR1")
    (folder / "test.parquet").write_bytes(b"PAR1 test PAR1")
    (folder / "README.md").write_text("# card\n")
    (folder / "funnel.png").write_bytes(b"\x89PNG funnel")
    (folder / "stages").mkdir()  # kept for resume, not published
    build = {"kind": "DatasetBuild", "namespace": "team", "name": "docs", "uid": "b-1"}
    manifest = {"name": "docs", "type": "instruction", "createdAt": "2026-01-01T00:00:00Z", "resource": build,
                "digest": "sha256:" + "ab" * 32,
                "files": {"train.parquet": {"rows": 16}, "test.parquet": {"rows": 2}}}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with registry.running(tmp_path / "registry") as reg:
        spec = DatasetBuildSpec.model_validate(
            {"source": {"paths": ["x"]}, "generation": {"model": "m"},
             "publish": {"oci": [{"repository": f"{reg.host}/team/datasets", "plainHttp": True}]}}
        )  # fmt: skip
        (published,) = publish_dataset(spec, folder, manifest)
        assert published["target"] == "oci" and published["digest"] == manifest["digest"]
        assert published["reference"].startswith(f"{reg.host}/team/datasets:dataset-{'ab' * 8}@sha256:")
        tag = published["reference"].split("@")[0]
        pulled = pull(tag, tmp_path / "pulled", plain_http=True)
        assert {p.name: p.read_bytes() for p in pulled} == {
            p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != "publish.json"
        }
        notes = _manifest(reg.host, "team/datasets", tag.rsplit(":", 1)[1])
        assert notes["config"]["mediaType"] == "application/vnd.kubetune.dataset.manifest.v1+json"
        assert notes["annotations"]["kubetune.dev/rows-train"] == "16"
        assert notes["annotations"]["org.opencontainers.image.source"] == "kubetune://team/datasetbuilds/docs"
        assert {layer["mediaType"] for layer in notes["layers"]} == {
            "application/vnd.apache.parquet", "application/json", "text/markdown", "image/png"
        }  # fmt: skip
        assert publish_dataset(spec, folder, manifest) == [published]  # the same dataset: nothing pushed twice
    assert json.loads((folder / "publish.json").read_text())["published"] == [published]


def test_a_registry_with_token_auth_gets_a_push_token_after_a_pull_token(tmp_path, adapter):
    """Bearer-token auth as GHCR, Docker Hub and Harbor do it: the registry answers 401 with the scope a request
    needs, the client gets a token for that scope from the token service. The push first reads the tag (a pull
    scope), then uploads (pull and push): the token held must be replaced, not offered again."""
    folder, lineage = adapter
    with registry.running(tmp_path / "registry", username="pusher", password="t0ken-pw", token_auth=True) as reg:
        repository = f"{reg.host}/team/adapters"
        credentials = tmp_path / "credentials"
        credentials.write_text("pusher:t0ken-pw")
        pushed = push(target(repository, credentialsFile=str(credentials)), folder, lineage, "docs-lora")
        assert pushed["pushed"] == "true"
        # The actions of each scope asked for (the registry names them in either order).
        asked = [set(scope.rsplit(":", 1)[1].split(",")) for grant in reg.tokens.granted for scope in grant]
        assert {"pull"} in asked and {"pull", "push"} in asked
        again = push(target(repository, credentialsFile=str(credentials)), folder, lineage, "docs-lora")
        assert (again["pushed"], again["reference"]) == ("false", pushed["reference"])
        pulled = pull(pushed["reference"].split("@")[0], tmp_path / "pulled", credentials_file=credentials,
                      plain_http=True)  # fmt: skip
        assert {p.name: p.read_bytes() for p in pulled} == {p.name: p.read_bytes() for p in folder.iterdir()}
        wrong = tmp_path / "wrong"
        wrong.write_text("pusher:not-it")
        with pytest.raises(PublishError, match="401: the credentials were refused"):
            push(target(repository, credentialsFile=str(wrong), tag="v2"), folder, lineage, "x")


SKOPEO = shutil.which("skopeo")


def test_the_kaito_layout_is_an_image_that_kaitos_puller_unpacks_to_the_adapter(tmp_path, adapter):
    """layout: kaito, consumed as KAITO's adapter puller does (pkg/workspace/image/puller.sh): skopeo inspects it as
    an image, copies it with --dest-decompress, every layer is untarred, and data/ becomes the adapter folder."""
    assert SKOPEO is not None, "skopeo is not installed: `make setup` installs it (Debian's skopeo)"
    folder, lineage = adapter
    with registry.running(tmp_path / "registry") as reg:
        repository = f"{reg.host}/team/adapters"
        pushed = push(target(repository, layout="kaito"), folder, lineage, "docs-lora")
        tag = f"adapter-{lineage['adapter']['digest'].removeprefix('sha256:')[:16]}-kaito"
        assert pushed["pushed"] == "true" and pushed["reference"].startswith(f"{repository}:{tag}@")
        image = f"docker://{repository}:{tag}"
        inspected = subprocess.run([SKOPEO, "inspect", "--tls-verify=false", image], capture_output=True,
                                   text=True, check=True)  # fmt: skip
        assert len(json.loads(inspected.stdout)["Layers"]) == 1  # an image to skopeo, not an artifact it refuses
        copied = tmp_path / "copied"
        subprocess.run([SKOPEO, "copy", "--src-tls-verify=false", "--dest-decompress", image, f"dir:{copied}"],
                       capture_output=True, check=True)  # fmt: skip
        manifest = json.loads((copied / "manifest.json").read_text())
        rootfs = tmp_path / "rootfs"
        rootfs.mkdir()
        for layer in manifest["layers"]:
            with tarfile.open(copied / layer["digest"].removeprefix("sha256:")) as tar:
                tar.extractall(rootfs, filter="data")
        assert {p.name: p.read_bytes() for p in (rootfs / "data").iterdir()} == {
            p.name: p.read_bytes() for p in folder.iterdir()
        }
        assert json.loads((rootfs / "kubetune" / "lineage.json").read_text()) == lineage
        # The image config names the layer by its uncompressed digest, as the image spec asks.
        config = json.loads((copied / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
        layer = (copied / manifest["layers"][0]["digest"].removeprefix("sha256:")).read_bytes()
        assert config["rootfs"]["diff_ids"] == ["sha256:" + hashlib.sha256(layer).hexdigest()]

        # The same adapter: nothing pushed again. Its artifact beside it: another tag, pushed.
        again = push(target(repository, layout="kaito"), folder, lineage, "docs-lora")
        assert (again["pushed"], again["reference"]) == ("false", pushed["reference"])
        artifact = push(target(repository), folder, lineage, "docs-lora")
        assert artifact["pushed"] == "true" and artifact["digest"] != pushed["digest"]


def test_a_dataset_is_never_pushed_in_the_kaito_layout():
    from kubetune.api.v1alpha1.datasetbuild import DatasetPublishSpec

    with pytest.raises(ValueError, match="layout kaito is an adapter image"):
        DatasetPublishSpec.model_validate({"oci": [{"repository": "r.example/d", "layout": "kaito"}]})
