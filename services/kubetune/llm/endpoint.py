"""The ``endpoint`` backend: chat completions from an OpenAI-compatible server (``vllm serve``, or any other).

Wire format: each :class:`~kubetune.llm.chat.Request` is one ``POST {url}/chat/completions`` (stdlib HTTP,
no client library) with ``model``, ``messages``, ``temperature``, ``top_p``, ``max_tokens``, ``seed`` and the
request's JSON schema as ``response_format: {"type": "json_schema", "json_schema": {"name", "schema",
"strict": true}}``; vLLM's server turns that into the same structured-output constraint the offline engine
uses. ``repetition_penalty`` is a vLLM extension that OpenAI's own API refuses, so it is sent only when it is
not 1.0 (omitted, a vLLM server takes the model's generation_config.json default, else 1.0). The answer is
``choices[0].message.content``, ``choices[0].finish_reason`` and ``usage.completion_tokens``.

At most ``endpoint.concurrency`` requests are in flight; completions come back in request order.

Retries: HTTP 429, 5xx, connection errors and timeouts are tried again up to ``endpoint.maxRetries`` times,
after ``Retry-After`` seconds when the server sends that header, else after an exponential backoff with
jitter (0.5 s, 1 s, 2 s, ... capped at 30 s, each plus up to half again); :attr:`EndpointEngine.retries`
counts them. Any other error (401, 403, 404 unknown model, 400 bad request, a 200 that is no chat
completion), or running out of retries, raises :class:`EndpointError` naming the URL, the status and the
server's error text. The API key (``apiKeyEnv`` or ``apiKeyFile``) goes only into the ``Authorization``
header: it is never logged, and is blanked out of any server text quoted in an error.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from pathlib import Path

from kubetune.api.v1alpha1.datasetbuild import EndpointSpec, GenerationSpec
from kubetune.llm.chat import Completion, Request

log = logging.getLogger(__name__)

ERROR_TEXT_CHARS = 300  # of the server's error text quoted in an EndpointError
KEY_SETTINGS = "generation.endpoint.apiKeyEnv or generation.endpoint.apiKeyFile"
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what can go in an HTTP header unescaped


class EndpointError(RuntimeError):
    """The server refused or failed a request for good (after retries where retrying made sense)."""


class _Retryable(Exception):
    """One failed attempt worth trying again: the message, and the server's Retry-After in seconds if any."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def read_api_key(endpoint: EndpointSpec) -> str | None:
    """The API key from ``apiKeyEnv`` or ``apiKeyFile`` (whitespace stripped); None when neither is set."""
    if endpoint.api_key_env is not None:
        field, value = "generation.endpoint.apiKeyEnv", os.environ.get(endpoint.api_key_env)
        if value is None:
            raise EndpointError(f"{field}: environment variable {endpoint.api_key_env} is not set")
        where = f"environment variable {endpoint.api_key_env}"
    elif endpoint.api_key_file is not None:
        field, path = "generation.endpoint.apiKeyFile", Path(endpoint.api_key_file)
        try:
            value = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EndpointError(f"{field}: file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EndpointError(f"{field}: file {path} cannot be read ({type(exc).__name__})") from None
        where = f"file {path}"
    else:
        return None
    key = value.strip()
    if not key:
        raise EndpointError(f"{field}: {where} is empty")
    if not _TOKEN.fullmatch(key):
        # http.client would refuse the header with the key in its message: refuse it here without the key.
        raise EndpointError(f"{field}: {where} holds characters an HTTP header cannot carry")
    return key


class EndpointEngine:
    """Chat completions from an OpenAI-compatible server, with JSON-schema structured outputs."""

    backoff_seconds = 0.5  # first retry's delay; doubles each retry
    max_backoff_seconds = 30.0
    max_retry_after_seconds = 300.0  # a longer Retry-After is cut to this

    def __init__(self, spec: GenerationSpec, model: str | None = None):
        if spec.endpoint is None:
            raise EndpointError("backend endpoint needs generation.endpoint (url, model)")
        self.spec = spec
        self.endpoint = spec.endpoint
        self.url = self.endpoint.url.rstrip("/") + "/chat/completions"
        self.model = model or self.endpoint.model or spec.model
        self._key = read_api_key(self.endpoint)
        self.retries = 0  # HTTP retries made (429, 5xx, connection errors, timeouts)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EndpointEngine(url={self.url!r}, model={self.model!r})"

    def complete(self, requests: list[Request]) -> list[Completion]:
        if not requests:
            return []
        workers = min(self.endpoint.concurrency, len(requests))
        if workers == 1:
            return [self._complete_one(r) for r in requests]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="endpoint") as pool:
            futures: list[Future[Completion]] = [pool.submit(self._complete_one, r) for r in requests]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)  # a request failed for good fails the batch at once
                return [f.result() for f in futures]
            finally:
                for f in futures:
                    f.cancel()  # those not started yet; the ones in flight finish on their own

    def body(self, request: Request) -> dict:
        """The JSON body of ``POST /chat/completions`` for one request."""
        spec = self.spec
        body: dict = {
            "model": self.model,
            "messages": request.messages,
            "temperature": spec.temperature if request.temperature is None else request.temperature,
            "top_p": spec.top_p,
            "max_tokens": request.max_tokens or spec.max_tokens,
            "seed": request.seed,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "kubetune_output", "schema": request.schema, "strict": True},
            },
        }
        if spec.repetition_penalty != 1.0:
            body["repetition_penalty"] = spec.repetition_penalty  # vLLM's extension; OpenAI's API refuses it
        return body

    def _complete_one(self, request: Request) -> Completion:
        data = json.dumps(self.body(request)).encode()
        retries = self.endpoint.max_retries
        for attempt in range(retries + 1):
            try:
                return self._post(data)
            except _Retryable as failure:
                if attempt == retries:
                    raise EndpointError(f"POST {self.url}: gave up after {retries} retries: {failure}") from None
                delay = failure.retry_after
                if delay is None:
                    delay = min(self.max_backoff_seconds, self.backoff_seconds * 2**attempt)
                    delay += random.uniform(0, delay / 2)
                log.warning("POST %s: %s; retry %d of %d in %.1f s", self.url, failure, attempt + 1, retries, delay)
                with self._lock:
                    self.retries += 1
                time.sleep(delay)
        raise AssertionError("unreachable")

    def _post(self, data: bytes) -> Completion:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        timeout = self.endpoint.timeout_seconds
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc) from None
        except TimeoutError:
            raise _Retryable(f"no answer within {timeout:g} s (generation.endpoint.timeoutSeconds)") from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise _Retryable(f"no answer within {timeout:g} s (generation.endpoint.timeoutSeconds)") from None
            raise _Retryable(f"connection failed: {exc.reason}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
        return self._completion(raw)

    def _completion(self, raw: bytes) -> Completion:
        try:
            answer = json.loads(raw)
            choice = answer["choices"][0]
            text = choice["message"]["content"] or ""
            finish_reason = choice.get("finish_reason") or "stop"
            tokens = int((answer.get("usage") or {}).get("completion_tokens") or 0)
            if not isinstance(text, str):
                raise TypeError("message.content is not a string")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            snippet = self._quote(raw.decode("utf-8", "replace"))
            raise EndpointError(
                f"POST {self.url}: HTTP 200 but not a chat completion ({type(exc).__name__}: {exc}): {snippet}"
            ) from None
        return Completion(text, finish_reason, tokens)

    def _http_error(self, exc: urllib.error.HTTPError) -> Exception:
        status = exc.code
        try:
            raw = exc.read()
        except (OSError, http.client.HTTPException):
            raw = b""
        message = f"HTTP {status} {exc.reason}: {self._quote(_error_text(raw))}"
        if status == 429 or status >= 500:
            return _Retryable(message, _retry_after(exc.headers.get("Retry-After"), self.max_retry_after_seconds))
        hint = ""
        if status in (401, 403):
            hint = (
                f" (the API key comes from {KEY_SETTINGS})"
                if self._key is not None
                else f" (no API key was sent: set {KEY_SETTINGS})"
            )
        elif status == 404:
            hint = f" (model {self.model!r}: generation.endpoint.model, else generation.model)"
        return EndpointError(f"POST {self.url}: {message}{hint}")

    def _quote(self, text: str) -> str:
        """The server's text for an error message: the key blanked out, one line, truncated."""
        if self._key:
            text = text.replace(self._key, "***")
        text = " ".join(text.split())
        return text if len(text) <= ERROR_TEXT_CHARS else text[:ERROR_TEXT_CHARS] + "..."


def _error_text(raw: bytes) -> str:
    """OpenAI's ``{"error": {"message": ...}}``, vLLM's and FastAPI's variants, else the body as text."""
    text = raw.decode("utf-8", "replace")
    try:
        answer = json.loads(text)
    except ValueError:
        return text
    if isinstance(answer, dict):
        error = answer.get("error", answer.get("detail", answer.get("message")))
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"]
        if isinstance(error, str):
            return error
    return text


def _retry_after(value: str | None, cap: float) -> float | None:
    """``Retry-After`` in seconds (an HTTP date is not honoured: exponential backoff then)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), cap) if seconds == seconds else None  # NaN: none
