"""The quickstart end to end with SmolLM2-135M on vLLM (CPU): locally, and through the operator.

Slow (minutes each): a real vLLM engine writes the pairs, TRL trains a real LoRA adapter, MLflow registers it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.registry.oci_store import pull
from tests import registry
from tests.operator.cluster import Cluster, TestKubelet, chart_operator, kubelet_running

pytestmark = pytest.mark.slow

MODEL_NAME = "quickstart-smollm2-lora"


def registered_versions(tracking_db: Path) -> list:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tracking_db}"
    return list(MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(f"name = '{MODEL_NAME}'"))


def check_dataset(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    assert stages["ingest"]["output"] == 6
    assert stages["dedup_documents"]["dropped"]["exact_duplicate"] == 1  # the duplicate document
    assert manifest["files"]["train.parquet"]["rows"] >= 4
    return manifest


def kubetune_run(root: Path, workdir: Path, timeout: float, *more: Path) -> subprocess.CompletedProcess:
    kubetune = Path(sys.executable).parent / "kubetune"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    files = [arg for path in more for arg in ("-f", str(path))]
    command = [str(kubetune), "run", "-f", "examples/quickstart.yaml", *files, "--workdir", str(workdir)]
    proc = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def test_kubetune_run_quickstart(tmp_path, root, smollm2):
    """The quickstart as the README types it, with examples/oci.yaml beside it (its registry's address the test
    registry's): a dataset, an adapter registered in MLflow, and a second adapter pushed to an OCI registry."""
    workdir = tmp_path / "work"
    with registry.running(tmp_path / "registry") as reg:
        oci = tmp_path / "oci.yaml"
        oci.write_text((root / "examples" / "oci.yaml").read_text().replace("127.0.0.1:5000", reg.host))
        proc = kubetune_run(root, workdir, 1500, oci)
        assert "Succeeded" in proc.stdout and "funnel" in proc.stdout
        pushed = workdir / "finetunes" / "default" / "quickstart-oci"
        published, kaito = json.loads((pushed / "publish.json").read_text())["published"][1:]  # after MLflow's
        assert published["target"] == "oci" and published["reference"].startswith(f"{reg.host}/kubetune/")
        assert kaito["reference"].split("@")[0] == published["reference"].split("@")[0] + "-kaito"
        pulled = pull(published["reference"].split("@")[0], tmp_path / "pulled", plain_http=True)
        assert {p.name: p.read_bytes() for p in pulled} == {
            p.name: p.read_bytes() for p in (pushed / "adapter").iterdir()
        }
        assert f"pushed to {published['reference']}" in (pushed / "logs" / "finetunejob.log").read_text()
    # Served as published: the adapter pulled from the registry, loaded by vLLM's LoRA support beside its base,
    # answers, and not as the base does (greedy, same prompts).
    serve = [sys.executable, str(root / "tests" / "e2e" / "serve_lora.py"), str(smollm2), str(tmp_path / "pulled")]
    served = subprocess.run(serve, cwd=root, capture_output=True, text=True, timeout=600)
    assert served.returncode == 0, served.stdout[-2000:] + served.stderr[-4000:]
    answers = json.loads(next(line for line in served.stdout.splitlines() if line.startswith('{"base"')))
    assert all(answers["tuned"]) and answers["tuned"] != answers["base"], answers

    dataset = workdir / "datasets" / "default" / "quickstart"
    manifest = check_dataset(dataset)
    out = workdir / "finetunes" / "default" / "quickstart-lora"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] > 0 and metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    assert (out / "loss.png").exists() and (dataset / "funnel.png").exists() and (dataset / "topics.png").exists()
    quality = metrics["output_quality"]  # the test answers against their references, as the quickstart asks
    assert quality["answers"] >= 1 and quality["embedding_model"] == "models/all-MiniLM-L6-v2"
    assert 0 <= quality["tuned_rouge_l"] <= 1 and -1 <= quality["tuned_similarity"] <= 1
    assert "rouge_l=" in proc.stdout, "the run's summary shows it"

    (version,) = registered_versions(workdir / "mlflow.db")
    assert version.tags["kubetune.dev/dataset-digest"] == manifest["digest"]
    assert version.tags["kubetune.dev/base-model"] == "models/SmolLM2-135M-Instruct"
    assert version.tags["kubetune.dev/method"] == "lora"
    assert version.tags["kubetune.dev/base-model-digest"].startswith("sha256:")

    # Run again: both are up to date, nothing is redone, no second version appears.
    made = {p: p.stat().st_mtime_ns for p in (out / "metrics.json", dataset / "manifest.json")}
    kubetune_run(root, workdir, 120)
    assert {p: p.stat().st_mtime_ns for p in made} == made
    assert len(registered_versions(workdir / "mlflow.db")) == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the test kubelet bind-mounts volumes, which needs root")
def test_quickstart_through_the_operator(tmp_path, root, smollm2):
    """The quickstart applied as it is, its FineTuneJob also publishing to an OCI registry with basic auth whose
    password is in a Secret (mounted by the kubelet): that password is then looked for everywhere it must not be."""
    storage = tmp_path / "storage"
    password = "planted-" + secrets.token_urlsafe(18)

    # The operator as the chart's Deployment runs it: its command, arguments and environment, and only the
    # RBAC rules of its ClusterRole (the test API server refuses anything else).
    settings, _ = chart_operator()

    async def scenario(reg: registry.Registry):
        async with (
            Cluster(tmp_path, **settings) as cluster,
            kubelet_running(cluster, cwd=root, storage=storage) as kubelet,
        ):
            await cluster.create_secret("registry-creds", {"username": "kubetune", "password": password})
            for doc in yaml.safe_load_all((root / "examples" / "quickstart.yaml").read_text()):
                if doc["kind"] == "FineTuneJob":
                    target = {"repository": f"{reg.host}/kubetune/quickstart", "plainHttp": True,
                              "credentialsSecret": "registry-creds"}  # fmt: skip
                    doc["spec"]["publish"]["oci"] = [target]
                await cluster.apply(doc)
            seen: dict[str, list] = {"DatasetBuild": [], "FineTuneJob": []}
            watcher = asyncio.create_task(_progress_seen(cluster, seen))
            build = await cluster.wait_for("DatasetBuild", "quickstart", {"Succeeded", "Failed"}, timeout=1200)
            assert build["status"]["phase"] == "Succeeded", _logs(kubelet)
            job = await cluster.wait_for("FineTuneJob", "quickstart-lora", {"Succeeded", "Failed"}, timeout=1200)
            assert job["status"]["phase"] == "Succeeded", _logs(kubelet)
            watcher.cancel()
            assert cluster.api.denied == []  # the operator never asked for the Secret
            await asyncio.sleep(2)  # kopf posts Events in batches
            events = [e for name in ("quickstart", "quickstart-lora") for e in await cluster.events(name)]
            said = [cluster.log(), *(p.read_text(errors="replace") for p in kubelet.logs.values())]
            return build, job, seen, events, said

    with registry.running(tmp_path / "registry", username="kubetune", password=password) as reg:
        build, job, seen, events, said = asyncio.run(scenario(reg))
        (oci,) = [p for p in job["status"]["published"] if p["target"] == "oci"]
        credentials = tmp_path / "credentials"
        credentials.write_text(f"kubetune:{password}")
        pulled = pull(oci["reference"].split("@")[0], tmp_path / "pulled", plain_http=True,
                      credentials_file=credentials)  # fmt: skip
        adapter = storage / "finetunes" / "default" / "quickstart-lora" / "adapter"
        assert {p.name: p.read_bytes() for p in pulled} == {p.name: p.read_bytes() for p in adapter.iterdir()}
        credentials.unlink()
        # The planted password: in no log (operator, pods), status, Event, file the pods wrote (lineage, MLflow's
        # store with its tags and params, the run's artifacts) or byte the registry keeps (manifests with their
        # annotations, the lineage config, the layers).
        places = {"operator and pod logs": "\n".join(said), "statuses": json.dumps([build, job]),
                  "events": json.dumps(events)}  # fmt: skip
        files = [p for folder in (storage, reg.root) for p in folder.rglob("*") if p.is_file()]
        files += tmp_path.glob("*.termination-log")  # what each pod's kubelet copied into its status
        # The pods' own volumes (scratch, the spec), but for the Secret's, which holds the password by design.
        volumes = tmp_path / "volumes"  # volumes/JOB/VOLUME/...
        files += [p for p in volumes.rglob("*") if p.is_file() and p.relative_to(volumes).parts[1] != "oci-0"]
        for path in files:
            places[str(path)] = path.read_bytes().decode("latin-1")
        assert [where for where, text in places.items() if password in text] == []
        assert len(places) > 20 and any("lineage.json" in where for where in places)
    assert build["status"]["output"]["path"] == "/var/lib/kubetune/datasets/default/quickstart"
    manifest = check_dataset(storage / "datasets" / "default" / "quickstart")
    ready = {c["type"]: c["status"] for c in job["status"]["conditions"]}
    assert ready == {"SpecValid": "True", "Complete": "True", "Ready": "True", "Published": "True"}
    (version,) = registered_versions(storage / "mlflow.db")
    assert version.tags["kubetune.dev/dataset-digest"] == manifest["digest"]
    assert version.tags["kubetune.dev/finetunejob"] == "quickstart-lora"
    # What the pods reported through the kubelet: the result as their termination message, progress as log lines.
    assert build["status"]["output"]["digest"] == manifest["digest"]
    assert build["status"]["output"]["rows"]["train"] == manifest["files"]["train.parquet"]["rows"]
    output = job["status"]["output"]
    assert (output["modelName"], output["modelVersion"]) == (MODEL_NAME, str(version.version))
    assert output["digest"] == version.tags["kubetune.dev/adapter-digest"]
    assert job["status"]["published"] == [
        {"target": "mlflow", "reference": f"models:/{MODEL_NAME}/{version.version}", "digest": output["digest"]},
        {"target": "oci", "reference": oci["reference"], "digest": output["digest"]},
    ]
    # Lineage names the resources themselves (their uids, from the operator), not only their names.
    assert version.tags["kubetune.dev/finetunejob-uid"] == job["metadata"]["uid"]
    assert manifest["resource"]["uid"] == build["metadata"]["uid"]
    lineage = json.loads((storage / "finetunes" / "default" / "quickstart-lora" / "lineage.json").read_text())
    assert lineage["resources"]["datasetBuild"]["uid"] == build["metadata"]["uid"]
    assert re.match(r"step (\d+)/\1 \(100%\)", job["status"]["progress"]), job["status"]["progress"]
    assert any("stages done; " in line for line in seen["DatasetBuild"]), seen
    steps = [d["step"] for d in seen["FineTuneJob"] if isinstance(d, dict) and "step" in d]
    final = job["status"]["progressDetail"]["maxSteps"]
    assert any(0 < step < final for step in steps), seen  # read while training, not only at the end


async def _progress_seen(cluster: Cluster, seen: dict[str, list]) -> None:
    """Every distinct status.progress (DatasetBuild) and progressDetail (FineTuneJob) while the resources run."""
    while True:
        for kind, name, key in (("DatasetBuild", "quickstart", "progress"), ("FineTuneJob", "quickstart-lora",
                                                                              "progressDetail")):  # fmt: skip
            status = (await cluster.get(kind, name)).get("status") or {}
            if status.get("phase") == "Running" and status.get(key) and status[key] not in seen[kind]:
                seen[kind].append(status[key])
        await asyncio.sleep(0.5)


def _logs(kubelet: TestKubelet) -> str:
    return "\n".join(f"--- {name}\n{path.read_text()[-3000:]}" for name, path in kubelet.logs.items() if path.exists())
