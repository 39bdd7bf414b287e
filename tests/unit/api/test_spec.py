"""Spec validation: bad resources are rejected with the field path, the bad value and what would be valid."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import SpecError, load_resources, parse_spec
from kubetune.api.v1alpha1.datasetbuild import DatasetBuildSpec
from kubetune.api.v1alpha1.finetunejob import FineTuneJobSpec

GOOD_FTJ = """
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: ok}
spec:
  baseModel: models/x
  dataset: {datasetBuildRef: {name: build}}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        load_resources(text)
    return [str(e) for e in info.value.errors]


def test_quickstart_example_is_valid(root):
    resources = load_resources((root / "examples" / "quickstart.yaml").read_text())
    assert [r.kind for r in resources] == ["DatasetBuild", "FineTuneJob"]
    ftj = resources[1]
    assert ftj.spec.training.learning_rate == pytest.approx(2e-4)
    assert ftj.spec.dataset.dataset_build_ref.name == resources[0].metadata.name


def test_defaults_fill_a_minimal_resource():
    (ftj,) = load_resources(GOOD_FTJ)
    assert ftj.spec.method == "lora"
    assert ftj.spec.lora.r == 16 and ftj.spec.lora.target_modules == ["all-linear"]
    assert ftj.spec.training.num_train_epochs == 1.0
    assert ftj.metadata.namespace == "default"


def test_three_mistakes_give_three_clear_errors():
    bad = GOOD_FTJ + "  method: lorra\n  training: {learningRat: 0.001, learningRate: -1}\n"
    errors = errors_of(bad)
    assert len(errors) == 3, errors
    by_path = {e.split(": ", 2)[1]: e for e in errors}
    assert "did you mean 'learningRate'" in by_path["spec.training.learningRat"]
    assert "greater than 0" in by_path["spec.training.learningRate"] and "-1" in by_path["spec.training.learningRate"]
    assert "'full', 'lora' or 'qlora'" in by_path["spec.method"] and "lorra" in by_path["spec.method"]
    assert all("FineTuneJob/ok" in e for e in errors)


@pytest.mark.parametrize(
    ("patch", "path", "fragment"),
    [
        pytest.param("  dataset: {}\n", "spec.dataset", "exactly one of datasetBuildRef or path", id="no-dataset"),
        pytest.param("  registry: {modelName: 'bad name'}\n", "spec.registry.modelName", "pattern", id="model-name"),
        pytest.param("  lora: {r: 0}\n", "spec.lora.r", "greater than or equal to 1", id="rank-zero"),
        pytest.param("  objective: ppo\n", "spec.objective", "'sft'", id="objective"),
    ],
)
def test_field_errors_name_the_field(patch, path, fragment):
    text = GOOD_FTJ.replace("  dataset: {datasetBuildRef: {name: build}}\n", "") if "dataset" in patch else GOOD_FTJ
    errors = errors_of(text + patch)
    assert any(f"{path}:" in e and fragment in e for e in errors), errors


@pytest.mark.parametrize(
    ("toleration", "fragment"),
    [
        pytest.param("{key: gpu, operator: Exists, value: 'yes'}", "value must be empty when operator is Exists",
                     id="exists-with-value"),
        pytest.param("{value: a}", "operator must be Exists when key is empty", id="no-key-equal"),
        pytest.param("{key: spot, effect: NoSchedule, tolerationSeconds: 30}",
                     "tolerationSeconds needs effect NoExecute", id="seconds-without-no-execute"),
        pytest.param("{key: gpu, operator: In}", "'Exists' or 'Equal'", id="unknown-operator"),
        pytest.param("{key: gpu, effect: NoRun}", "'NoSchedule', 'PreferNoSchedule' or 'NoExecute'",
                     id="unknown-effect"),
    ],
)  # fmt: skip
def test_bad_tolerations_name_the_toleration(toleration, fragment):
    errors = errors_of(GOOD_FTJ + f"  tolerations: [{{key: ok, operator: Exists}}, {toleration}]\n")
    assert len(errors) == 1 and "spec.tolerations[1]" in errors[0] and fragment in errors[0], errors


def test_every_document_is_checked_and_unknown_kinds_are_named():
    text = GOOD_FTJ + "---\nkind: Pod\n---\n" + GOOD_FTJ.replace("name: ok", "name: Bad_Name")
    errors = errors_of(text)
    assert any("kind" in e and "Pod" in e for e in errors)
    assert any("metadata.name" in e and "Bad_Name" in e for e in errors)


def test_chunking_bounds_are_checked_together():
    with pytest.raises(SpecError) as info:
        parse_spec(
            "DatasetBuild",
            {
                "source": {"paths": ["d"]},
                "generation": {"model": "m"},
                "chunking": {"minChars": 3000, "maxChars": 2000},
            },
        )
    assert "spec.chunking" in str(info.value) and "must not exceed" in str(info.value)


@pytest.mark.parametrize("model", [DatasetBuildSpec, FineTuneJobSpec])
def test_wire_form_round_trips(model):
    minimal = (
        {"source": {"paths": ["d"]}, "generation": {"model": "m"}}
        if model is DatasetBuildSpec
        else {"baseModel": "m", "dataset": {"path": "d"}}
    )
    spec = model.model_validate(minimal)
    assert model.model_validate(spec.to_wire()) == spec
