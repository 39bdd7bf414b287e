"""EndpointEngine's HTTP behaviour: wire format, API key, retries, errors, concurrency, order.

The server here is a scripted stand-in (stdlib ``http.server`` on loopback, in a thread): it answers 429, 503,
401, 404, malformed bodies and slow answers on demand, failure modes a real server won't produce when asked.
A real ``vllm serve`` is tested in tests/e2e/test_endpoint.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from kubetune.api.v1alpha1.datasetbuild import GenerationSpec
from kubetune.llm import endpoint
from kubetune.llm.chat import Completion, Request
from kubetune.llm.endpoint import EndpointEngine, EndpointError

KEY = "sk-test-0123456789abcdef"
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


@dataclass
class Answer:
    status: int = 200
    body: bytes | dict | None = None  # None: a chat completion echoing the request's seed
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


def completion_for(request: dict) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": request.get("model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": json.dumps({"n": request["seed"]})},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


class Script:
    """What the server answers, in order (then ``default``), and what it saw."""

    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.default: Callable[[dict], Answer] = lambda request: Answer()
        self.seen: list[tuple[str, dict[str, str], dict]] = []  # path, headers, body
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def next(self, request: dict) -> Answer:
        with self.lock:
            return self.answers.popleft() if self.answers else self.default(request)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out and hung up: expected here


def handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = json.loads(raw)
            with script.lock:
                script.seen.append((self.path, dict(self.headers), request))
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            answer = script.next(request)
            time.sleep(answer.delay)
            body = completion_for(request) if answer.body is None else answer.body
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            data = data.replace(b"{AUTH}", self.headers.get("Authorization", "").encode())
            with script.lock:
                script.in_flight -= 1  # before answering: the client may send its next request at once
            self.send_response(answer.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def url(script: Script) -> Iterator[str]:
    server = Server(("127.0.0.1", 0), handler(script))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The engine's backoff delays, recorded instead of slept."""
    delays: list[float] = []
    monkeypatch.setattr(endpoint, "time", SimpleNamespace(sleep=delays.append))
    return delays


def gen_spec(url: str, repetition_penalty: float = 1.1, **endpoint_fields) -> GenerationSpec:
    return GenerationSpec.model_validate(
        {
            "model": "models/SmolLM2-135M-Instruct",
            "backend": "endpoint",
            "temperature": 0.7,
            "topP": 0.9,
            "maxTokens": 100,
            "repetitionPenalty": repetition_penalty,
            "endpoint": {"url": url, "maxRetries": 2, **endpoint_fields},
        }
    )


def req(seed: int = 1, **kwargs) -> Request:
    return Request([{"role": "user", "content": f"question {seed}"}], SCHEMA, seed, **kwargs)


def test_the_request_body_carries_the_sampling_settings_and_the_schema(url, script):
    engine = EndpointEngine(gen_spec(url, model="served-name"))
    out = engine.complete([req(11), req(12, temperature=0.0, max_tokens=50)])

    assert out == [Completion('{"n": 11}', "stop", 7), Completion('{"n": 12}', "stop", 7)]
    (path, headers, first), (_, _, second) = sorted(script.seen, key=lambda s: s[2]["seed"])
    assert path == "/v1/chat/completions"  # the URL's trailing slash is not doubled
    assert headers["Content-Type"] == "application/json"
    assert "Authorization" not in headers  # no key configured, no header
    assert first == {
        "model": "served-name",
        "messages": [{"role": "user", "content": "question 11"}],
        "temperature": 0.7,
        "top_p": 0.9,
        "max_tokens": 100,
        "seed": 11,
        "repetition_penalty": 1.1,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "kubetune_output", "schema": SCHEMA, "strict": True},
        },
    }
    assert (second["temperature"], second["max_tokens"], second["seed"]) == (0.0, 50, 12)


def test_model_comes_from_the_argument_then_the_endpoint_then_the_spec_and_no_repetition_penalty_at_1(url, script):
    EndpointEngine(gen_spec(url, repetition_penalty=1.0)).complete([req()])
    EndpointEngine(gen_spec(url, model="served-name")).complete([req()])
    EndpointEngine(gen_spec(url, model="served-name"), model="judge").complete([req()])

    bodies = [body for _, _, body in script.seen]
    assert [b["model"] for b in bodies] == ["models/SmolLM2-135M-Instruct", "served-name", "judge"]
    assert "repetition_penalty" not in bodies[0]  # a vLLM extension: sent only when it changes something


def test_finish_reason_and_token_count_come_from_the_answer(url, script):
    answer = completion_for({"seed": 3})
    answer["choices"][0].update(finish_reason="length", message={"role": "assistant", "content": '{"n": 3'})
    answer["usage"]["completion_tokens"] = 100
    script.answers.append(Answer(body=answer))

    assert EndpointEngine(gen_spec(url)).complete([req(3)]) == [Completion('{"n": 3', "length", 100)]


def test_429_and_503_are_retried_then_succeed(url, script, sleeps):
    script.answers.extend(
        [
            Answer(429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}),
            Answer(503, {"error": {"message": "overloaded"}}),
        ]
    )
    engine = EndpointEngine(gen_spec(url))

    assert engine.complete([req(5)]) == [Completion('{"n": 5}', "stop", 7)]
    assert engine.retries == 2 and len(script.seen) == 3
    assert sleeps[0] == 0.0  # Retry-After honoured
    assert 1.0 <= sleeps[1] <= 1.5  # second retry: 0.5 s doubled, plus up to half again of jitter


def test_retry_after_is_honoured_and_backoff_grows(url, script, sleeps):
    script.answers.extend([Answer(429, headers={"Retry-After": "7"})] + [Answer(502, b"bad gateway")] * 3)
    engine = EndpointEngine(gen_spec(url, maxRetries=4))

    engine.complete([req()])
    assert sleeps[0] == 7.0
    for delay, base in zip(sleeps[1:], (1.0, 2.0, 4.0), strict=True):
        assert base <= delay <= base * 1.5
    assert engine.retries == 4


def test_retries_exhausted_raise_naming_url_status_and_server_text(url, script, sleeps):
    script.default = lambda request: Answer(503, {"error": {"message": "engine overloaded " + "x" * 1000}})
    engine = EndpointEngine(gen_spec(url))

    with pytest.raises(EndpointError) as caught:
        engine.complete([req()])
    message = str(caught.value)
    assert "503" in message and "engine overloaded" in message and "gave up after 2 retries" in message
    assert f"{url.rstrip('/')}/chat/completions" in message
    assert len(message) < 600  # the server's text is truncated
    assert len(script.seen) == 3 and engine.retries == 2


@pytest.mark.parametrize("source", ["env", "file"])
def test_the_api_key_goes_in_the_authorization_header(url, script, tmp_path, monkeypatch, source):
    if source == "env":
        monkeypatch.setenv("KUBETUNE_TEST_KEY", KEY)
        spec = gen_spec(url, apiKeyEnv="KUBETUNE_TEST_KEY")
    else:
        (tmp_path / "key").write_text(f"  {KEY}\n")  # a Secret file's trailing newline is stripped
        spec = gen_spec(url, apiKeyFile=str(tmp_path / "key"))
    engine = EndpointEngine(spec)
    engine.complete([req()])

    assert script.seen[0][1]["Authorization"] == f"Bearer {KEY}"
    assert KEY not in repr(engine)


def test_401_names_the_key_settings_and_never_the_key(url, script, monkeypatch, sleeps):
    monkeypatch.setenv("KUBETUNE_TEST_KEY", KEY)
    script.answers.append(Answer(401, {"error": {"message": "invalid key {AUTH}"}}))  # a server quoting the key

    with pytest.raises(EndpointError) as caught:
        EndpointEngine(gen_spec(url, apiKeyEnv="KUBETUNE_TEST_KEY")).complete([req()])
    message = str(caught.value)
    assert "401" in message and "apiKeyEnv" in message and "apiKeyFile" in message
    assert "invalid key Bearer ***" in message and KEY not in message
    assert len(script.seen) == 1 and not sleeps  # not retried


def test_401_without_a_key_says_none_was_sent(url, script):
    script.answers.append(Answer(401, {"error": "Unauthorized"}))  # vLLM's own 401 body

    with pytest.raises(EndpointError, match=r"401.*Unauthorized.*no API key was sent.*apiKeyEnv.*apiKeyFile"):
        EndpointEngine(gen_spec(url)).complete([req()])


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (404, "The model `nope` does not exist."),
        (400, "max_tokens is too large"),
        (500, "internal error"),
        (422, "unprocessable"),
    ],
)
def test_the_key_is_never_in_an_error_message(url, script, monkeypatch, sleeps, status, text):
    monkeypatch.setenv("KUBETUNE_TEST_KEY", KEY)
    script.default = lambda request: Answer(status, f'{{"error": {{"message": "{text} {{AUTH}}"}}}}'.encode())

    with pytest.raises(EndpointError) as caught:
        EndpointEngine(gen_spec(url, apiKeyEnv="KUBETUNE_TEST_KEY")).complete([req()])
    message = str(caught.value)
    assert str(status) in message and text in message and KEY not in message
    assert len(script.seen) == (3 if status >= 500 else 1)  # only 5xx (and 429) are retried


def test_404_names_the_model(url, script):
    script.answers.append(Answer(404, {"error": {"message": "The model `nope` does not exist.", "code": 404}}))

    with pytest.raises(EndpointError, match=r"404.*The model `nope` does not exist.*'nope'.*generation.endpoint.model"):
        EndpointEngine(gen_spec(url, model="nope")).complete([req()])


def test_a_missing_key_source_is_an_error_naming_the_field(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBETUNE_NO_SUCH_KEY", raising=False)
    with pytest.raises(
        EndpointError, match=r"generation.endpoint.apiKeyEnv: environment variable KUBETUNE_NO_SUCH_KEY is not set"
    ):
        EndpointEngine(gen_spec("http://127.0.0.1:1/v1", apiKeyEnv="KUBETUNE_NO_SUCH_KEY"))
    with pytest.raises(EndpointError, match=r"generation.endpoint.apiKeyFile: file .*/nokey does not exist"):
        EndpointEngine(gen_spec("http://127.0.0.1:1/v1", apiKeyFile=str(tmp_path / "nokey")))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(EndpointError, match=r"generation.endpoint.apiKeyFile: file .*/empty is empty"):
        EndpointEngine(gen_spec("http://127.0.0.1:1/v1", apiKeyFile=str(tmp_path / "empty")))


def test_a_key_no_header_can_carry_is_refused_without_quoting_it(tmp_path):
    (tmp_path / "key").write_text(f"{KEY}\n{KEY}\n")
    with pytest.raises(EndpointError) as caught:
        EndpointEngine(gen_spec("http://127.0.0.1:1/v1", apiKeyFile=str(tmp_path / "key")))
    assert "apiKeyFile" in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.parametrize(
    "body", [b"<html>502 from a proxy</html>", b'{"choices": []}', b'{"choices": [{"message": {}}]}']
)
def test_a_200_that_is_no_chat_completion_is_an_error(url, script, body):
    script.answers.append(Answer(200, body))

    with pytest.raises(EndpointError, match="HTTP 200 but not a chat completion"):
        EndpointEngine(gen_spec(url)).complete([req()])
    assert len(script.seen) == 1


def test_a_slow_answer_times_out_and_is_retried(url, script):
    script.answers.append(Answer(delay=1.0))
    engine = EndpointEngine(gen_spec(url, timeoutSeconds=0.3))
    engine.backoff_seconds = 0.01

    assert engine.complete([req(4)]) == [Completion('{"n": 4}', "stop", 7)]
    assert engine.retries == 1


def test_timeouts_exhausted_name_the_timeout_setting(url, script):
    script.default = lambda request: Answer(delay=0.5)
    engine = EndpointEngine(gen_spec(url, timeoutSeconds=0.1, maxRetries=1))
    engine.backoff_seconds = 0.01

    with pytest.raises(EndpointError, match=r"gave up after 1 retries: no answer within 0.1 s .*timeoutSeconds"):
        engine.complete([req()])


def test_a_refused_connection_is_retried_then_an_error(sleeps):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    engine = EndpointEngine(gen_spec(f"http://127.0.0.1:{port}/v1"))

    with pytest.raises(EndpointError, match=rf"127.0.0.1:{port}/v1/chat/completions: gave up .*connection failed"):
        engine.complete([req()])
    assert engine.retries == 2 and len(sleeps) == 2


def test_concurrency_is_bounded_and_results_keep_request_order(url, script):
    # Later requests answer sooner, so answers arrive out of order.
    script.default = lambda request: Answer(delay=0.05 + 0.02 * (12 - request["seed"]))
    engine = EndpointEngine(gen_spec(url, concurrency=3))

    out = engine.complete([req(i) for i in range(12)])

    assert [json.loads(c.text)["n"] for c in out] == list(range(12))
    assert script.max_in_flight == 3
    assert len(script.seen) == 12


def test_one_request_failing_for_good_fails_the_batch_without_sending_the_rest(url, script):
    script.default = lambda request: (
        Answer(400, b'{"error": {"message": "bad"}}') if request["seed"] == 1 else Answer(delay=0.1)
    )

    with pytest.raises(EndpointError, match="400"):
        EndpointEngine(gen_spec(url, concurrency=2)).complete([req(i) for i in range(20)])
    assert len(script.seen) < 10


def test_no_requests_no_calls(url, script):
    assert EndpointEngine(gen_spec(url)).complete([]) == []
    assert script.seen == []
