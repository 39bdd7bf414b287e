"""A cluster for tests: the strict test API server (apiserver.py) over real HTTP, the operator started as
users start it — the ``kubetune operator`` command in its own process — and a test kubelet.

The test and the operator talk to the API server as different users (bearer tokens ``admin`` and
``operator``), so the server's audit tells the operator's requests apart for the RBAC check.

No controllers run, so :class:`TestKubelet` plays the kubelet and the Job controller: for each Job the
operator creates, it runs the container's command as a local process (same command and env; the ConfigMap,
the storage volume and the emptyDirs bind-mounted at their real mountPaths in a private mount namespace,
as root), then writes the Job's status back through the API in the steps the real Job controller takes.
An Indexed Job's pods run at once, each with ``JOB_COMPLETION_INDEX`` and the hostname JOB-INDEX the Job
controller gives it (pkg/controller/job: ``addCompletionIndexEnvVariables``, ``Spec.Hostname``); ``$(VAR)``
in the command is expanded from the container's env as the kubelet does (third_party/forked/golang/expansion);
cluster DNS for a pod whose ``subdomain`` names a headless Service that exists and selects it
(kubernetes/dns specification: HOSTNAME.SUBDOMAIN.NAMESPACE.svc.cluster.local) is an /etc/hosts bind-mounted in
the pod's mount namespace, every pod at 127.0.0.1. A Job that fails more pods than its backoffLimit has its
other pods stopped, SIGTERM to all their processes (the Job controller deletes the active pods of a failed Job;
the kubelet stops a container's processes), and :meth:`TestKubelet.kill` kills a pod's processes as an
OOM kill or a lost node would (exit code 137).
A failed pod is replaced, its index run again, until the Job's failed pods exceed its backoffLimit (without the
controller's back-off delay). What it cannot play: the pod's securityContext (the process runs as the test's user)
and a read-only root filesystem (tests/unit checks the pod template against Pod Security "restricted" instead).
The container's image is the checkout and its venv, seen at their own paths: a volume mounted over them (an
emptyDir on /tmp, for a clone under /tmp) is mounted and the code bound back on top, so a pod sees the same files
wherever the checkout lies.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import os
import shlex
import signal
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml
from kmock import Server
from kubernetes import client, config

from kubetune.api.v1alpha1.constants import GROUP, NAMES, VERSION
from tests.operator.apiserver import (
    BUILTIN_RESOURCES,
    AuditRecord,
    Grant,
    StrictApiServer,
    load_crds,
)

ROOT = Path(__file__).resolve().parents[2]
KUBETUNE = Path(sys.executable).parent / "kubetune"
ADMIN, OPERATOR = "admin", "operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kubeconfig(server: str, token: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": token, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": token}}],
    }  # fmt: skip


async def _body(call: Any, *args: Any, **kwargs: Any) -> Any:
    """An API call's JSON answer, the call and the reading of its body both off the event loop: the test API
    server runs on this loop, and a large body read from the loop's thread would wait for the server, which
    waits for the loop."""
    return json.loads(await asyncio.to_thread(lambda: call(*args, _preload_content=False, **kwargs).data))


class Cluster:
    """The API server and the operator process, entered with ``async with``.

    ``operator_args`` is the command line after ``kubetune`` (default: ``operator``, cluster-wide);
    ``operator_env`` adds to the operator's environment (e.g. the chart's Deployment env);
    ``operator_grants`` restricts the operator to those RBAC rules (default: no RBAC);
    ``crd_admission=False`` stands for a cluster whose CRDs are older than the operator: the server stores
    what this version's models refuse, which the operator must turn into a status condition.
    """

    def __init__(
        self,
        workdir: Path,
        operator_args: list[str] | None = None,
        operator_env: dict | None = None,
        crd_admission: bool = True,
        start_operator: bool = True,
        operator_grants: list[Grant] | None = None,
    ):
        self.operator_grants = operator_grants
        self.workdir = workdir
        self.start_operator = start_operator
        self.crd_admission = crd_admission
        self.operator_args = operator_args or ["operator"]
        self.operator_env = operator_env or {}
        self.operator_log = workdir / "operator.log"
        self.replicas: list[asyncio.subprocess.Process] = []
        self._replica_logs: list[Any] = []

    async def __aenter__(self) -> Cluster:
        schemas, infos = load_crds(ROOT / "crds")
        self.api = StrictApiServer(
            crds=schemas if self.crd_admission else {},
            grants={OPERATOR: self.operator_grants} if self.operator_grants is not None else {},
        )
        await self.api.__aenter__()
        self.server = Server(self.api)
        await self.server.__aenter__()
        for key, info in {**BUILTIN_RESOURCES, **infos}.items():
            self.api.resources[key] = info
        url = str(self.api.url).rstrip("/")
        admin, operator = self.workdir / "kubeconfig-admin", self.workdir / "kubeconfig-operator"
        admin.write_text(yaml.safe_dump(kubeconfig(url, ADMIN)))
        operator.write_text(yaml.safe_dump(kubeconfig(url, OPERATOR)))
        config.load_kube_config(str(admin))
        # One client for the test's requests, its connections kept open (a client per call would copy the
        # configuration and connect anew each time, in the process that also runs the server).
        configuration = client.Configuration.get_default_copy()
        configuration.connection_pool_maxsize = 32
        api_client = client.ApiClient(configuration)
        self.custom = client.CustomObjectsApi(api_client)
        self.core, self.batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
        # Progress read from pod logs every second, not every 15: tests wait for it.
        env = {**os.environ, "KUBETUNE_PROGRESS_SECONDS": "1", **self.operator_env, "KUBECONFIG": str(operator)}
        self._log = self.operator_log.open("wb")
        if not self.start_operator:
            self.operator = None
            return self
        self.operator = await asyncio.create_subprocess_exec(
            str(KUBETUNE), *self.operator_args, env=env, stdout=self._log, stderr=asyncio.subprocess.STDOUT
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_operator()
        for replica in self.replicas:
            if replica.returncode is None:
                replica.kill()
                await replica.wait()
        for log in self._replica_logs:
            log.close()
        self._log.close()
        await self.server.__aexit__(None, None, None)
        await self.api.__aexit__(None, None, None)
        dropped = [message for user, message in self.api.warnings if user == OPERATOR]
        if exc[0] is None and dropped:  # a real server would have dropped these fields of the operator's writes
            raise AssertionError(f"the API server warned the operator: {dropped}")

    async def start_replica(self, token: str, args: list[str]) -> asyncio.subprocess.Process:
        """Another operator process, as another replica of the Deployment: its own user (``token``) and log."""
        path = self.workdir / f"kubeconfig-{token}"
        path.write_text(yaml.safe_dump(kubeconfig(str(self.api.url).rstrip("/"), token)))
        env = {**os.environ, "KUBETUNE_PROGRESS_SECONDS": "1", **self.operator_env, "KUBECONFIG": str(path)}
        log = (self.workdir / f"operator-{token}.log").open("wb")
        self._replica_logs.append(log)
        replica = await asyncio.create_subprocess_exec(
            str(KUBETUNE), *args, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        self.replicas.append(replica)
        return replica

    async def stop_operator(self) -> int | None:
        """SIGTERM, as Kubernetes stops a pod; kill if it has not stopped in 20 s. Returns the exit code."""
        if self.operator is None:
            return None
        if self.operator.returncode is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.operator.wait(), timeout=20)
            except TimeoutError:
                self.operator.kill()
                await self.operator.wait()
        return self.operator.returncode

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.operator_log.read_text(errors="replace")

    def operator_requests(self) -> list[AuditRecord]:
        return [r for r in self.api.audit if r.user == OPERATOR]

    # The test's own client (user admin), run off the event loop that serves the API. It writes as kubectl
    # does (``kubectl apply``, ``kubectl patch``: fieldValidation=Strict, kubectl's default since 1.27), so a
    # typo in a test's resource is refused, not dropped.

    async def apply(self, resource: dict[str, Any]) -> dict[str, Any]:
        namespace = resource["metadata"].get("namespace", "default")
        return await _body(
            self.custom.create_namespaced_custom_object,
            GROUP, VERSION, namespace, NAMES[resource["kind"]][0], resource, field_validation="Strict",
        )  # fmt: skip

    async def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str = "default") -> dict:
        return await _body(
            self.custom.patch_namespaced_custom_object, GROUP, VERSION, namespace, NAMES[kind][0], name,
            patch, field_validation="Strict",
        )  # fmt: skip

    async def delete(self, kind: str, name: str, namespace: str = "default") -> None:
        await asyncio.to_thread(
            self.custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            NAMES[kind][0],
            name,
        )

    async def gone(self, kind: str, name: str, timeout: float, namespace: str = "default") -> None:
        """Poll until the resource no longer exists (its finalizers removed)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            try:
                obj = await self.get(kind, name, namespace)
            except client.exceptions.ApiException as exc:
                if exc.status == 404:
                    return
                raise
            await asyncio.sleep(0.25)
        raise AssertionError(f"{kind}/{name} still exists: {obj.get('metadata')}\n{self.log()[-3000:]}")

    async def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        return await asyncio.to_thread(
            self.custom.get_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            NAMES[kind][0],
            name,
        )

    async def jobs(self) -> list[dict[str, Any]]:
        return (await _body(self.batch.list_job_for_all_namespaces))["items"]

    async def events(self, name: str) -> list[dict[str, Any]]:
        """The Events about object ``name`` so far (kopf posts them in batches: poll)."""
        listing = await _body(self.core.list_event_for_all_namespaces)
        return [e for e in listing["items"] if e.get("involvedObject", {}).get("name") == name]

    async def config_map(self, name: str, namespace: str) -> dict[str, Any]:
        return await _body(self.core.read_namespaced_config_map, name, namespace)

    async def service(self, name: str, namespace: str) -> dict[str, Any]:
        return await _body(self.core.read_namespaced_service, name, namespace)

    async def create_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        """An Opaque Secret holding ``data`` (plain text here, base64 on the wire as in a cluster)."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        body = {"metadata": {"name": name}, "type": "Opaque", "data": encoded}
        await asyncio.to_thread(self.core.create_namespaced_secret, namespace, body)

    async def secret(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The Secret as the kubelet reads it (None: there is none)."""
        try:
            return await _body(self.core.read_namespaced_secret, name, namespace)
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def set_job_status(self, job: dict[str, Any], status: dict[str, Any]) -> None:
        meta = job["metadata"]
        await asyncio.to_thread(
            self.batch.patch_namespaced_job_status,
            meta["name"],
            meta["namespace"],
            {"status": status},
        )

    async def finish_job(self, job: dict[str, Any], succeeded: bool, message: str = "") -> None:
        """End a Job in the two steps the Job controller writes: the success or failure criterion with the pod
        still uncounted, then the terminal condition with the counts."""
        pod = str(uuid.uuid4())
        if succeeded:
            criterion = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"}
            await self.set_job_status(
                job, {"active": 0, "conditions": [criterion], "uncountedTerminatedPods": {"succeeded": [pod]}}
            )
            final = {"type": "Complete", "status": "True", "reason": "CompletionsReached"}
            await self.set_job_status(
                job, {"succeeded": 1, "uncountedTerminatedPods": {}, "conditions": [criterion, final]}
            )
        else:
            criterion = {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                         "message": message or "Job has reached the specified backoff limit"}  # fmt: skip
            await self.set_job_status(
                job, {"active": 0, "conditions": [criterion], "uncountedTerminatedPods": {"failed": [pod]}}
            )
            await self.set_job_status(
                job,
                {
                    "failed": 1,
                    "uncountedTerminatedPods": {},
                    "conditions": [criterion, {**criterion, "type": "Failed"}],
                },
            )

    async def add_pod(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """A pod of ``job``, as the Job controller creates it (labelled job-name=JOB, the Job's template; an
        Indexed Job's pod labelled with its ``index`` too)."""
        meta = job["metadata"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata", {}).get("labels") or {}), "job-name": meta["name"],
                  "batch.kubernetes.io/job-name": meta["name"]}  # fmt: skip
        if index is not None:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                # The Job controller's generateName: JOB- (an Indexed Job's pod: JOB-INDEX-), then 5 random characters.
                "name": f"{meta['name']}-{'' if index is None else f'{index}-'}{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
            },
            "spec": template["spec"],
        }
        return await _body(self.core.create_namespaced_pod, meta["namespace"], pod)

    async def start_pod(self, pod: dict[str, Any], log: Path) -> None:
        """The kubelet started the pod's container: phase Running, its output (``log``) served as pods/log."""
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        status = {
            "phase": "Running",
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": True, "restartCount": 0,
                                   "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}],
        }  # fmt: skip
        self.api.pod_logs[(meta["namespace"], meta["name"])] = log
        await asyncio.to_thread(
            self.core.patch_namespaced_pod_status,
            meta["name"],
            meta["namespace"],
            {"status": status},
        )

    async def end_pod(self, pod: dict[str, Any], exit_code: int, message: str) -> None:
        """The kubelet's last word on a pod: its container terminated, with its termination message."""
        meta = pod["metadata"]
        container = pod["spec"]["containers"][0]
        finished = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        terminated = {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                      "message": message, "finishedAt": finished}  # fmt: skip
        status = {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [{"name": container["name"], "image": container["image"], "imageID": "",
                                   "ready": False, "restartCount": 0, "state": {"terminated": terminated}}],
        }  # fmt: skip
        await asyncio.to_thread(
            self.core.patch_namespaced_pod_status,
            meta["name"],
            meta["namespace"],
            {"status": status},
        )

    async def wait_for(
        self, kind: str, name: str, phases: set[str], timeout: float, namespace: str = "default"
    ) -> dict[str, Any]:
        """Poll until the resource's status.phase is one of ``phases``; fail with the last status and the log."""
        deadline = asyncio.get_running_loop().time() + timeout
        obj: dict[str, Any] = {}
        while asyncio.get_running_loop().time() < deadline:
            obj = await self.get(kind, name, namespace)
            if (obj.get("status") or {}).get("phase") in phases:
                return obj
            if self.operator is not None and self.operator.returncode is not None:
                break
            await asyncio.sleep(0.5)
        raise AssertionError(
            f"{kind}/{name} did not reach {phases} in {timeout}s; status: {obj.get('status')}\n"
            f"operator exit code: {self.operator and self.operator.returncode}; its log:\n{self.log()[-4000:]}"
        )


STAGING = "/mnt/kubetune-test-kubelet"  # outside every mountPath a pod declares: /tmp's content, while mounting


class TestKubelet:
    """Runs each Job's container as a local process and reports the outcome in the Job's status."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, cluster: Cluster, cwd: Path, storage: Path):
        self.cluster, self.cwd, self.storage = cluster, cwd, storage
        self.started: dict[str, asyncio.Task] = {}
        self.logs: dict[str, Path] = {}  # by pod name: JOB, or JOB-INDEX; a replaced pod's, its latest try's
        self.processes: dict[str, asyncio.subprocess.Process] = {}  # as logs
        self.tries: dict[str, int] = {}  # the pods run for each name: 2 and more for a failed pod replaced

    def kill(self, pod_name: str) -> None:
        """Kill every process of a running pod at once (SIGKILL to its process group), as an OOM kill or a lost
        node ends a container."""
        os.killpg(self.processes[pod_name].pid, signal.SIGKILL)

    async def _stop(self, pod_names: list[str], grace: float = 30.0) -> None:
        """Stop pods as the kubelet stops a deleted pod: SIGTERM to its processes, SIGKILL after the grace
        period (terminationGracePeriodSeconds, 30 by default)."""
        running = [self.processes[n] for n in pod_names if n in self.processes and self.processes[n].returncode is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(proc.wait() for proc in running)), timeout=grace)
        except TimeoutError:
            for proc in running:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

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
            folder = self.cluster.workdir / "volumes" / meta["name"] / volume["name"]
            if "configMap" in volume:
                folder.mkdir(parents=True, exist_ok=True)
                cm = await self.cluster.config_map(volume["configMap"]["name"], meta["namespace"])
                for key, value in cm.get("data", {}).items():
                    (folder / key).write_text(value)
            elif "persistentVolumeClaim" in volume:
                self.storage.mkdir(parents=True, exist_ok=True)
                folder = self.storage
            elif "emptyDir" in volume:
                folder.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume:  # its keys as files, decoded; an optional Secret that is missing: empty
                folder.mkdir(parents=True, exist_ok=True)
                source = volume["secret"]
                found = await self.cluster.secret(source["secretName"], meta["namespace"])
                if found is None and not source.get("optional"):
                    raise NotImplementedError(f"test kubelet: the pod would wait for Secret {source['secretName']}")
                for key, value in ((found or {}).get("data") or {}).items():
                    (folder / key).write_bytes(base64.b64decode(value))
            else:
                raise NotImplementedError(f"test kubelet: volume {volume}")
            folders[volume["name"]] = folder
        return folders

    async def _run_job(self, job: dict[str, Any]) -> None:
        """The Job's pods, as its controller and the kubelet would run them: one, or an Indexed Job's
        ``completions`` at once (``JOB_COMPLETION_INDEX`` set in each), then the Job's end."""
        spec = job["spec"]
        indexes = range(spec.get("completions") or 1) if spec.get("completionMode") == "Indexed" else [None]
        await self.cluster.set_job_status(job, {"active": len(indexes), "startTime": "2026-01-01T00:00:00Z"})
        names = [self._pod_name(job, index) for index in indexes]
        hosts = await self._hosts(job, indexes)
        first_failure: list[int] = []
        failures = 0

        async def pod(index: int | None) -> int:
            # A failed pod is replaced (same index) until the Job's failed pods exceed its backoffLimit; then the
            # Job has failed and its other pods are stopped (pkg/controller/job: ``pastBackoffLimitOnFailure``,
            # ``deleteActivePods``). The controller's back-off delay before a replacement (10 s, doubling) is
            # left out: here it starts at once.
            nonlocal failures
            while True:
                rc = await self._run_pod(job, index, hosts)
                if not rc or first_failure:  # done, or stopped because the Job failed
                    return rc
                failures += 1
                await self.cluster.set_job_status(job, {"failed": failures})
                if failures > spec.get("backoffLimit", 6):
                    first_failure.append(rc)
                    await self._stop(names)
                    return rc

        codes = await asyncio.gather(*(pod(index) for index in indexes))
        failed = first_failure[0] if first_failure else next((rc for rc in codes if rc), 0)
        await self.cluster.finish_job(job, succeeded=not failed, message=f"the container exited with {failed}")

    @staticmethod
    def _pod_name(job: dict[str, Any], index: int | None) -> str:
        return job["metadata"]["name"] + ("" if index is None else f"-{index}")

    async def _hosts(self, job: dict[str, Any], indexes: Any) -> Path | None:
        """The /etc/hosts of the Job's pods when their ``subdomain`` names a headless Service (clusterIP None)
        that exists and selects them: each pod's HOSTNAME.SUBDOMAIN and its fully qualified name, at 127.0.0.1
        (the pods share this machine's network). None: the cluster's DNS would know none of these names."""
        meta, template = job["metadata"], job["spec"]["template"]
        subdomain = template["spec"].get("subdomain")
        if not subdomain or indexes == [None]:
            return None
        try:
            service = await _body(self.cluster.core.read_namespaced_service, subdomain, meta["namespace"])
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        labels = template.get("metadata", {}).get("labels") or {}
        selector = service["spec"].get("selector") or {}
        if service["spec"].get("clusterIP") != "None" or any(labels.get(k) != v for k, v in selector.items()):
            return None
        ns = meta["namespace"]
        lines = [Path("/etc/hosts").read_text()]
        for index in indexes:
            host = self._pod_name(job, index)
            lines.append(f"127.0.0.1 {host}.{subdomain}.{ns}.svc.cluster.local {host}.{subdomain}.{ns} "
                         f"{host}.{subdomain}\n")  # fmt: skip
        hosts = self.cluster.workdir / f"{meta['name']}.hosts"
        hosts.write_text("".join(lines))
        return hosts

    async def _run_pod(self, job: dict[str, Any], index: int | None, hosts: Path | None = None) -> int:
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        folders = await self._volumes(job)
        declared = container.get("volumeMounts", [])

        def covers_a_source(mount: dict[str, Any]) -> bool:
            """Whether mounting here hides another volume's source (e.g. an emptyDir on /tmp, where a test's
            folders live): such a mount must come after the others."""
            prefix = mount["mountPath"].rstrip("/") + "/"
            return any(str(folders[o["name"]]).startswith(prefix) for o in declared if o is not mount)

        # The image's files: the checkout, the venv and whatever the checkout links to (models/, .venv), each by
        # its real path. A volume mounted over one of them (an emptyDir on /tmp, for a clone under /tmp) is
        # mounted as in a real pod, and the code bound back on top from a copy of the mount point's former
        # content taken before: the pod sees an empty /tmp holding only the code, wherever the checkout lies,
        # so a test that leaves its own files under /tmp fails here as it would in CI and in a cluster.
        code = {Path(self.cwd).resolve(), Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
        code |= {p.resolve() for p in Path(self.cwd).iterdir() if p.is_symlink() and p.resolve().is_dir()}
        code = {c for c in code if not any(c != o and c.is_relative_to(o) for o in code)}  # the outermost
        hidden = {m["mountPath"]: sorted(c for c in code if c.is_relative_to(m["mountPath"])) for m in declared}
        hidden = {target: under for target, under in hidden.items() if under}
        ordered = sorted(declared, key=covers_a_source)
        binds = [(str(folders[m["name"]]), m["mountPath"]) for m in ordered]
        staged = {t: f"{STAGING}/{k}" for k, t in enumerate(hidden)}
        binds = [(t, stage) for t, stage in staged.items()] + binds
        binds += [(f"{staged[t]}/{c.relative_to(t)}", str(c)) for t, under in hidden.items() for c in under]
        mounts = " && ".join(f"mkdir -p {shlex.quote(target)} && mount --bind {shlex.quote(source)} "
                             f"{shlex.quote(target)}" for source, target in binds)  # fmt: skip
        # The copies go once the code is back: a real pod never sees the node's /tmp.
        mounts += "".join(f" && umount {shlex.quote(stage)}" for stage in staged.values())
        if hosts is not None:  # first: a volume's mount may hide the file (an emptyDir on /tmp)
            mounts = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && {mounts}"
        container_env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        env = {**os.environ, **container_env}
        env.pop("KUBECONFIG", None)  # the pods get no API access
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"  # the image's python is ours
        # The container's terminationMessagePath, as a file of ours (the kubelet mounts one there in a real pod;
        # the pod builder tells the process where it is through $KUBETUNE_TERMINATION_LOG). The file is opened
        # as fd 3 before the mounts, which may hide its folder (an emptyDir on /tmp), and named by that fd of the
        # container's first process (the shell, which execs the command): a process it starts (torchrun's ranks)
        # does not inherit the fd, but may open it there, as it would open the file a real kubelet mounts.
        pod_name = self._pod_name(job, index)
        tries = self.tries[pod_name] = self.tries.get(pod_name, 0) + 1
        attempt = pod_name if tries == 1 else f"{pod_name}.try-{tries}"  # a replacement pod's own files
        termination = self.cluster.workdir / f"{attempt}.termination-log"
        termination.write_text("")
        if "KUBETUNE_TERMINATION_LOG" in env:
            assert env["KUBETUNE_TERMINATION_LOG"] == container["terminationMessagePath"]
            env.pop("KUBETUNE_TERMINATION_LOG")
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        log = self.cluster.workdir / f"{attempt}.log"
        self.logs[pod_name] = log
        pod = await self.cluster.add_pod(job, index)
        log.write_bytes(b"")
        await self.cluster.start_pod(pod, log)
        opened = f"exec 3<>{shlex.quote(str(termination))}"
        if "KUBETUNE_TERMINATION_LOG" in container_env:
            opened += " && KUBETUNE_TERMINATION_LOG=/proc/$$/fd/3 && export KUBETUNE_TERMINATION_LOG"
        defined = dict(container_env)
        if index is not None:
            defined["JOB_COMPLETION_INDEX"] = str(index)
        command = [_expand(arg, defined) for arg in container["command"]]
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                "unshare", "-m", "--propagation", "private", "sh", "-c", f'{opened} && {mounts} && exec "$@"', "sh",
                *command, cwd=self.cwd, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            self.processes[pod_name] = proc
            rc = await proc.wait()
        if rc < 0:  # ended by a signal: a container's exit code is 128 + the signal
            rc = 128 - rc
        # The file's content (4 KiB at most); with FallbackToLogsOnError and none written, the end of the log
        # (2 KiB at most) when it failed.
        message = termination.read_bytes()[:4096].decode(errors="replace")
        if not message and rc:
            message = log.read_bytes()[-2048:].decode(errors="replace")
        await self.cluster.end_pod(pod, rc, message)
        return rc


def _expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in a container's command replaced by VAR's value, as the kubelet does
    (third_party/forked/golang/expansion ``Expand``): ``$$`` is a literal ``$``, and a reference to a variable
    the container does not define is left as written."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(" and (end := text.find(")", i + 2)) != -1:
                name = text[i + 2 : end]
                out.append(env[name] if name in env else text[i : end + 1])
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def chart_operator(values: dict[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """How the chart's Deployment runs the operator, as ``Cluster`` arguments: its command line (the liveness
    probe moved to a free port), its plain environment values, and the rules of its ClusterRole, or of its
    Role in each watched namespace; and the URL of that liveness probe."""
    from tests.chart.render import operator_rules, render

    docs = render(values)
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    args = [a.replace(":8080/", f":{port}/") if a.startswith("--liveness=") else a for a in container["args"]]
    args = [a.replace(":8081/", f":{free_port()}/") if a.startswith("--readiness=") else a for a in args]
    args = [f"--metrics=127.0.0.1:{free_port()}" if a.startswith("--metrics=") else a for a in args]
    env = {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}
    env["KUBETUNE_PROGRESS_SECONDS"] = "1"  # not the chart's 30: tests wait for progress
    env["POD_NAMESPACE"] = deployment["metadata"]["namespace"]  # the downward API's value
    namespaces = [
        d["metadata"]["namespace"] for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-operator")
    ]
    rules = operator_rules(docs)
    grants = [Grant(rule, ns) for rule in rules for ns in (namespaces or [None])]
    for role in (d for d in docs if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")):
        grants += [Grant(rule, role["metadata"]["namespace"]) for rule in role["rules"]]
    settings = {"operator_args": [*container["command"][1:], *args], "operator_env": env, "operator_grants": grants}
    return settings, f"http://127.0.0.1:{port}/healthz"


def metrics_url(settings: dict[str, Any]) -> str:
    """Where the operator started with ``settings`` serves its Prometheus metrics."""
    (address,) = [a.removeprefix("--metrics=") for a in settings["operator_args"] if a.startswith("--metrics=")]
    return f"http://{address}/metrics"


@contextlib.asynccontextmanager
async def kubelet_running(cluster: Cluster, cwd: Path, storage: Path):
    kubelet = TestKubelet(cluster, cwd=cwd, storage=storage)
    task = asyncio.create_task(kubelet.run())
    try:
        yield kubelet
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
