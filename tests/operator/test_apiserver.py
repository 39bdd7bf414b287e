"""The test API server refuses and changes what a real kube-apiserver refuses and changes (over HTTP, with
the official client), so the operator tests cannot pass against an API more lenient than a cluster's."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.error
import urllib.request

import pytest
from kubernetes.client.exceptions import ApiException

from tests.conftest import with_field
from tests.operator.cluster import Cluster
from tests.operator.test_operator import DSB


def _variant(path: str, value) -> dict:
    return with_field(DSB, path, value)


@pytest.mark.parametrize(
    ("path", "value", "status", "fragment"),
    [
        pytest.param("spec.chunking.minChars", "1000", 422, "spec.chunking.minChars", id="type"),
        pytest.param("spec.chunking.maxChars", 10, 422, "minChars must not exceed maxChars", id="cel"),
        pytest.param("spec.generation.pairsPerChunk", 99, 422, "spec.generation.pairsPerChunk", id="bound"),
        pytest.param("spec.generation.modell", "x", 400, 'unknown field "spec.generation.modell"', id="unknown"),
        pytest.param("metadata.name", "a.b", 422, "metadata.name must be a DNS label", id="name"),
    ],
)
def test_create_refuses_what_a_real_server_refuses(api, path, value, status, fragment):
    async def scenario(cluster: Cluster):
        with pytest.raises(ApiException) as info:
            await cluster.apply(_variant(path, value))
        assert info.value.status == status
        assert fragment in json.loads(info.value.body)["message"]

    api(scenario)


def test_defaults_generation_and_the_status_subresource(api):
    async def scenario(cluster: Cluster):
        created = await cluster.apply(_variant("spec.generation.temperature", None))
        meta = created["metadata"]
        assert meta["generation"] == 1 and meta["uid"] and meta["resourceVersion"]
        assert created["spec"]["generation"]["temperature"] == 0.7  # null pruned, default applied
        assert created["spec"]["cleaning"] == {"minDocumentChars": 200, "stripMarkdown": True}
        assert "status" not in created

        # Status sent to the main resource is ignored; so is a change of nothing but metadata, for generation.
        labelled = await cluster.patch(
            "DatasetBuild", "docs", {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "X"}}
        )
        assert labelled["metadata"]["generation"] == 1 and "status" not in labelled
        assert int(labelled["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

        # A status write changes status only, and never the generation.
        from kubernetes import client

        status = await asyncio.to_thread(
            client.CustomObjectsApi().patch_namespaced_custom_object_status,
            "kubetune.dev", "v1alpha1", "default", "datasetbuilds", "docs",
            {"status": {"phase": "Running"}, "spec": {"split": {"seed": 8}}},
        )  # fmt: skip
        assert status["status"]["phase"] == "Running"
        assert status["spec"]["split"]["seed"] == 42 and status["metadata"]["generation"] == 1
        # An update has only what it changed validated again (ratcheting): a bad status write is still refused.
        with pytest.raises(ApiException) as info:
            await asyncio.to_thread(
                client.CustomObjectsApi().patch_namespaced_custom_object_status,
                "kubetune.dev", "v1alpha1", "default", "datasetbuilds", "docs", {"status": {"phase": "Done"}},
            )  # fmt: skip
        assert (
            info.value.status == 422 and "status.phase: Invalid value: 'Done'" in json.loads(info.value.body)["message"]
        )

        # The spec is immutable (a CEL transition rule); an update must pass the schema and every rule.
        with pytest.raises(ApiException) as info:
            await cluster.patch("DatasetBuild", "docs", {"spec": {"chunking": {"minChars": 5000}}})
        message = json.loads(info.value.body)["message"]
        assert info.value.status == 422
        assert "minChars must not exceed maxChars" in message and "spec is immutable once created" in message
        # ... all of it but suspend: adding or removing an optional field is a change too.
        for edit in ({"queueName": "team-a"}, {"nodeSelector": {"gpu": "a100"}}, {"split": {"seed": 7}}):
            with pytest.raises(ApiException) as info:
                await cluster.patch("DatasetBuild", "docs", {"spec": edit})
            assert "spec is immutable once created, except suspend" in json.loads(info.value.body)["message"], edit
        suspended = await cluster.patch("DatasetBuild", "docs", {"spec": {"suspend": True}})
        assert suspended["spec"]["suspend"] is True and suspended["metadata"]["generation"] == 2

        # A spec change bumps the generation (a Job's spec may change: suspend).
        job = {
            "metadata": {"name": "j"},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "i"}]}}},
        }
        created = await asyncio.to_thread(client.BatchV1Api().create_namespaced_job, "default", job)
        assert created.metadata.generation == 1
        raw = await asyncio.to_thread(
            client.BatchV1Api().patch_namespaced_job,
            "j",
            "default",
            {"spec": {"suspend": True}},
            _preload_content=False,
        )
        assert json.loads(raw.data)["metadata"]["generation"] == 2

    api(scenario)


def test_every_request_is_recorded_with_its_user_and_verb(api):
    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        await cluster.get("DatasetBuild", "docs")
        await cluster.jobs()
        records = {(r.user, r.verb, r.group, r.resource, r.subresource) for r in cluster.api.audit}
        assert ("admin", "create", "kubetune.dev", "datasetbuilds", None) in records
        assert ("admin", "get", "kubetune.dev", "datasetbuilds", None) in records
        assert ("admin", "list", "batch", "jobs", None) in records

    api(scenario)


def test_built_in_objects_are_checked_against_the_kubernetes_schema(api):
    async def scenario(cluster: Cluster):
        def post(body: dict) -> tuple[int, dict]:
            request = urllib.request.Request(
                f"{str(cluster.api.url).rstrip('/')}/api/v1/namespaces/default/configmaps",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json", "Authorization": "Bearer admin"},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())

        status, body = await asyncio.to_thread(post, {"metadata": {"name": "cm"}, "data": {"a": "b"}, "dataa": {}})
        assert status == 422 and "dataa" in body["message"]
        status, body = await asyncio.to_thread(post, {"metadata": {"name": "cm"}, "data": {"a": "b"}})
        assert status in (200, 201) and body["kind"] == "ConfigMap" and body["metadata"]["uid"]

    api(scenario)


def test_a_list_honours_an_equality_label_selector_and_its_namespace(api):
    from kubernetes import client

    async def scenario(cluster: Cluster):
        core = client.CoreV1Api()
        for namespace, name, labels in [("default", "a", {"job-name": "x"}), ("default", "b", {"job-name": "y"}),
                                        ("team", "c", {"job-name": "x"}), ("default", "d", {})]:  # fmt: skip
            body = {"metadata": {"name": name, "labels": labels}, "data": {}}
            await asyncio.to_thread(core.create_namespaced_config_map, namespace, body)

        async def names(selector: str | None, namespace: str = "default") -> list[str]:
            kwargs = {"label_selector": selector} if selector else {}
            found = await asyncio.to_thread(core.list_namespaced_config_map, namespace, **kwargs)
            return sorted(item.metadata.name for item in found.items)

        assert await names(None) == ["a", "b", "d"]
        assert await names("job-name=x") == ["a"]
        assert await names("job-name==x", namespace="team") == ["c"]
        assert await names("job-name!=x") == ["b", "d"]
        assert await names("job-name") == ["a", "b"]
        assert await names("!job-name") == ["d"]
        with pytest.raises(ApiException) as refused:
            await names("job-name in (x, y)")
        assert refused.value.status == 400

    api(scenario)


def test_a_list_after_deletions_and_creations_shows_what_exists(api):
    """A deleted object leaves the list and a name used again comes back, through the server's list index (kmock
    keeps a deleted object's key, marked deleted; the index never forgets a key)."""
    from kubernetes import client

    async def scenario(cluster: Cluster):
        core = client.CoreV1Api()

        async def create(name: str) -> None:
            body = {"metadata": {"name": name}, "data": {}}
            await asyncio.to_thread(core.create_namespaced_config_map, "default", body)

        async def names() -> list[str]:
            found = await asyncio.to_thread(core.list_namespaced_config_map, "default")
            return sorted(item.metadata.name for item in found.items)

        for name in ("a", "b"):
            await create(name)
        assert await names() == ["a", "b"]
        await asyncio.to_thread(core.delete_namespaced_config_map, "a", "default")
        await create("c")
        assert await names() == ["b", "c"]
        await create("a")  # the same name again
        assert await names() == ["a", "b", "c"]

    api(scenario)


OBJ = {"metadata": {"name": "n", "resourceVersion": "7"}, "oci": [{"layout": "x"}], "status": {"phase": "Running"}}


@pytest.mark.parametrize(
    ("rule", "reads", "seen"),
    [
        pytest.param(
            "size(self.metadata.name) <= 63 && self.metadata.name.matches('^a')",
            [["metadata", "name"]] * 2,
            {"metadata": {"name": "n"}},
            id="a-method-call-is-not-a-field",
        ),
        pytest.param("self.oci.all(t, !has(t.layout))", [["oci"]], {"oci": OBJ["oci"]}, id="a-macro"),
        pytest.param("has(self.a) ? self.a == oldSelf.a : true", [["a"]] * 3, {}, id="transition"),
        pytest.param("type(self) == int ? self >= 0 : self in ['auto']", None, OBJ, id="self-as-a-whole"),
        pytest.param("self == oldSelf", None, OBJ, id="equality-of-wholes"),
    ],
)
def test_a_cel_rule_is_given_the_fields_it_reads(rule, reads, seen):
    """The server evaluates a rule on only the fields it reads (and keeps the result by them): which those are."""
    from tests.operator.apiserver import _fields_read, _narrowed

    assert _fields_read(rule) == reads
    assert _narrowed(OBJ, reads) == seen


def test_a_kept_cel_result_is_not_reused_for_another_value(api):
    """Rule results are kept by the values the rule reads: a name refused once is refused again, a valid object
    after an invalid one is admitted, and after status writes a rule still refuses a bad edit."""

    async def scenario(cluster: Cluster):
        for _ in range(2):
            with pytest.raises(ApiException) as info:
                await cluster.apply(_variant("metadata.name", "a.b"))
            assert "metadata.name must be a DNS label" in json.loads(info.value.body)["message"]
        await cluster.apply(copy.deepcopy(DSB))
        for phase in ("Pending", "Running"):
            await asyncio.to_thread(cluster.custom.patch_namespaced_custom_object_status, "kubetune.dev", "v1alpha1",
                                    "default", "datasetbuilds", DSB["metadata"]["name"],
                                    {"status": {"phase": phase}})  # fmt: skip
        with pytest.raises(ApiException) as info:
            await asyncio.to_thread(cluster.custom.patch_namespaced_custom_object, "kubetune.dev", "v1alpha1",
                                    "default", "datasetbuilds", DSB["metadata"]["name"],
                                    {"spec": {"chunking": {"maxChars": 10}}})  # fmt: skip
        assert "minChars must not exceed maxChars" in json.loads(info.value.body)["message"]

    api(scenario)
