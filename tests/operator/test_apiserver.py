"""The test API server refuses and changes what a real kube-apiserver refuses and changes (over HTTP, with
the official client), so the operator tests cannot pass against an API more lenient than a cluster's."""

from __future__ import annotations

import asyncio
import copy
import json
import urllib.error
import urllib.parse
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

        status, body = await asyncio.to_thread(post, {"metadata": {"name": "cm"}, "data": {"a": 1}})
        assert status == 422 and "data.a" in body["message"]
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


def _request(cluster: Cluster, verb: str, path: str, body, content_type: str = "application/json", **params):
    """One raw HTTP request as user admin: (status, JSON answer, Warning headers)."""
    query = ("?" + urllib.parse.urlencode(params)) if params else ""
    request = urllib.request.Request(
        f"{str(cluster.api.url).rstrip('/')}{path}{query}",
        data=(body if isinstance(body, bytes) else json.dumps(body).encode()),
        method=verb,
        headers={"Content-Type": content_type, "Authorization": "Bearer admin", "User-Agent": "tester/1.0"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read()), response.headers.get_all("Warning") or []
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), exc.headers.get_all("Warning") or []


DSB_PATH = "/apis/kubetune.dev/v1alpha1/namespaces/default/datasetbuilds/docs"
JSON_PATCH, MERGE_PATCH = "application/json-patch+json", "application/merge-patch+json"
APPLY, STRATEGIC = "application/apply-patch+yaml", "application/strategic-merge-patch+json"
SUSPEND = {"spec": {"suspend": True}}
OPTIONS = 'PatchOptions.meta.k8s.io "" is invalid: '
UNSUPPORTED = (
    "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, "
    "application/merge-patch+json, application/apply-patch+yaml"
)


def test_a_list_sent_as_a_merge_patch_is_refused_as_kube_apiserver_refuses_it(api):
    """The operator's guarded status write, sent as the Python client sends a list by default (merge patch): a
    real server decodes a merge patch into an object and answers 400. Sent as a JSON patch, it applies."""
    from kubernetes import client

    guarded = [{"op": "test", "path": "/status/phase", "value": "Pending"},
               {"op": "add", "path": "/status/phase", "value": "Running"}]  # fmt: skip

    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        custom = client.CustomObjectsApi()
        args = ("kubetune.dev", "v1alpha1", "default", "datasetbuilds", "docs")
        await asyncio.to_thread(custom.patch_namespaced_custom_object_status, *args, {"status": {"phase": "Pending"}})
        with pytest.raises(ApiException) as info:
            await asyncio.to_thread(custom.patch_namespaced_custom_object_status, *args, guarded)
        assert info.value.status == 400
        assert json.loads(info.value.body)["message"] == (
            "error decoding patch: json: cannot unmarshal array into Go value of type map[string]interface {}"
        )
        written = await asyncio.to_thread(
            custom.patch_namespaced_custom_object_status, *args, guarded, _content_type=JSON_PATCH
        )
        assert written["status"]["phase"] == "Running"
        # The same test again fails: 422, with the generic message that replaces the patch library's.
        with pytest.raises(ApiException) as info:
            await asyncio.to_thread(
                custom.patch_namespaced_custom_object_status, *args, guarded, _content_type=JSON_PATCH
            )
        answer = json.loads(info.value.body)
        assert (info.value.status, answer["reason"]) == (422, "Invalid")
        assert answer["message"] == "the server rejected our request due to an error in our request"

    api(scenario)


@pytest.mark.parametrize(
    ("content_type", "body", "params", "status", "message"),
    [
        pytest.param(STRATEGIC, SUSPEND, {}, 415, UNSUPPORTED, id="strategic-merge-on-a-cr"),
        pytest.param("text/plain", SUSPEND, {}, 415, UNSUPPORTED, id="unknown-type"),
        pytest.param(JSON_PATCH, SUSPEND, {}, 400,
                     "error decoding patch: json: cannot unmarshal object into Go value of type []handlers.jsonPatchOp",
                     id="object-as-json-patch"),
        pytest.param(JSON_PATCH, SUSPEND, {"fieldValidation": "Ignore"}, 400,
                     "json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                     id="object-as-json-patch-ignore"),
        pytest.param(JSON_PATCH, [{"op": "replace", "path": "/spec/nothere/x", "value": 1}], {}, 422,
                     "the server rejected our request due to an error in our request", id="json-patch-path-missing"),
        pytest.param(APPLY, {"apiVersion": "kubetune.dev/v1alpha1", "kind": "DatasetBuild"}, {}, 422,
                     f"{OPTIONS}fieldManager: Required value: is required for apply patch",
                     id="apply-without-a-field-manager"),
        pytest.param(MERGE_PATCH, SUSPEND, {"force": "true"}, 422,
                     f"{OPTIONS}force: Forbidden: may not be specified for non-apply patch",
                     id="force-on-a-merge-patch"),
        pytest.param(MERGE_PATCH, SUSPEND, {"fieldValidation": "Bogus"}, 422,
                     'fieldValidation: Unsupported value: "Bogus": supported values: "Ignore", "Strict", "Warn"',
                     id="bad-field-validation"),
        pytest.param(MERGE_PATCH, {"metadata": {"resourceVersion": "99999"}, **SUSPEND}, {}, 409,
                     'Operation cannot be fulfilled on datasetbuilds.kubetune.dev "docs": the object has been '
                     "modified; please apply your changes to the latest version and try again",
                     id="stale-resource-version"),
    ],
)  # fmt: skip
def test_a_patch_is_refused_as_the_patch_handler_refuses_it(api, content_type, body, params, status, message):
    async def scenario(cluster: Cluster):
        await cluster.apply(copy.deepcopy(DSB))
        code, answer, _ = await asyncio.to_thread(_request, cluster, "PATCH", DSB_PATH, body, content_type, **params)
        assert code == status and message in answer["message"], answer
        stored = await cluster.get("DatasetBuild", "docs")
        assert "suspend" not in stored["spec"] or stored["spec"]["suspend"] is False  # nothing written

    api(scenario)


def test_a_built_in_kind_takes_a_strategic_merge_patch(api):
    async def scenario(cluster: Cluster):
        path = "/api/v1/namespaces/default/configmaps"
        code, _, _ = await asyncio.to_thread(_request, cluster, "POST", path, {"metadata": {"name": "cm"}})
        assert code == 201
        code, answer, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", f"{path}/cm", {"data": {"a": "b"}}, STRATEGIC
        )
        assert code == 200 and answer["data"] == {"a": "b"}

    api(scenario)


def test_an_update_must_name_the_resource_version_it_replaces(api):
    """A custom resource cannot be updated unconditionally (customResourceStrategy.AllowUnconditionalUpdate);
    an update of an older version is a conflict."""

    async def scenario(cluster: Cluster):
        created = await cluster.apply(copy.deepcopy(DSB))
        body = copy.deepcopy(created)
        del body["metadata"]["resourceVersion"]
        code, answer, _ = await asyncio.to_thread(_request, cluster, "PUT", DSB_PATH, body)
        assert (
            code == 422
            and "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update" in (answer["message"])
        )
        body["metadata"]["labels"] = {"a": "b"}
        code, answer, _ = await asyncio.to_thread(
            _request, cluster, "PUT", DSB_PATH, {**body, "metadata": {**body["metadata"], "resourceVersion": "99999"}}
        )
        assert code == 409 and answer["reason"] == "Conflict" and "the object has been modified" in answer["message"]
        current = {**body, "metadata": {**body["metadata"], "resourceVersion": created["metadata"]["resourceVersion"]}}
        code, answer, _ = await asyncio.to_thread(_request, cluster, "PUT", DSB_PATH, current)
        assert code == 200 and answer["metadata"]["labels"] == {"a": "b"} and answer["metadata"]["generation"] == 1
        # ... and a write of the version it just replaced is now stale.
        code, _, _ = await asyncio.to_thread(_request, cluster, "PUT", DSB_PATH, current)
        assert code == 409

    api(scenario)


@pytest.mark.parametrize(
    ("directive", "status", "warnings"),
    [
        pytest.param("Strict", 400, [], id="strict"),
        pytest.param(None, 201, ['299 - "unknown field \\"spec.generation.modell\\""'], id="warn-by-default"),
        pytest.param("Ignore", 201, [], id="ignore"),
    ],
)
def test_unknown_fields_follow_the_field_validation_directive(api, directive, status, warnings):
    async def scenario(cluster: Cluster):
        params = {"fieldValidation": directive} if directive else {}
        path = DSB_PATH.rsplit("/", 1)[0]
        code, answer, headers = await asyncio.to_thread(
            _request, cluster, "POST", path, _variant("spec.generation.modell", "x"), **params
        )
        assert (code, headers) == (status, warnings), answer
        if code == 400:
            assert answer["message"] == 'strict decoding error: unknown field "spec.generation.modell"'
        else:
            assert "modell" not in answer["spec"]["generation"]  # pruned, as the CRD's structural schema prunes
        # A built-in kind alike.
        cm = {"metadata": {"name": "cm"}, "data": {"a": "b"}, "dataa": {}}
        code, answer, headers = await asyncio.to_thread(
            _request, cluster, "POST", "/api/v1/namespaces/default/configmaps", cm, **params
        )
        assert code == status and len(headers) == len(warnings)
        assert "dataa" in (answer["message"] if code == 400 else headers[0] if headers else "dataa")
        if code != 400:
            assert "dataa" not in answer

    api(scenario)


def test_managed_fields_say_who_set_what(api):
    """managedFields as the field manager keeps them: the creator owns what it sent; an update takes the fields
    it changed; a status write is recorded with its subresource; server-side apply conflicts with another
    owner's field unless forced, and drops a field it no longer applies."""

    def owners(obj: dict) -> dict:
        return {
            (e["manager"], e["operation"], e.get("subresource")): e["fieldsV1"]
            for e in obj["metadata"]["managedFields"]
        }

    async def scenario(cluster: Cluster):
        path = DSB_PATH.rsplit("/", 1)[0]
        code, created, _ = await asyncio.to_thread(
            _request, cluster, "POST", path, copy.deepcopy(DSB), fieldManager="kubectl-create"
        )
        assert code == 201
        creator = owners(created)[("kubectl-create", "Update", None)]
        assert "f:suspend" in creator["f:spec"] and "f:chunking" in creator["f:spec"]  # defaults are the creator's
        assert "f:name" not in creator.get("f:metadata", {})  # identity is nobody's

        code, suspended, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH, {"spec": {"suspend": True}}, MERGE_PATCH
        )
        assert owners(suspended)[("tester", "Update", None)] == {"f:spec": {"f:suspend": {}}}  # the User-Agent's
        assert "f:suspend" not in owners(suspended)[("kubectl-create", "Update", None)]["f:spec"]
        code, status, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH + "/status", {"status": {"phase": "Pending"}}, MERGE_PATCH,
            fieldManager="kubetune-operator",
        )  # fmt: skip
        assert "f:phase" in owners(status)[("kubetune-operator", "Update", "status")]["f:status"]

        def applied(labels: dict) -> dict:
            return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "DatasetBuild",
                    "metadata": {"name": "docs", "labels": labels}}  # fmt: skip

        code, _, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH, applied({"team": "a", "tier": "x"}), APPLY, fieldManager="gitops"
        )
        assert code == 200
        code, answer, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH, applied({"team": "b"}), APPLY, fieldManager="argo"
        )
        assert code == 409 and answer["message"] == (
            'Apply failed with 1 conflict: conflict with "gitops" using kubetune.dev/v1alpha1: .metadata.labels.team'
        )
        code, forced, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH, applied({"team": "b"}), APPLY, fieldManager="argo", force="true"
        )
        assert code == 200 and forced["metadata"]["labels"] == {"team": "b", "tier": "x"}
        assert owners(forced)[("gitops", "Apply", None)] == {"f:metadata": {"f:labels": {"f:tier": {}}}}
        # gitops stops applying its label: nobody else owns it, so it goes.
        code, dropped, _ = await asyncio.to_thread(
            _request, cluster, "PATCH", DSB_PATH, applied({}), APPLY, fieldManager="gitops"
        )
        assert code == 200 and dropped["metadata"]["labels"] == {"team": "b"}

    api(scenario)
