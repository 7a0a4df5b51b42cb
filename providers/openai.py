"""OpenAI through the official ``openai`` SDK (built with ``max_retries=0``).

Chat completions for chat models, legacy completions for base models. The SDK is imported
when the provider is built, never at ``import providers``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from providers._http import (
    MAX_RESPONSE_BYTES,
    Redactor,
    decode_json,
    is_reasoning_model,
    openai_payload,
    parse_openai,
    quiet_sdk_request_logs,
    request_id_of,
    sdk_error,
    status_error,
)
from providers.base import Capabilities, Completion, Message, RetryDecision, SampleParams, classify


class OpenAIProvider:
    """One OpenAI model (or an OpenAI-wire endpoint reached through the official SDK)."""

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 organization: str | None = None, timeout_s: float = 60.0,
                 legacy_completions: bool = False, endpoint_id: str | None = None) -> None:
        import openai

        quiet_sdk_request_logs("openai")
        self.model = model
        self.legacy = legacy_completions
        self.reasoning = is_reasoning_model(model)
        self.base_url = base_url
        kind = "openai-completions" if legacy_completions else "openai"
        self.endpoint_id = endpoint_id or f"{kind}:{model}"
        self.timeout_s = timeout_s
        self._redact = Redactor([api_key])
        self._client = openai.AsyncOpenAI(api_key=api_key, base_url=base_url,
                                          organization=organization, timeout=timeout_s,
                                          max_retries=0)

    def __repr__(self) -> str:  # no credential
        return f"OpenAIProvider(endpoint_id={self.endpoint_id!r})"

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        payload = openai_payload(self.model, messages, params, legacy=self.legacy,
                                 reasoning=self.reasoning)
        redact = self._redact.extend(m.content for m in messages)
        timeout = min(self.timeout_s, params.timeout_s)
        t0 = time.monotonic()
        try:
            raw = await self._create(payload, timeout)
        except Exception as exc:
            raise sdk_error(exc, redact) from exc
        latency = time.monotonic() - t0
        headers = dict(raw.headers)
        body: bytes = raw.content
        if not 200 <= raw.status_code < 300:  # the SDK raises first; kept for safety
            raise status_error(raw.status_code, headers, body, redact)
        data = decode_json(raw.status_code, headers, body, MAX_RESPONSE_BYTES)
        return parse_openai(data, legacy=self.legacy, payload=payload, latency_s=latency,
                            request_id=request_id_of(headers), status=raw.status_code)

    async def _create(self, payload: dict[str, Any], timeout: float) -> Any:
        """One raw call; we parse the body ourselves (same parser as compat servers)."""
        body = {k: v for k, v in payload.items() if k != "model"}
        if self.legacy:
            return await self._client.completions.with_raw_response.create(
                model=self.model, timeout=timeout, **body)
        return await self._client.chat.completions.with_raw_response.create(
            model=self.model, timeout=timeout, **body)

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return classify(exc)

    def concurrency_key(self) -> str:
        return f"openai:{self.base_url or 'api.openai.com'}"

    def capabilities(self) -> Capabilities:
        return Capabilities(seed=True, logprobs=True, system_prompt=True,
                            completion_mode=self.legacy)

    async def aclose(self) -> None:
        await self._client.close()
