"""The kubetune command: validate's messages and exit codes, and the local runner's ordering."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune.spec import load_resources
from kubetune_operator import local
from kubetune_operator.cli import app

BAD = """
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: tune}
spec:
  baseModel: models/m
  dataset: {path: data}
  method: lorra
  training: {learningRat: 0.001, learningRate: -0.001}
"""


def test_validate_prints_every_error_and_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD)
    result = CliRunner().invoke(app, ["validate", "-f", str(bad)])
    assert result.exit_code == 1
    out = result.output
    assert "spec.method" in out and "'lorra'" in out
    assert "spec.training.learningRat: unknown field; did you mean 'learningRate'?" in out
    assert "spec.training.learningRate" in out and "-0.001" in out
    assert "3 error(s)" in out


def test_validate_accepts_the_examples(root):
    result = CliRunner().invoke(app, ["validate", "-f", str(root / "examples" / "quickstart.yaml")])
    assert result.exit_code == 0, result.output
    assert "valid DatasetBuild/quickstart" in result.output and "valid FineTuneJob/quickstart-lora" in result.output


def test_missing_file_is_an_error(tmp_path):
    result = CliRunner().invoke(app, ["validate", "-f", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_local_order_puts_builds_first_and_rejects_missing_dependencies(root, tmp_path):
    resources = load_resources((root / "examples" / "quickstart.yaml").read_text())
    ordered = local.order(list(reversed(resources)), tmp_path)
    assert [r.kind for r in ordered] == ["DatasetBuild", "FineTuneJob"]
    with pytest.raises(local.DependencyError, match=r"datasetBuildRef\.name names DatasetBuild 'quickstart'"):
        local.order([resources[1]], tmp_path)


@pytest.mark.parametrize(
    ("previous", "force", "up_to_date", "checkpoint_kept"),
    [
        pytest.param({"fingerprint": "a", "complete": True}, False, True, True, id="finished-same"),
        pytest.param({"fingerprint": "a", "complete": True}, True, False, False, id="finished-forced"),
        pytest.param({"fingerprint": "a", "complete": False}, False, False, True, id="interrupted-resumes"),
        pytest.param({"fingerprint": "b", "complete": False}, False, False, False, id="other-spec-wiped"),
        pytest.param(None, False, False, False, id="unknown-folder-wiped"),
    ],
)
def test_prepare_resumes_only_the_same_run(tmp_path, previous, force, up_to_date, checkpoint_kept):
    output = tmp_path / "out"
    checkpoint = output / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    if previous is not None:
        (output / local.RUN_FILE).write_text(json.dumps(previous))
    assert local._prepare(output, "a", force) is up_to_date
    assert checkpoint.exists() is checkpoint_kept
    marker = json.loads((output / local.RUN_FILE).read_text())
    assert marker["fingerprint"] == "a" and marker["complete"] is up_to_date


def test_validate_prints_bracketed_values_and_patterns_verbatim(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        BAD.replace("method: lorra", 'method: "[lorra]"').replace(
            "dataset: {path: data}", "dataset: {path: data}\n  registry: {modelName: 'a b'}"
        )
    )
    result = CliRunner().invoke(app, ["validate", "-f", str(bad)])
    assert result.exit_code == 1
    assert "(got '[lorra]')" in result.output
    assert "'^[A-Za-z0-9][A-Za-z0-9._-]*$'" in result.output


def test_operator_help_names_its_options():
    result = CliRunner().invoke(app, ["operator", "--help"])
    assert result.exit_code == 0
    for option in ("--namespace", "--liveness", "--log-format", "--verbose", "--debug"):
        assert option in result.output


@pytest.mark.parametrize("pattern", ["team-*", "!kube-system", "Team"])
def test_operator_refuses_namespace_patterns(pattern):
    result = CliRunner().invoke(app, ["operator", "-n", pattern])
    assert result.exit_code == 2
    assert "not a namespace name" in result.output


def test_readme_commands_as_typed(root):
    """`kubetune validate` and `kubetune plan` on the quickstart, as the README types them (a subprocess)."""
    import subprocess
    import sys

    kubetune = str(Path(sys.executable).parent / "kubetune")
    valid = subprocess.run(
        [kubetune, "validate", "-f", "examples/quickstart.yaml"], cwd=root, capture_output=True, text=True
    )
    assert valid.returncode == 0 and "valid FineTuneJob/quickstart-lora" in valid.stdout, valid.stderr
    plan = subprocess.run(
        [kubetune, "plan", "-f", "examples/quickstart.yaml", "-o", "json"], cwd=root, capture_output=True, text=True
    )
    assert plan.returncode == 0, plan.stderr
    build, tune = json.loads(plan.stdout)  # stdout is JSON alone
    assert tune["resource"] == "FineTuneJob/quickstart-lora" and tune["method"] == "lora"
    assert tune["bytes"]["peakAllocated"] > tune["bytes"]["weights"] > 0
    assert build["resource"] == "DatasetBuild/quickstart"
    stages = {s["name"]: s for s in build["stages"]}
    assert stages["ingest"]["output"] == 6 and stages["dedup_documents"]["dropped"]["exact_duplicate"] == 1
    assert build["prompts"] == stages["dedup_chunks"]["output"] > 0
    assert build["prompt_tokens"] > 200 * build["prompts"], "each prompt holds a chunk of 1,000 characters or more"

    curated = subprocess.run(
        [kubetune, "plan", "-f", "examples/curated.yaml"], cwd=root, capture_output=True, text=True
    )
    assert curated.returncode == 0, curated.stderr
    assert "DatasetBuild/curated: the stages before generation" in curated.stdout
    assert "decontaminate_chunks" in curated.stdout and "then judge: about" in curated.stdout
