"""The curated and preference examples, and a killed build resumed, with a real LLM behind a real server.

All three share one ``vllm serve`` of SmolLM2-135M-Instruct (tests/e2e/conftest.py) through the endpoint
backend: the examples are run by ``kubetune run`` as typed, with only ``generation.backend`` pointed at that
server (what a cluster does with a shared vLLM Deployment), so one engine start-up serves every build. The
offline vLLM backend is what the quickstart test runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from tests.operator.cluster import Cluster, chart_operator, kubelet_running

pytestmark = pytest.mark.slow

KEY_ENV = "KUBETUNE_E2E_API_KEY"


def through_server(example: Path, server, out: Path, judge: bool = False, **generation) -> Path:
    """The example with its generation sent to the test server, the key read from ``KEY_ENV``; with ``judge``,
    its FineTuneJobs' answers judged there too."""
    docs = list(yaml.safe_load_all(example.read_text()))
    endpoint = {"url": server.base_url, "model": server.model, "apiKeyEnv": KEY_ENV, "concurrency": 4}
    for doc in docs:
        if doc["kind"] == "DatasetBuild":
            doc["spec"]["generation"] |= {"backend": "endpoint", "endpoint": endpoint, **generation}
        elif judge:
            doc["spec"].setdefault("evaluation", {})["judge"] = {"endpoint": endpoint}
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out


def kubetune_run(root: Path, resources: Path, workdir: Path, server) -> subprocess.CompletedProcess:
    kubetune = Path(sys.executable).parent / "kubetune"
    env = {**os.environ, KEY_ENV: server.api_key}
    proc = subprocess.run(
        [str(kubetune), "run", "-f", str(resources), "--workdir", str(workdir)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def assert_no_secret(secret: str, proc: subprocess.CompletedProcess, folder: Path) -> None:
    assert secret not in proc.stdout + proc.stderr
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), f"the API key leaked into {path}"


def funnel(folder: Path) -> tuple[dict, dict]:
    manifest = json.loads((folder / "manifest.json").read_text())
    return manifest, {s["name"]: s for s in manifest["stages"]}


def test_the_curated_example(tmp_path, root, vllm_server):
    resources = through_server(root / "examples" / "curated.yaml", vllm_server, tmp_path / "curated.yaml")
    proc = kubetune_run(root, resources, tmp_path / "work", vllm_server)
    out = tmp_path / "work" / "datasets" / "default" / "curated"
    manifest, stages = funnel(out)

    assert list(stages) == [
        *("ingest", "clean", "dedup_documents", "chunk", "dedup_chunks", "decontaminate_chunks", "generate"),
        *("evolve", "quality", "grounding", "decontaminate", "dedup_samples", "semantic_dedup", "judge"),
        *("format", "split", "write"),
    ]
    assert stages["dedup_documents"]["dropped"]["exact_duplicate"] == 1
    assert stages["decontaminate_chunks"]["dropped"]["contaminated"] >= 1, "the quiz quotes the LoRA document"
    assert stages["evolve"]["output"] > stages["evolve"]["input"] and stages["evolve"]["tokens"] > 0
    assert stages["judge"]["tokens"] > 0 and stages["judge"]["input"] == stages["semantic_dedup"]["output"]
    rows = pq.read_table(out / "train.parquet").to_pylist()
    assert rows and all(3 <= r["judge_score"] <= 5 and r["judge_reason"] for r in rows)
    # The judge read each sample's chunk and scored three criteria apart; judge_score is the lowest.
    criteria = ("judge_faithfulness", "judge_helpfulness", "judge_style")
    assert all(r["judge_score"] == min(r[c] for c in criteria) for r in rows)
    assert {r["origin"].split(":")[0] for r in rows} <= {"backtranslated", "evolved"}
    assert all(r["support_score"] >= 0.5 and r["instruction_similarity_score"] >= 0.2 for r in rows)  # grounded
    assert all(r["answer_logprob"] >= -3.1 for r in rows)  # each answer likely given its chunk (scoringModel)
    card = (out / "README.md").read_text()
    assert "license: apache-2.0" in card and "| judge |" in card and manifest["digest"] in card
    assert_no_secret(vllm_server.api_key, proc, tmp_path / "work")


def test_the_preference_example(tmp_path, root, vllm_server):
    example = root / "examples" / "preference.yaml"
    resources = through_server(example, vllm_server, tmp_path / "preference.yaml", judge=True)
    proc = kubetune_run(root, resources, tmp_path / "work", vllm_server)
    out = tmp_path / "work" / "datasets" / "default" / "preference"
    manifest, stages = funnel(out)
    assert manifest["type"] == "preference" and stages["rank"]["output"] > 0
    assert set(stages["rank"]["dropped"]) <= {
        "tie",
        "no_sound_answer",
        "chosen_equals_rejected",
        "too_few_candidates",
        "low_score",
        "judge_invalid",
        "judge_truncated",
        "invalid_json",
        "truncated_answer",
        "wrong_shape",
    }
    rows = pq.read_table(out / "train.parquet").to_pylist()
    assert rows
    for row in rows:
        assert row["prompt"][-1]["role"] == "user" and row["chosen"][0]["role"] == "assistant"
        # The judge's best is chosen and its worst rejected, unless the rejected one is flawed (the checks first).
        assert row["chosen_score"] > row["rejected_score"] or row.get("rejected_flaw"), row
        assert row["chosen"][0]["content"] != row["rejected"][0]["content"]

    # The example's FineTuneJob trains with DPO on those rows.
    metrics = json.loads((tmp_path / "work" / "finetunes" / "default" / "preference-dpo" / "metrics.json").read_text())
    assert metrics["objective"] == "dpo" and metrics["steps"] > 0 and "rewards/margins" in metrics
    job = tmp_path / "work" / "finetunes" / "default" / "preference-dpo"
    assert (job / "adapter" / "adapter_config.json").exists()
    test = out / "test.parquet"
    if not test.exists():
        # What SmolLM2-135M writes varies with the server's batching, and the curation may keep rows of one
        # document only: then there is no test split (a document never straddles the two), and the job says so.
        assert manifest["stages"][-1]["output"] == len(rows) and metrics["eval_samples"] == 0
        assert metrics["generations"] == 0 and not (job / "generations.jsonl").exists()
        assert_no_secret(vllm_server.api_key, proc, tmp_path / "work")
        pytest.xfail(f"the build kept {len(rows)} rows of one document: no test split to judge the answers on")
    # The base and the tuned model answered the first test prompts; the judge behind the same server scored them.
    generations = [json.loads(line) for line in (job / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == metrics["generations"] > 0
    judge = metrics["judge"]
    # Every answer of both models has a verdict or a counted reason for none (SmolLM2 is a weak judge).
    verdicts = judge["base_judged"] + judge["tuned_judged"]
    assert verdicts + judge.get("judge_invalid", 0) + judge.get("judge_truncated", 0) == 2 * len(generations)
    scored = [g for g in generations if g["tuned_score"] is not None]
    assert all(1 <= g["tuned_score"] <= 5 and g["tuned_reason"] for g in scored)
    if scored:
        assert judge["tuned_score"] == pytest.approx(sum(g["tuned_score"] for g in scored) / len(scored), abs=1e-3)
    assert_no_secret(vllm_server.api_key, proc, tmp_path / "work")


SMALL_SOURCE = ["examples/data/02-lora-and-qlora.md", "examples/data/04-preference-tuning.md"]  # from the root


def small_spec(root: Path, server, **generation) -> dict:
    """Two documents, one request per part: a build of a few parts, quick enough to run several times."""
    endpoint = {"url": server.base_url, "model": server.model, "apiKeyEnv": KEY_ENV, "concurrency": 1}
    return {
        "source": {"paths": SMALL_SOURCE},
        "chunking": {"minChars": 600, "maxChars": 1200},
        "generation": {
            "model": str(root / "models" / "SmolLM2-135M-Instruct"),
            "backend": "endpoint",
            "endpoint": endpoint,
            # The answers are the documents' sentences, so the build keeps samples whatever a 135M model writes.
            "method": "backtranslation",
            "pairsPerChunk": 2,
            "maxTokens": 256,
            "batchSize": 1,
            **generation,
        },
    }


def datagen(root: Path, spec_file: Path, output: Path, server) -> subprocess.Popen:
    """The pod's command, ``python -m kubetune.datagen``, run here."""
    command = [sys.executable, "-m", "kubetune.datagen", "--spec", str(spec_file), "--output", str(output)]
    env = {**os.environ, KEY_ENV: server.api_key}
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.fixture(scope="module")
def small_build(root, vllm_server, tmp_path_factory) -> dict:
    """The manifest of the small build, run once without interruption, in one process."""
    folder = tmp_path_factory.mktemp("whole")
    (folder / "spec.json").write_text(json.dumps(small_spec(root, vllm_server)))
    whole = datagen(root, folder / "spec.json", folder / "out", vllm_server)
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    return json.loads((folder / "out" / "manifest.json").read_text())


def test_a_killed_build_resumes_to_the_same_digest(tmp_path, root, vllm_server, small_build):
    """``python -m kubetune.datagen`` (the pod's command) killed once its first part is written, started again:
    it asks only for what is missing and ends with the digest of a build that was never interrupted."""
    (tmp_path / "spec.json").write_text(json.dumps(small_spec(root, vllm_server)))
    killed = datagen(root, tmp_path / "spec.json", tmp_path / "out", vllm_server)
    parts = tmp_path / "out" / "stages" / "generate"
    deadline = time.monotonic() + 600
    while not list(parts.glob("*.done.json")):
        assert killed.poll() is None, killed.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    done_before = len(list(parts.glob("*.done.json")))
    n_parts = next(s["input"] for s in small_build["stages"] if s["name"] == "generate")
    assert 1 <= done_before < n_parts, "killed during generation"

    resumed = datagen(root, tmp_path / "spec.json", tmp_path / "out", vllm_server)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert f"{done_before} of {n_parts} parts kept from an earlier run" in log
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["digest"] == small_build["digest"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the test kubelet bind-mounts volumes, which needs root")
def test_a_sharded_build_through_the_operator_makes_the_same_dataset(tmp_path, root, vllm_server, small_build,
                                                                     monkeypatch):  # fmt: skip
    """``generation.shards: 2`` applied to the operator (as the chart runs it): two pods of an Indexed Job share
    the generation parts, a merge pod finishes the build, and the dataset is the one a single process made."""
    monkeypatch.setenv(KEY_ENV, vllm_server.api_key)  # the pods' environment (in a cluster: a Secret's env var)
    settings, _ = chart_operator()
    build = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "DatasetBuild",
        "metadata": {"name": "sharded"},
        "spec": small_spec(root, vllm_server, shards=2),
    }

    async def scenario():
        async with (
            Cluster(tmp_path, **settings) as cluster,
            kubelet_running(cluster, cwd=root, storage=tmp_path / "storage") as kubelet,
        ):
            await cluster.apply(build)
            done = await cluster.wait_for("DatasetBuild", "sharded", {"Succeeded", "Failed"}, timeout=900)
            logs = {name: path.read_text() for name, path in kubelet.logs.items()}
            assert done["status"]["phase"] == "Succeeded", "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in logs.items())
            for _ in range(40):  # kopf posts Events in batches, after the status write
                reasons = sorted(e["reason"] for e in await cluster.events("sharded"))
                if "JobSucceeded" in reasons:
                    break
                await asyncio.sleep(0.25)
            return done, logs, reasons

    done, logs, reasons = asyncio.run(scenario())
    assert done["status"]["output"]["digest"] == small_build["digest"]
    assert sorted(logs) == ["sharded-datagen", "sharded-datagen-shards-0", "sharded-datagen-shards-1"]
    n_parts = next(s["input"] for s in small_build["stages"] if s["name"] == "generate")
    # Each pod asked the LLM for its own parts (index, index + 2, ...) and only those. A pod that starts
    # late may find the other's parts already written and finish the stage itself; it still asks for none.
    asked = {index: [int(n) - 1 for n in re.findall(r"generate: part (\d+)/", logs[f"sharded-datagen-shards-{index}"])]
             for index in (0, 1)}  # fmt: skip
    assert asked == {index: list(range(index, n_parts, 2)) for index in (0, 1)}, asked
    assert "generate: part" not in logs["sharded-datagen"]  # the merge found every part written
    assert reasons == ["JobCreated", "JobSucceeded", "ShardsSucceeded"]
