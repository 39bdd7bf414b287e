"""How a service reports in a pod (kubetune.pod_report): progress as log lines, the result as a termination message."""

from __future__ import annotations

import json
import threading

from kubetune import files, pod_report
from kubetune.api.v1alpha1 import result
from kubetune.api.v1alpha1.result import PodResult


def test_progress_goes_to_the_file_and_to_the_log_only_in_a_pod(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBETUNE_PROGRESS_LOG", raising=False)
    pod_report.write(tmp_path, {"step": 1})
    assert json.loads((tmp_path / "progress.json").read_text()) == {"step": 1}
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("KUBETUNE_PROGRESS_LOG", "1")
    pod_report.write(tmp_path, {"step": 2, "maxSteps": 4})
    out = capsys.readouterr().out
    assert out == 'kubetune-progress: {"step":2,"maxSteps":4}\n'
    assert pod_report.last_record("other\n" + out + "more output\n") == {"step": 2, "maxSteps": 4}
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]  # no temporary file left behind


def test_the_result_becomes_the_termination_message_with_the_last_record(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBETUNE_PROGRESS_LOG", raising=False)
    monkeypatch.delenv("KUBETUNE_TERMINATION_LOG", raising=False)
    pod_report.write(tmp_path, {"stage": "done", "done": 9, "total": 9})
    pod_report.finish({"digest": "sha256:x", "files": {}}, PodResult(digest="sha256:x"))
    assert json.loads(capsys.readouterr().out) == {"digest": "sha256:x", "files": {}}  # locally: the log only
    message = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(message))
    pod_report.finish({"digest": "sha256:x"}, PodResult(digest="sha256:x", rows={"train": 3}))
    assert json.loads(message.read_text()) == {
        "digest": "sha256:x",
        "rows": {"train": 3},
        "progress": {"stage": "done", "done": 9, "total": 9},
    }
    # Over the kubelet's 4 KiB the progress record is dropped, never the JSON cut short.
    pod_report.write(tmp_path, {"stage": "x" * 5000})
    pod_report.finish({}, PodResult(digest="sha256:x"))
    assert json.loads(message.read_text()) == {"digest": "sha256:x"}


def test_many_publish_targets_and_a_long_error_still_make_a_termination_message_the_operator_can_parse():
    digest = "sha256:" + "a" * 64
    # MLflow and eight OCI targets at the spec's limits: each repository 255 characters long, each tag 128, each
    # reference ending in the manifest's digest, as pushes report them.
    published = [{"target": "mlflow", "reference": "models:/" + "m" * 128 + "/1", "digest": digest}] + [
        {"target": "oci", "reference": f"registry-{i}.example.com/{'r' * 232}:{'t' * 128}@{digest}", "digest": digest}
        for i in range(8)
    ]
    message = {"published": published, "error": "trainer failed: publishing: " + "e" * 3000, "progress": {"s": 1}}
    text = PodResult.model_validate(message).message()
    assert len(text.encode()) <= result.TERMINATION_LIMIT
    fitted = json.loads(text)
    assert "progress" not in fitted and len(fitted["error"]) == result.ERROR_LIMIT
    assert PodResult.parse(text).published_omitted == fitted["publishedOmitted"]  # what the operator reads
    # The digest each entry repeats gave way, then the last entries, counted (the pod's log lists them all).
    kept = fitted["published"]
    assert kept == [{"target": e["target"], "reference": e["reference"]} for e in published[: len(kept)]]
    assert fitted["publishedOmitted"] == len(published) - len(kept) > 0
    # Three targets of ordinary length fit whole, digests and all.
    small = {"published": [{**e, "reference": f"r.example/team/a:v{i}@{digest}"} for i, e in enumerate(published[:3])],
             "error": "x"}  # fmt: skip
    assert json.loads(PodResult.model_validate(small).message()) == small
    # Whatever else is too long (a gate's failures), the digest and the error are kept.
    huge = PodResult.model_validate(
        {"digest": digest, "gate": {"passed": False, "failures": ["f" * 5000]}, "error": "e"}
    )
    huge = huge.message()
    assert json.loads(huge) == {"digest": digest, "error": "e"}


def test_writers_on_one_folder_never_collide_on_a_temporary_name(tmp_path):
    # The pods of a sharded build all run as PID 1 on one shared volume: a temporary name made of the PID alone
    # would be one file for all of them (here: threads of one process), and one writer's rename would fail.
    target, errors = tmp_path / "progress.json", []

    def write(n: int) -> None:
        try:
            for i in range(200):
                files.write_atomic(target, f"{n}:{i}")
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text().endswith(":199")
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]
