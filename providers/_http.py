"""Helpers shared by the HTTP providers: redaction, error mapping, OpenAI-wire parsing.

Nothing here imports an SDK: SDK exceptions are recognised by their shape (the official
``openai`` and ``anthropic`` clients share one exception design).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from providers.base import (
    Completion,
    ConnectionFailed,
    MalformedResponseError,
    Message,
    ProviderError,
    SampleParams,
    TimeoutError_,
    Usage,
    error_from_status,
)

MAX_RESPONSE_BYTES = 4 * 1024 * 1024
_REDACTED = "[redacted]"


class Redactor:
    """Replaces secrets (credentials, prompt texts) by ``[redacted]`` in error texts."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str | None) -> str | None:
        if text is None:
            return None
        for s in self._secrets:
            text = text.replace(s, _REDACTED)
        return text

    def extend(self, more: Iterable[str | None]) -> Redactor:
        return Redactor([*self._secrets, *more])


class _DropRequestBodies(logging.Filter):
    """Drops the SDKs' debug records that dump request options (prompt texts included)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Request options")


_DROP = _DropRequestBodies()


def quiet_sdk_request_logs(sdk: str) -> None:
    """Keep prompt texts (maybe fingerprint keys) out of the ``sdk`` client's debug logs."""
    logger = logging.getLogger(f"{sdk}._base_client")
    if _DROP not in logger.filters:
        logger.addFilter(_DROP)


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, then Retry-After (s or HTTP date)."""
    lower = {k.lower(): v for k, v in headers.items()}
    ms = _non_negative(lower.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    raw = lower.get("retry-after")
    if raw is None:
        return None
    seconds = _non_negative(raw)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _non_negative(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 and value == value and value != float("inf") else None


def request_id_of(headers: Mapping[str, str]) -> str | None:
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("x-request-id") or lower.get("request-id")


def status_error(status: int, headers: Mapping[str, str], body: bytes | str,
                 redact: Redactor) -> ProviderError:
    """Typed error for a non-2xx answer (OpenAI or Anthropic error body)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    code, detail = _error_fields(text)
    message = f"HTTP {status}" + (f" ({code})" if code else "")
    if detail:
        message += f": {redact(detail[:300])}"
    return error_from_status(status, message, request_id=request_id_of(headers),
                             body=redact(text), retry_after_s=parse_retry_after(headers),
                             code=code)


def _error_fields(text: str) -> tuple[str | None, str | None]:
    """(code, message) from an OpenAI/Anthropic ``{"error": {...}}``, Ollama ``{"error": "..."}``
    or FastAPI ``{"detail": "..."}`` body."""
    try:
        data = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(data, dict):
        return None, None
    err = data.get("error")
    if isinstance(err, str):
        return None, err
    if not isinstance(err, dict):
        detail = data.get("detail") or data.get("message")
        return None, (detail if isinstance(detail, str) else None)
    code = err.get("code") or err.get("type")
    msg = err.get("message")
    return (str(code) if code else None), (str(msg) if msg else None)


def sdk_error(exc: Exception, redact: Redactor) -> ProviderError:
    """Map an exception of the official openai/anthropic SDKs to the typed error tree."""
    names = {c.__name__ for c in type(exc).__mro__}
    response = getattr(exc, "response", None)
    if "APIStatusError" in names and response is not None:
        return status_error(int(exc.status_code), dict(response.headers),  # type: ignore[attr-defined]
                            response.content, redact)
    if "APITimeoutError" in names:
        return TimeoutError_("no answer within the request timeout")
    if "APIConnectionError" in names:
        return ConnectionFailed("connection failed")
    if "APIResponseValidationError" in names:
        return MalformedResponseError("response did not match the expected schema")
    if isinstance(exc, ValueError):
        return MalformedResponseError(f"response could not be decoded ({type(exc).__name__})")
    return ProviderError(f"unexpected client failure ({type(exc).__name__})")


def decode_json(status: int, headers: Mapping[str, str], body: bytes,
                limit: int = MAX_RESPONSE_BYTES) -> dict[str, Any]:
    """The JSON object of a 2xx answer, or MalformedResponseError."""
    rid = request_id_of(headers)
    if len(body) > limit:
        raise MalformedResponseError(f"response body over {limit} bytes", status=status,
                                     request_id=rid)
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    if "json" not in ctype.lower():
        raise MalformedResponseError(f"unexpected content type {ctype[:60]!r}", status=status,
                                     request_id=rid)
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedResponseError("response is not valid JSON", status=status,
                                     request_id=rid) from None
    if not isinstance(data, dict):
        raise MalformedResponseError("response JSON is not an object", status=status,
                                     request_id=rid)
    return data


def chat_messages(messages: Sequence[Message], params: SampleParams) -> list[dict[str, str]]:
    """OpenAI-wire messages; ``params.system_prompt`` goes first unless one is present."""
    out = [m.to_dict() for m in messages]
    if params.system_prompt is not None and not any(m.role == "system" for m in messages):
        out.insert(0, {"role": "system", "content": params.system_prompt})
    return out


def completion_prompt(messages: Sequence[Message], params: SampleParams) -> str:
    """A plain prompt for legacy completions: system prompt and turns, joined."""
    parts = [params.system_prompt] if params.system_prompt else []
    parts += [m.content for m in messages]
    return "\n\n".join(parts)


# OpenAI reasoning models (o1, o3, o4-mini, gpt-5...): only the default temperature, and
# max_completion_tokens, which also pays for hidden reasoning tokens
_REASONING = re.compile(r"^(o\d|gpt-5)", re.IGNORECASE)
REASONING_ALLOWANCE = 1024


def is_reasoning_model(model: str) -> bool:
    """``o4-mini``, ``gpt-5``, fine-tunes of them (``ft:o4-mini:org::id``), ``org/o3``."""
    name = model.rpartition("/")[2]
    return bool(_REASONING.match(name.removeprefix("ft:")))


def openai_payload(model: str, messages: Sequence[Message], params: SampleParams,
                   *, legacy: bool, reasoning: bool = False) -> dict[str, Any]:
    """The JSON body for ``/chat/completions`` (or ``/completions`` when ``legacy``).

    ``reasoning``: the model rejects sampling parameters, so none are sent (the record
    shows it), and the token limit leaves room for hidden reasoning.
    """
    payload: dict[str, Any] = {"model": model}
    if reasoning and not legacy:
        payload["max_completion_tokens"] = params.max_tokens + REASONING_ALLOWANCE
    else:
        payload.update(temperature=params.temperature, max_tokens=params.max_tokens)
    if legacy:
        payload["prompt"] = completion_prompt(messages, params)
    else:
        payload["messages"] = chat_messages(messages, params)
    if params.top_p is not None and not reasoning:
        payload["top_p"] = params.top_p
    if params.seed is not None:
        payload["seed"] = params.seed
    if params.stop and not reasoning:
        payload["stop"] = list(params.stop)
    return payload


def parse_openai(data: Mapping[str, Any], *, legacy: bool, payload: Mapping[str, Any],
                 latency_s: float, request_id: str | None, status: int = 200) -> Completion:
    """A Completion from an OpenAI-wire success body; MalformedResponseError when unusable."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise MalformedResponseError("response has no choices", status=status,
                                     request_id=request_id)
    first = choices[0]
    text = first.get("text") if legacy else (first.get("message") or {}).get("content")
    if not isinstance(text, str):
        raise MalformedResponseError("response choice carries no text", status=status,
                                     request_id=request_id)
    return Completion(
        text=text,
        finish_reason=_opt_str(first.get("finish_reason")),
        model=_opt_str(data.get("model")),
        usage=_usage(data.get("usage"), "prompt_tokens", "completion_tokens"),
        latency_s=latency_s,
        request_id=request_id or _opt_str(data.get("id")),
        raw_request=dict(payload),
        raw_response=dict(data),
    )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _usage(raw: Any, prompt_key: str, completion_key: str) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    p, c = raw.get(prompt_key), raw.get(completion_key)
    return Usage(p if isinstance(p, int) else None, c if isinstance(c, int) else None)


def anthropic_usage(raw: Any) -> Usage:
    return _usage(raw, "input_tokens", "output_tokens")
