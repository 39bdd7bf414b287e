"""The kubetune command: validate's messages and exit codes, and the local runner's ordering."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kubetune.api.v1alpha1 import load_resources
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


def test_validate_takes_several_files_after_one_flag(root):
    """-f a.yaml b.yaml, as the README writes it and a shell glob gives it, and the files alone."""
    files = [str(root / "examples" / "quickstart.yaml"), str(root / "examples" / "curated.yaml")]
    for args in (["-f", *files], files, ["-f", files[0], "-f", files[1]]):
        result = CliRunner().invoke(app, ["validate", *args])
        assert result.exit_code == 0, result.output
        assert "valid DatasetBuild/quickstart" in result.output and "valid DatasetBuild/curated" in result.output
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2 and "name the resources' YAML files" in result.output


def test_plan_of_an_empty_corpus_fails_naming_the_stage(root, tmp_path):
    (tmp_path / "corpus").mkdir()
    build = tmp_path / "empty.yaml"
    model = root / "models" / "SmolLM2-135M-Instruct"
    build.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: DatasetBuild\nmetadata: {name: empty}\n"
        f"spec: {{source: {{paths: [{tmp_path / 'corpus'}]}}, generation: {{model: {model}}}}}\n"
    )
    result = CliRunner().invoke(app, ["plan", "-f", str(build)])
    assert result.exit_code == 1
    assert "DatasetBuild/empty: nothing to build from: ingest found nothing in spec.source.paths" in (result.stderr)


def test_validate_warns_of_a_deprecated_field_and_refuses_it_beside_its_successor(tmp_path):
    job = "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: t}\nspec:\n  baseModel: m\n"
    job += "  dataset: {path: d}\n  registry: {modelName: x}\n"
    old = tmp_path / "old.yaml"
    old.write_text(job)
    result = CliRunner().invoke(app, ["validate", "-f", str(old)])
    assert result.exit_code == 0
    assert "warning FineTuneJob/t: spec.registry is deprecated: move it to spec.publish.mlflow" in result.output
    both = tmp_path / "both.yaml"
    both.write_text(job + "  publish: {mlflow: {modelName: y}}\n")
    result = CliRunner().invoke(app, ["validate", "-f", str(both)])
    assert result.exit_code == 1 and "set publish.mlflow or the deprecated registry, not both" in result.output


EXAMPLES = sorted(
    p.relative_to(Path(__file__).parents[3]).as_posix()
    for p in (Path(__file__).parents[3] / "examples").rglob("*.yaml")
    if "kind:" in p.read_text() and "kustomization" not in p.name and "gitops" not in p.parts
)


def test_every_example_is_found():
    assert {"examples/quickstart.yaml", "examples/curated.yaml", "examples/preference.yaml"} <= set(EXAMPLES)
    assert "examples/twinllama/twinllama.yaml" in EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES)
def test_validate_accepts_the_examples(root, example):
    result = CliRunner().invoke(app, ["validate", "-f", str(root / example)])
    assert result.exit_code == 0, result.output
    kinds = {line.split()[1].split("/")[0] for line in result.output.splitlines() if line.startswith("valid ")}
    assert kinds <= {"DatasetBuild", "FineTuneJob"} and kinds


def test_the_twinllama_recipe_chains_sft_then_dpo(root, tmp_path):
    resources = load_resources((root / "examples" / "twinllama" / "twinllama.yaml").read_text())
    by_name = {r.metadata.name: r for r in resources}
    sft, dpo = by_name["twinllama-sft"].spec, by_name["twinllama-dpo"].spec
    assert (sft.lora.r, sft.lora.lora_alpha, sft.lora.lora_dropout, sft.lora.target_modules) == (
        32,
        32,
        0.0,
        ["all-linear"],
    )
    t = sft.training
    assert (t.learning_rate, t.num_train_epochs, t.per_device_train_batch_size, t.gradient_accumulation_steps) == (
        3e-4,
        3,
        2,
        8,
    )
    assert t.max_length == 2048 and t.packing and t.lr_scheduler_type == "linear"
    assert dpo.objective == "dpo" and dpo.dpo.beta == 0.5 and dpo.training.learning_rate == 2e-6
    assert dpo.start_from.fine_tune_job_ref.name == "twinllama-sft" and dpo.training.num_train_epochs == 1
    ordered = [r.metadata.name for r in local.order(resources, tmp_path)]
    assert ordered.index("twinllama-dpo") > ordered.index("twinllama-sft")


@pytest.mark.parametrize(
    ("example", "ranks", "pods", "per_rank"), [("multi-gpu", 4, 1, 24.50), ("multi-node", 8, 2, 15.52)]
)
def test_the_multi_gpu_examples_plan_fsdp_over_their_gpus(root, tmp_path, example, ranks, pods, per_rank):
    """``kubetune plan -f examples/multi-gpu.yaml`` (4 GPUs of one pod) and ``multi-node.yaml`` (2 pods of 4), the
    baseModel a folder holding Llama-3.1-8B's config.json."""
    import json

    from tests.unit.trainer.test_memory import LLAMA_31_8B, model_dir

    model = model_dir(tmp_path, LLAMA_31_8B)
    text = (root / "examples" / f"{example}.yaml").read_text()
    assert f"{per_rank:.2f} GiB" in text
    assert "/data/models/Meta-Llama-3.1-8B" in text
    (tmp_path / "job.yaml").write_text(text.replace("/data/models/Meta-Llama-3.1-8B", str(model)))
    result = CliRunner().invoke(app, ["plan", "-f", str(tmp_path / "job.yaml"), "-o", "json"])
    assert result.exit_code == 0, result.output
    (plan,) = json.loads(result.stdout)
    assert plan["distributed"] == {"ranks": ranks, "pods": pods, "strategy": "fsdp",
                                   "perRankGiB": pytest.approx(per_rank, abs=0.005), "fits": True}  # fmt: skip
    table = CliRunner().invoke(app, ["plan", "-f", str(tmp_path / "job.yaml")]).stdout
    spread = " (2 pods x 4)" if pods > 1 else ""
    assert f"{ranks} ranks{spread}, FSDP: {per_rank:.2f} GiB on each GPU: fits H100-80GB" in " ".join(table.split())
    assert plan["gpu"]["fits"] is True  # one H100 holds a step alone, but not with DDP's gradient buckets


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
        # A DatasetBuild's stages know their inputs: the same spec over changed documents keeps them.
        pytest.param({"fingerprint": "b", "spec": "s", "complete": True}, False, False, True, id="new-inputs-staged"),
        pytest.param({"fingerprint": "b", "spec": "t", "complete": True}, False, False, False, id="new-spec-staged"),
    ],
)
def test_prepare_resumes_only_the_same_run(tmp_path, previous, force, up_to_date, checkpoint_kept):
    output = tmp_path / "out"
    checkpoint = output / "checkpoints" / "checkpoint-6"
    checkpoint.mkdir(parents=True)
    if previous is not None:
        (output / local.RUN_FILE).write_text(json.dumps(previous))
    staged = previous is not None and "spec" in previous
    assert local._prepare(output, "a", "s", force, staged=staged) is up_to_date
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
    # Back-translation: a request per answer span (whole sentences, 200-700 characters), several per chunk.
    assert build["prompts"] >= stages["dedup_chunks"]["output"] > 0
    assert build["prompt_tokens"] > 100 * build["prompts"], "each prompt holds a span of 200 characters or more"

    curated = subprocess.run(
        [kubetune, "plan", "-f", "examples/curated.yaml"], cwd=root, capture_output=True, text=True
    )
    assert curated.returncode == 0, curated.stderr
    assert "DatasetBuild/curated: the stages before generation" in curated.stdout
    assert "decontaminate_chunks" in curated.stdout and "then judge: about" in curated.stdout


def test_local_order_puts_a_job_after_the_one_it_starts_from(tmp_path):
    from kubetune.api.v1alpha1.finetunejob import StartFrom

    resources = load_resources(
        """
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: dpo}
spec: {baseModel: m, dataset: {path: p}, objective: dpo, startFrom: {fineTuneJobRef: {name: sft}}}
---
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {name: sft}
spec: {baseModel: m, dataset: {datasetBuildRef: {name: docs}}}
---
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {name: docs}
spec: {source: {paths: [x]}, generation: {model: m}}
"""
    )
    assert [r.metadata.name for r in local.order(resources, tmp_path)] == ["docs", "sft", "dpo"]
    with pytest.raises(local.DependencyError, match=r"spec\.startFrom\.fineTuneJobRef\.name names FineTuneJob 'sft'"):
        local.order([resources[0]], tmp_path)
    cycle = [r.model_copy(deep=True) for r in resources]
    cycle[1].spec.start_from = StartFrom.model_validate({"fineTuneJobRef": {"name": "dpo"}})
    with pytest.raises(local.DependencyError, match="cycle"):
        local.order(cycle, tmp_path)


def test_plan_names_the_field_of_a_build_that_cannot_run(tmp_path, root):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: DatasetBuild
metadata: {{name: bad}}
spec:
  source: {{paths: [{root / "examples" / "data"}]}}
  generation: {{model: {root / "models" / "SmolLM2-135M-Instruct"}}}
  curation: {{decontamination: {{evalSets: [{{path: {tmp_path / "nope.jsonl"}}}]}}}}
"""
    )
    result = CliRunner().invoke(app, ["plan", "-f", str(bad)])
    assert result.exit_code == 1
    assert "DatasetBuild/bad: spec.curation.decontamination.evalSets[0].path: no such file" in result.stderr


def test_run_leaves_a_suspended_resource_and_what_follows_it(tmp_path):
    manifest = tmp_path / "suspended.yaml"
    manifest.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: DatasetBuild\nmetadata: {name: docs}\n"
        "spec: {source: {paths: [corpus]}, generation: {model: /models/m}, suspend: true}\n---\n"
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: tune}\n"
        "spec: {baseModel: /models/m, dataset: {datasetBuildRef: {name: docs}}}\n"
    )
    result = CliRunner().invoke(app, ["run", "-f", str(manifest), "--workdir", str(tmp_path / "work")])
    assert result.exit_code == 1
    assert "Suspended" in result.output and "spec.suspend is true" in result.output
    summary = result.output.split("kubetune run:")[-1]
    assert "FineTuneJob/tune" not in summary  # not run, not in the summary
    # Not a terminal: a line per resource, its name and phase on one line (not a table folded into 80 columns).
    assert any(line.startswith("DatasetBuild/docs  Suspended") for line in summary.splitlines()), summary
    assert not (tmp_path / "work" / "datasets").exists()


@pytest.mark.parametrize(
    ("value", "env", "expected"),
    [
        pytest.param("1/4", None, (1, 4), id="explicit"),
        pytest.param("index/4", "3", (3, 4), id="the-indexed-job-pod-index"),
        pytest.param("index/4", None, "needs $JOB_COMPLETION_INDEX", id="index-without-the-env"),
        pytest.param("index/4", "4", "0 <= I < N", id="index-out-of-range"),
        pytest.param("4/4", None, "0 <= I < N", id="explicit-out-of-range"),
    ],
)
def test_datagen_shard_argument(monkeypatch, value, env, expected):
    import argparse

    from kubetune.datagen.__main__ import shard_arg

    if env is None:
        monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    else:
        monkeypatch.setenv("JOB_COMPLETION_INDEX", env)
    if isinstance(expected, tuple):
        assert shard_arg(value) == expected
    else:
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(expected)):
            shard_arg(value)


def _corpus_build(root: Path, tmp_path: Path, name: str, corpus: Path) -> Path:
    """A DatasetBuild of the documents in ``corpus`` with the demo model, written to a file."""
    build = tmp_path / "build.yaml"
    build.write_text(
        f"apiVersion: kubetune.dev/v1alpha1\nkind: DatasetBuild\nmetadata: {{name: {name}}}\n"
        f"spec:\n  source: {{paths: [{corpus}]}}\n"
        f"  generation: {{model: {root / 'models' / 'SmolLM2-135M-Instruct'}}}\n"
    )
    return build


def test_a_markdown_document_revised_in_a_few_words_is_a_near_duplicate_after_cleaning(root, tmp_path):
    """`kubetune plan` on a corpus of a markdown document (the quickstart's own prose with two code blocks) and
    its revision: three words edited, one of them a code fence's opening line. Markdown stripping pairs the fences
    differently in the revision and keeps text the original drops, so the two cleaned texts share a third of
    their shingles; the text as read still shares four fifths, and that is what near dedup compares."""
    import subprocess
    import sys

    from kubetune.api.v1alpha1.datasetbuild import CleaningSpec
    from kubetune.datagen import documents, minhash

    prose = (root / "examples" / "data" / "02-lora-and-qlora.md").read_text().split("\n\n")
    code = "```python\nfrom peft import LoraConfig\nconfig = LoraConfig(r=16, lora_alpha=32)\n```"
    original = "\n\n".join([*prose[:3], code, *prose[3:6], code.replace("16", "8"), *prose[6:]])
    revised = original.replace("```python", "", 1).replace(" adapter ", " adapters ", 1).replace(" the ", " a ", 1)
    corpus = tmp_path / "docs"
    corpus.mkdir()
    (corpus / "original.md").write_text(original)
    (corpus / "revised.md").write_text(revised)

    def jaccard(a: str, b: str) -> float:
        sa, sb = ({tuple(w[i : i + 5]) for i in range(len(w) - 4)} for w in (minhash.words(a), minhash.words(b)))
        return len(sa & sb) / len(sa | sb)

    clean = CleaningSpec()
    assert jaccard(documents.clean(original, clean), documents.clean(revised, clean)) < 0.65  # what cleaning does
    assert jaccard(original, revised) > 0.8
    build = _corpus_build(root, tmp_path, "revised", corpus)
    kubetune = str(Path(sys.executable).parent / "kubetune")
    plan = subprocess.run([kubetune, "plan", "-f", str(build), "-o", "json"], capture_output=True, text=True)
    assert plan.returncode == 0, plan.stderr
    stages = {s["name"]: s for s in json.loads(plan.stdout)[0]["stages"]}
    assert stages["dedup_documents"]["dropped"]["near_duplicate"] == 1
    assert stages["dedup_documents"]["output"] == 1


def test_kubetune_run_on_files_it_cannot_read_says_so(root, tmp_path):
    """`kubetune run` of a DatasetBuild whose three documents are not UTF-8: it fails before any model starts,
    and its error names the cause (the files, and why each gave nothing), not only "no samples survived"."""
    import subprocess
    import sys

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"notes-{i}.txt").write_bytes(bytes(range(128, 256)) * 8)
    build = _corpus_build(root, tmp_path, "unreadable", corpus)
    kubetune = str(Path(sys.executable).parent / "kubetune")
    run = subprocess.run(
        [kubetune, "run", "-f", str(build), "--workdir", str(tmp_path / "work")], capture_output=True, text=True
    )
    assert run.returncode == 1
    assert "none of the 3 input files held a readable document (not_utf8 3)" in run.stdout + run.stderr, run.stderr


def test_kubetune_run_rebuilds_a_dataset_whose_input_changed_and_only_the_stages_it_reaches(root, tmp_path):
    """`kubetune run` twice is up to date; after a row is appended to the source, it is not, and the new row is
    in the dataset; after a line that reads as no row is appended, the file is read again but every later stage
    is replayed (its input is the same), and the dataset's digest is unchanged."""
    import subprocess
    import sys

    rows = tmp_path / "rows.jsonl"
    good = [
        ("What does LoRA train?", "LoRA trains two small low-rank matrices in each layer and keeps the base frozen."),
        ("What does QLoRA store in four bits?", "QLoRA stores the frozen base model's weights in 4-bit NormalFloat."),
        ("What does DPO learn from?", "DPO learns from pairs of a chosen and a rejected answer to the same prompt."),
        ("What is decontamination?", "Decontamination drops training samples that share long n-grams with tests."),
    ]
    rows.write_text("".join(json.dumps({"instruction": i, "answer": a}) + "\n" for i, a in good[:3]))
    build = tmp_path / "build.yaml"
    build.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: DatasetBuild\nmetadata: {name: rows}\n"
        f"spec:\n  source: {{paths: [{rows}], kind: instructions}}\n"
        f"  generation: {{model: {root / 'models' / 'SmolLM2-135M-Instruct'}}}\n"
        "  split: {testSize: 0.0}\n"
    )
    kubetune = str(Path(sys.executable).parent / "kubetune")
    work = tmp_path / "work"

    def run() -> tuple[str, dict]:
        proc = subprocess.run([kubetune, "run", "-f", str(build), "--workdir", str(work)], capture_output=True,
                              text=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        out = work / "datasets" / "default" / "rows"
        return proc.stdout, json.loads((out / "manifest.json").read_text())

    _, first = run()
    assert first["files"]["train.parquet"]["rows"] == 3
    again, _ = run()
    assert "Succeeded (up to date)" in again
    with rows.open("a") as f:
        f.write(json.dumps({"instruction": good[3][0], "answer": good[3][1]}) + "\n")
    changed, second = run()
    assert "up to date" not in changed and second["files"]["train.parquet"]["rows"] == 4
    with rows.open("a") as f:
        f.write("not a row\n")
    _, third = run()
    log = (work / "datasets" / "default" / "rows" / "logs" / "datasetbuild.log").read_text().split("=====")[-1]
    assert "read_samples ..." in log, "the changed file is read again"
    for replayed in ("quality", "dedup_samples", "format"):
        assert re.search(rf"{replayed}: \d+ in, \d+ out \(kept from an earlier run\)", log), log
    assert third["digest"] == second["digest"]


def test_kubetune_run_of_a_base_model_that_is_no_model_names_the_field(tmp_path):
    """`kubetune run` of a FineTuneJob whose baseModel is a folder without config.json: one line naming the field
    and what is missing, not transformers' traceback."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "README.md").write_text("a folder of notes\n")
    data = tmp_path / "data"
    data.mkdir()
    rows = pa.table({"prompt": ["What is LoRA?"], "completion": ["Low-rank adapters."]})
    pq.write_table(rows, data / "train.parquet")
    job = tmp_path / "job.yaml"
    job.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: notes}\n"
        f"spec:\n  baseModel: {not_a_model}\n  dataset: {{path: {data}}}\n  method: lora\n"
    )
    kubetune = str(Path(sys.executable).parent / "kubetune")
    run = subprocess.run([kubetune, "run", "-f", str(job), "--workdir", str(tmp_path / "work")], capture_output=True,
                         text=True)  # fmt: skip
    assert run.returncode == 1
    said = run.stdout + run.stderr
    assert f"spec.baseModel: {not_a_model} holds no config.json" in said, said[-3000:]
    assert "Traceback" not in said and "sentencepiece" not in said
