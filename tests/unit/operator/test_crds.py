"""The committed CRDs match the spec models, and the API server and ``kubetune validate`` agree.

The server side is the strict test API server's admission (tests/operator/apiserver.py: the CRD's schema as
JSON Schema, strict unknown fields, null pruning, defaulting, CEL through cel-python), the same code the
operator tests run against; the client side is what ``kubetune validate`` runs. Each case below is a
variant of the quickstart; both sides must refuse it, or both accept it, and a CEL rule must say on the
server what validate says.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import yaml

from kubetune.api.v1alpha1 import SpecError, load_resources
from kubetune.api.v1alpha1.base import SpecModel
from kubetune_operator.crds import render_all
from tests.conftest import with_field
from tests.operator.apiserver import ApiError, CrdSchema


def test_committed_crds_do_not_drift(root):
    for name, text in render_all().items():
        committed = root / "crds" / name
        assert committed.exists(), f"crds/{name} is missing: run `make crds`"
        assert committed.read_text() == text, f"crds/{name} drifted from the spec models: run `make crds`"


def _schema_nodes(node):
    yield node
    for sub in (node.get("properties") or {}).values():
        yield from _schema_nodes(sub)
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"])


def test_schemas_are_structural():
    for crd in CRDS:
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for node in _schema_nodes(schema):
            if node.get("x-kubernetes-int-or-string"):  # the one form structural schemas allow without a type
                assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}] and "type" not in node, node
                continue
            assert "type" in node, node
            assert not {"anyOf", "oneOf", "$ref", "allOf"} & node.keys(), node


def test_every_nullable_field_defaults_to_none():
    """Dropping a null before validation (as the API server prunes it) is then the same as keeping it."""

    def models(model):
        yield model
        for field in model.model_fields.values():
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, SpecModel):
                    yield from models(arg)

    from kubetune.api.v1alpha1.resources import RESOURCE_MODELS

    for resource in RESOURCE_MODELS.values():
        for model in models(resource):
            for name, field in model.model_fields.items():
                if type(None) in getattr(field.annotation, "__args__", ()):
                    assert field.default is None and field.default_factory is None, f"{model.__name__}.{name}"


CRDS = [yaml.safe_load(text) for name, text in render_all().items() if name.endswith(".yaml")]


def _undescribed(node: dict, path: str) -> list[str]:
    """The properties under ``node`` (a structural schema) that have no description, by path."""
    found = []
    for key, sub in (node.get("properties") or {}).items():
        if not sub.get("description"):
            found.append(f"{path}.{key}")
        found += _undescribed(sub, f"{path}.{key}")
    for part, suffix in (("items", "[]"), ("additionalProperties", "{}")):
        if isinstance(node.get(part), dict):
            found += _undescribed(node[part], path + suffix)
    return found


@pytest.mark.parametrize("crd", CRDS, ids=lambda crd: crd["spec"]["names"]["kind"])
def test_kubectl_explain_has_a_description_for_every_field(crd):
    """kubectl explain prints a property's description: every field of spec and status has one."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    kind = crd["spec"]["names"]["kind"]
    assert _undescribed(schema["spec"], f"{kind}.spec") == []
    assert _undescribed(schema["status"], f"{kind}.status") == []


SERVERS = {crd["spec"]["names"]["kind"]: CrdSchema(crd) for crd in CRDS}
NAME_MESSAGE = "metadata.name must be a DNS label"


def quickstart(root) -> dict[str, dict]:
    docs = list(yaml.safe_load_all((root / "examples" / "quickstart.yaml").read_text()))
    return {d["kind"]: d for d in docs}


def _set(kind: str, path: str, value) -> Callable[[dict], tuple[str, dict]]:
    """A variant: the quickstart's ``kind`` with ``path`` (dotted) set to ``value``; ``...`` deletes it."""

    def make(docs: dict) -> tuple[str, dict]:
        return kind, with_field(docs[kind], path, value)

    return make


DSB, FTJ = "DatasetBuild", "FineTuneJob"
# (variant, accepted, fragment both sides' messages share)
CASES = {
    "epochs-as-string": (_set(FTJ, "spec.training.numTrainEpochs", "3"), False, "numTrainEpochs"),
    "epochs-as-int": (_set(FTJ, "spec.training.numTrainEpochs", 3), True, None),
    "min-above-max": (_set(DSB, "spec.chunking.minChars", 3000), False, "minChars must not exceed maxChars"),
    "both-dataset-sources": (
        _set(FTJ, "spec.dataset.path", "/data/x"),
        False,
        "set exactly one of datasetBuildRef or path",
    ),
    "no-dataset-source": (_set(FTJ, "spec.dataset", {}), False, "set exactly one of datasetBuildRef or path"),
    "null-path-beside-ref": (_set(FTJ, "spec.dataset.path", None), True, None),
    "name-64-chars": (_set(DSB, "metadata.name", "a" * 64), False, NAME_MESSAGE),
    "name-with-dot": (_set(DSB, "metadata.name", "quick.start"), False, NAME_MESSAGE),
    "name-uppercase": (_set(FTJ, "metadata.name", "Quick"), False, NAME_MESSAGE),
    "name-63-chars": (_set(FTJ, "metadata.name", "a" * 63), True, None),
    "temperature-null": (_set(DSB, "spec.generation.temperature", None), True, None),
    "temperature-too-high": (_set(DSB, "spec.generation.temperature", 2.5), False, "temperature"),
    "registry-null": (_set(FTJ, "spec.registry", None), True, None),
    "method-typo": (_set(FTJ, "spec.method", "[lorra]"), False, "method"),
    "objective-unknown": (_set(FTJ, "spec.objective", "ppo"), False, "objective"),
    "backend-unknown": (_set(DSB, "spec.generation.backend", "tgi"), False, "backend"),
    "scheduler-unknown": (_set(FTJ, "spec.training.lrSchedulerType", "polynomial"), False, "lrSchedulerType"),
    "learning-rate-negative": (_set(FTJ, "spec.training.learningRate", -1), False, "learningRate"),
    "unknown-field": (_set(FTJ, "spec.training.learningRat", 0.1), False, "learningRat"),
    "unknown-top-level-field": (_set(DSB, "specs", {}), False, "specs"),
    "rank-zero": (_set(FTJ, "spec.lora.r", 0), False, "spec.lora.r"),
    "target-modules-empty": (_set(FTJ, "spec.lora.targetModules", []), False, "targetModules"),
    "model-name-space": (_set(FTJ, "spec.registry.modelName", "bad name"), False, "modelName"),
    "paths-empty": (_set(DSB, "spec.source.paths", []), False, "paths"),
    "source-missing": (_set(DSB, "spec.source", ...), False, "source"),
    "model-missing": (_set(DSB, "spec.generation.model", ...), False, "model"),
    "pairs-per-chunk-21": (_set(DSB, "spec.generation.pairsPerChunk", 21), False, "pairsPerChunk"),
    "top-p-zero": (_set(DSB, "spec.generation.topP", 0), False, "topP"),
    "test-size-one": (_set(DSB, "spec.split.testSize", 1.0), False, "testSize"),
    "packing-as-string": (_set(FTJ, "spec.training.packing", "yes"), False, "packing"),
    "gpus-negative": (_set(FTJ, "spec.resources.gpus", -1), False, "gpus"),
    "gpus-as-string": (_set(FTJ, "spec.resources.gpus", "1"), False, "gpus"),
    "gpus-17": (_set(FTJ, "spec.resources.gpus", 17), False, "gpus"),
    "gpus-auto": (_set(FTJ, "spec.resources", {"gpus": "auto", "gpuType": "L4-24GB"}), True, None),
    "gpus-auto-without-gpu-type": (
        _set(FTJ, "spec.resources.gpus", "auto"),
        False,
        "resources.gpus auto needs resources.gpuType",
    ),
    "gpu-type-unknown": (_set(FTJ, "spec.resources.gpuType", "RTX-4090"), False, "gpuType"),
    "datagen-gpus-auto": (_set(DSB, "spec.resources.gpus", "auto"), True, None),
    "gate-threshold": (_set(FTJ, "spec.publish", {"gate": {"maxEvalLoss": 1.8, "mustBeatBase": True}}), True, None),
    "gate-judge-score-without-a-judge": (
        _set(FTJ, "spec.publish", {"gate": {"minJudgeScore": 4}}),
        False,
        "publish.gate.minJudgeScore needs evaluation.judge",
    ),
    "oci-both-credentials": (
        _set(
            FTJ,
            "spec.publish",
            {"oci": [{"repository": "r.example/a", "credentialsFile": "/f", "credentialsSecret": "s"}]},
        ),
        False,
        "set at most one of credentialsFile or credentialsSecret",
    ),
    "oci-repository-with-scheme": (
        _set(FTJ, "spec.publish", {"oci": [{"repository": "https://r.example/a"}]}),
        False,
        "repository",
    ),
    "gate-judge-score-6": (_set(FTJ, "spec.publish", {"gate": {"minJudgeScore": 6}}), False, "minJudgeScore"),
    "cpu-as-number": (_set(FTJ, "spec.resources.cpu", 4), False, "cpu"),
    "max-steps-below-minus-one": (_set(FTJ, "spec.training.maxSteps", -2), False, "maxSteps"),
    "datagen-gpus": (_set(DSB, "spec.resources", {"gpus": 1, "memory": "24Gi"}), True, None),
    "gpus-below-tensor-parallel": (
        lambda docs: (
            DSB,
            with_field(_set(DSB, "spec.resources", {"gpus": 1})(docs)[1], "spec.generation.tensorParallelSize", 2),
        ),
        False,
        "resources.gpus must be at least generation.tensorParallelSize",
    ),
    "fp32-master-weights-lora": (
        _set(FTJ, "spec.training.fp32MasterWeights", True),
        False,
        "training.fp32MasterWeights is for method full",
    ),
    "fp32-master-weights-full": (
        lambda docs: (
            FTJ,
            with_field(_set(FTJ, "spec.method", "full")(docs)[1], "spec.training.fp32MasterWeights", True),
        ),
        True,
        None,
    ),
    "tensor-parallel-gpus-unset": (_set(DSB, "spec.generation.tensorParallelSize", 4), True, None),
    "dtype-float16": (_set(DSB, "spec.generation.dtype", "float16"), True, None),
    "dtype-unknown": (_set(DSB, "spec.generation.dtype", "fp8"), False, "dtype"),
    "shards-65": (_set(DSB, "spec.generation.shards", 65), False, "shards"),
    "toleration-ok": (_set(FTJ, "spec.tolerations", [{"key": "gpu", "operator": "Exists"}]), True, None),
    "toleration-exists-with-value": (
        _set(FTJ, "spec.tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}]),
        False,
        "value must be empty when operator is Exists",
    ),
    "toleration-no-key-equal": (
        _set(DSB, "spec.tolerations", [{"value": "x"}]),
        False,
        "operator must be Exists when key is empty",
    ),
    "toleration-seconds-no-execute-only": (
        _set(DSB, "spec.tolerations", [{"key": "spot", "effect": "NoSchedule", "tolerationSeconds": 5}]),
        False,
        "tolerationSeconds needs effect NoExecute",
    ),
    "toleration-operator-unknown": (_set(FTJ, "spec.tolerations", [{"key": "a", "operator": "In"}]), False, "operator"),
    "node-selector-number": (_set(FTJ, "spec.nodeSelector", {"pool": 1}), False, "nodeSelector"),
    "queue-name-with-dot": (_set(FTJ, "spec.queueName", "team.a"), False, "queueName"),
    "pull-secret-as-object": (_set(DSB, "spec.imagePullSecrets", [{"name": "x"}]), False, "imagePullSecrets"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_server_and_validate_agree(root, case):
    make, accepted, fragment = CASES[case]
    kind, doc = make(quickstart(root))
    try:
        SERVERS[kind].admit(copy.deepcopy(doc), None)
        server_error = None
    except ApiError as exc:
        server_error = exc.message
    try:
        load_resources(yaml.safe_dump(doc))
        client_error = None
    except SpecError as exc:
        client_error = str(exc)
    assert (server_error is None) is accepted, f"server: {server_error}"
    assert (client_error is None) is accepted, f"validate: {client_error}"
    if fragment is not None:
        assert fragment in server_error and fragment in client_error, (server_error, client_error)


@pytest.mark.parametrize("kind", [DSB, FTJ])
def test_the_server_stores_the_defaults_the_services_apply(root, kind):
    doc = quickstart(root)[kind]
    stored = SERVERS[kind].admit(copy.deepcopy(doc), None)
    (parsed,) = load_resources(yaml.safe_dump(doc))
    assert stored["spec"] == parsed.spec.to_wire()
    assert "cleaning" in stored["spec"] or kind == FTJ
    assert "resources" in stored["spec"] or kind == DSB


def test_a_null_is_pruned_and_the_default_applies(root):
    kind, doc = _set(DSB, "spec.generation.temperature", None)(quickstart(root))
    stored = SERVERS[kind].admit(doc, None)
    (parsed,) = load_resources(yaml.safe_dump(doc))
    assert stored["spec"]["generation"]["temperature"] == parsed.spec.generation.temperature == 0.7


def test_the_reference_names_every_field(root):
    text = render_all()["REFERENCE.md"]
    for field in ("`spec.training.learningRate`", "`spec.chunking.minChars`", "`spec.lora.targetModules`"):
        assert field in text
    assert "minChars must not exceed maxChars" in text and "| `spec.source.paths` | list of string | required |" in text


def example_resources(root) -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(root)}#{doc['metadata']['name']}", doc)
        for path in sorted((root / "examples").rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc and str(doc.get("apiVersion", "")).startswith("kubetune.dev/")
    ]


def test_examples_pass_the_crd_schemas_and_validate(root):
    found = example_resources(root)
    assert {where.split("#")[0] for where, _ in found} >= {
        "examples/quickstart.yaml",
        "examples/cluster/quickstart.yaml",
    }
    for where, doc in found:
        SERVERS[doc["kind"]].admit(copy.deepcopy(doc), None)
        load_resources(yaml.safe_dump(doc), source=where)


def test_the_cluster_kustomization_renders_the_cluster_quickstart(root):
    import subprocess

    kubectl = root / ".cache" / "tools" / "bin" / "kubectl"
    if not kubectl.exists():
        pytest.skip("kubectl is installed by `make setup` (charts/fetch-helm.sh)")
    out = subprocess.run(
        [str(kubectl), "kustomize", str(root / "examples" / "cluster")], capture_output=True, text=True, check=True
    )
    docs = list(yaml.safe_load_all(out.stdout))
    assert [(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in docs] == [
        ("DatasetBuild", "quickstart", "default"),
        ("FineTuneJob", "quickstart-lora", "default"),
    ]


def _rules_with_samples():
    """Every CelRule of the models with objects (wire form, Python form) on both sides of it."""
    from kubetune.api.v1alpha1.datasetbuild import ChunkingSpec
    from kubetune.api.v1alpha1.finetunejob import DatasetSource
    from kubetune.api.v1alpha1.resources import NAME_RULE
    from kubetune.api.v1alpha1.scheduling import Toleration

    chunking = [{"minChars": a, "maxChars": b} for a, b in ((1, 1), (1000, 2000), (2001, 2000), (5, 4))]
    sources = [{"path": "d"}, {"datasetBuildRef": {"name": "b"}}, {}, {"path": "d", "datasetBuildRef": {"name": "b"}}]
    for rule in ChunkingSpec.cel_rules:
        for wire in chunking:
            yield rule, wire, ChunkingSpec.model_construct(min_chars=wire["minChars"], max_chars=wire["maxChars"])
    for rule in DatasetSource.cel_rules:
        for wire in sources:
            ref = wire.get("datasetBuildRef")
            yield rule, wire, DatasetSource.model_construct(dataset_build_ref=ref, path=wire.get("path"))
    tolerations = [
        {"key": "k", "operator": "Equal", "value": "v"},
        {"key": "k", "operator": "Exists"},
        {"key": "k", "operator": "Exists", "value": "v"},
        {"key": "k", "operator": "Exists", "value": ""},
        {"operator": "Exists"},
        {"operator": "Equal"},
        {"key": "k", "operator": "Equal", "effect": "NoExecute", "tolerationSeconds": 5},
        {"key": "k", "operator": "Equal", "effect": "NoSchedule", "tolerationSeconds": 5},
        {"key": "k", "operator": "Equal", "tolerationSeconds": 5},
    ]
    for rule in Toleration.cel_rules:
        for wire in tolerations:
            python = Toleration.model_construct(
                key=wire.get("key"),
                operator=wire["operator"],
                value=wire.get("value"),
                effect=wire.get("effect"),
                toleration_seconds=wire.get("tolerationSeconds"),
            )
            yield rule, wire, python
    for name in ("docs", "a" * 63, "a" * 64, "a.b", "Docs", "-a", "a-", "a-b-1"):
        yield NAME_RULE, {"metadata": {"name": name}}, name


def test_every_cel_rule_and_its_python_predicate_agree():
    import celpy

    env = celpy.Environment()
    checked = 0
    for rule, wire, python in _rules_with_samples():
        cel = bool(env.program(env.compile(rule.rule)).evaluate({"self": celpy.json_to_cel(wire)}))
        assert cel == rule.holds(python), (rule.rule, wire)
        checked += 1
    assert checked >= 40


def test_numbers_in_exponent_form_are_numbers_as_kubectl_reads_them(root):
    text = (root / "examples" / "quickstart.yaml").read_text().replace("learningRate: 2.0e-4", "learningRate: 2e-4")
    assert "learningRate: 2e-4" in text
    (_, tune) = load_resources(text)
    assert tune.spec.training.learning_rate == 2e-4
