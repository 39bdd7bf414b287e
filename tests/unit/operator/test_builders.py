"""The Job a resource gets: its own scheduling fields over the operator's pod defaults, and Kueue's queueing."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetune.api.v1alpha1 import load_resources
from kubetune.api.v1alpha1.resources import Resource
from kubetune_operator import builders
from kubetune_operator.constants import QUEUE_LABEL, Settings

BASE_SPEC = {
    "DatasetBuild": {"source": {"paths": ["corpus"]}, "generation": {"model": "/models/m"}},
    "FineTuneJob": {"baseModel": "/models/m", "dataset": {"path": "/data/d"}},
}
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
POD_DEFAULTS = {
    "imagePullSecrets": [{"name": "regcred"}],
    "serviceAccountName": "kubetune-workload",
    "datagen": {"nodeSelector": {"pool": "inference"}},
    "trainer": {
        "nodeSelector": {"nvidia.com/gpu.present": "true", "pool": "training"},
        "tolerations": [GPU_TAINT],
        "resources": {"limits": {"nvidia.com/gpu": "1"}},
    },
}


def resource(kind: str, **fields) -> Resource:
    doc = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "docs", "namespace": "team"},
        "spec": {**BASE_SPEC[kind], **fields},
    }
    (parsed,) = load_resources(yaml.safe_dump(doc))
    return parsed


def job_of(res: Resource, pod_defaults: dict | None = None) -> dict:
    settings = Settings(storage_root="/data", pod_defaults=POD_DEFAULTS if pod_defaults is None else pod_defaults)
    return builders.job(res, settings, dataset="/data/d" if res.kind == "FineTuneJob" else None)


# (kind, spec fields, pod fields expected; None: absent from the pod)
CASES = {
    "defaults-alone": (
        "FineTuneJob",
        {},
        {
            "nodeSelector": {"nvidia.com/gpu.present": "true", "pool": "training"},
            "tolerations": [GPU_TAINT],
            "imagePullSecrets": [{"name": "regcred"}],
            "serviceAccountName": "kubetune-workload",
            "priorityClassName": None,
        },
    ),
    "node-selector-merged-spec-keys-win": (
        "FineTuneJob",
        {"nodeSelector": {"pool": "team-a", "zone": "b"}},
        {"nodeSelector": {"nvidia.com/gpu.present": "true", "pool": "team-a", "zone": "b"}},
    ),
    "tolerations-appended-to-the-defaults": (
        "FineTuneJob",
        {"tolerations": [{"key": "team", "value": "a", "effect": "NoSchedule"}]},
        {"tolerations": [GPU_TAINT, {"key": "team", "operator": "Equal", "value": "a", "effect": "NoSchedule"}]},
    ),
    "toleration-seconds-rendered": (
        "DatasetBuild",
        {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]},
        {"tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]},
    ),
    "image-pull-secrets-rendered-replace-the-default": (
        "DatasetBuild",
        {"imagePullSecrets": ["team-registry", "mirror"]},
        {"imagePullSecrets": [{"name": "team-registry"}, {"name": "mirror"}]},
    ),
    "empty-image-pull-secrets-clear-the-default": (
        "DatasetBuild",
        {"imagePullSecrets": []},
        {"imagePullSecrets": None},
    ),
    "service-account-and-priority-from-the-spec": (
        "FineTuneJob",
        {"serviceAccountName": "tuner", "priorityClassName": "batch-low"},
        {"serviceAccountName": "tuner", "priorityClassName": "batch-low", "automountServiceAccountToken": False},
    ),
    "datagen-gets-its-own-kind-of-defaults": (
        "DatasetBuild",
        {"nodeSelector": {"zone": "b"}},
        {"nodeSelector": {"pool": "inference", "zone": "b"}, "tolerations": None},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_spec_scheduling_over_pod_defaults(case):
    kind, fields, expected = CASES[case]
    pod = job_of(resource(kind, **fields))["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False  # whichever ServiceAccount: the pods never call the API
    for key, value in expected.items():
        assert pod.get(key) == value, (key, pod.get(key))


@pytest.mark.parametrize(
    ("kind", "fields", "pod_defaults", "expected"),
    [
        pytest.param("DatasetBuild", {}, {}, None, id="datagen-none"),
        pytest.param(
            "DatasetBuild",
            {"resources": {"gpus": 1, "memory": "24Gi"}},
            {},
            {"requests": {"memory": "24Gi", "nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
            id="datagen-gpus-for-vllm",
        ),
        pytest.param(
            "DatasetBuild",
            {"resources": {"gpus": 2}},
            {"datagen": {"resources": {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "4"}}}},
            {"requests": {"cpu": "4", "nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
            id="datagen-gpus-over-the-default",
        ),
        pytest.param(
            "DatasetBuild",
            {"generation": {"model": "/models/m", "tensorParallelSize": 4}},
            {"datagen": {"resources": {"limits": {"nvidia.com/gpu": "1"}}}},
            {"requests": {"nvidia.com/gpu": "4"}, "limits": {"nvidia.com/gpu": "4"}},
            id="datagen-gpus-as-many-as-the-engine-spans",
        ),
        pytest.param(
            "DatasetBuild",
            {"generation": {"model": "/models/m", "tensorParallelSize": 2}, "resources": {"gpus": "auto"}},
            {},
            {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
            id="datagen-gpus-auto-as-many-as-the-engine-spans",
        ),
        pytest.param(
            "DatasetBuild",
            {"generation": {"model": "/models/m", "tensorParallelSize": 2}, "resources": {"gpus": 8}},
            {},
            {"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}},
            id="datagen-gpus-the-spec-says-over-tensor-parallel",
        ),
        pytest.param(
            "FineTuneJob",
            {"resources": {"cpu": "8"}},
            POD_DEFAULTS,
            {"requests": {"cpu": "8"}, "limits": {"nvidia.com/gpu": "1"}},
            id="trainer-default-gpu-kept",
        ),
    ],
)
def test_resources_size_the_container(kind, fields, pod_defaults, expected):
    (container,) = job_of(resource(kind, **fields), pod_defaults)["spec"]["template"]["spec"]["containers"]
    assert container.get("resources") == expected


@pytest.mark.parametrize("kind", ["DatasetBuild", "FineTuneJob"])
@pytest.mark.parametrize("queue", [None, "team-a"], ids=["no-queue", "queue"])
def test_a_queued_job_is_labelled_for_kueue_and_created_suspended(kind, queue):
    job = job_of(resource(kind, **({"queueName": queue} if queue else {})))
    assert job["metadata"]["labels"].get(QUEUE_LABEL) == queue
    assert job["spec"].get("suspend") is (True if queue else None)
    # Kueue reads the Job's label; the pods keep the operator's own labels only.
    assert QUEUE_LABEL not in job["spec"]["template"]["metadata"]["labels"]


def test_sharded_generation_is_an_indexed_job_of_one_pod_per_shard():
    res = resource("DatasetBuild", generation={"model": "/models/m", "shards": 3}, queueName="team-a")
    settings = Settings(storage_root="/data", pod_defaults=POD_DEFAULTS)
    shards, merge = builders.shard_job(res, settings), builders.job(res, settings)
    assert shards["metadata"]["name"] == "docs-datagen-shards" and merge["metadata"]["name"] == "docs-datagen"
    assert {k: shards["spec"][k] for k in ("completionMode", "completions", "parallelism")} == {
        "completionMode": "Indexed",
        "completions": 3,
        "parallelism": 3,
    }
    assert shards["spec"]["backoffLimit"] == 3 * settings.backoff_limit  # the limit counts every index's pods
    # Each pod computes the parts of its index ($JOB_COMPLETION_INDEX); the merge runs the same command unsharded.
    shard_command = shards["spec"]["template"]["spec"]["containers"][0]["command"]
    merge_command = merge["spec"]["template"]["spec"]["containers"][0]["command"]
    assert shard_command == [*merge_command, "--shard", "index/3"]
    assert shards["metadata"]["labels"]["kubetune.dev/step"] == "shards"
    assert "kubetune.dev/step" not in merge["metadata"]["labels"]
    # Queued and placed as the resource's one Job would be.
    assert shards["spec"]["suspend"] is True and shards["metadata"]["labels"][QUEUE_LABEL] == "team-a"
    assert shards["spec"]["template"]["spec"]["nodeSelector"] == merge["spec"]["template"]["spec"]["nodeSelector"]


def test_registry_secrets_are_mounted_by_the_kubelet_never_read_by_the_operator():
    oci = [
        {"repository": "r.example/team/a", "credentialsSecret": "team-registry"},
        {"repository": "r.example/team/b", "credentialsSecret": "team-registry"},  # one mount for both
        {"repository": "open.example/x"},
    ]
    job = job_of(resource("FineTuneJob", publish={"oci": oci}))
    pod = job["spec"]["template"]["spec"]
    assert [v for v in pod["volumes"] if "secret" in v] == [
        {"name": "oci-0", "secret": {"secretName": "team-registry", "optional": True}}
    ]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "oci-0"]
    assert mount == {"name": "oci-0", "mountPath": "/var/run/secrets/kubetune/oci/team-registry", "readOnly": True}
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert "team-registry" not in json.dumps(env)  # only the path, through the mount; nothing in the env
    # The steps before the last publish nothing: no credentials in the sizing pod (or a shard's).
    auto = resource("FineTuneJob", publish={"oci": oci}, resources={"gpus": "auto", "gpuType": "L4-24GB"})
    sizing = builders.sizing_job(auto, Settings(storage_root="/data"), dataset="/data/d")["spec"]["template"]["spec"]
    assert "team-registry" not in json.dumps(sizing)
    assert {m["name"] for m in sizing["containers"][0]["volumeMounts"]} == {v["name"] for v in sizing["volumes"]}


@pytest.mark.parametrize("where", ["publish", "registry"])
def test_mlflow_credentials_become_the_training_pods_environment(where):
    """publish.mlflow.credentialsSecret (or the deprecated registry's): the Secret's keys as environment variables,
    MLflow's own names, set by the kubelet; the sizing step, which publishes nothing, gets none."""
    mlflow = {"modelName": "m", "credentialsSecret": "mlflow-login"}
    fields = {"publish": {"mlflow": mlflow}} if where == "publish" else {"registry": mlflow}
    container = job_of(resource("FineTuneJob", **fields))["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"secretRef": {"name": "mlflow-login", "optional": True}}]
    auto = resource("FineTuneJob", **fields, resources={"gpus": "auto", "gpuType": "L4-24GB"})
    sizing = builders.sizing_job(auto, Settings(storage_root="/data"), dataset="/data/d")["spec"]["template"]["spec"]
    assert "mlflow-login" not in json.dumps(sizing)
