"""A cluster for tests: kmock's in-memory Kubernetes API over real HTTP, the kopf operator in-process, and a
test kubelet.

kmock runs no controllers, so :class:`TestKubelet` plays the kubelet and the Job controller: for each Job
the operator creates, it runs the container's command as a local process (same command and env; the
ConfigMap and the storage volume bind-mounted at their real mountPaths in a private mount namespace, as
root), then writes the Job's status back through the API, where the operator's watch sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import sys
import uuid
from pathlib import Path
from typing import Any

import kopf
import yaml
from kmock import KubernetesEmulator, Request, ResourceInfo, Server, action
from kubernetes import client, config

from kubetune.spec.constants import GROUP, NAMES, VERSION

VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
RESOURCES = {
    "v1/namespaces": ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS),
    "v1/configmaps": ResourceInfo(kind="ConfigMap", namespaced=True, verbs=VERBS),
    "v1/events": ResourceInfo(kind="Event", namespaced=True, verbs=VERBS),
    "batch/v1/jobs": ResourceInfo(kind="Job", namespaced=True, subresources={"status"}, verbs=VERBS),
    **{
        f"{GROUP}/{VERSION}/{plural}": ResourceInfo(
            kind=kind, namespaced=True, singular=singular, subresources={"status"}, verbs=VERBS
        )
        for kind, (plural, singular, _) in NAMES.items()
    },
}


class ApiServer(KubernetesEmulator):
    """kmock's emulator plus what a real API server adds to an object it creates and kmock does not:
    a name from ``generateName`` (kopf's Events use one), a uid, a resourceVersion and a generation."""

    async def _handle(self, request: Request) -> Any:
        if request.action == action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
            meta.setdefault("namespace", request.namespace or "default")
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("generation", 1)
            meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
        return await super()._handle(request)


class Cluster:
    """kmock + kopf, entered with ``async with``; ``api`` helpers run the sync client off the event loop."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self._stop = asyncio.Event()

    async def __aenter__(self) -> Cluster:
        from kubetune_operator import handlers  # noqa: F401  (registers the handlers)

        self.kmock = ApiServer()
        await self.kmock.__aenter__()
        self.server = Server(self.kmock)
        await self.server.__aenter__()
        for key, info in RESOURCES.items():
            self.kmock.resources[key] = info
        kubeconfig = self.workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(self.kmock.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {"token": "test"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        }))  # fmt: skip
        os.environ["KUBECONFIG"] = str(kubeconfig)
        config.load_kube_config(str(kubeconfig))
        self.operator = asyncio.create_task(
            kopf.operator(registry=kopf.get_default_registry(), clusterwide=True, standalone=True, stop_flag=self._stop)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.operator, timeout=10)
        await self.server.__aexit__(None, None, None)
        await self.kmock.__aexit__(None, None, None)

    async def apply(self, resource: dict[str, Any]) -> None:
        namespace = resource["metadata"].get("namespace", "default")
        await asyncio.to_thread(
            client.CustomObjectsApi().create_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            NAMES[resource["kind"]][0],
            resource,
        )

    async def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return await asyncio.to_thread(
            client.CustomObjectsApi().get_namespaced_custom_object, GROUP, VERSION, namespace, NAMES[kind][0], name
        )

    async def jobs(self) -> list[dict[str, Any]]:
        listing = await asyncio.to_thread(client.BatchV1Api().list_job_for_all_namespaces, _preload_content=False)
        return yaml.safe_load(listing.data)["items"]

    async def event_reasons(self, name: str) -> set[str]:
        """Reasons of the Events about object ``name`` so far (kopf posts them in batches: poll)."""
        listing = await asyncio.to_thread(client.CoreV1Api().list_event_for_all_namespaces, _preload_content=False)
        events = yaml.safe_load(listing.data)["items"]
        return {e.get("reason") for e in events if e.get("involvedObject", {}).get("name") == name}

    async def config_map(self, name: str, namespace: str) -> dict[str, Any]:
        raw = await asyncio.to_thread(
            client.CoreV1Api().read_namespaced_config_map, name, namespace, _preload_content=False
        )
        return yaml.safe_load(raw.data)

    async def set_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        await asyncio.to_thread(
            client.BatchV1Api().patch_namespaced_job_status, meta["name"], meta["namespace"], {"status": status}
        )

    async def wait_for(self, kind: str, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        """Poll until the resource's status.phase is one of ``phases``; fail with the last status seen."""
        deadline = asyncio.get_running_loop().time() + timeout
        obj: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            obj = await self.get(kind, name)
            if (obj.get("status") or {}).get("phase") in phases:
                return obj
            await asyncio.sleep(0.5)
        raise AssertionError(f"{kind}/{name} did not reach {phases} in {timeout}s; status: {obj.get('status')}")


class TestKubelet:
    """Runs each Job's container as a local process and reports the outcome in the Job's status."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, cluster: Cluster, cwd: Path, storage: Path):
        self.cluster, self.cwd, self.storage = cluster, cwd, storage
        self.started: dict[str, asyncio.Task] = {}
        self.logs: dict[str, Path] = {}

    async def run(self) -> None:
        while True:
            for job in await self.cluster.jobs():
                key = f"{job['metadata']['namespace']}/{job['metadata']['name']}"
                if key not in self.started:
                    self.started[key] = asyncio.create_task(self._run_job(job))
            await asyncio.sleep(0.5)

    async def _volumes(self, job: dict[str, Any]) -> dict[str, Path]:
        """Each volume of the pod as a local folder: ConfigMap keys written out, the PVC as ``storage``."""
        meta, pod = job["metadata"], job["spec"]["template"]["spec"]
        folders = {}
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                folder = self.cluster.workdir / "volumes" / meta["name"] / volume["name"]
                folder.mkdir(parents=True, exist_ok=True)
                cm = await self.cluster.config_map(volume["configMap"]["name"], meta["namespace"])
                for key, value in cm.get("data", {}).items():
                    (folder / key).write_text(value)
                folders[volume["name"]] = folder
            elif "persistentVolumeClaim" in volume:
                self.storage.mkdir(parents=True, exist_ok=True)
                folders[volume["name"]] = self.storage
            else:
                raise NotImplementedError(f"test kubelet: volume {volume}")
        return folders

    async def _run_job(self, job: dict[str, Any]) -> None:
        container = job["spec"]["template"]["spec"]["containers"][0]
        folders = await self._volumes(job)
        mounts = " && ".join(
            f"mkdir -p {shlex.quote(m['mountPath'])} && mount --bind {shlex.quote(str(folders[m['name']]))} "
            f"{shlex.quote(m['mountPath'])}"
            for m in container.get("volumeMounts", [])
        )
        env = {**os.environ, **{e["name"]: e["value"] for e in container.get("env", [])}}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the image's python is ours
        log = self.cluster.workdir / f"{job['metadata']['name']}.log"
        self.logs[job["metadata"]["name"]] = log
        await self.cluster.set_job_status(job, {"active": 1, "startTime": "2026-01-01T00:00:00Z"})
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f'{mounts} && exec "$@"',
                "sh",
                *container["command"],
                cwd=self.cwd,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
            rc = await proc.wait()
        if rc == 0:
            status = {"active": 0, "succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        else:
            status = {"active": 0, "failed": 1, "conditions": [
                {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                 "message": f"the container exited with {rc}"}]}  # fmt: skip
        await self.cluster.set_job_status(job, status)
