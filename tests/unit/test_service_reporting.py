"""How a service reports in a pod (kubetune.progress): progress as log lines, the result as a termination message."""

from __future__ import annotations

import json

from kubetune import progress


def test_progress_goes_to_the_file_and_to_the_log_only_in_a_pod(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBETUNE_PROGRESS_LOG", raising=False)
    progress.write(tmp_path, {"step": 1})
    assert json.loads((tmp_path / "progress.json").read_text()) == {"step": 1}
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("KUBETUNE_PROGRESS_LOG", "1")
    progress.write(tmp_path, {"step": 2, "maxSteps": 4})
    out = capsys.readouterr().out
    assert out == 'kubetune-progress: {"step":2,"maxSteps":4}\n'
    assert progress.last_record("other\n" + out + "more output\n") == {"step": 2, "maxSteps": 4}
    assert not (tmp_path / "progress.json.partial").exists()


def test_the_result_becomes_the_termination_message_with_the_last_record(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBETUNE_PROGRESS_LOG", raising=False)
    monkeypatch.delenv("KUBETUNE_TERMINATION_LOG", raising=False)
    progress.write(tmp_path, {"stage": "done", "done": 9, "total": 9})
    progress.finish({"digest": "sha256:x", "files": {}}, {"digest": "sha256:x"})
    assert json.loads(capsys.readouterr().out) == {"digest": "sha256:x", "files": {}}  # locally: the log only
    message = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(message))
    progress.finish({"digest": "sha256:x"}, {"digest": "sha256:x", "rows": {"train": 3}})
    assert json.loads(message.read_text()) == {
        "digest": "sha256:x",
        "rows": {"train": 3},
        "progress": {"stage": "done", "done": 9, "total": 9},
    }
    # Over the kubelet's 4 KiB the progress record is dropped, never the JSON cut short.
    progress.write(tmp_path, {"stage": "x" * 5000})
    progress.finish({}, {"digest": "sha256:x"})
    assert json.loads(message.read_text()) == {"digest": "sha256:x"}
