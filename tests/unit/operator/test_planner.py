"""Planners and builders: pure functions, no API server."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import load_resources
from kubetune.api.v1alpha1.result import PodResult
from kubetune.api.v1alpha1.status import Phase
from kubetune_operator import builders, planner
from kubetune_operator.constants import Settings

SETTINGS = Settings(
    storage_root="/data", storage_claim="claim", python="python", tracking_uri="", wait_seconds=5, backoff_limit=1
)
DSB, FTJ = load_resources("""
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {name: docs, namespace: team}
spec:
  source: {paths: [corpus]}
  generation: {model: /models/m}
---
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune, namespace: team}
spec:
  baseModel: /models/m
  dataset: {datasetBuildRef: {name: docs}}
  resources: {gpus: 2, memory: 16Gi}
  registry: {modelName: docs-lora}
""")


def test_dataset_build_gets_a_config_map_and_a_job():
    decision = planner.plan(DSB, SETTINGS)
    cm, job = decision.children
    assert decision.phase == Phase.RUNNING
    assert json.loads(cm["data"]["spec.json"]) == DSB.spec.to_wire()
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == [
        "python",
        "-m",
        "kubetune.datagen",
        "--spec",
        "/etc/kubetune/spec.json",
        "--output",
        "/data/datasets/team/docs",
        "--name",
        "docs",
    ]
    assert job["metadata"]["labels"]["kubetune.dev/datasetbuild"] == "docs"
    assert job["metadata"]["namespace"] == "team" and job["spec"]["backoffLimit"] == 1
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["spec"]["configMap"]["name"] == cm["metadata"]["name"]
    assert volumes["storage"]["persistentVolumeClaim"]["claimName"] == "claim"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


CAUSE = "the container exited with 1: no documents under /data/corpus"


@pytest.mark.parametrize(
    ("dependency", "phase", "reason", "retry"),
    [
        pytest.param(None, Phase.WAITING, "DatasetBuildNotFound", True, id="absent"),
        pytest.param({"status": {"phase": "Running"}}, Phase.WAITING, "WaitingForDataset", True, id="running"),
        pytest.param(
            {"status": {"phase": "Failed", "message": CAUSE}}, Phase.FAILED, "DependencyFailed", False, id="failed"
        ),
        pytest.param(
            {"status": {"phase": "Succeeded", "output": {"path": "/data/datasets/team/docs"}}},
            Phase.RUNNING,
            "JobCreated",
            False,
            id="succeeded",
        ),
    ],
)
def test_fine_tune_job_waits_for_its_dataset(dependency, phase, reason, retry):
    decision = planner.plan(FTJ, SETTINGS, dependency)
    assert (decision.phase, decision.reason) == (phase, reason)
    assert (decision.retry_after == SETTINGS.wait_seconds) is retry
    assert decision.permanent is (phase == Phase.FAILED)
    if phase == Phase.FAILED:  # the dependency's own cause, so that nobody has to look for it
        assert decision.message == f"DatasetBuild {FTJ.spec.dataset.dataset_build_ref.name} failed: {CAUSE}"
    if phase == Phase.RUNNING:
        container = decision.children[1]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][-2:] == ["--dataset", "/data/datasets/team/docs"]
        assert container["resources"] == {
            "requests": {"memory": "16Gi", "nvidia.com/gpu": "2"},
            "limits": {"nvidia.com/gpu": "2"},
        }
        assert {"name": "MLFLOW_TRACKING_URI", "value": "sqlite:////data/mlflow.db"} in container["env"]


DPO = load_resources("""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune-dpo, namespace: team}
spec:
  baseModel: /models/m
  dataset: {path: /data/prefs}
  objective: dpo
  startFrom: {fineTuneJobRef: {name: tune}}
""")[0]


@pytest.mark.parametrize(
    ("previous", "phase", "reason"),
    [
        pytest.param(None, Phase.WAITING, "FineTuneJobNotFound", id="absent"),
        pytest.param({"status": {"phase": "Running"}}, Phase.WAITING, "WaitingForBaseModel", id="running"),
        pytest.param({"status": {"phase": "Failed"}}, Phase.FAILED, "DependencyFailed", id="failed"),
        pytest.param(
            {"status": {"phase": "Succeeded", "output": {"path": "/data/finetunes/team/tune"}}},
            Phase.RUNNING,
            "JobCreated",
            id="succeeded",
        ),
    ],
)
def test_a_job_that_starts_from_another_waits_for_it(previous, phase, reason):
    decision = planner.plan(DPO, SETTINGS, None, previous)
    assert (decision.phase, decision.reason) == (phase, reason)
    if phase == Phase.RUNNING:
        container = decision.children[1]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"][-4:] == ["--dataset", "/data/prefs", "--start-from", "/data/finetunes/team/tune"]


@pytest.mark.parametrize("resource", [DSB, FTJ], ids=["DatasetBuild", "FineTuneJob"])
def test_a_resource_with_a_queue_is_pending_queued_with_a_suspended_job(resource):
    queued = resource.model_copy(update={"spec": resource.spec.model_copy(update={"queue_name": "team-a"})})
    built = {"status": {"phase": "Succeeded", "output": {"path": "/data/datasets/team/docs"}}}
    decision = planner.plan(queued, SETTINGS, built)
    assert (decision.phase, decision.reason) == (Phase.PENDING, "Queued")
    assert "team-a" in decision.message and not decision.permanent and decision.retry_after is None
    job = decision.children[1]
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"


SUCCESS_CRITERIA_MET = {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached"}
SUSPENDED = {"type": "Suspended", "status": "True", "reason": "JobSuspended", "message": "Job suspended"}
RESUMED = {"type": "Suspended", "status": "False", "reason": "JobResumed", "message": "Job resumed"}
FAILURE_TARGET = {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded", "message": "3 failed"}


@pytest.mark.parametrize(
    ("job_status", "phase"),
    [
        pytest.param({}, Phase.PENDING, id="new"),
        pytest.param({"active": 1}, Phase.RUNNING, id="active"),
        pytest.param({"active": 1, "ready": 1}, Phase.RUNNING, id="ready"),
        pytest.param(
            {"conditions": [SUCCESS_CRITERIA_MET], "uncountedTerminatedPods": {"succeeded": ["u1"]}},
            Phase.RUNNING,
            id="success-criteria-met-not-yet-complete",
        ),
        pytest.param(
            {"succeeded": 1, "conditions": [SUCCESS_CRITERIA_MET, {"type": "Complete", "status": "True"}]},
            Phase.SUCCEEDED,
            id="complete",
        ),
        pytest.param({"succeeded": 1}, Phase.RUNNING, id="succeeded-count-without-complete-is-not-terminal"),
        pytest.param(
            {"failed": 2, "conditions": [FAILURE_TARGET], "uncountedTerminatedPods": {"failed": ["u3"]}},
            Phase.RUNNING,
            id="failure-target-not-yet-failed",
        ),
        pytest.param(
            {"failed": 3, "conditions": [FAILURE_TARGET, {**FAILURE_TARGET, "type": "Failed"}]},
            Phase.FAILED,
            id="failed",
        ),
        pytest.param({"failed": 1, "active": 1}, Phase.RUNNING, id="retrying"),
        pytest.param({"succeeded": 2, "active": 2}, Phase.RUNNING, id="indexed-half-done"),
        pytest.param({"failed": 1}, Phase.RUNNING, id="between-retries"),
    ],
)
def test_job_outcome(job_status, phase):
    decision = planner.job_outcome("DatasetBuild", "team", "docs", job_status, SETTINGS)
    # Only the controller's decided-but-unwritten end is passed over without a status write.
    assert planner.settling(job_status) == (
        decision.reason in ("JobFinishing", "JobFailing") and bool(job_status.get("conditions"))
    )
    assert decision.phase == phase
    if job_status.get("active"):  # an Indexed Job with some pods done is still running, not finishing
        assert decision.reason == "JobRunning"
    if phase == Phase.SUCCEEDED:
        assert decision.output == {"path": "/data/datasets/team/docs"}


@pytest.mark.parametrize(
    ("job_status", "queue", "phase", "reason"),
    [
        pytest.param({}, "team-a", Phase.PENDING, "Queued", id="created-suspended-no-status-yet"),
        pytest.param({"conditions": [SUSPENDED]}, "team-a", Phase.PENDING, "Queued", id="suspended"),
        pytest.param({"conditions": [SUSPENDED]}, None, Phase.PENDING, "JobSuspended", id="suspended-without-queue"),
        pytest.param({"conditions": [RESUMED]}, "team-a", Phase.PENDING, "JobPending", id="admitted-no-pod-yet"),
        pytest.param({"conditions": [RESUMED], "active": 1}, "team-a", Phase.RUNNING, "JobRunning", id="admitted"),
        pytest.param(
            {"failed": 1, "conditions": [SUSPENDED]}, "team-a", Phase.PENDING, "Queued", id="preempted-after-a-failure"
        ),
        pytest.param(
            {"succeeded": 1, "conditions": [RESUMED, SUCCESS_CRITERIA_MET, {"type": "Complete", "status": "True"}]},
            "team-a",
            Phase.SUCCEEDED,
            "JobSucceeded",
            id="complete",
        ),
    ],
)
def test_job_outcome_of_a_queued_job(job_status, queue, phase, reason):
    decision = planner.job_outcome("FineTuneJob", "team", "tune", job_status, SETTINGS, queue)
    assert (decision.phase, decision.reason) == (phase, reason)
    assert not decision.permanent
    if reason == "Queued":
        assert decision.message == "waiting for Kueue to admit the Job from queue team-a"


# The Job statuses a real Job controller writes, in order (seen on a v1.36 kube-apiserver; the queued one is
# a Job created with spec.suspend true, as Kueue wants it, then unsuspended by Kueue).
CONTROLLER_SEQUENCES = {
    "success": [
        {},
        {"active": 1, "startTime": "t0"},
        {"active": 1, "ready": 1},
        {"ready": 0, "conditions": [SUCCESS_CRITERIA_MET], "uncountedTerminatedPods": {"succeeded": ["u1"]}},
        {"succeeded": 1, "conditions": [SUCCESS_CRITERIA_MET, {"type": "Complete", "status": "True"}]},
    ],
    "queued-then-admitted-success": [
        {"conditions": [SUSPENDED]},
        {"conditions": [RESUMED], "active": 1, "startTime": "t1"},
        {"conditions": [RESUMED], "active": 1, "ready": 1},
        {"conditions": [RESUMED, SUCCESS_CRITERIA_MET], "ready": 0, "uncountedTerminatedPods": {"succeeded": ["u1"]}},
        {"succeeded": 1, "conditions": [RESUMED, SUCCESS_CRITERIA_MET, {"type": "Complete", "status": "True"}]},
    ],
    "retried-then-failed": [
        {"active": 1},
        {"active": 0, "uncountedTerminatedPods": {"failed": ["u1"]}},
        {"failed": 1},
        {"failed": 1, "active": 1},
        {"failed": 1, "conditions": [FAILURE_TARGET], "uncountedTerminatedPods": {"failed": ["u2"]}},
        {"failed": 2, "conditions": [FAILURE_TARGET, {**FAILURE_TARGET, "type": "Failed"}]},
    ],
}


@pytest.mark.parametrize("name", sorted(CONTROLLER_SEQUENCES))
def test_phase_never_moves_backwards_through_a_controller_sequence(name):
    """The phase each status of the sequence reads as, on its own, never goes back (no "waiting for the pod"
    while the pod has finished), and the sequence ends where the controller ends it."""
    order = [Phase.PENDING, Phase.RUNNING, Phase.SUCCEEDED, Phase.FAILED]
    queue = "team-a" if name.startswith("queued") else None
    statuses = CONTROLLER_SEQUENCES[name]
    seen = [planner.job_outcome("FineTuneJob", "team", "tune", s, SETTINGS, queue).phase for s in statuses]
    ranks = [min(order.index(p), 2) for p in seen]
    assert ranks == sorted(ranks), seen
    assert seen[-1] == (Phase.FAILED if name.endswith("failed") else Phase.SUCCEEDED)


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        pytest.param(None, Phase.PENDING, True, id="first"),
        pytest.param("Running", Phase.PENDING, False, id="running-to-pending"),
        pytest.param("Succeeded", Phase.RUNNING, False, id="succeeded-to-running"),
        pytest.param("Succeeded", Phase.FAILED, False, id="terminal-to-terminal"),
        pytest.param("Waiting", Phase.RUNNING, True, id="waiting-to-running"),
        pytest.param("Running", Phase.RUNNING, True, id="same"),
        pytest.param("Pending", Phase.PENDING, True, id="queued-to-admitted"),
        pytest.param("Running", Phase.SUSPENDED, True, id="running-to-suspended"),
        pytest.param("Suspended", Phase.PENDING, True, id="resumed"),
        pytest.param("Suspended", Phase.RUNNING, True, id="resumed-running"),
        pytest.param("Succeeded", Phase.SUSPENDED, False, id="never-suspended-after-the-end"),
        pytest.param("Failed", Phase.FAILED, True, id="same-end"),
    ],
)
def test_moves_forward(current, new, allowed):
    assert planner.moves_forward(current, new) is allowed


def test_status_patch_keeps_transition_times_and_sets_conditions():
    running = planner.status_patch(planner.Decision(Phase.RUNNING, "JobCreated", "go"), None, 3)["status"]
    assert running["phase"] == "Running" and running["observedGeneration"] == 3 and running["startTime"]
    conditions = {c["type"]: c for c in running["conditions"]}
    assert conditions["SpecValid"]["status"] == "True" and conditions["Ready"]["status"] == "False"
    done = planner.status_patch(planner.Decision(Phase.SUCCEEDED, "JobSucceeded", "done"), running, 3)["status"]
    after = {c["type"]: c for c in done["conditions"]}
    assert after["Ready"]["status"] == "True" and done["completionTime"]
    assert after["SpecValid"]["lastTransitionTime"] == conditions["SpecValid"]["lastTransitionTime"]
    assert "startTime" not in done  # kept from before, not rewritten


def test_invalid_spec_is_permanent_and_names_the_field():
    from kubetune.api.v1alpha1 import SpecError, parse_spec

    with pytest.raises(SpecError) as info:
        parse_spec("FineTuneJob", {"baseModel": "m", "dataset": {"path": "d"}, "training": {"learningRate": -1}})
    decision = planner.invalid_spec(info.value.errors)
    assert decision.permanent and decision.phase == Phase.FAILED
    assert "spec.training.learningRate" in decision.message and "-1" in decision.message
    status = planner.status_patch(decision, None, 1)["status"]
    valid = next(c for c in status["conditions"] if c["type"] == "SpecValid")
    assert valid["status"] == "False" and valid["reason"] == "InvalidSpec"


def test_child_names_fit_kubernetes_limits():
    long = DSB.model_copy(update={"metadata": DSB.metadata.model_copy(update={"name": "a" * 63})})
    assert len(builders.child_name(long)) <= 63


@pytest.mark.parametrize("kind", ["DatasetBuild", "FineTuneJob"])
def test_job_pods_pass_pod_security_restricted(kind):
    from tests.pod_security import restricted_violations

    resource = DSB if kind == "DatasetBuild" else FTJ
    job = builders.job(resource, SETTINGS, dataset="/data/d" if kind == "FineTuneJob" else None)
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == []
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/tmp" in mounts and {"name": "HOME", "value": "/tmp"} in container["env"]


def test_pod_defaults_place_and_size_the_pods(monkeypatch):
    monkeypatch.setenv(
        "KUBETUNE_POD_DEFAULTS",
        json.dumps(
            {
                "imagePullSecrets": [{"name": "regcred"}],
                "serviceAccountName": "kubetune-workload",
                "trainer": {
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                    "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": "1"}},
                    "env": [
                        {"name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "m", "key": "p"}}}
                    ],
                },
            }
        ),
    )
    settings = Settings(storage_root="/data")
    pod = builders.job(FTJ, settings, dataset="/data/d")["spec"]["template"]["spec"]
    assert (
        pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    )
    assert pod["imagePullSecrets"] == [{"name": "regcred"}] and pod["serviceAccountName"] == "kubetune-workload"
    (container,) = pod["containers"]
    # The resource's own spec.resources (memory 16Gi, 2 GPUs) wins over the defaults; the rest stays.
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "16Gi", "nvidia.com/gpu": "2"},
        "limits": {"nvidia.com/gpu": "2"},
    }
    assert container["env"][-1]["valueFrom"]["secretKeyRef"]["name"] == "m"
    datagen = builders.job(DSB, settings)["spec"]["template"]["spec"]
    assert "nodeSelector" not in datagen and "resources" not in datagen["containers"][0]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        pytest.param("{not json", "is not JSON", id="not-json"),
        pytest.param('{"gpu": {}}', "keys among", id="unknown-key"),
        pytest.param('{"trainer": {"affinity": {}}}', "KUBETUNE_POD_DEFAULTS.trainer", id="unknown-pod-key"),
    ],
)
def test_bad_pod_defaults_stop_the_operator_with_a_clear_message(monkeypatch, value, fragment):
    monkeypatch.setenv("KUBETUNE_POD_DEFAULTS", value)
    with pytest.raises(ValueError, match=fragment):
        Settings()


@pytest.mark.parametrize(
    ("defaults", "requests", "gpus", "expected"),
    [
        pytest.param({}, {}, None, {}, id="nothing"),
        pytest.param(
            {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
            {},
            None,
            {"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}},
            id="default-gpu-kept",
        ),
        pytest.param({"limits": {"nvidia.com/gpu": "1"}}, {}, 0, {}, id="zero-gpus-removes-the-default"),
        pytest.param(
            {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}},
            {},
            2,
            {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}},
            id="gpu-request-equals-limit",
        ),
        pytest.param(
            {"requests": {"memory": "4Gi"}, "limits": {"memory": "8Gi", "cpu": "4"}},
            {"memory": "16Gi"},
            None,
            {"requests": {"memory": "16Gi"}, "limits": {"cpu": "4"}},
            id="spec-request-drops-a-default-limit-below-it",
        ),
    ],
)
def test_merge_resources(defaults, requests, gpus, expected):
    assert builders._merge_resources(defaults, requests, gpus) == expected


def test_long_names_get_distinct_valid_child_names():
    import re

    def named(name: str):
        return DSB.model_copy(update={"metadata": DSB.metadata.model_copy(update={"name": name})})

    assert builders.child_name(named("docs")) == "docs-datagen"
    first, second = (builders.child_name(named("a" * 50 + tail)) for tail in ("-one", "-two"))
    assert first != second
    for child in (first, second):
        assert len(child) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", child) and child.endswith("-datagen")


def _pod(job: str, exit_code: int, message: str, finished: str = "2026-01-01T00:00:00Z") -> dict:
    terminated = {"exitCode": exit_code, "message": message, "finishedAt": finished}
    return {
        "metadata": {"labels": {"job-name": job}},
        "status": {"containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}]},
    }


@pytest.mark.parametrize(
    ("pods", "cause"),
    [
        pytest.param([], None, id="no-pods"),
        pytest.param([_pod("tune-train", 0, "done")], None, id="succeeded-pod"),
        pytest.param(
            [_pod("tune-train", 1, "a\ntrainer failed: no data\n\n")], "trainer failed: no data", id="last-line"
        ),
        pytest.param([_pod("other-train", 1, "trainer failed: x")], None, id="another-jobs-pod"),
        pytest.param(
            [
                _pod("tune-train", 1, "first try", "2026-01-01T00:00:01Z"),
                _pod("tune-train", 1, "retry", "2026-01-01T00:00:09Z"),
            ],
            "retry",
            id="newest-pod",
        ),
        pytest.param(
            [_pod("tune-train", 1, '{"published":[],"error":"trainer failed: publishing: oci r/x: 401"}')],
            "trainer failed: publishing: oci r/x: 401",
            id="a-partial-result-says-why",
        ),
    ],
)
def test_failure_cause(pods, cause):
    assert planner.failure_cause("tune-train", pods) == cause


def test_a_group_failed_for_its_first_failed_pod():
    """The pod that was killed first is the cause; the others failed because it did (torchrun's SIGTERM)."""
    killed = _pod("g", 137, "", "2026-01-01T00:00:01Z")
    killed["metadata"]["name"] = "g-1"
    stopped = _pod("g", 1, "SignalException: Process 7 got signal: 15", "2026-01-01T00:00:02Z")
    assert planner.failure_cause("g", [stopped, killed], first=True) == "pod g-1 was killed: signal 9, exit code 137"
    assert planner.failure_cause("g", [stopped, killed]) == "SignalException: Process 7 got signal: 15"
    failed_first = _pod("g", 1, "trainer failed: NCCL timeout", "2026-01-01T00:00:00Z")
    assert planner.failure_cause("g", [stopped, killed, failed_first], first=True) == "trainer failed: NCCL timeout"


def test_a_target_that_failed_is_said_and_what_was_published_kept():
    error = "trainer failed: publishing: oci r.example/x: failed after 3 attempts: connection refused"
    mlflow = {"target": "mlflow", "reference": "models:/docs-lora/3", "digest": "sha256:ad"}
    pods = [_pod("tune-train", 1, json.dumps({"published": [mlflow], "error": error}))]
    failed = planner.Decision(Phase.FAILED, "BackoffLimitExceeded", "backoff limit", permanent=True)
    decision = planner.with_cause(failed, planner.failure_cause("tune-train", pods),
                                  planner.partial_result("tune-train", pods))  # fmt: skip
    patch = planner.status_patch(decision, {}, 1)["status"]
    assert patch["phase"] == "Failed" and patch["message"] == f"backoff limit: {error}"
    assert patch["published"] == [mlflow]  # MLflow's version stands; the OCI target is what failed
    (published,) = [c for c in patch["conditions"] if c["type"] == "Published"]
    assert (published["status"], published["reason"], published["message"]) == ("False", "PublishFailed", error)
    # A pod that failed before publishing (a plain last line, no result) adds no Published condition.
    plain = [_pod("tune-train", 1, "trainer failed: no data")]
    decision = planner.with_cause(failed, planner.failure_cause("tune-train", plain),
                                  planner.partial_result("tune-train", plain))  # fmt: skip
    assert decision.published is None and decision.publish_condition is None


def test_with_cause_appends_only_to_failures():
    failed = planner.Decision(Phase.FAILED, "BackoffLimitExceeded", "backoff limit", permanent=True)
    assert planner.with_cause(failed, "trainer failed: x").message == "backoff limit: trainer failed: x"
    assert planner.with_cause(failed, None) is failed
    running = planner.Decision(Phase.RUNNING, "JobRunning", "running")
    assert planner.with_cause(running, "x") is running


def _result(wire: dict | None) -> PodResult | None:
    """A pod's result as the planner gets it: the termination message ``wire`` parsed."""
    return None if wire is None else PodResult.parse(json.dumps(wire))


RESULT = {"digest": "sha256:ab", "evalLoss": 1.5, "modelName": "docs-lora", "modelVersion": "3"}


@pytest.mark.parametrize(
    ("pods", "result"),
    [
        pytest.param([], None, id="no-pods"),
        pytest.param([_pod("tune-train", 0, json.dumps(RESULT))], RESULT, id="json-object"),
        pytest.param([_pod("tune-train", 0, "done\n")], None, id="not-json: an older image"),
        pytest.param([_pod("tune-train", 0, "[1, 2]")], None, id="json-but-no-object"),
        pytest.param([_pod("tune-train", 1, json.dumps(RESULT))], None, id="failed-pod"),
        pytest.param([_pod("other-train", 0, json.dumps(RESULT))], None, id="another-jobs-pod"),
        pytest.param(
            [
                _pod("tune-train", 0, json.dumps({"digest": "old"}), "2026-01-01T00:00:01Z"),
                _pod("tune-train", 0, json.dumps(RESULT), "2026-01-01T00:00:09Z"),
            ],
            RESULT,
            id="newest-pod",
        ),
    ],
)
def test_result_of(pods, result):
    assert planner.result_of("tune-train", pods) == (None if result is None else PodResult.model_validate(result))


def test_with_result_fills_output_and_progress_of_a_success_only():
    done = planner.job_outcome("FineTuneJob", "team", "tune", {"conditions": [{"type": "Complete", "status": "True"}]},
                               SETTINGS)  # fmt: skip
    wire = {**RESULT, "rows": {"train": 4, "bad": "x"}, "modelVersion": 3, "progress": {"step": 12, "maxSteps": 12}}
    result = _result(wire)
    filled = planner.with_result("FineTuneJob", done, result, "2026-01-01T00:00:00Z")
    # Fields of the wrong type are left out (modelVersion is a string; rows count integers), not the whole result.
    assert filled.output == {"path": "/data/finetunes/team/tune", "digest": "sha256:ab", "evalLoss": 1.5,
                             "modelName": "docs-lora"}  # fmt: skip
    assert filled.progress == {
        "progress": "step 12/12 (100%)",
        "progressDetail": {"step": 12, "maxSteps": 12, "updated": "2026-01-01T00:00:00Z"},
    }
    patch = planner.status_patch(filled, {}, 1)["status"]
    assert patch["output"]["digest"] == "sha256:ab" and patch["progress"] == "step 12/12 (100%)"
    running = planner.Decision(Phase.RUNNING, "JobRunning", "running")
    assert planner.with_result("FineTuneJob", running, result, "t") is running
    assert planner.with_result("FineTuneJob", done, None, "t") is done


@pytest.mark.parametrize(
    ("log", "current", "expected"),
    [
        pytest.param("", {}, None, id="empty-log"),
        pytest.param("loading\nstep 3\n", {}, None, id="no-record"),
        pytest.param(
            'kubetune-progress: {"step": 2, "maxSteps": 8}\nkubetune-progress: {"step": 4, "maxSteps": 8, '
            '"loss": 2.5, "tokensPerSecond": 410.0, "etaSeconds": 80, "phase": "train"}\n{"noise": 1}\n',
            {},
            {
                "progress": "step 4/8 (50%), loss 2.5, 410 tokens/s, ETA 1m20s",
                "progressDetail": {
                    "step": 4,
                    "maxSteps": 8,
                    "loss": 2.5,
                    "tokensPerSecond": 410.0,
                    "etaSeconds": 80,
                    "phase": "train",
                    "updated": "now",
                },
            },
            id="last-record-wins",
        ),
        pytest.param(
            'kubetune-progress: {"step": 4, "maxSteps": 8}\nkubetune-progress: {"step": 5, "maxS',
            {},
            {"progress": "step 4/8 (50%)", "progressDetail": {"step": 4, "maxSteps": 8, "updated": "now"}},
            id="a-line-cut-short-is-skipped",
        ),
        pytest.param(
            'kubetune-progress: {"step": "4", "maxSteps": 8, "loss": true}\n',
            {},
            {"progress": "step 0/8 (0%)", "progressDetail": {"maxSteps": 8, "updated": "now"}},
            id="wrong-types-left-out",
        ),
        pytest.param(
            'kubetune-progress: {"step": 4, "maxSteps": 8}\n',
            {"progress": "step 4/8 (50%)", "progressDetail": {"step": 4, "maxSteps": 8, "updated": "earlier"}},
            None,
            id="unchanged: no write",
        ),
    ],
)
def test_progress_patch(log, current, expected):
    patch = planner.progress_patch("FineTuneJob", current, log, "now")
    assert patch == (None if expected is None else {"status": expected})


def test_running_pod_is_the_newest_running_one_of_the_job():
    def pod(name: str, job: str, phase: str, created: str) -> dict:
        meta = {"name": name, "labels": {"job-name": job}, "creationTimestamp": created}
        return {"metadata": meta, "status": {"phase": phase}}

    pods = [
        pod("a", "tune-train", "Failed", "2026-01-01T00:00:09Z"),
        pod("b", "tune-train", "Running", "2026-01-01T00:00:01Z"),
        pod("c", "tune-train", "Running", "2026-01-01T00:00:05Z"),
        pod("d", "other-train", "Running", "2026-01-01T00:00:08Z"),
    ]
    assert planner.running_pod("tune-train", pods)["metadata"]["name"] == "c"
    assert planner.running_pod("tune-train", pods[:1]) is None


def test_job_pods_report_through_the_kubelet():
    container = builders.job(FTJ, SETTINGS, dataset="/data/d")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBETUNE_PROGRESS_LOG"] == "1"
    assert env["KUBETUNE_TERMINATION_LOG"] == container["terminationMessagePath"] == "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize(
    ("job_status", "phase"),
    [
        pytest.param({"active": 1}, Phase.SUSPENDED, id="pod-still-stopping"),
        pytest.param({"conditions": [SUSPENDED]}, Phase.SUSPENDED, id="stopped"),
        pytest.param({"conditions": [RESUMED], "active": 1}, Phase.SUSPENDED, id="a-stale-status-before-the-stop"),
        pytest.param(
            {"succeeded": 1, "conditions": [SUCCESS_CRITERIA_MET, {"type": "Complete", "status": "True"}]},
            Phase.SUCCEEDED,
            id="finished-before-the-stop",
        ),
    ],
)
def test_job_outcome_of_a_suspended_resource(job_status, phase):
    decision = planner.job_outcome("FineTuneJob", "team", "tune", job_status, SETTINGS, suspend=True)
    assert decision.phase == phase


def test_suspension_patches_the_job_and_only_a_job_that_exists():
    assert planner.suspension(True, None) == (None, None)
    patch, decision = planner.suspension(True, "tune-train")
    assert patch == {"spec": {"suspend": True}} and decision.phase == Phase.SUSPENDED
    patch, decision = planner.suspension(False, "tune-train")
    assert patch == {"spec": {"suspend": False}} and (decision.phase, decision.reason) == (Phase.PENDING, "Resumed")


def test_a_suspended_resource_gets_a_suspended_job():
    suspended = FTJ.model_copy(update={"spec": FTJ.spec.model_copy(update={"suspend": True})})
    built = {"status": {"phase": "Succeeded", "output": {"path": "/data/datasets/team/docs"}}}
    decision = planner.plan(suspended, SETTINGS, dependency=built)
    assert decision.phase == Phase.SUSPENDED
    assert decision.children[1]["spec"]["suspend"] is True
    assert "suspend" not in planner.plan(DSB, SETTINGS).children[1]["spec"]


def test_cleanup_job_removes_only_the_output_folder_and_passes_pod_security():
    from tests.pod_security import restricted_violations

    job = builders.cleanup_job("FineTuneJob", "team", "a" * 60, SETTINGS)
    assert len(job["metadata"]["name"]) <= 63 and job["metadata"]["name"].endswith("-train-cleanup")
    assert builders.cleanup_name("DatasetBuild", "x") != builders.cleanup_name("FineTuneJob", "x")
    pod = job["spec"]["template"]["spec"]
    assert restricted_violations(pod) == [] and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert (
        container["command"][:2] == ["python", "-c"] and container["command"][-1] == f"/data/finetunes/team/{'a' * 60}"
    )
    assert container["volumeMounts"] == [{"name": "storage", "mountPath": "/data"}]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "trainer-cleanup"
    assert "kubetune.dev/finetunejob" not in job["metadata"]["labels"]  # not a child: no owner status to write


def _job(conditions=(), suspend=None, active=0) -> dict:
    spec = {} if suspend is None else {"suspend": suspend}
    status = {"conditions": [{"type": c, "status": "True"} for c in conditions], "active": active}
    return {"spec": spec, "status": status}


@pytest.mark.parametrize(
    ("work", "cleanup", "step"),
    [
        pytest.param(None, None, "clean", id="never-started"),
        pytest.param(_job(["Complete"]), None, "clean", id="finished"),
        pytest.param(_job(["Failed"]), None, "clean", id="failed"),
        pytest.param(_job(active=1), None, "stop", id="running: stop it first"),
        pytest.param(_job(suspend=True, active=1), None, "wait", id="pod-still-stopping"),
        pytest.param(_job(suspend=True), None, "clean", id="stopped"),
        pytest.param(_job(["Complete"]), _job(active=1), "wait", id="cleaning"),
        pytest.param(_job(["Complete"]), _job(["Complete"]), "done", id="cleaned"),
        pytest.param(_job(["Complete"]), _job(["Failed"]), "failed", id="cleanup-failed"),
    ],
)
def test_deletion_steps(work, cleanup, step):
    assert planner.deletion(work, cleanup)[0] == step


def test_a_decision_written_again_changes_nothing():
    running = planner.Decision(Phase.RUNNING, "JobRunning", "the pod is running")
    current = planner.status_patch(running, None, 1)["status"]
    assert not planner.changes(planner.status_patch(running, current, 1), current)
    assert planner.changes(planner.status_patch(running, current, 2), current)  # a new generation observed
    done = planner.Decision(Phase.SUCCEEDED, "JobSucceeded", "done", output={"path": "/p"})
    assert planner.changes(planner.status_patch(done, current, 1), current)


SHARDED = load_resources("""
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {name: docs, namespace: team}
spec:
  source: {paths: [corpus]}
  generation: {model: /models/m, shards: 4}
""")[0]


def test_a_sharded_build_starts_with_its_shards_job():
    decision = planner.plan(SHARDED, SETTINGS)
    _, job = decision.children
    assert job["metadata"]["name"] == "docs-datagen-shards" and job["spec"]["completions"] == 4
    assert (decision.phase, decision.message) == (Phase.RUNNING, "generating the dataset in 4 shards")


SUCCEEDED = planner.Decision(Phase.SUCCEEDED, "JobSucceeded", "done", output={"path": "/data/datasets/team/docs"})


@pytest.mark.parametrize(
    ("step", "outcome", "phase", "reason", "message", "next_job"),
    [
        pytest.param(
            "shards", SUCCEEDED, Phase.RUNNING, "ShardsSucceeded",
            "the 4 shards are done; merging their parts and finishing the build", "docs-datagen",
            id="shards-done-start-the-merge",
        ),
        pytest.param(
            "shards", planner.Decision(Phase.FAILED, "BackoffLimitExceeded", "limit: x", permanent=True),
            Phase.FAILED, "BackoffLimitExceeded", "a shard failed: limit: x", None,
            id="a-shard-failed-fails-the-build",
        ),
        pytest.param(
            "shards", planner.Decision(Phase.RUNNING, "JobRunning", "the pod is running"), Phase.RUNNING,
            "JobRunning", "4 shards generating", None, id="shards-running",
        ),
        pytest.param(None, SUCCEEDED, Phase.SUCCEEDED, "JobSucceeded", "done", None, id="the-merge-ends-the-build"),
    ],
)  # fmt: skip
def test_next_step(step, outcome, phase, reason, message, next_job):
    decision = planner.next_step(SHARDED, step, outcome, SETTINGS)
    assert (decision.phase, decision.reason, decision.message) == (phase, reason, message)
    jobs = [c["metadata"]["name"] for c in decision.children if c["kind"] == "Job"]
    assert jobs == ([next_job] if next_job else [])
    if next_job:  # the merge: the ordinary Job, unsharded
        assert "--shard" not in decision.children[0]["spec"]["template"]["spec"]["containers"][0]["command"]


AUTO_YAML = """
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune, namespace: team}
spec:
  baseModel: /models/m
  dataset: {path: /data/d}
  resources: {gpus: auto, gpuType: L4-24GB}
"""
AUTO = load_resources(AUTO_YAML)[0]
GPU_DEFAULT = Settings(
    storage_root="/data", pod_defaults={"trainer": {"resources": {"limits": {"nvidia.com/gpu": "2"}}}}
)


def _gpus(job: dict) -> str | None:
    return (
        (job["spec"]["template"]["spec"]["containers"][0].get("resources") or {})
        .get("limits", {})
        .get("nvidia.com/gpu")
    )


def test_gpus_auto_starts_with_a_sizing_job_on_a_cpu():
    decision = planner.plan(AUTO, GPU_DEFAULT)
    _, sizing = decision.children
    assert sizing["metadata"]["name"] == "tune-train-sizing"
    assert sizing["metadata"]["labels"]["kubetune.dev/step"] == "sizing"
    assert sizing["spec"]["template"]["spec"]["containers"][0]["command"][-1] == "--size-gpus"
    assert _gpus(sizing) is None  # the default's GPUs dropped: planning needs none
    assert decision.message == "sizing the job for L4-24GB GPUs (resources.gpus auto)"


@pytest.mark.parametrize(
    ("outcome", "result", "phase", "reason", "message", "gpus"),
    [
        pytest.param(
            SUCCEEDED, {"gpus": 1, "verdict": "fits one L4-24GB (17.01 of 22.0 GiB)"}, Phase.RUNNING, "Sized",
            "fits one L4-24GB (17.01 of 22.0 GiB): training on 1 GPU(s)", "1", id="fits-one",
        ),
        pytest.param(
            SUCCEEDED, {"gpus": 4, "verdict": "does not fit one H100-80GB: needs sharding: 4 GPUs with FSDP"},
            Phase.RUNNING, "Sized",
            "does not fit one H100-80GB: needs sharding: 4 GPUs with FSDP: training on 4 GPU(s)",
            "4", id="sharded-over-4",
        ),
        pytest.param(
            SUCCEEDED, {"gpus": None, "verdict": "does not fit one L4-24GB (40 of 22.0 GiB): needs sharding"},
            Phase.FAILED, "DoesNotFit",
            "does not fit one L4-24GB (40 of 22.0 GiB): needs sharding; no GPU count this job can train on holds it",
            None, id="needs-sharding",
        ),
        pytest.param(
            SUCCEEDED, None, Phase.FAILED, "DoesNotFit", "the sizing pod reported no plan", None, id="no-result",
        ),
        pytest.param(
            planner.Decision(Phase.FAILED, "BackoffLimitExceeded", "limit: trainer failed: spec.baseModel: x",
                             permanent=True), None,
            Phase.FAILED, "BackoffLimitExceeded", "sizing the job failed: limit: trainer failed: spec.baseModel: x",
            None, id="sizing-pod-failed",
        ),
    ],
)  # fmt: skip
def test_the_sizing_step_starts_training_with_the_gpus_planned(outcome, result, phase, reason, message, gpus):
    decision = planner.next_step(AUTO, "sizing", outcome, GPU_DEFAULT, _result(result))
    assert (decision.phase, decision.reason) == (phase, reason)
    assert decision.message.startswith(message)
    jobs = [c for c in decision.children if c["kind"] == "Job"]
    assert [j["metadata"]["name"] for j in jobs] == (["tune-train"] if gpus else [])
    if gpus:
        assert _gpus(jobs[0]) == gpus  # what was planned, not the default's 2
        command = jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"]
        assert "--size-gpus" not in command
        # One rank per GPU: torchrun starts them when there are several.
        assert ("torch.distributed.run" in command) is (gpus != "1")
        if gpus != "1":
            assert command[command.index("--nproc-per-node") + 1] == gpus


BUILT = {"status": {"phase": "Succeeded", "output": {"path": "/data/datasets/team/docs"}}}
GROUP = FTJ.model_copy(
    update={"spec": type(FTJ.spec).model_validate({**FTJ.spec.to_wire(), "distributed": {"numNodes": 3}})}
)


def test_a_job_on_several_nodes_is_an_indexed_job_of_pods_that_meet_at_pod_0():
    decision = planner.plan(GROUP, SETTINGS, dependency=BUILT)
    assert (decision.phase, decision.message) == (Phase.RUNNING, "training on 3 pods together")
    _, service, job = decision.children
    assert (service["kind"], service["metadata"]["name"]) == ("Service", "tune-train")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"kubetune.dev/finetunejob": "tune", "app.kubernetes.io/component": "trainer"}
    template = job["spec"]["template"]
    # The Service selects the group's pods, and names them: pod I is tune-train-I.tune-train.
    assert all(template["metadata"]["labels"][k] == v for k, v in service["spec"]["selector"].items())
    assert template["spec"]["subdomain"] == "tune-train"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (
        "Indexed", 3, 3, 0
    )  # fmt: skip
    assert job["metadata"]["labels"]["kubetune.dev/attempt"] == "0"
    command = template["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "kubetune.trainer.rendezvous"]
    options = dict(zip(command[3:17:2], command[4:18:2], strict=True))
    assert options == {
        "--nnodes": "3", "--nproc-per-node": "2", "--node-rank": "$(JOB_COMPLETION_INDEX)",
        "--master-addr": "tune-train-0.tune-train", "--master-port": "29500", "--max-restarts": "0",
        "-m": "kubetune.trainer",
    }  # fmt: skip
    assert _gpus(job) == "2"  # one rank per GPU of each pod


def test_a_failed_group_starts_again_whole_until_the_limit():
    failed = planner.Decision(Phase.FAILED, "BackoffLimitExceeded", "limit: pod 1 was killed", permanent=True)
    again = planner.restart_group(GROUP, failed, 0, SETTINGS, gpus=4, dependency=BUILT)
    assert (again.phase, again.reason, again.restarts, again.permanent) == (
        Phase.RUNNING, "GroupRestarted", 1, False
    )  # fmt: skip
    assert again.message == (
        "limit: pod 1 was killed; starting all 3 pods again from the last checkpoint (restart 1 of at most 1)"
    )
    (job,) = [c for c in again.children if c["kind"] == "Job"]
    assert job["metadata"]["name"] == "tune-train-restart-1"
    assert job["metadata"]["labels"]["kubetune.dev/attempt"] == "1"
    assert _gpus(job) == "4"  # what the failed group's pods had (a sized count is not in the spec)
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--master-addr") + 1] == "tune-train-restart-1-0.tune-train"
    assert planner.status_patch(again, {}, 1)["status"]["restarts"] == 1
    # SETTINGS allows one restart: the second failure is the resource's.
    last = planner.restart_group(GROUP, failed, 1, SETTINGS, gpus=4, dependency=BUILT)
    assert (last.phase, last.restarts, last.children) == (Phase.FAILED, 1, [])
    assert last.message.endswith("(the group of pods was started again 1 time(s), the operator's limit)")
    gone = planner.restart_group(GROUP, failed, 0, SETTINGS, gpus=4, dependency=None)
    assert gone.phase == Phase.FAILED and "cannot start the group again: waiting for DatasetBuild docs" in gone.message
    # The failed Job unread (gpus None): the spec's count, or, for gpus auto, a failure (what it was sized for is lost).
    assert _gpus(next(c for c in planner.restart_group(GROUP, failed, 0, SETTINGS, None, BUILT).children
                      if c["kind"] == "Job")) == "2"  # fmt: skip
    wire = {**GROUP.spec.to_wire(), "resources": {"gpus": "auto", "gpuType": "H100-80GB"}}
    auto = GROUP.model_copy(update={"spec": type(GROUP.spec).model_validate(wire)})
    lost = planner.restart_group(auto, failed, 0, SETTINGS, None, BUILT)
    assert lost.phase == Phase.FAILED and lost.message.endswith("the GPU count it was sized for, is gone")


def test_a_group_sized_by_the_planner_sizes_in_one_pod_then_trains_as_a_group():
    wire = {**GROUP.spec.to_wire(), "resources": {"gpus": "auto", "gpuType": "H100-80GB"}}
    auto = GROUP.model_copy(update={"spec": type(GROUP.spec).model_validate(wire)})
    (sizing,) = [c for c in planner.plan(auto, SETTINGS, dependency=BUILT).children if c["kind"] == "Job"]
    assert sizing["metadata"]["name"] == "tune-train-sizing" and "completionMode" not in sizing["spec"]
    command = sizing["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "kubetune.trainer"] and "subdomain" not in sizing["spec"]["template"]["spec"]
    sized = planner.next_step(auto, "sizing", SUCCEEDED, SETTINGS, PodResult(gpus=4), dependency=BUILT)
    kinds = {c["kind"]: c for c in sized.children}
    assert kinds["Job"]["spec"]["completionMode"] == "Indexed" and _gpus(kinds["Job"]) == "4"
    assert kinds["Service"]["metadata"]["name"] == "tune-train"


def test_a_group_whose_name_starts_with_a_digit_gets_a_service_name_that_starts_with_a_letter():
    digit = GROUP.model_copy(update={"metadata": GROUP.metadata.model_copy(update={"name": "8b-sft"})})
    _, service, job = planner.plan(digit, SETTINGS, dependency=BUILT).children
    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"] == "g-8b-sft-train"
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--master-addr") + 1] == "8b-sft-train-0.g-8b-sft-train"


def test_a_long_name_leaves_room_for_the_pod_index():
    long = GROUP.model_copy(update={"metadata": GROUP.metadata.model_copy(update={"name": "n" * 63})})
    (job,) = [c for c in planner.plan(long, SETTINGS, dependency=BUILT).children if c["kind"] == "Job"]
    assert len(job["metadata"]["name"]) <= 60 and len(builders.group_job_name(long, 12)) <= 60


def test_progress_is_read_from_pod_0_of_a_group():
    def pod(index: str, created: str) -> dict:
        labels = {"job-name": "j", "batch.kubernetes.io/job-completion-index": index}
        return {"metadata": {"name": f"j-{index}", "labels": labels, "creationTimestamp": created},
                "status": {"phase": "Running"}}  # fmt: skip

    assert planner.running_pod("j", [pod("1", "2"), pod("0", "1")])["metadata"]["name"] == "j-0"
    assert planner.running_pod("j", [pod("1", "2")]) is None


@pytest.mark.parametrize(
    ("result", "published", "condition"),
    [
        pytest.param(
            {"published": [{"target": "mlflow", "reference": "models:/docs-lora/3", "digest": "sha256:ad"}],
             "gate": {"passed": True, "failures": []}},
            [{"target": "mlflow", "reference": "models:/docs-lora/3", "digest": "sha256:ad"}],
            ("True", "Published", "published to mlflow models:/docs-lora/3"),
            id="published",
        ),
        pytest.param(
            {"published": [], "gate": {"passed": False, "failures": ["publish.gate.maxEvalLoss: eval loss 2 is "
                                                                        "not below 1.8"]}},
            [],
            ("False", "GateFailed", "not published: publish.gate.maxEvalLoss: eval loss 2 is not below 1.8"),
            id="gate-failed",
        ),
        pytest.param({"published": []}, [], None, id="no-target"),
        pytest.param({"digest": "sha256:ad"}, None, None, id="an-older-trainer-says-nothing"),
    ],
)  # fmt: skip
def test_the_published_condition_and_status(result, published, condition):
    decision = planner.with_result("FineTuneJob", SUCCEEDED, _result(result), "2026-01-01T00:00:00Z")
    patch = planner.status_patch(decision, {}, 1)["status"]
    assert patch.get("published") == published
    found = [c for c in patch["conditions"] if c["type"] == "Published"]
    if condition is None:
        assert found == []
    else:
        (c,) = found
        assert (c["status"], c["reason"], c["message"]) == condition and c["observedGeneration"] == 1
    assert patch["phase"] == "Succeeded"  # a gate that fails leaves the job Succeeded


QUEUED_SHARDS = SHARDED.model_copy(update={"spec": SHARDED.spec.model_copy(update={"queue_name": "gpus"})})
QUEUED_AUTO = AUTO.model_copy(update={"spec": AUTO.spec.model_copy(update={"queue_name": "gpus"})})


@pytest.mark.parametrize(
    ("resource", "step", "result", "next_job"),
    [
        pytest.param(QUEUED_SHARDS, "shards", None, "docs-datagen", id="merge"),
        pytest.param(QUEUED_AUTO, "sizing", {"gpus": 1, "verdict": "fits"}, "tune-train", id="training"),
    ],
)
def test_a_later_step_held_by_kueue_keeps_the_resource_running(resource, step, result, next_job):
    # Its Job is created suspended with the queue's label; the resource started long ago, so it does not go
    # back to Pending (the status would refuse that move, and the next Job would never be recorded).
    decision = planner.next_step(resource, step, SUCCEEDED, GPU_DEFAULT, _result(result))
    assert (decision.phase, decision.reason) == (Phase.RUNNING, "Queued")
    (job,) = [c for c in decision.children if c["kind"] == "Job"]
    assert job["metadata"]["name"] == next_job and job["spec"]["suspend"] is True
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpus"


def test_a_sized_job_whose_dataset_went_away_fails_saying_so():
    chained = load_resources(AUTO_YAML.replace("{path: /data/d}", "{datasetBuildRef: {name: docs}}"))[0]
    gone = planner.next_step(chained, "sizing", SUCCEEDED, GPU_DEFAULT, PodResult(gpus=1), dependency=None)
    assert (gone.phase, gone.reason, gone.permanent, gone.children) == (
        Phase.FAILED, "DependencyGone", True, []
    )  # fmt: skip
    assert "(DatasetBuildNotFound)" in gone.message and "create the FineTuneJob again" in gone.message
    there = {"metadata": {"namespace": "team"}, "status": {"phase": "Succeeded", "output": {"path": "/data/d"}}}
    started = planner.next_step(chained, "sizing", SUCCEEDED, GPU_DEFAULT, PodResult(gpus=1), dependency=there)
    assert (started.phase, started.reason) == (Phase.RUNNING, "Sized")


def test_targets_left_out_of_a_full_termination_message_are_counted_in_the_condition():
    result = _result({"published": [{"target": "oci", "reference": "r/a:1"}], "publishedOmitted": 3})
    decision = planner.with_result("FineTuneJob", SUCCEEDED, result, "2026-01-01T00:00:00Z")
    assert decision.publish_condition.message == "published to oci r/a:1 and 3 more (the pod's log lists them)"
