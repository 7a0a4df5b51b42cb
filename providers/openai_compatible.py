"""OpenAI-compatible servers (vLLM, llama.cpp server, Ollama, TGI, `transformers serve`).

Talks ``/v1/chat/completions`` or ``/v1/completions`` over plain ``httpx``: one attempt per
``generate``, bearer token optional, response size bounded, errors typed.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx

from providers._http import (
    MAX_RESPONSE_BYTES,
    Redactor,
    decode_json,
    openai_payload,
    parse_openai,
    request_id_of,
    status_error,
)
from providers.base import (
    Capabilities,
    Completion,
    ConnectionFailed,
    MalformedResponseError,
    Message,
    RetryDecision,
    SampleParams,
    TimeoutError_,
    classify,
)


@functools.cache
def shared_ssl_context() -> ssl.SSLContext:
    """One CA bundle load per process, not per client (matters for batches of many endpoints)."""
    return ssl.create_default_context()


class OpenAICompatibleProvider:
    """One model behind an OpenAI-compatible base URL such as ``http://host:8000/v1``."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None,
                 legacy_completions: bool = False, timeout_s: float = 60.0,
                 endpoint_id: str | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.legacy = legacy_completions
        kind = "compat-completions" if legacy_completions else "compat"
        self.endpoint_id = endpoint_id or f"{kind}:{self.base_url}#{model}"
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._redact = Redactor([api_key])
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout_s,
                                         limits=httpx.Limits(max_connections=256),
                                         verify=shared_ssl_context())

    def __repr__(self) -> str:  # no credential
        return f"OpenAICompatibleProvider(endpoint_id={self.endpoint_id!r})"

    @property
    def url(self) -> str:
        return self.base_url + ("/completions" if self.legacy else "/chat/completions")

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        payload = openai_payload(self.model, messages, params, legacy=self.legacy)
        redact = self._redact.extend(m.content for m in messages)
        timeout = min(self.timeout_s, params.timeout_s)
        t0 = time.monotonic()
        status, headers, body = await self._post(payload, timeout)
        latency = time.monotonic() - t0
        if not 200 <= status < 300:
            raise status_error(status, headers, body, redact)
        data = decode_json(status, headers, body, self.max_response_bytes)
        return parse_openai(data, legacy=self.legacy, payload=payload, latency_s=latency,
                            request_id=request_id_of(headers), status=status)

    async def _post(self, payload: dict[str, Any],
                    timeout: float) -> tuple[int, dict[str, str], bytes]:
        """POST once; read at most ``max_response_bytes`` (+1 to detect overflow)."""
        try:
            async with self._client.stream("POST", self.url, json=payload,
                                           timeout=timeout) as resp:
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_response_bytes:
                        raise MalformedResponseError(
                            f"response body over {self.max_response_bytes} bytes",
                            status=resp.status_code, request_id=request_id_of(resp.headers))
                return resp.status_code, dict(resp.headers), bytes(body)
        except httpx.TimeoutException as exc:
            raise TimeoutError_(f"no answer within {timeout:.1f} s") from exc
        except (httpx.TransportError, OSError) as exc:
            raise ConnectionFailed(f"connection failed ({type(exc).__name__})") from exc

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return classify(exc)

    def concurrency_key(self) -> str:
        parts = urlsplit(self.base_url)
        return f"compat:{parts.hostname}:{parts.port or ''}"

    def capabilities(self) -> Capabilities:
        return Capabilities(seed=True, logprobs=False, system_prompt=True,
                            completion_mode=self.legacy)

    async def aclose(self) -> None:
        await self._client.aclose()
