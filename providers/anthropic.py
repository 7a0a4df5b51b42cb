"""Anthropic through the official ``anthropic`` SDK (built with ``max_retries=0``).

System messages and ``params.system_prompt`` map to the ``system`` field; stop reasons pass
through as the finish reason; 529 / ``overloaded_error`` becomes OverloadedError.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from providers._http import (
    MAX_RESPONSE_BYTES,
    Redactor,
    anthropic_usage,
    decode_json,
    quiet_sdk_request_logs,
    request_id_of,
    sdk_error,
    status_error,
)
from providers.base import (
    Capabilities,
    Completion,
    MalformedResponseError,
    Message,
    RetryDecision,
    SampleParams,
    classify,
)


def anthropic_payload(model: str, messages: Sequence[Message],
                      params: SampleParams) -> dict[str, Any]:
    """The Messages API body: system text out of the turns, sampling options mapped."""
    systems = [m.content for m in messages if m.role == "system"]
    if params.system_prompt is not None and not systems:
        systems = [params.system_prompt]
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens,
        "messages": [m.to_dict() for m in messages if m.role != "system"],
        "temperature": params.temperature,
    }
    if systems:
        payload["system"] = "\n\n".join(systems)
    if params.top_p is not None:
        payload["top_p"] = params.top_p
    if params.stop:
        payload["stop_sequences"] = list(params.stop)
    return payload


def parse_anthropic(data: Mapping[str, Any], *, payload: Mapping[str, Any], latency_s: float,
                    request_id: str | None, status: int = 200) -> Completion:
    blocks = data.get("content")
    if not isinstance(blocks, list) or not blocks:
        raise MalformedResponseError("response has no content blocks", status=status,
                                     request_id=request_id)
    texts = [b.get("text") for b in blocks if isinstance(b, dict) and b.get("type") == "text"]
    if not texts or not all(isinstance(t, str) for t in texts):
        raise MalformedResponseError("response carries no text block", status=status,
                                     request_id=request_id)
    stop = data.get("stop_reason")
    model = data.get("model")
    return Completion(
        text="".join(str(t) for t in texts),
        finish_reason=None if stop is None else str(stop),
        model=None if model is None else str(model),
        usage=anthropic_usage(data.get("usage")),
        latency_s=latency_s,
        request_id=request_id or (str(data["id"]) if data.get("id") else None),
        raw_request=dict(payload),
        raw_response=dict(data),
    )


_SDK_ARGS = frozenset({"model", "max_tokens", "messages", "system", "stop_sequences"})


class AnthropicProvider:
    """One Anthropic model."""

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None,
                 timeout_s: float = 60.0, endpoint_id: str | None = None) -> None:
        import anthropic

        quiet_sdk_request_logs("anthropic")
        self.model = model
        self.base_url = base_url
        self.endpoint_id = endpoint_id or f"anthropic:{model}"
        self.timeout_s = timeout_s
        self._redact = Redactor([api_key])
        self._client = anthropic.AsyncAnthropic(api_key=api_key, base_url=base_url,
                                                timeout=timeout_s, max_retries=0)

    def __repr__(self) -> str:  # no credential
        return f"AnthropicProvider(endpoint_id={self.endpoint_id!r})"

    async def generate(self, messages: Sequence[Message], params: SampleParams) -> Completion:
        payload = anthropic_payload(self.model, messages, params)
        redact = self._redact.extend(m.content for m in messages)
        timeout = min(self.timeout_s, params.timeout_s)
        # This SDK generation has no typed temperature/top_p: they travel in extra_body.
        typed = {k: v for k, v in payload.items() if k in _SDK_ARGS}
        extra = {k: v for k, v in payload.items() if k not in _SDK_ARGS}
        t0 = time.monotonic()
        try:
            raw = await self._client.messages.with_raw_response.create(
                timeout=timeout, extra_body=extra or None, **typed)
            content: bytes = await raw.read()
        except Exception as exc:
            raise sdk_error(exc, redact) from exc
        latency = time.monotonic() - t0
        headers = dict(raw.headers)
        if not 200 <= raw.status_code < 300:
            raise status_error(raw.status_code, headers, content, redact)
        data = decode_json(raw.status_code, headers, content, MAX_RESPONSE_BYTES)
        return parse_anthropic(data, payload=payload, latency_s=latency,
                               request_id=request_id_of(headers), status=raw.status_code)

    def classify_error(self, exc: BaseException) -> RetryDecision:
        return classify(exc)

    def concurrency_key(self) -> str:
        return f"anthropic:{self.base_url or 'api.anthropic.com'}"

    def capabilities(self) -> Capabilities:
        return Capabilities(seed=False, logprobs=False, system_prompt=True,
                            completion_mode=False)

    async def aclose(self) -> None:
        await self._client.close()
