"""Pure builders: the command a stage runs, where it writes, and the Kubernetes objects that run it.

The local runner and the operator both call :func:`service_command`, so a stage runs the same way as a
local process and in a pod; only the paths differ.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath
from typing import Any

from kubetune.api.v1alpha1.constants import DATASET_BUILD, FINE_TUNE_JOB
from kubetune.api.v1alpha1.resources import Resource
from kubetune.trainer import distributed
from kubetune_operator.constants import (
    ATTEMPT_LABEL,
    COMPONENT,
    COMPONENT_OF,
    MANAGED_BY,
    OWNER_LABEL,
    POD_USER,
    QUEUE_LABEL,
    REPORT_ENV,
    RESOURCE_ENV,
    SCRATCH,
    SCRATCH_ENV,
    SECRETS_MOUNT,
    SHARDS_STEP,
    SIZING_STEP,
    SPEC_FILE,
    SPEC_MOUNT,
    STEP_LABEL,
    TERMINATION_LOG,
    Settings,
)

_MODULE = {DATASET_BUILD: "kubetune.datagen", FINE_TUNE_JOB: "kubetune.trainer"}


def output_path(root: str, kind: str, namespace: str, name: str) -> str:
    """Where a resource's output lives under a storage root: datasets/NS/NAME or finetunes/NS/NAME."""
    folder = "datasets" if kind == DATASET_BUILD else "finetunes"
    return str(PurePosixPath(root) / folder / namespace / name)


def service_command(
    python: str,
    kind: str,
    name: str,
    spec_file: str,
    output: str,
    dataset: str | None = None,
    start_from: str | None = None,
    processes: int = 1,
    group: tuple[int, str] | None = None,
) -> list[str]:
    """The command line of the service entrypoint that does a resource's work; a FineTuneJob's on ``processes``
    ranks is started by torchrun. ``group``: (pods, pod 0's address) of a FineTuneJob whose pods train together,
    each the Indexed Job's pod ``$(JOB_COMPLETION_INDEX)``."""
    args = ["--spec", spec_file, "--output", output, "--name", name]
    if kind == FINE_TUNE_JOB:
        if dataset is None:
            raise ValueError("a FineTuneJob's command needs the dataset folder")
        args += ["--dataset", dataset]
        if start_from is not None:
            args += ["--start-from", start_from]
        if group is not None:
            nodes, master = group
            return distributed.torchrun_nodes(
                python, _MODULE[kind], args, nodes, processes, master, "$(JOB_COMPLETION_INDEX)"
            )
        if processes > 1:
            return distributed.torchrun(python, _MODULE[kind], args, processes)
    return [python, "-m", _MODULE[kind], *args]


_SUFFIX = {DATASET_BUILD: "datagen", FINE_TUNE_JOB: "train"}


def child_name(resource: Resource) -> str:
    """Name of the ConfigMap and Job of a resource: NAME-datagen or NAME-train."""
    return _suffixed(resource.metadata.name, _SUFFIX[resource.kind])


def _suffixed(name: str, suffix: str, limit: int = 63) -> str:
    """NAME-SUFFIX in at most ``limit`` characters (a Job's name becomes a label value: 63). A longer one is cut and
    given a hash of the whole name, so two long names that share a prefix never share a Job."""
    if len(name) + 1 + len(suffix) <= limit:
        return f"{name}-{suffix}"
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: limit - len(suffix) - len(digest) - 2].rstrip('-')}-{digest}-{suffix}"


# A group's pods are named JOB-INDEX (the Job controller's hostname for an Indexed Job's pod), a DNS label of at
# most 63 characters, so the Job's name leaves room for "-63", the last index of 64 pods.
_GROUP_NAME_LIMIT = 60


def group_job_name(resource: Resource, attempt: int) -> str:
    """The Job of a FineTuneJob's group of pods: NAME-train, then NAME-train-restart-K for the K-th restart."""
    suffix = _SUFFIX[resource.kind] + (f"-restart-{attempt}" if attempt else "")
    return _suffixed(resource.metadata.name, suffix, _GROUP_NAME_LIMIT)


def group_service_name(resource: Resource) -> str:
    """The headless Service of a group: NAME-train, or g-NAME-train for a NAME that starts with a digit (a Service's
    name is a DNS-1035 label, which starts with a letter)."""
    name = resource.metadata.name
    return _suffixed(name if name[0].isalpha() else f"g-{name}", _SUFFIX[resource.kind])


def headless_service(resource: Resource) -> dict[str, Any]:
    """The headless Service that gives the pods of a FineTuneJob's group their stable DNS names: an Indexed
    Job's pod I is JOB-I, and with ``subdomain`` set to this Service, JOB-I.SERVICE resolves to it (the
    Kubernetes pattern for pods of a Job that talk to each other). Not-ready pods are published too: the ranks
    meet before any pod is ready. It selects the resource's trainer pods; only one group runs at a time."""
    name = group_service_name(resource)
    selector = {OWNER_LABEL[resource.kind]: resource.metadata.name, COMPONENT: COMPONENT_OF[resource.kind]}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": resource.metadata.namespace, "labels": labels(resource)},
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "publishNotReadyAddresses": True,
            "ports": [{"name": "rendezvous", "port": distributed.RENDEZVOUS_PORT, "protocol": "TCP"}],
        },
    }


def labels(resource: Resource) -> dict[str, str]:
    return {
        MANAGED_BY: "kubetune",
        COMPONENT: COMPONENT_OF[resource.kind],
        OWNER_LABEL[resource.kind]: resource.metadata.name,
    }


def config_map(resource: Resource) -> dict[str, Any]:
    """The ConfigMap holding the resolved spec the pod reads."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": child_name(resource),
            "namespace": resource.metadata.namespace,
            "labels": labels(resource),
        },
        "data": {SPEC_FILE: json.dumps(resource.spec.to_wire(), indent=2, sort_keys=True)},
    }


GPU = "nvidia.com/gpu"


def _merge_resources(defaults: dict[str, Any], requests: dict[str, str], gpus: int | None) -> dict[str, Any]:
    """The container's resources: the operator's defaults for this pod kind, the resource's own values on top.

    A request the spec sets replaces the default's request and drops the default's limit of that resource (a
    default limit below the spec's request would make the pod invalid). ``gpus`` (None: the default's) is
    both request and limit, as Kubernetes wants for an extended resource; 0 removes the default's GPUs.
    """
    merged = {k: dict(defaults.get(k) or {}) for k in ("requests", "limits")}
    for name, quantity in requests.items():
        merged["requests"][name] = quantity
        merged["limits"].pop(name, None)
    if gpus is not None:
        merged["requests"].pop(GPU, None)
        merged["limits"].pop(GPU, None)
        if gpus > 0:
            merged["requests"][GPU] = merged["limits"][GPU] = str(gpus)
    return {k: v for k, v in merged.items() if v}


def _placement(resource: Resource, defaults: dict[str, Any], pod_defaults: dict[str, Any]) -> dict[str, Any]:
    """The pod's scheduling fields: the resource's own over the operator's defaults (``defaults`` those of this
    pod kind, ``pod_defaults`` the whole setting). nodeSelector maps are merged (the spec's keys win), the
    spec's tolerations are added to the default ones, and any other field the spec sets replaces the default.
    """
    spec = resource.spec
    node_selector = {**(defaults.get("nodeSelector") or {}), **(spec.node_selector or {})}
    tolerations = [*(defaults.get("tolerations") or []), *(t.to_wire() for t in spec.tolerations or [])]
    pull_secrets = (
        [{"name": name} for name in spec.image_pull_secrets]
        if spec.image_pull_secrets is not None
        else pod_defaults.get("imagePullSecrets")
    )
    placement = {
        "nodeSelector": node_selector,
        "tolerations": tolerations,
        "imagePullSecrets": pull_secrets,
        "serviceAccountName": spec.service_account_name or pod_defaults.get("serviceAccountName"),
        "priorityClassName": spec.priority_class_name,
    }
    return {key: value for key, value in placement.items() if value}


def _pod_security() -> tuple[dict[str, Any], dict[str, Any]]:
    """The container's and the pod's securityContext: Pod Security "restricted"."""
    container = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    pod = {
        "runAsNonRoot": True,
        "runAsUser": POD_USER,
        "runAsGroup": POD_USER,
        "fsGroup": POD_USER,
        # Re-own the shared volume only when its root is not ours yet, not at every pod start.
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return container, pod


# Removes an output folder; a folder already gone is not an error (a retried clean-up pod).
_REMOVE = "import os, shutil, sys; os.path.exists(sys.argv[1]) and shutil.rmtree(sys.argv[1])"
CLEANUP_TTL_SECONDS = 600  # a finished clean-up Job (it has no owner left to go with) is deleted by Kubernetes


def cleanup_name(kind: str, name: str) -> str:
    """The clean-up Job's name: NAME-datagen-cleanup or NAME-train-cleanup (a DatasetBuild and a FineTuneJob of
    one name each get their own)."""
    return _suffixed(name, f"{_SUFFIX[kind]}-cleanup")


def cleanup_job(kind: str, namespace: str, name: str, settings: Settings) -> dict[str, Any]:
    """The Job that removes a deleted resource's output folder from the shared volume (``deletionPolicy:
    Delete``): the operator does not mount the volume. It has no owner (the resource is going) and a TTL."""
    component = COMPONENT_OF[kind]
    output = output_path(settings.storage_root, kind, namespace, name)
    container_security, pod_security = _pod_security()
    container = {
        "name": "cleanup",
        "image": settings.datagen_image if kind == DATASET_BUILD else settings.trainer_image,
        "command": [settings.python, "-c", _REMOVE, output],
        "volumeMounts": [{"name": "storage", "mountPath": settings.storage_root}],
        "securityContext": container_security,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": [{"name": "storage", "persistentVolumeClaim": {"claimName": settings.storage_claim}}],
    }
    defaults = settings.pod_defaults
    pod.update({k: v for k in ("imagePullSecrets", "serviceAccountName") if (v := defaults.get(k))})
    job_labels = {MANAGED_BY: "kubetune", COMPONENT: f"{component}-cleanup"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": cleanup_name(kind, name), "namespace": namespace, "labels": job_labels},
        "spec": {
            "backoffLimit": settings.backoff_limit,
            "ttlSecondsAfterFinished": CLEANUP_TTL_SECONDS,
            "template": {"metadata": {"labels": job_labels}, "spec": pod},
        },
    }


def _volumes(resource: Resource, settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every pod's volumes and their mounts: the spec (the ConfigMap), the shared storage, scratch and /dev/shm."""
    mounts = [
        {"name": "spec", "mountPath": SPEC_MOUNT, "readOnly": True},
        {"name": "storage", "mountPath": settings.storage_root},
        {"name": "scratch", "mountPath": SCRATCH},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "spec", "configMap": {"name": child_name(resource)}},
        {"name": "storage", "persistentVolumeClaim": {"claimName": settings.storage_claim}},
        {"name": "scratch", "emptyDir": {}},
        # PyTorch's data loader workers and vLLM's workers share tensors through /dev/shm, 64 MiB in a container.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    return volumes, mounts


def _credentials(resource: Resource) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each publisher's credentials (volumes, mounts, envFrom), from the Secrets its target names, by the kubelet
    (the operator never reads a Secret): an OCI registry's mounted where the service looks
    (kubetune.registry.oci_store.secret_credentials), MLflow's as the environment MLflow reads. Optional: a missing
    Secret leaves the folder empty (the service fails saying which) rather than the pod waiting in ContainerCreating
    with the reason only in an Event."""
    spec = resource.spec
    volumes, mounts, env_from = [], [], []
    secrets = sorted({t.credentials_secret for t in spec.publish.oci if t.credentials_secret})
    for index, secret in enumerate(secrets):
        volumes.append({"name": f"oci-{index}", "secret": {"secretName": secret, "optional": True}})
        mounts.append({"name": f"oci-{index}", "mountPath": f"{SECRETS_MOUNT}/oci/{secret}", "readOnly": True})
    mlflow = spec.mlflow if resource.kind == FINE_TUNE_JOB else None
    if mlflow is not None and mlflow.credentials_secret:
        env_from.append({"secretRef": {"name": mlflow.credentials_secret, "optional": True}})
    return volumes, mounts, env_from


def _gpus(resource: Resource, planned: int | None) -> int | None:
    """The GPUs the pod asks for: ``planned`` (a FineTuneJob's sizing step's) when given; else the spec's count,
    where 0, the field's default, leaves the operator's default in place, unless one vLLM engine spans more GPUs;
    a DatasetBuild's auto is as many as the engine spans."""
    if planned is not None:
        return planned
    count = resource.spec.resources.gpu_count()
    if resource.kind == DATASET_BUILD and (
        count is None or (count == 0 and resource.spec.generation.tensor_parallel_size > 1)
    ):
        return resource.spec.generation.tensor_parallel_size
    return count or None


def _ranks(resource: Resource, resources: dict[str, Any]) -> int:
    """A FineTuneJob pod's ranks: distributed.processesPerNode when set, else one per GPU the pod gets (the spec's,
    the sizing step's or the operator's default), else 1."""
    if resource.spec.distributed.processes_per_node is not None:
        return resource.spec.distributed.processes_per_node
    return max(int((resources.get("limits") or {}).get(GPU, 0)), 1)


def job(
    resource: Resource,
    settings: Settings,
    dataset: str | None = None,
    start_from: str | None = None,
    gpus: int | None = None,
    attempt: int = 0,
    alone: bool = False,
) -> dict[str, Any]:
    """The batch/v1 Job that runs the resource's service entrypoint on the shared volume.

    Its pod passes Pod Security "restricted": non-root, no privilege escalation, every capability dropped,
    seccomp RuntimeDefault, a read-only root filesystem with /tmp as scratch space, and no API token (the
    pods never call the API), whichever ServiceAccount they run as. With ``spec.queueName`` the Job is created
    suspended and labelled for Kueue; with ``spec.suspend`` it is created suspended. ``gpus`` (a count; 0: none)
    replaces what the spec and the operator's defaults ask for.

    A FineTuneJob with ``distributed.numNodes`` > 1 is an Indexed Job of that many pods, all started at once, each
    running torchrun with its index as the node rank and pod 0 (JOB-0.SERVICE, :func:`headless_service`) as the
    rendezvous. backoffLimit 0: a pod that fails fails the Job, whose other pods the Job controller stops, and the
    operator starts the whole group again as a new Job (``attempt``, :func:`group_job_name`), which resumes from
    the last checkpoint; never a lone rank, which could not rejoin the others' process group. That is what
    JobSet's default failure policy (RestartJobSet: recreate every child Job) does with the same parts, without
    its controller. Kueue admits a Job as one workload, all its pods together. ``alone``: one pod whatever the spec
    says (a step before training, e.g. the sizing step).
    """
    kind, name, ns = resource.kind, resource.metadata.name, resource.metadata.namespace
    component = COMPONENT_OF[kind]
    defaults = settings.pod_defaults.get(component) or {}
    output = output_path(settings.storage_root, kind, ns, name)
    spec = resource.spec
    requests = {k: v for k, v in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)) if v}
    resources = _merge_resources(defaults.get("resources") or {}, requests, _gpus(resource, gpus))
    processes = _ranks(resource, resources) if kind == FINE_TUNE_JOB else 1
    nodes = spec.distributed.num_nodes if kind == FINE_TUNE_JOB and not alone else 1
    job_name = group_job_name(resource, attempt) if nodes > 1 else child_name(resource)
    group = (nodes, f"{job_name}-0.{group_service_name(resource)}") if nodes > 1 else None
    spec_file = f"{SPEC_MOUNT}/{SPEC_FILE}"
    command = service_command(settings.python, kind, name, spec_file, output, dataset, start_from, processes, group)
    env = [{"name": k, "value": v} for k, v in {**SCRATCH_ENV, **REPORT_ENV}.items()]
    # Who the pod works for, recorded in the dataset's manifest and the model's lineage (the uid names this one
    # resource among all that ever had its name).
    identity = {"kind": kind, "namespace": ns, "name": name, "uid": (resource.metadata.model_extra or {}).get("uid")}
    env.append({"name": RESOURCE_ENV, "value": json.dumps(identity, separators=(",", ":"))})
    volumes, mounts = _volumes(resource, settings)
    if kind == FINE_TUNE_JOB:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": settings.mlflow_uri()})
    secret_volumes, secret_mounts, env_from = _credentials(resource)
    volumes, mounts = volumes + secret_volumes, mounts + secret_mounts
    env += defaults.get("env") or []  # e.g. MLflow credentials, as secretKeyRef: never a literal secret
    container_security, pod_security = _pod_security()
    container: dict[str, Any] = {
        "name": component,
        "image": settings.datagen_image if kind == DATASET_BUILD else settings.trainer_image,
        "command": command,
        "env": env,
        **({"envFrom": env_from} if env_from else {}),
        "volumeMounts": mounts,
        "securityContext": container_security,
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": pod_security,
        "containers": [container],
        "volumes": volumes,
    }
    pod.update(_placement(resource, defaults, settings.pod_defaults))
    job_labels = labels(resource)
    job_spec: dict[str, Any] = {
        "backoffLimit": settings.backoff_limit,
        "template": {"metadata": {"labels": labels(resource)}, "spec": pod},
    }
    if spec.queue_name:
        job_labels[QUEUE_LABEL] = spec.queue_name
        job_spec["suspend"] = True  # Kueue starts it (unsuspends it) once the queue admits it
    elif spec.suspend:
        job_spec["suspend"] = True  # the operator unsuspends it when spec.suspend is set to false
    if nodes > 1:
        job_labels[ATTEMPT_LABEL] = str(attempt)
        pod["subdomain"] = group_service_name(resource)  # the headless Service: JOB-I.SERVICE names pod I
        # podReplacementPolicy Failed: a pod is replaced (after a suspend, a preemption) only once the old one has
        # stopped, so pod 0's name never resolves to a dying pod the others would meet.
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes, backoffLimit=0,
                        podReplacementPolicy="Failed")  # fmt: skip
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": ns, "labels": job_labels},
        "spec": job_spec,
    }


def gpus_of(built: dict[str, Any]) -> int:
    """The GPUs a Job's pod asks for (0: none)."""
    container = built["spec"]["template"]["spec"]["containers"][0]
    return int(((container.get("resources") or {}).get("limits") or {}).get(GPU, 0))


def step_job_name(resource: Resource, step: str) -> str:
    return _suffixed(resource.metadata.name, f"{_SUFFIX[resource.kind]}-{step}")


def _step(built: dict[str, Any], resource: Resource, step: str, *arguments: str) -> dict[str, Any]:
    """``built`` (a :func:`job`) as the Job of one step before the resource's last: named and labelled for the
    step, its command given ``arguments``."""
    built["metadata"]["name"] = step_job_name(resource, step)
    for meta in (built["metadata"], built["spec"]["template"]["metadata"]):
        meta["labels"][STEP_LABEL] = step
    pod = built["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["command"] = [*container["command"], *arguments]
    # Only the last step publishes: no registry credentials in the pods before it.
    pod["volumes"] = [v for v in pod["volumes"] if "secret" not in v]
    kept = {v["name"] for v in pod["volumes"]}
    container["volumeMounts"] = [m for m in container["volumeMounts"] if m["name"] in kept]
    container.pop("envFrom", None)
    return built


def shard_job(resource: Resource, settings: Settings) -> dict[str, Any]:
    """A DatasetBuild's ``generation.shards`` pods: an Indexed Job whose pod I computes the parts I, I+N, ... of
    the LLM stages (``--shard index/N``), each with its own engine, at once. The merge, which finds those parts
    done and finishes the build, is the resource's ordinary :func:`job`, created when this one completes. Each
    pod may fail ``backoffLimit`` times on average (the limit counts the pods of all indexes)."""
    shards = resource.spec.generation.shards
    built = _step(job(resource, settings), resource, SHARDS_STEP, "--shard", f"index/{shards}")
    built["spec"].update(
        completionMode="Indexed", completions=shards, parallelism=shards, backoffLimit=settings.backoff_limit * shards
    )
    return built


def sizing_job(
    resource: Resource, settings: Settings, dataset: str | None = None, start_from: str | None = None
) -> dict[str, Any]:
    """A FineTuneJob's ``resources.gpus: auto``: the trainer's memory planner, on a CPU (no GPU asked for, the
    default's dropped), reads the base model's config.json from where the training pod will and reports the GPU
    count for ``resources.gpuType`` as its result; the training Job is created with it."""
    return _step(job(resource, settings, dataset, start_from, gpus=0, alone=True), resource, SIZING_STEP, "--size-gpus")
